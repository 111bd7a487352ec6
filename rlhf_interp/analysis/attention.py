"""`attention_diff`: per head, the mean Jensen–Shannon divergence (nats, in [0, ln 2]) between the base and tuned
attention patterns over all query positions of all prompts (query 0 attends only to itself and is skipped)."""

from __future__ import annotations

import math

import pandas as pd
import torch

from rlhf_interp.analysis.pair import ModelPair


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    m = 0.5 * (p + q)
    kl_pm = (p * ((p + eps) / (m + eps)).log()).sum(-1)
    kl_qm = (q * ((q + eps) / (m + eps)).log()).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).clamp(0.0, math.log(2))  # 0 <= JS <= ln 2 (rounding can step out)


@torch.no_grad()
def attention_diff(pair: ModelPair) -> pd.DataFrame:
    names = [f"blocks.{L}.attn.hook_pattern" for L in range(pair.n_layers)]
    total = torch.zeros(pair.n_layers, pair.n_heads)
    count = 0
    for _, tokens in pair.groups:
        _, cb = pair.base.run_with_cache(tokens, names_filter=lambda n: n in names)
        _, ct = pair.tuned.run_with_cache(tokens, names_filter=lambda n: n in names)
        for L, name in enumerate(names):
            js = js_divergence(cb[name][:, :, 1:], ct[name][:, :, 1:])  # (batch, head, query)
            total[L] += js.sum((0, 2)).cpu()
        count += tokens.shape[0] * (tokens.shape[1] - 1)
    total /= max(count, 1)
    return pd.DataFrame([{"layer": L, "head": h, "js_divergence": total[L, h].item()}
                         for L in range(pair.n_layers) for h in range(pair.n_heads)])
