"""`logit_lens`: the metric read out of the residual stream after every layer (final norm and unembedding applied
to the partial residual), for each model with its own cache and its own read-out; plus the delta split into the
residual's own change (`delta_activation`: both residuals read through the same read-out) and the read-out's
change (`delta_readout`: one residual read through both read-outs), averaged over the two orders (midpoint /
Shapley), so that delta_activation + delta_readout = delta exactly. Where along the depth the residual streams part
is `delta_activation`; `delta` alone mixes it with the tuned unembedding."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.arch import adapter_for
from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.analysis.resid import eps_of, final_cache, ln_scale, read_out, unembed_direction


@torch.no_grad()
def _residuals(model: Any, pair: ModelPair, names: list[str]) -> Tensor:
    out = None
    for idx, tokens in pair.groups:
        cache = final_cache(model, tokens, names)
        stack = torch.stack([cache[n][:, -1] for n in names], 1).cpu()  # (batch, n_names, d_model)
        if out is None:
            out = torch.zeros(len(pair.prompts), len(names), stack.shape[-1])
        out[idx] = stack
    assert out is not None
    return out


@torch.no_grad()
def logit_lens(pair: ModelPair) -> pd.DataFrame:
    """On `logprob_diff` the lens reads its first-token term (column `term` = first_token; `Metric.linear_part`);
    on a metric with no linear part the table is empty."""
    view = pair.linear_view()
    if view is None:
        return pd.DataFrame(columns=["layer", "component", "model", "metric"])
    df = _logit_lens(view)
    if view is not pair:
        df["term"] = "first_token"
    return df


def _logit_lens(pair: ModelPair) -> pd.DataFrame:
    n_layers = pair.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{L}.hook_resid_post" for L in range(n_layers)]
    centre = adapter_for(pair.base).centres
    resid = {m: _residuals(pair.model(m), pair, names) for m in ("base", "tuned")}  # its own cache
    reads = {m: unembed_direction(pair.model(m), pair.metric) for m in ("base", "tuned")}
    eps = eps_of(pair.base)

    def f(a: str, r: str) -> Tensor:  # (n, n_names): residual of model a through the read-out of model r
        x = resid[a]
        direction, bias = reads[r]
        return read_out(x, ln_scale(x, eps, centre), direction.cpu(), centre) + bias

    bb, tt, tb, bt = f("base", "base"), f("tuned", "tuned"), f("tuned", "base"), f("base", "tuned")
    values = {"base": bb, "tuned": tt, "delta": tt - bb, "delta_activation": 0.5 * ((tb - bb) + (tt - bt)),
              "delta_readout": 0.5 * ((bt - bb) + (tt - tb)),
              "base_resid_tuned_readout": bt, "tuned_resid_base_readout": tb}
    rows = []
    for model_name, v in values.items():
        for j in range(len(names)):
            rows.append({"layer": j - 1, "component": "embed" if j == 0 else "resid_post", "model": model_name,
                         "metric": v[:, j].mean().item()})
    return pd.DataFrame(rows)
