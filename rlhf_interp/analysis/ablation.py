"""`ablation`: every head (its output) and every MLP layer (hook_mlp_out) ablated alone, in each model; effect =
mean metric with the component ablated minus the clean mean metric, with a 95% bootstrap CI over prompts
(`ci_low`, `ci_high`; `bootstrap`).

What replaces the activation (`kind`; the column `baseline` says what was used, `n_prompts` over how many prompts the
effect is averaged):

- `zero`: 0 at every position (BOS included: the classic zero ablation, which is off-distribution).
- `mean`: at every position after BOS, the mean of that activation *at the same position* over the prompts of the
  same token length (the prompts line up position by position), in the same model. The BOS position is left as it
  is: it is the same token at the same place in every prompt, so its mean is itself, and averaging it into the other
  positions (the old pooled mean) mixes the attention-sink activation into them. A prompt whose length no other
  prompt shares falls back to the pooled mean over every non-BOS position of every prompt (said in `baseline`).
- `resample`: the activation at every position after BOS taken from another prompt of the same length (a seeded
  random derangement, averaged over `RESAMPLE_DRAWS` draws); prompts whose length no other prompt shares are left
  out (`n_prompts` counts the rest).

Heads are ablated by adding (ablated z − z) W_O to the attention output, so the BOS position is not touched at all;
where head outputs do not add (a post-attention norm, Gemma 2/3) hook_z itself is replaced. Runs on the batched
patching engine (each forward starts at the ablated layer); a test checks it against one hooked forward per
component.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.arch import adapter_for
from rlhf_interp.analysis.bootstrap import mean_ci
from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.patching import ATTN_OUT, HEAD_HOOK, LAYER_COMPONENTS, Cell, patch_sweep, run_cache

KINDS = ("zero", "mean", "resample")
RESAMPLE_DRAWS = 3
MLP_HOOK = LAYER_COMPONENTS["mlp_out"]


def first_real_position(pair: ModelPair) -> int:
    """1 when every prompt starts with the BOS token (positions from 1 on are the prompt's own), else 0."""
    bos = getattr(pair.tokenizer, "bos_token_id", None)
    if bos is None:
        return 0
    return int(all(bool((tokens[:, 0] == bos).all()) for _, tokens in pair.groups))


def _activations(model: Any, pair: ModelPair, names: list[str]) -> list[dict[str, Tensor]]:
    """`model`'s activations `names` on each prompt group (one dict per group, in `pair.groups` order)."""
    out = []
    for _, tokens in pair.groups:
        cache = run_cache(model, tokens, names)
        out.append({name: cache[name] for name in names})
    return out


def replacements(acts: list[Tensor], kind: str, first: int, rng: np.random.Generator | None = None,
                 metric: Any = None) -> list[Tensor | None]:
    """What replaces one activation, per prompt group: acts[g] (batch, pos, ...) -> (batch, pos, ...), equal to
    acts[g] at the positions before `first` (BOS is never ablated, except by `zero`); None for a group that `resample`
    cannot serve (a single prompt). `mean`: the per-position mean over the group where it has ≥ 2 prompts, else the
    pooled mean over every position from `first` on of every group. `resample`: a random derangement of the group's
    prompts (from `rng`).

    With `metric`, its rows and positions: under `logprob_diff` a prompt has one row per word (prompt + that word),
    so means and derangements run over the prompts word by word (the rows of one word line up position by position,
    appended positions included), and the pooled fallback averages the prompts' own positions only."""
    if kind == "zero":
        return [torch.zeros_like(a) for a in acts]
    rows = 1 if metric is None else int(getattr(metric, "rows_per_prompt", 1))
    out: list[Tensor | None] = []
    if kind == "mean":
        end = (lambda a: a.shape[1]) if metric is None else metric.prompt_length
        total = sum(a[::rows, first : end(a)].sum((0, 1)) for a in acts)
        pooled = total / sum(a.shape[0] // rows * (end(a) - first) for a in acts)
        for a in acts:
            by_prompt = a.view(a.shape[0] // rows, rows, *a.shape[1:])  # (prompt, word row, pos, ...)
            if by_prompt.shape[0] >= 2:
                value = by_prompt.mean(0, keepdim=True).expand_as(by_prompt).reshape(a.shape)
            else:
                value = pooled
            new = value.expand_as(a).clone()
            new[:, :first] = a[:, :first]
            out.append(new)
        return out
    if kind == "resample":
        assert rng is not None
        for a in acts:
            n = a.shape[0] // rows
            if n < 2:
                out.append(None)
                continue
            order = rng.permutation(n)
            donor = np.empty_like(order)
            donor[order] = np.roll(order, -1)  # a random cycle: no prompt is its own donor
            by_prompt = a.view(n, rows, *a.shape[1:])
            new = by_prompt[torch.as_tensor(donor, device=a.device)].reshape(a.shape).clone()
            new[:, :first] = a[:, :first]
            out.append(new)
        return out
    raise ValueError(f"unknown ablation kind {kind!r}")


def _baseline(kind: str, groups: list[int], first: int) -> str:
    """The `baseline` column: what replaced the activation, and the fallback where prompts do not line up."""
    single = sum(1 for b in groups if b < 2)
    bos = "after BOS" if first else "every position"
    if kind == "zero":
        return "zero, every position"
    if kind == "mean":
        text = f"per-position mean over prompts of equal length, {bos}"
        return text + (f"; pooled mean of every non-BOS position for {single} unaligned prompt(s)" if single else "")
    text = f"another prompt of equal length, same positions, {bos} ({RESAMPLE_DRAWS} draws)"
    return text + (f"; {single} unaligned prompt(s) left out" if single else "")


@torch.no_grad()
def ablation(pair: ModelPair, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> pd.DataFrame:
    """Every head and MLP layer ablated alone (`kinds` of `KINDS`), in each model, through the batched patching
    engine (the ablated value is the donor: `patch_sweep` with a constant source per prompt)."""
    n_layers, n_heads = pair.n_layers, pair.n_heads
    additive = not adapter_for(pair.base).post_attn_norm
    z_names = [HEAD_HOOK.format(L=L) for L in range(n_layers)]
    mlp_names = [MLP_HOOK.format(L=L) for L in range(n_layers)]
    grid = [(L, h) for L in range(n_layers) for h in range(n_heads)] + [(L, None) for L in range(n_layers)]
    if additive:  # head output difference added to the attention output: BOS untouched exactly
        cells = [Cell(ATTN_OUT, L, head=h, op="add") for L, h in grid if h is not None]
    else:
        cells = [Cell(HEAD_HOOK, L, head=h) for L, h in grid if h is not None]
    cells += [Cell(MLP_HOOK, L, op="add") for L in range(n_layers)]
    n, first = len(pair.prompts), first_real_position(pair)
    sizes = [len(idx) for idx, _ in pair.groups]
    rows = []
    for model_name in ("base", "tuned"):
        model = pair.model(model_name)
        acts = _activations(model, pair, z_names + mlp_names)
        clean = torch.empty(n)
        for idx, tokens in pair.groups:
            clean[idx] = pair.metric(model(tokens)).float().cpu()
        for kind in kinds:
            draws = RESAMPLE_DRAWS if kind == "resample" else 1
            ablated = torch.zeros(len(cells), n)
            for k in range(draws):
                # one generator per activation, seeded alike: every component of a prompt takes the same donor
                new = {name: replacements([a[name] for a in acts], kind, first, np.random.default_rng([seed, k]),
                                          pair.metric) for name in z_names + mlp_names}
                for g, (idx, tokens) in enumerate(pair.groups):
                    if new[z_names[0]][g] is None:
                        ablated[:, idx] = float("nan")
                        continue
                    sources = _sources(model, cells, {name: (v[g], acts[g][name]) for name, v in new.items()})
                    ablated[:, idx] += patch_sweep(model, sources, tokens, cells, pair.metric, per_prompt=True) / draws
            diff = ablated - clean  # (cells, n): each prompt's effect
            keep = ~diff[0].isnan()
            diff = diff[:, keep]
            low, high = mean_ci(diff, seed)
            baseline = _baseline(kind, sizes, first)
            if kind != "zero" and getattr(pair.metric, "rows_per_prompt", 1) > 1:
                baseline += "; logprob_diff rows word by word (the same word after the other prompts)"
            for i, cell in enumerate(cells):
                rows.append({"layer": cell.layer, "head": cell.head,
                             "component": "mlp" if cell.hook == MLP_HOOK else "head", "model": model_name,
                             "kind": kind, "effect": diff[i].mean().item(), "ci_low": float(low[i]),
                             "ci_high": float(high[i]), "n_prompts": int(keep.sum()), "baseline": baseline})
    df = pd.DataFrame(rows)
    df["head"] = df["head"].astype("Int64")
    return df


def _sources(model: Any, cells: list[Cell], values: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Each cell's source for `patch_sweep`: the replacement hook_z (non-additive heads), or the difference the
    ablation adds, (new z_h − z_h) W_O_h for a head, new − clean for an MLP output. `values`: name -> (new, clean)."""
    out = {}
    W_O = model.W_O  # the bridge stacks every block's W_O on each read: once (22 ms a read on SmolLM2)
    for cell in cells:
        if cell.hook == HEAD_HOOK:
            out[cell.key] = values[cell.name][0]
            continue
        if cell.hook == MLP_HOOK:
            new, old = values[cell.name]
            out[cell.key] = new - old
            continue
        new, old = values[HEAD_HOOK.format(L=cell.layer)]
        h = cell.head
        out[cell.key] = (new[:, :, h] - old[:, :, h]) @ W_O[cell.layer, h]
    return out
