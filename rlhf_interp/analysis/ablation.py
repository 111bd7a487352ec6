"""`ablation`: zero- and mean-ablation of every head (its hook_z) and every MLP layer (hook_mlp_out), in each model;
effect = mean metric with the component ablated minus the clean mean metric. Mean ablation replaces the activation
by its mean over the prompts and positions of the same model."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.pair import ModelPair


@torch.no_grad()
def _means(model: Any, pair: ModelPair, names: list[str]) -> dict[str, Tensor]:
    sums: dict[str, Tensor] = {}
    count = 0
    wanted = set(names)
    for _, tokens in pair.groups:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
        for name in names:
            sums[name] = sums.get(name, 0) + cache[name].sum((0, 1))
        count += tokens.shape[0] * tokens.shape[1]
    return {k: v / count for k, v in sums.items()}


@torch.no_grad()
def ablation(pair: ModelPair) -> pd.DataFrame:
    rows = []
    n_layers, n_heads = pair.n_layers, pair.n_heads
    z_names = [f"blocks.{L}.attn.hook_z" for L in range(n_layers)]
    mlp_names = [f"blocks.{L}.hook_mlp_out" for L in range(n_layers)]
    n = len(pair.prompts)
    for model_name in ("base", "tuned"):
        model = pair.model(model_name)
        means = _means(model, pair, z_names + mlp_names)
        clean = sum(pair.metric(model(t)).sum().item() for _, t in pair.groups) / n
        for kind in ("zero", "mean"):
            targets = [(L, h, z_names[L]) for L in range(n_layers) for h in range(n_heads)]
            targets += [(L, None, mlp_names[L]) for L in range(n_layers)]
            for layer, head, name in targets:
                value = torch.zeros_like(means[name]) if kind == "zero" else means[name]

                def hook(act: Tensor, hook: Any = None, head: int | None = head, value: Tensor = value) -> Tensor:
                    if head is None:
                        act[:] = value
                    else:
                        act[:, :, head] = value[head]
                    return act

                total = 0.0
                for _, tokens in pair.groups:
                    logits = model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])
                    total += pair.metric(logits).sum().item()
                rows.append({"layer": layer, "head": head, "component": "mlp" if head is None else "head",
                             "model": model_name, "kind": kind, "effect": total / n - clean})
    df = pd.DataFrame(rows)
    df["head"] = df["head"].astype("Int64")
    return df
