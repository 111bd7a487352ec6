"""`logit_lens`: the metric read out of the residual stream after every layer (final LayerNorm and unembedding applied
to the partial residual), for each model with its own cache and its own unembedding."""

from __future__ import annotations

import pandas as pd
import torch

from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.resid import eps_of, final_cache, ln_scale, read_out, unembed_direction


@torch.no_grad()
def logit_lens(pair: ModelPair) -> pd.DataFrame:
    if not pair.metric.linear:
        return pd.DataFrame(columns=["layer", "component", "model", "metric"])
    rows = []
    n_layers = pair.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{L}.hook_resid_post" for L in range(n_layers)]
    for model_name in ("base", "tuned"):
        model = pair.model(model_name)  # its own cache, its own unembedding (the seed read the wrong cache)
        direction, bias = unembed_direction(model, pair.metric)
        values = torch.zeros(len(pair.prompts), len(names))
        for idx, tokens in pair.groups:
            cache = final_cache(model, tokens, names)
            for j, name in enumerate(names):
                resid = cache[name][:, -1]
                values[idx, j] = (read_out(resid, ln_scale(resid, eps_of(model)), direction) + bias).cpu()
        for j in range(len(names)):
            rows.append({"layer": j - 1, "component": "embed" if j == 0 else "resid_post", "model": model_name,
                         "metric": values[:, j].mean().item()})
    df = pd.DataFrame(rows)
    delta = df[df.model == "tuned"].metric.to_numpy() - df[df.model == "base"].metric.to_numpy()
    extra = df[df.model == "base"].assign(model="delta", metric=delta)
    return pd.concat([df, extra], ignore_index=True)
