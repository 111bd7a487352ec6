"""Cross-model activation patching, batched: many patched copies of the prompts in one forward pass.

Direction `tuned_to_base`: run the base model, overwrite one activation (a head's hook_z, or resid_pre / attn_out /
mlp_out at one position) with the tuned model's value on the same tokens, and read the metric. The effect is the
fraction of the base→tuned metric gap that this one activation recovers:

    effect = (metric_patched - metric_base) / (metric_tuned - metric_base)

`base_to_tuned` is the mirror image (tuned run, base activations): the fraction of the gap it moves back.

Heads are patched two ways. `effect` replaces the head's whole output, z_h W_O_h (the receiver's attention output
gets donor z_h W_O_h − receiver z_h W_O_h added), so a change in W_O counts; `effect_z` replaces only hook_z (the
convention of `transformer_lens.patching`), which is blind to W_O and sees the value side only.

`transformer_lens.patching` runs one full forward per cell through the bridge's hooks. Here, on GPT-2/Llama models,
the sweep runs on `FusedGPT2` (analysis/fused.py: the receiver's own weights as plain tensor code, checked against
the bridge's forward once per model and state of its weights): (1) each cell's forward starts where its patch enters
the residual stream, from the receiver's clean run (nothing upstream changes); (2) only positions from the patched
one on are recomputed, with the clean keys and values of the earlier ones; (3) the last block runs only at the
positions the metric reads, and the unembedding only for the vocabulary columns it reads; (4) cells that change the
same first position share one staggered pass: a cell's copy of the prompts joins the batch at the block where its
patch enters, so each block runs once for all the cells in flight (up to `FUSED_TOKENS` token rows). Other
architectures, cells the engine does not cover, or a failed check use hooked full forwards (`cells_per_forward` cells
per forward, each hook writing its own copy's rows). Tests check both against `transformer_lens.patching` and each
other to 1e-4.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.arch import adapter_for
from rlhf_interp.analysis.bootstrap import percentile_ci, recovery_ci, recovery_draws
from rlhf_interp.analysis.fused import Clean, FusedGPT2, engine_for
from rlhf_interp.analysis.pair import ModelPair

DIRECTIONS = {"tuned_to_base": ("base", "tuned"), "base_to_tuned": ("tuned", "base")}  # (receiver, donor)
LAYER_COMPONENTS = {"resid_pre": "blocks.{L}.hook_resid_pre", "attn_out": "blocks.{L}.hook_attn_out",
                    "mlp_out": "blocks.{L}.hook_mlp_out"}
HEAD_HOOK = "blocks.{L}.attn.hook_z"
MAX_ROWS = 1024  # rows (patched copies × token rows) per forward at most
FUSED_TOKENS = 16384  # fused sweeps: token rows (patched copies × prompts × positions) per block at most
FUSED_LOGITS = 1 << 24  # and logit entries (copies × rows × positions read × vocabulary columns) at most


@dataclass(frozen=True)
class Cell:
    """One patch: the activation `hook` at `layer`, restricted to `head` and/or `pos` (None = all).

    op "replace" overwrites with the donor's value `sources[name]`; op "add" adds `sources[key]` (a precomputed
    difference, e.g. of one head's output) to the activation, at `pos` only when given.
    """

    hook: str
    layer: int
    head: int | None = None
    pos: int | None = None
    op: str = "replace"
    copy: int = 0  # op "add": several cells at one place, each adding its own source (keys differ by copy)

    @property
    def name(self) -> str:
        return self.hook.format(L=self.layer)

    @property
    def key(self) -> str:
        if self.op == "replace":
            return self.name
        return (f"{self.name}#head{self.head}" + (f"@{self.pos}" if self.pos is not None else "")
                + (f"~{self.copy}" if self.copy else ""))


def _setter(rows: slice, cell: Cell, donor: Tensor) -> Callable[[Tensor], None]:
    def write(act: Tensor) -> None:
        if cell.op == "add" and cell.pos is not None:
            act[rows, cell.pos] += donor[:, cell.pos]
        elif cell.op == "add":
            act[rows] += donor
        elif cell.head is not None and cell.pos is not None:  # (batch, pos, head, d_head)
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
    sources: Any,
    tokens: Tensor,
    cells: Sequence[Cell],
    metric: Callable[[Tensor], Tensor],
    cells_per_forward: int = 8,
    fused: bool = True,
    per_prompt: bool = False,
) -> Tensor:
    """Mean metric over the prompts for each cell patched alone: (n_cells,); with `per_prompt`, every prompt's
    metric instead: (n_cells, batch) (for bootstrap CIs over prompts).

    `tokens` (batch, pos) are the prompts; `sources` (the donor's ActivationCache, or a dict) maps each cell's key to
    the donor's activation on the same tokens (or, for op "add", to the difference to add). With `fused` the sweep
    runs on `FusedGPT2` (verified against the bridge's own forward first); otherwise, or where the architecture or a
    cell is not covered, every chunk of cells is one full forward through the bridge's hooks.
    """
    values = None
    cells_per_forward = max(1, min(cells_per_forward, MAX_ROWS // tokens.shape[0]))  # logprob_diff: n · W rows
    if fused and all(_covered(c) for c in cells):
        found = engine_for(receiver, tokens)
        if found is not None:
            values = _fused_sweep(*found, sources, cells, metric, cells_per_forward)
    if values is None:
        values = _hooked_sweep(receiver, sources, tokens, cells, metric, cells_per_forward)
    return values if per_prompt else values.mean(1)


def _hooked_sweep(receiver: Any, sources: Any, tokens: Tensor, cells: Sequence[Cell],
                  metric: Callable[[Tensor], Tensor], cells_per_forward: int) -> Tensor:
    """The reference: `cells_per_forward` cells per full forward, each cell's hook writing its own copy's rows.
    Per-prompt metrics (n_cells, prompts)."""
    batch = tokens.shape[0]
    out = torch.empty(len(cells), batch // rows_per_prompt(metric))
    for start in range(0, len(cells), cells_per_forward):
        chunk = cells[start : start + cells_per_forward]
        writers: dict[str, list[Callable[[Tensor], None]]] = defaultdict(list)
        for i, cell in enumerate(chunk):
            writers[cell.name].append(_setter(slice(i * batch, (i + 1) * batch), cell, sources[cell.key]))
        hooks = [(name, _hook(ws)) for name, ws in writers.items()]
        logits = receiver.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
        out[start : start + len(chunk)] = metric(logits).view(len(chunk), -1).cpu()
    return out


def _covered(cell: Cell) -> bool:
    return cell.hook in _STAGE_OF and not (cell.hook == HEAD_HOOK and cell.op == "add")


# where a patched activation enters the residual stream: (layer offset, stage), and the clean stream it adds to
_STAGE_OF = {LAYER_COMPONENTS["resid_pre"]: (0, "pre"), LAYER_COMPONENTS["attn_out"]: (0, "mid"),
             LAYER_COMPONENTS["mlp_out"]: (1, "pre"), HEAD_HOOK: (0, "mid")}


def _entry(cell: Cell) -> tuple[int, str, int]:
    """Where the cell's patch enters the residual stream: (layer, stage, first position that differs from clean)."""
    offset, stage = _STAGE_OF[cell.hook]
    return cell.layer + offset, stage, 0 if cell.pos is None else cell.pos


def _patched_stream(engine: FusedGPT2, clean: Clean, cell: Cell, source: Tensor) -> Tensor:
    """The receiver's residual stream (batch, pos, d_model) at the cell's entry point, with the patch applied."""
    layer, stage, _ = _entry(cell)
    L = cell.layer
    base = clean.resid_pre[layer] if stage == "pre" else clean.resid_mid[layer]
    if cell.op == "add":
        new = base + source
    elif cell.hook == HEAD_HOOK:  # donor z into the receiver: its attention output moves by (z_d − z_r) W_O
        z, W_O = clean.z[L], engine.layers[L].W_O.T  # (batch, pos, head, d_head), (head · d_head, d_model)
        if cell.head is not None:
            h, d_head = cell.head, z.shape[-1]
            new = base + (source[:, :, h] - z[:, :, h]) @ W_O[h * d_head : (h + 1) * d_head]
        else:
            new = base + (source - z).flatten(2) @ W_O
    elif cell.hook == LAYER_COMPONENTS["resid_pre"]:
        new = source
    elif cell.hook == LAYER_COMPONENTS["attn_out"]:
        new = clean.resid_pre[L] + source
    else:  # mlp_out
        new = clean.resid_mid[L] + source
    if cell.pos is None:
        return new.expand_as(base)
    x = base.clone()
    x[:, cell.pos] = new[:, cell.pos]
    return x


def _fused_sweep(engine: FusedGPT2, clean: Clean, sources: Any, cells: Sequence[Cell],
                 metric: Callable[[Tensor], Tensor], cells_per_forward: int) -> Tensor:
    """Cells grouped by the first position they change (no later than the first position the metric reads: those
    must be computed), each group run staggered (`FusedForward.run`: a cell's rows join the batch where its patch
    enters), in chunks of at least `cells_per_forward` cells and up to `FUSED_TOKENS` token rows per block. Patched
    streams are built when the run reaches them. Per-prompt metrics (n_cells, prompts)."""
    batch, n_pos = clean.tokens.shape
    keep = min(metric_positions(metric), n_pos)
    columns = getattr(metric, "vocab_ids", None)
    entries = [_entry(c) for c in cells]
    by_start: dict[int, list[int]] = defaultdict(list)
    for i, (_, _, first) in enumerate(entries):
        by_start[min(first, n_pos - keep)].append(i)
    width = len(columns) if columns is not None else int(engine.W_U.shape[-1])
    out = torch.empty(len(cells), batch // rows_per_prompt(metric))
    for s0, idx in by_start.items():
        idx.sort(key=lambda i: (entries[i][0], entries[i][1] != "pre"))
        rows = batch * (n_pos - s0)  # token rows of one cell; its logits: batch × keep × width
        per = max(cells_per_forward, min(FUSED_TOKENS // rows, FUSED_LOGITS // (batch * keep * width)))
        for c0 in range(0, len(idx), per):
            chunk = idx[c0 : c0 + per]
            logits = engine.run([entries[i][:2] for i in chunk],
                                lambda j, chunk=chunk, s0=s0: _patched_stream(engine, clean, cells[chunk[j]],
                                                                              sources[cells[chunk[j]].key])[:, s0:],
                                s0, clean, keep, columns)  # (cells · batch, keep, width)
            values = (metric.on_columns(logits) if columns is not None else metric(logits)).view(len(chunk), -1)
            out[chunk] = values.cpu()
    return out


def _hook(writers: list[Callable[[Tensor], None]]) -> Callable[..., Tensor]:
    def hook(act: Tensor, hook: Any = None) -> Tensor:
        for w in writers:
            w(act)
        return act

    return hook


def metric_positions(metric: Any) -> int:
    """How many final positions the metric reads (logit_diff: 1; target:TEXT: len(TEXT tokens); logprob_diff: the
    longest word's tokens)."""
    if hasattr(metric, "read_positions"):
        return int(metric.read_positions)
    return max(1, len(getattr(metric, "target_ids", []) or []))


def rows_per_prompt(metric: Any) -> int:
    """Token rows per prompt the metric reads (logprob_diff: one per word; otherwise 1)."""
    return int(getattr(metric, "rows_per_prompt", 1))


def run_cache(model: Any, tokens: Tensor, names: Sequence[str]) -> Any:
    wanted = set(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return cache


@torch.no_grad()
def clean_metrics(receiver: Any, donor: Any, tokens: Tensor, metric: Callable[[Tensor], Tensor]) -> tuple[float, float]:
    """Mean metric of the unpatched receiver and donor on `tokens`."""
    return metric(receiver(tokens)).mean().item(), metric(donor(tokens)).mean().item()


@torch.no_grad()
def clean_per_prompt(receiver: Any, donor: Any, tokens: Tensor, metric: Callable[[Tensor], Tensor]
                     ) -> tuple[Tensor, Tensor]:
    """The unpatched receiver's and donor's metric on each prompt of `tokens`: (batch,) each."""
    return metric(receiver(tokens)).float().cpu(), metric(donor(tokens)).float().cpu()


def _with_ci(rows: list[dict[str, Any]], low: Any, high: Any, suffix: str = "") -> None:
    """Write the bootstrap CI columns `ci_low{suffix}`, `ci_high{suffix}` into `rows` (one value per row)."""
    for row, lo, hi in zip(rows, low, high, strict=True):
        row[f"ci_low{suffix}"], row[f"ci_high{suffix}"] = float(lo), float(hi)


def _fraction(patched: Tensor, receiver_clean: float, donor_clean: float) -> Tensor:
    gap = donor_clean - receiver_clean
    if abs(gap) < 1e-9:
        return torch.full_like(patched, float("nan"))
    return (patched - receiver_clean) / gap


def _token_labels(pair: ModelPair, tokens: Tensor) -> list[str]:
    return [pair.tokenizer.decode([t]) for t in tokens[0].tolist()]


def patching_layers(pair: ModelPair, cells_per_forward: int = 8, seed: int = 0) -> pd.DataFrame:
    """resid_pre / attn_out / mlp_out × layer × position, both directions (on the largest equal-length prompt group),
    plus the rows after the last layer that close the books (`_closing_rows`): final residual, read-out, both, and
    their interaction. `ci_low`/`ci_high`: 95% bootstrap CI of `effect` over the group's prompts (`bootstrap`).
    Positions are the prompt's (tokens a metric appends, `target:TEXT` or `logprob_diff` words, are not patched one
    by one; the metric reads the patched forward at its own positions)."""
    _, tokens = pair.main_group
    labels = _token_labels(pair, tokens)
    rows = []
    for direction, (recv_name, donor_name) in DIRECTIONS.items():
        receiver, donor = pair.model(recv_name), pair.model(donor_name)
        cells = [Cell(hook, layer, pos=p) for comp, hook in LAYER_COMPONENTS.items()
                 for layer in range(pair.n_layers) for p in range(pair.metric.prompt_length(tokens))]
        cache = run_cache(donor, tokens, sorted({c.name for c in cells}))
        recv_pp, donor_pp = clean_per_prompt(receiver, donor, tokens, pair.metric)
        recv_clean, donor_clean = recv_pp.mean().item(), donor_pp.mean().item()
        per_prompt = patch_sweep(receiver, cache, tokens, cells, pair.metric, cells_per_forward, per_prompt=True)
        patched = per_prompt.mean(1)
        effects = _fraction(patched, recv_clean, donor_clean)
        comp_of = {hook: comp for comp, hook in LAYER_COMPONENTS.items()}
        new = [{"direction": direction, "component": comp_of[cell.hook], "layer": cell.layer, "pos": cell.pos,
                "token": labels[cell.pos], "metric": m, "effect": e}
               for cell, m, e in zip(cells, patched.tolist(), effects.tolist(), strict=True)]
        _with_ci(new, *recovery_ci(per_prompt, recv_pp, donor_pp, seed))
        rows += new
        rows += _closing_rows(pair, receiver, donor, tokens, labels, direction, recv_pp, donor_pp, seed)
    return pd.DataFrame(rows)


FINAL_RESID = "blocks.{L}.hook_resid_post"


def _closing_rows(pair: ModelPair, receiver: Any, donor: Any, tokens: Tensor, labels: list[str], direction: str,
                  recv_pp: Tensor, donor_pp: Tensor, seed: int = 0) -> list[dict[str, Any]]:
    """Rows that close the books after the last layer (layer = n_layers): `final_resid` (the input of the final norm
    swapped at the read-out position; `final_resid_all` at every position), `unembed` (the read-out swapped: final
    norm gain and bias and the unembedding, folded into W_U and b_U), `final_resid+unembed` (both: the donor's metric,
    100%) and `interaction` = both − final_resid − unembed (what neither part carries alone). CIs: one joint
    bootstrap over prompts (the interaction's CI from the same draws as its three terms). Where the metric reads
    several positions (`target:TEXT`, `logprob_diff`), `final_resid` swaps it at all of them (pos empty): the final
    residual at a position reaches only that position's logits, so this equals `final_resid_all`."""
    last, n = tokens.shape[1] - 1, pair.n_layers
    name = FINAL_RESID.format(L=n - 1)
    cache = run_cache(donor, tokens, [name])
    several = metric_positions(pair.metric) > 1
    cells = [Cell(FINAL_RESID, n - 1, pos=None if several else last), Cell(FINAL_RESID, n - 1)]
    at_last, at_all = patch_sweep(receiver, cache, tokens, cells, pair.metric, fused=False, per_prompt=True)
    per_prompt = {"final_resid": at_last, "final_resid_all": at_all,
                  "unembed": swap_unembed(receiver, donor, tokens, pair.metric, per_prompt=True),
                  "final_resid+unembed": swap_unembed(receiver, donor, tokens, pair.metric, resid=cache[name],
                                                      per_prompt=True)}
    metrics = {k: v.mean().item() for k, v in per_prompt.items()}
    recv_clean, donor_clean = recv_pp.mean().item(), donor_pp.mean().item()
    effects = {k: _fraction(torch.tensor([m]), recv_clean, donor_clean).item() for k, m in metrics.items()}
    effects["interaction"] = effects["final_resid+unembed"] - effects["final_resid_all"] - effects["unembed"]
    metrics["interaction"] = float("nan")
    if len(recv_pp) < 2:
        draws = np.full((len(effects), 0), np.nan)
    else:
        d = dict(zip(per_prompt, recovery_draws(torch.stack(list(per_prompt.values())), recv_pp, donor_pp, seed),
                     strict=True))
        d["interaction"] = d["final_resid+unembed"] - d["final_resid_all"] - d["unembed"]
        draws = np.stack([d[k] for k in effects])
    at_pos = {"final_resid_all"} | (set(effects) if several else set())  # rows not at one position
    rows = [{"direction": direction, "component": k, "layer": n, "pos": None if k in at_pos else last,
             "token": None if k in at_pos else labels[last], "metric": metrics[k], "effect": e}
            for k, e in effects.items()]
    _with_ci(rows, *percentile_ci(draws))
    return rows


@torch.no_grad()
def head_output_deltas(receiver: Any, donor: Any, tokens: Tensor, n_layers: int, n_heads: int,
                       donor_cache: Any = None) -> dict[str, Tensor]:
    """donor z_h W_O_h − receiver z_h W_O_h per head, (batch, pos, d_model), keyed like Cell.key for op "add".

    `donor_cache`, if given, must hold the donor's hook_z of every layer on `tokens` (saves a forward)."""
    names = [HEAD_HOOK.format(L=L) for L in range(n_layers)]
    rc = run_cache(receiver, tokens, names)
    dc = donor_cache if donor_cache is not None else run_cache(donor, tokens, names)
    out = {}
    W_O_d, W_O_r = donor.W_O, receiver.W_O  # the bridge stacks every block's W_O on each read: once each
    for L in range(n_layers):
        z_r, z_d = rc[names[L]], dc[names[L]]  # (batch, pos, head, d_head)
        for h in range(n_heads):
            key = Cell(ATTN_OUT, L, head=h, op="add").key
            out[key] = z_d[:, :, h] @ W_O_d[L, h] - z_r[:, :, h] @ W_O_r[L, h]
    return out


ATTN_OUT = LAYER_COMPONENTS["attn_out"]


@torch.no_grad()
def swap_unembed(receiver: Any, donor: Any, tokens: Tensor, metric: Callable[[Tensor], Tensor],
                 resid: Tensor | None = None, per_prompt: bool = False) -> Any:
    """Mean metric when the receiver's final normalised residual is read out with the donor's (folded) final norm
    gain and bias and unembedding: the part of the change that lives in the read-out itself (GPT-2 ties W_U to W_E).
    With `resid` (batch, pos, d_model), the final residual (input of the final norm) is replaced by it first. With
    `per_prompt`, each prompt's metric (batch,) instead of the mean (a float)."""
    hooks = []
    if resid is not None:
        def put(act: Tensor, hook: Any = None) -> Tensor:
            act[:] = resid
            return act

        hooks.append((FINAL_RESID.format(L=int(receiver.cfg.n_layers) - 1), put))
    seen: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any = None) -> Tensor:
        seen["x"] = act.detach().clone()
        return act

    receiver.run_with_hooks(tokens, fwd_hooks=[*hooks, ("ln_final.hook_normalized", keep)])
    logits = seen["x"] @ donor.W_U
    if getattr(donor, "b_U", None) is not None:
        logits = logits + donor.b_U
    values = metric(logits).float().cpu()
    return values if per_prompt else values.mean().item()


def patching_heads(pair: ModelPair, cells_per_forward: int = 8, seed: int = 0) -> pd.DataFrame:
    """Each head at all positions, both directions, over all prompts: `effect` (whole head output) and `effect_z`,
    with 95% bootstrap CIs over the prompts (`ci_low`/`ci_high`, `ci_low_z`/`ci_high_z`).

    Where the attention output passes a norm before the residual stream (Gemma 2/3), one head's output difference is
    not additive there: `effect` is left NaN (not computed) and `effect_z` is the per-head reading."""
    additive = not adapter_for(pair.base).post_attn_norm
    grid = [(layer, h) for layer in range(pair.n_layers) for h in range(pair.n_heads)]
    z_cells = [Cell(HEAD_HOOK, layer, head=h) for layer, h in grid]
    out_cells = [Cell(ATTN_OUT, layer, head=h, op="add") for layer, h in grid]
    rows = []
    n = len(pair.prompts)
    for direction, (recv_name, donor_name) in DIRECTIONS.items():
        receiver, donor = pair.model(recv_name), pair.model(donor_name)
        out_pp, z_pp = torch.full((len(grid), n), float("nan")), torch.empty(len(grid), n)  # per prompt
        recv_pp, donor_pp = torch.empty(n), torch.empty(n)
        for idx, tokens in pair.groups:  # groups of equal-length prompts, each prompt in its own column
            cache = run_cache(donor, tokens, sorted({c.name for c in z_cells}))  # donor hook_z, every layer
            if additive:
                deltas = head_output_deltas(receiver, donor, tokens, pair.n_layers, pair.n_heads, donor_cache=cache)
                out_pp[:, idx] = patch_sweep(receiver, deltas, tokens, out_cells, pair.metric, cells_per_forward,
                                             per_prompt=True)
            z_pp[:, idx] = patch_sweep(receiver, cache, tokens, z_cells, pair.metric, cells_per_forward,
                                       per_prompt=True)
            recv_pp[idx], donor_pp[idx] = clean_per_prompt(receiver, donor, tokens, pair.metric)
        recv_clean, donor_clean = recv_pp.mean().item(), donor_pp.mean().item()
        total_out, total_z = out_pp.mean(1), z_pp.mean(1)
        eff_out = _fraction(total_out, recv_clean, donor_clean)
        eff_z = _fraction(total_z, recv_clean, donor_clean)
        new = [{"direction": direction, "layer": layer, "head": h, "metric": total_out[i].item(),
                "effect": eff_out[i].item(), "metric_z": total_z[i].item(), "effect_z": eff_z[i].item()}
               for i, (layer, h) in enumerate(grid)]
        _with_ci(new, *recovery_ci(out_pp, recv_pp, donor_pp, seed))
        _with_ci(new, *recovery_ci(z_pp, recv_pp, donor_pp, seed), suffix="_z")
        rows += new
    return pd.DataFrame(rows)


def patching_head_pos(pair: ModelPair, heads: pd.DataFrame, top: int = 4, cells_per_forward: int = 8,
                      seed: int = 0) -> pd.DataFrame:
    """Head × position (whole head output) for the `top` heads by |effect| (tuned_to_base), both directions; where
    the head output is not additive (post-attention norm, see `patching_heads`) the head's hook_z at that position.
    `ci_low`/`ci_high`: 95% bootstrap CI over the main group's prompts."""
    additive = not adapter_for(pair.base).post_attn_norm
    col = "effect" if additive else "effect_z"
    chosen = heads[heads.direction == "tuned_to_base"].assign(a=lambda d: d[col].abs()).nlargest(top, "a")
    _, tokens = pair.main_group
    labels = _token_labels(pair, tokens)
    hook, op = (ATTN_OUT, "add") if additive else (HEAD_HOOK, "replace")
    cells = [Cell(hook, int(r.layer), head=int(r.head), pos=p, op=op) for r in chosen.itertuples()
             for p in range(pair.metric.prompt_length(tokens))]
    rows = []
    for direction, (recv_name, donor_name) in DIRECTIONS.items():
        receiver, donor = pair.model(recv_name), pair.model(donor_name)
        if additive:  # the head's output difference, added at the cell's position only
            deltas = head_output_deltas(receiver, donor, tokens, pair.n_layers, pair.n_heads)
            sources = {c.key: deltas[Cell(ATTN_OUT, c.layer, head=c.head, op="add").key] for c in cells}
        else:  # the donor's hook_z of that head at that position
            sources = run_cache(donor, tokens, sorted({c.name for c in cells}))
        recv_pp, donor_pp = clean_per_prompt(receiver, donor, tokens, pair.metric)
        recv_clean, donor_clean = recv_pp.mean().item(), donor_pp.mean().item()
        per_prompt = patch_sweep(receiver, sources, tokens, cells, pair.metric, cells_per_forward, per_prompt=True)
        patched = per_prompt.mean(1)
        new = [{"direction": direction, "layer": cell.layer, "head": cell.head, "pos": cell.pos,
                "token": labels[cell.pos], "metric": m, "effect": e}
               for cell, m, e in zip(cells, patched.tolist(), _fraction(patched, recv_clean, donor_clean).tolist(),
                                     strict=True)]
        _with_ci(new, *recovery_ci(per_prompt, recv_pp, donor_pp, seed))
        rows += new
    return pd.DataFrame(rows)
