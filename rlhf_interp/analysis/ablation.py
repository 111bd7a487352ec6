"""`ablation`: zero- and mean-ablation of every head (its hook_z) and every MLP layer (hook_mlp_out), in each model;
effect = mean metric with the component ablated minus the clean mean metric. Mean ablation replaces the activation
by its mean over the prompts and positions of the same model. Runs on the batched patching engine (each forward
starts at the ablated layer); a test checks it against one hooked forward per component."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.patching import HEAD_HOOK, LAYER_COMPONENTS, Cell, patch_sweep


@torch.no_grad()
def _means(model: Any, pair: ModelPair, names: list[str]) -> dict[str, Tensor]:
    sums: dict[str, Tensor] = {}
    count = 0
    wanted = set(names)
    for _, tokens in pair.prompt_groups():  # the prompts' own positions (not tokens a metric appends)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
        for name in names:
            sums[name] = sums.get(name, 0) + cache[name].sum((0, 1))
        count += tokens.shape[0] * tokens.shape[1]
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def ablation(pair: ModelPair) -> pd.DataFrame:
    """Every head (hook_z) and MLP layer (hook_mlp_out) zero- and mean-ablated alone, in each model, through the
    batched patching engine (the ablated value is the donor: `patch_sweep` with a constant source)."""
    n_layers, n_heads = pair.n_layers, pair.n_heads
    z_names = [HEAD_HOOK.format(L=L) for L in range(n_layers)]
    mlp_names = [LAYER_COMPONENTS["mlp_out"].format(L=L) for L in range(n_layers)]
    cells = [Cell(HEAD_HOOK, L, head=h) for L in range(n_layers) for h in range(n_heads)]
    cells += [Cell(LAYER_COMPONENTS["mlp_out"], L) for L in range(n_layers)]
    n = len(pair.prompts)
    rows = []
    for model_name in ("base", "tuned"):
        model = pair.model(model_name)
        means = _means(model, pair, z_names + mlp_names)
        clean = sum(pair.metric(model(t)).sum().item() for _, t in pair.groups) / n
        for kind in ("zero", "mean"):
            total = torch.zeros(len(cells))
            for idx, tokens in pair.groups:
                shape = tuple(tokens.shape)
                values = {k: (torch.zeros_like(v) if kind == "zero" else v).expand(*shape, *v.shape)
                          for k, v in means.items()}
                total += patch_sweep(model, values, tokens, cells, pair.metric) * len(idx)
            for cell, value in zip(cells, (total / n).tolist(), strict=True):
                rows.append({"layer": cell.layer, "head": cell.head,
                             "component": "mlp" if cell.head is None else "head", "model": model_name,
                             "kind": kind, "effect": value - clean})
    df = pd.DataFrame(rows)
    df["head"] = df["head"].astype("Int64")
    return df
