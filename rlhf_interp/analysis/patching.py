"""Cross-model activation patching, batched: many patched copies of the prompts in one forward pass.

Direction `tuned_to_base`: run the base model, overwrite one activation (a head's hook_z, or resid_pre / attn_out /
mlp_out at one position) with the tuned model's value on the same tokens, and read the metric. The effect is the
fraction of the base→tuned metric gap that this one activation recovers:

    effect = (metric_patched - metric_base) / (metric_tuned - metric_base)

`base_to_tuned` is the mirror image (tuned run, base activations): the fraction of the gap it moves back.

`transformer_lens.patching` runs one forward per cell; here `cells_per_forward` cells share one forward (the batch
holds one copy of the prompts per cell, and each hook writes only its own copy's rows). Tests check equality with the
per-cell reference to 1e-4.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.pair import ModelPair

DIRECTIONS = {"tuned_to_base": ("base", "tuned"), "base_to_tuned": ("tuned", "base")}  # (receiver, donor)
LAYER_COMPONENTS = {"resid_pre": "blocks.{L}.hook_resid_pre", "attn_out": "blocks.{L}.hook_attn_out",
                    "mlp_out": "blocks.{L}.hook_mlp_out"}
HEAD_HOOK = "blocks.{L}.attn.hook_z"


@dataclass(frozen=True)
class Cell:
    """One patch: the activation `hook` at `layer`, restricted to `head` and/or `pos` (None = all)."""

    hook: str
    layer: int
    head: int | None = None
    pos: int | None = None

    @property
    def name(self) -> str:
        return self.hook.format(L=self.layer)


def _setter(rows: slice, cell: Cell, donor: Tensor) -> Callable[[Tensor], None]:
    def write(act: Tensor) -> None:
        if cell.head is not None and cell.pos is not None:  # (batch, pos, head, d_head)
            act[rows, cell.pos, cell.head] = donor[:, cell.pos, cell.head]
        elif cell.head is not None:
            act[rows, :, cell.head] = donor[:, :, cell.head]
        elif cell.pos is not None:  # (batch, pos, d_model)
            act[rows, cell.pos] = donor[:, cell.pos]
        else:
            act[rows] = donor

    return write


@torch.no_grad()
def patch_sweep(
    receiver: Any,
    donor_cache: Any,
    tokens: Tensor,
    cells: Sequence[Cell],
    metric: Callable[[Tensor], Tensor],
    cells_per_forward: int = 8,
) -> Tensor:
    """Mean metric over the prompts for each cell patched alone: (n_cells,).

    `tokens` (batch, pos) are the prompts; `donor_cache` holds the donor model's activations on the same tokens.
    """
    batch = tokens.shape[0]
    out = torch.empty(len(cells))
    for start in range(0, len(cells), cells_per_forward):
        chunk = cells[start : start + cells_per_forward]
        writers: dict[str, list[Callable[[Tensor], None]]] = defaultdict(list)
        for i, cell in enumerate(chunk):
            rows = slice(i * batch, (i + 1) * batch)
            writers[cell.name].append(_setter(rows, cell, donor_cache[cell.name]))

        def make_hook(ws: list[Callable[[Tensor], None]]) -> Callable[..., Tensor]:
            def hook(act: Tensor, hook: Any = None) -> Tensor:
                for w in ws:
                    w(act)
                return act

            return hook

        hooks = [(name, make_hook(ws)) for name, ws in writers.items()]
        logits = receiver.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
        values = metric(logits).view(len(chunk), batch)  # (cells, batch)
        out[start : start + len(chunk)] = values.mean(1).cpu()
    return out


def run_cache(model: Any, tokens: Tensor, names: Sequence[str]) -> Any:
    wanted = set(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return cache


def _fraction(patched: Tensor, receiver_clean: float, donor_clean: float) -> Tensor:
    gap = donor_clean - receiver_clean
    if abs(gap) < 1e-9:
        return torch.full_like(patched, float("nan"))
    return (patched - receiver_clean) / gap


def _token_labels(pair: ModelPair, tokens: Tensor) -> list[str]:
    return [pair.tokenizer.decode([t]) for t in tokens[0].tolist()]


def patching_layers(pair: ModelPair, cells_per_forward: int = 8) -> pd.DataFrame:
    """resid_pre / attn_out / mlp_out × layer × position, both directions (on the largest equal-length prompt group)."""
    _, tokens = pair.main_group
    labels = _token_labels(pair, tokens)
    rows = []
    for direction, (recv_name, donor_name) in DIRECTIONS.items():
        receiver, donor = pair.model(recv_name), pair.model(donor_name)
        cells = [Cell(hook, layer, pos=p) for comp, hook in LAYER_COMPONENTS.items()
                 for layer in range(pair.n_layers) for p in range(tokens.shape[1])]
        cache = run_cache(donor, tokens, sorted({c.name for c in cells}))
        with torch.no_grad():
            recv_clean = pair.metric(receiver(tokens)).mean().item()
            donor_clean = pair.metric(donor(tokens)).mean().item()
        patched = patch_sweep(receiver, cache, tokens, cells, pair.metric, cells_per_forward)
        effects = _fraction(patched, recv_clean, donor_clean)
        comp_of = {hook: comp for comp, hook in LAYER_COMPONENTS.items()}
        for cell, m, e in zip(cells, patched.tolist(), effects.tolist(), strict=True):
            rows.append({"direction": direction, "component": comp_of[cell.hook], "layer": cell.layer,
                         "pos": cell.pos, "token": labels[cell.pos], "metric": m, "effect": e})
    return pd.DataFrame(rows)


def patching_heads(pair: ModelPair, cells_per_forward: int = 8) -> pd.DataFrame:
    """Each head's hook_z at all positions, both directions, over all prompts."""
    cells = [Cell(HEAD_HOOK, layer, head=h) for layer in range(pair.n_layers) for h in range(pair.n_heads)]
    rows = []
    for direction, (recv_name, donor_name) in DIRECTIONS.items():
        receiver, donor = pair.model(recv_name), pair.model(donor_name)
        total = torch.zeros(len(cells))
        recv_clean = donor_clean = 0.0
        n = len(pair.prompts)
        for idx, tokens in pair.groups:  # weighted mean over groups of equal-length prompts
            cache = run_cache(donor, tokens, sorted({c.name for c in cells}))
            total += patch_sweep(receiver, cache, tokens, cells, pair.metric, cells_per_forward) * len(idx) / n
            with torch.no_grad():
                recv_clean += pair.metric(receiver(tokens)).sum().item() / n
                donor_clean += pair.metric(donor(tokens)).sum().item() / n
        effects = _fraction(total, recv_clean, donor_clean)
        for cell, m, e in zip(cells, total.tolist(), effects.tolist(), strict=True):
            rows.append({"direction": direction, "layer": cell.layer, "head": cell.head, "metric": m, "effect": e})
    return pd.DataFrame(rows)


