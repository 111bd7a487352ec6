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
    for _, tokens in pair.prompt_groups():
        _, cb = pair.base.run_with_cache(tokens, names_filter=lambda n: n in names)
        _, ct = pair.tuned.run_with_cache(tokens, names_filter=lambda n: n in names)
        for L, name in enumerate(names):
            js = js_divergence(cb[name][:, :, 1:], ct[name][:, :, 1:])  # (batch, head, query)
            total[L] += js.sum((0, 2)).cpu()
        count += tokens.shape[0] * (tokens.shape[1] - 1)
    total /= max(count, 1)
    return pd.DataFrame([{"layer": L, "head": h, "js_divergence": total[L, h].item()}
                         for L in range(pair.n_layers) for h in range(pair.n_heads)])


@torch.no_grad()
def attention_patterns(pair: ModelPair, diff: pd.DataFrame, top: int = 4, max_prompts: int = 16) -> pd.DataFrame:
    """The full attention patterns of the `top` heads that changed most (by JS divergence in `diff`), base and tuned,
    on the first `max_prompts` prompts: one row per (prompt, head, model, query, key<=query), for the report's
    explorable view."""
    heads = diff.nlargest(top, "js_divergence")[["layer", "head"]].astype(int).values.tolist()
    layers = sorted({L for L, _ in heads})
    names = {f"blocks.{L}.attn.hook_pattern" for L in layers}
    rows = []
    for idx, tokens in pair.prompt_groups():
        for b, i in enumerate(idx):
            if i >= max_prompts:
                continue
            ids = tokens[b : b + 1]
            strs = [pair.tokenizer.decode([t]) for t in ids[0].tolist()]
            for model in ("base", "tuned"):
                _, cache = pair.model(model).run_with_cache(ids, names_filter=lambda n: n in names)
                for L, h in heads:
                    pattern = cache[f"blocks.{L}.attn.hook_pattern"][0, h].float().cpu()
                    for q in range(pattern.shape[0]):
                        for k in range(q + 1):
                            rows.append({"prompt_index": i, "prompt": pair.prompts[i], "layer": L, "head": h,
                                         "model": model, "query": q, "key": k, "query_token": strs[q],
                                         "key_token": strs[k], "weight": pattern[q, k].item()})
    return pd.DataFrame(rows)
