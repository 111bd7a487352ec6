"""`direction`: the direction in which RLHF moved the residual stream where the metric is read, and how much of the
metric gap it carries, beside two baselines in the same table.

Per layer L, at resid_post[L] and the position(s) the metric reads (the last prompt token; target:TEXT: the last
len(TEXT) positions; logprob_diff: the last prompt token, in every word's row, the metric read from the patched
forward over the prompt + word rows), on every prompt:

- fitted direction u: the unit mean of the activation difference x_tuned − x_base over the prompts. Its recovery is
  *held out*: the prompts are split in two seeded folds and each prompt is patched with the u fitted on the other
  fold (with fewer than 4 prompts: in-sample, `held_out` False). `cosine_readout` is the cosine of u (fitted on all
  prompts) with the base model's metric read-out direction in the residual stream (the metric's unembedding
  direction, final-norm gain folded in; NaN for a non-linear metric); `share_along` the fraction of Σ‖x_t − x_b‖²
  (over prompts and positions) that lies along the held-out u; `patch_norm` the mean |(x_t − x_b)·u|.
- the baselines: `full_difference` (x_base → x_tuned at those positions: the most any patch there can do) and
  `random_direction`: each prompt moved by the same signed amount as along u, (x_t − x_b)·u, but along a random unit
  direction (`n_draws` seeded draws; centred where the model's norm centres): `recovery` is the mean over draws,
  `recovery_sd` their standard deviation. A direction that matters recovers far more than the random ones.

Patching runs base with the change added at those positions (tuned_to_base); `recovery` is the normalised fraction
of the gap, (metric_patched − metric_base) / (metric_tuned − metric_base), over all prompts. The patched forwards run
on the patching engine (analysis/patching.py): on the models its fused forward covers, only the positions read are
recomputed from layer L + 1 on, every layer's copies in one staggered pass; elsewhere hooked full forwards.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.arch import adapter_for
from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.patching import (
    LAYER_COMPONENTS,
    Cell,
    metric_positions,
    patch_sweep,
    rows_per_prompt,
    run_cache,
)
from rlhf_interp.analysis.resid import unembed_direction

N_RANDOM = 32
RESID = "blocks.{L}.hook_resid_post"
MLP_OUT = LAYER_COMPONENTS["mlp_out"]


def _span(pair: ModelPair, tokens: Tensor, k: int) -> slice:
    """The k positions read (the last k; logprob_diff: the last prompt position, where its rows, one per word, still
    agree, and where its first token is read)."""
    end = pair.metric.prompt_length(tokens) if rows_per_prompt(pair.metric) > 1 else tokens.shape[1]
    return slice(end - k, end)


def _differences(pair: ModelPair, k: int) -> list[Tensor]:
    """Per prompt group: x_tuned − x_base at resid_post of every layer, last k positions: (layer, batch, k, d)."""
    names = [RESID.format(L=L) for L in range(pair.n_layers)]
    out = []
    for _, tokens in pair.groups:
        cb, ct = run_cache(pair.base, tokens, names), run_cache(pair.tuned, tokens, names)
        at, rows = _span(pair, tokens, k), rows_per_prompt(pair.metric)  # one row per prompt
        out.append(torch.stack([ct[n][::rows, at] - cb[n][::rows, at] for n in names]).float())
    return out


def _unit(v: Tensor) -> Tensor:
    n = v.norm()
    return v / n if n > 1e-8 else torch.full_like(v, float("nan"))


def fit_directions(diffs: list[Tensor], prompts: list[Tensor] | None = None) -> Tensor:
    """Unit mean difference per layer, (layer, d): over all prompts, or over the prompts `prompts` marks per group
    (boolean masks over each group's batch); NaN where the mean difference is ~0."""
    total, count = 0.0, 0
    for g, d in enumerate(diffs):
        keep = d if prompts is None else d[:, prompts[g]]
        total = total + keep.sum(dim=(1, 2))
        count += keep.shape[1] * keep.shape[2]
    mean = total / max(count, 1)
    return torch.stack([_unit(m) for m in mean])


class _Added:
    """The sources of `_patched_metrics`' cells, built when the sweep reads them: key -> (rows, pos, d), zero except
    at the positions `at`, which hold one copy's delta (one row per prompt, repeated over its `rows` token rows)."""

    def __init__(self, shape: tuple[int, ...], at: slice, rows: int, dtype: torch.dtype) -> None:
        self.shape, self.at, self.rows, self.dtype = shape, at, rows, dtype
        self.deltas: dict[str, Tensor] = {}

    def __getitem__(self, key: str) -> Tensor:
        out = torch.zeros(self.shape, dtype=self.dtype, device=self.deltas[key].device)
        out[:, self.at] = self.deltas[key].repeat_interleave(self.rows, 0).to(self.dtype)
        return out


@torch.no_grad()
def _patched_metrics(pair: ModelPair, deltas: dict[int, list[Tensor]], chunk: int) -> dict[int, Tensor]:
    """Mean metric over all prompts, per layer L and copy c, with deltas[L][g][c] (batch, k, d) added at
    resid_post[L], last k positions, of group g: {L: (copies,)}. resid_post[L] = resid_mid[L] + mlp_out[L], so the
    delta is added to hook_mlp_out (which every layer has, the last included) through the patching engine: on models
    it covers only the positions read are recomputed, from layer L + 1 on (their keys and values are the only ones
    that change); elsewhere hooked forwards, `chunk` copies per forward."""
    totals = {L: torch.zeros(per_group[0].shape[0]) for L, per_group in deltas.items()}
    dtype = pair.base.W_E.dtype
    for g, (_, tokens) in enumerate(pair.groups):
        k = next(iter(deltas.values()))[g].shape[2]
        at = _span(pair, tokens, k)
        sources = _Added((*tokens.shape, pair.base.cfg.d_model), at, rows_per_prompt(pair.metric), dtype)
        cells = []
        for L, per_group in deltas.items():
            for c in range(per_group[g].shape[0]):
                cell = Cell(MLP_OUT, L, pos=at.start if k == 1 else None, op="add", copy=c)
                sources.deltas[cell.key] = per_group[g][c]
                cells.append(cell)
        values = patch_sweep(pair.base, sources, tokens, cells, pair.metric, chunk, per_prompt=True).sum(1)
        for i, cell in enumerate(cells):
            totals[cell.layer][cell.copy] += values[i].item()
    return {L: t / len(pair.prompts) for L, t in totals.items()}


def _folds(pair: ModelPair, gen: torch.Generator) -> tuple[list[list[Tensor]], bool]:
    """Per fold, per group: boolean mask of the prompts *in* that fold (two seeded folds, or one with < 4 prompts)."""
    n = len(pair.prompts)
    if n < 4:
        return [[torch.ones(len(idx), dtype=torch.bool) for idx, _ in pair.groups]], False
    fold_of = torch.zeros(n, dtype=torch.long)
    fold_of[torch.randperm(n, generator=gen)[: n // 2]] = 1
    return [[fold_of[idx] == f for idx, _ in pair.groups] for f in (0, 1)], True


@torch.no_grad()
def direction(pair: ModelPair, seed: int = 0, n_random: int = N_RANDOM, chunk: int = 34) -> pd.DataFrame:
    """The table described in the module docstring: per layer, fitted_direction / full_difference / random_direction.
    `chunk`: patched copies of the prompts per forward."""
    k = 1 if rows_per_prompt(pair.metric) > 1 else metric_positions(pair.metric)
    arch = adapter_for(pair.base)
    gen = torch.Generator().manual_seed(seed)
    diffs = _differences(pair, k)
    folds, held_out = _folds(pair, gen)
    u_all = fit_directions(diffs)
    # per fold: the direction fitted on the *other* fold's prompts (the same one when there is a single fold)
    u_fold = [fit_directions(diffs, folds[1 - f] if held_out else folds[f]) for f in range(len(folds))]
    part = pair.metric.linear_part()  # logprob_diff: its first-token term, read at the last prompt position
    readout = unembed_direction(pair.base, part)[0].float() if part is not None else None
    base_m = sum(pair.metric(pair.base(t)).float().sum().item() for _, t in pair.groups) / len(pair.prompts)
    tuned_m = sum(pair.metric(pair.tuned(t)).float().sum().item() for _, t in pair.groups) / len(pair.prompts)
    gap = tuned_m - base_m

    def recovery(m: Tensor) -> Tensor:
        return (m - base_m) / gap if abs(gap) > 1e-9 else torch.full_like(m, float("nan"))

    rows: list[dict[str, Any]] = []
    d_model = diffs[0].shape[-1]
    nan = float("nan")
    deltas_of: dict[int, list[Tensor]] = {}  # per layer, per group: (copies, batch, k, d), patched after the loop
    for L in range(pair.n_layers):
        common = {"layer": L, "positions": k, "n_prompts": len(pair.prompts), "held_out": held_out}
        full = [d[L] for d in diffs]  # (batch, k, d) per group
        diff_norm = torch.cat([f.norm(dim=-1).flatten() for f in full]).mean().item()
        if u_all[L].isnan().any():  # no mean change at this layer: no direction to fit
            deltas_of[L] = [f.unsqueeze(0) for f in full]
            rows.append({**common, "method": "full_difference", "recovery": (L, 0), "recovery_sd": nan,
                         "n_draws": 0, "cosine_readout": nan, "share_along": 1.0, "patch_norm": diff_norm,
                         "diff_norm": diff_norm})
            for method in ("fitted_direction", "random_direction"):
                rows.append({**common, "method": method, "recovery": nan, "recovery_sd": nan, "n_draws": 0,
                             "cosine_readout": nan, "share_along": nan, "patch_norm": 0.0, "diff_norm": diff_norm})
            continue
        # per group: each prompt's held-out direction (batch, d) and its coefficient (x_t − x_b)·u (batch, k)
        u_rows = [torch.stack([u_fold[next(f for f in range(len(folds)) if folds[f][g][i])][L]
                               for i in range(full[g].shape[0])]) for g in range(len(full))]
        coef = [torch.einsum("bkd,bd->bk", f, u) for f, u in zip(full, u_rows, strict=True)]
        r = torch.randn(n_random, d_model, generator=gen)
        if arch.centres:  # the residual of a centring model has no component along the all-ones direction
            r = r - r.mean(-1, keepdim=True)
        r = (r / r.norm(dim=-1, keepdim=True)).to(full[0].device)
        # copies: 0 = full difference, 1 = along u, 2.. = the same amounts along random directions
        deltas_of[L] = [torch.cat([f.unsqueeze(0), (c.unsqueeze(-1) * u.unsqueeze(1)).unsqueeze(0),
                                   c[None, :, :, None] * r[:, None, None, :]])
                        for f, c, u in zip(full, coef, u_rows, strict=True)]
        cos_ro = (torch.nn.functional.cosine_similarity(u_all[L], readout.to(u_all), dim=0).item()
                  if readout is not None else nan)
        share = (torch.cat([c.flatten() ** 2 for c in coef]).sum()
                 / torch.cat([f.pow(2).sum(-1).flatten() for f in full]).sum()).item()
        patch_norm = torch.cat([c.abs().flatten() for c in coef]).mean().item()
        rows += [{**common, "method": "fitted_direction", "recovery": (L, 1), "recovery_sd": nan, "n_draws": 0,
                  "cosine_readout": cos_ro, "share_along": share, "patch_norm": patch_norm, "diff_norm": diff_norm},
                 {**common, "method": "full_difference", "recovery": (L, 0), "recovery_sd": nan, "n_draws": 0,
                  "cosine_readout": cos_ro, "share_along": 1.0, "patch_norm": diff_norm, "diff_norm": diff_norm},
                 {**common, "method": "random_direction", "recovery": (L, slice(2, None)), "recovery_sd": nan,
                  "n_draws": n_random, "cosine_readout": nan,
                  "share_along": nan, "patch_norm": patch_norm, "diff_norm": diff_norm}]
    rec = {L: recovery(m) for L, m in _patched_metrics(pair, deltas_of, chunk).items()}
    for row in rows:  # (layer, copy or copies) -> the recovery; over the random copies: mean and sd
        if isinstance(row["recovery"], tuple):
            L, sel = row["recovery"]
            if isinstance(sel, slice):
                row["recovery"], row["recovery_sd"] = rec[L][sel].mean().item(), rec[L][sel].std().item()
            else:
                row["recovery"] = rec[L][sel].item()
    cols = ["layer", "method", "recovery", "recovery_sd", "n_draws", "cosine_readout", "share_along", "patch_norm",
            "diff_norm", "positions", "n_prompts", "held_out"]
    return pd.DataFrame(rows)[cols]