def patching_head_pos(pair: ModelPair, heads: pd.DataFrame, top: int = 4, cells_per_forward: int = 8) -> pd.DataFrame:
    """Head × position for the `top` heads by |effect| (tuned_to_base), both directions, largest prompt group."""
    chosen = heads[heads.direction == "tuned_to_base"].assign(a=lambda d: d.effect.abs()).nlargest(top, "a")
    _, tokens = pair.main_group
    labels = _token_labels(pair, tokens)
    cells = [Cell(HEAD_HOOK, int(r.layer), head=int(r.head), pos=p) for r in chosen.itertuples()
             for p in range(tokens.shape[1])]
    rows = []
    for direction, (recv_name, donor_name) in DIRECTIONS.items():
        receiver, donor = pair.model(recv_name), pair.model(donor_name)
        cache = run_cache(donor, tokens, sorted({c.name for c in cells}))
        with torch.no_grad():
            recv_clean = pair.metric(receiver(tokens)).mean().item()
            donor_clean = pair.metric(donor(tokens)).mean().item()
        patched = patch_sweep(receiver, cache, tokens, cells, pair.metric, cells_per_forward)
        for cell, m, e in zip(cells, patched.tolist(), _fraction(patched, recv_clean, donor_clean).tolist(),
                              strict=True):
            rows.append({"direction": direction, "layer": cell.layer, "head": cell.head, "pos": cell.pos,
                         "token": labels[cell.pos], "metric": m, "effect": e})
    return pd.DataFrame(rows)
