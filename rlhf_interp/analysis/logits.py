"""`logit_diff`: the metric per prompt for base, tuned and delta, with bootstrap CIs of the mean; `token_shift`: the
next-token log-probs that rose and fell most from base to tuned, averaged over the prompts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rlhf_interp.analysis.pair import ModelPair, metric_per_prompt


def bootstrap_ci(values: np.ndarray, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def logit_diff(pair: ModelPair, seed: int = 0) -> pd.DataFrame:
    base = metric_per_prompt(pair.base, pair).numpy()
    tuned = metric_per_prompt(pair.tuned, pair).numpy()
    values = {"base": base, "tuned": tuned, "delta": tuned - base}
    rows = []
    for model, v in values.items():
        for i, prompt in enumerate(pair.prompts):
            rows.append({"prompt": prompt, "model": model, "metric": float(v[i]), "ci_low": np.nan, "ci_high": np.nan})
        low, high = bootstrap_ci(v, seed)
        rows.append({"prompt": "(mean)", "model": model, "metric": float(v.mean()), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


@torch.no_grad()
def token_shift(pair: ModelPair, top: int = 25) -> pd.DataFrame:
    """Mean over prompts of log p_tuned(token) - log p_base(token) at the next-token position."""
    total = torch.zeros(pair.base.cfg.d_vocab)
    base_lp = torch.zeros_like(total)
    for _, prompt_tokens in pair.prompt_groups():
        lb = pair.base(prompt_tokens)[:, -1].float().log_softmax(-1)
        lt = pair.tuned(prompt_tokens)[:, -1].float().log_softmax(-1)
        total += (lt - lb).sum(0).cpu()
        base_lp += lb.sum(0).cpu()
    total /= len(pair.prompts)
    base_lp /= len(pair.prompts)
    order = total.argsort()
    rows = []
    for direction, ids in (("rose", order.flip(0)[:top]), ("fell", order[:top])):
        for rank, i in enumerate(ids.tolist()):
            rows.append({"direction": direction, "rank": rank, "token_id": i, "token": pair.tokenizer.decode([i]),
                         "delta_logprob": total[i].item(), "base_logprob": base_lp[i].item(),
                         "tuned_logprob": (base_lp[i] + total[i]).item()})
    return pd.DataFrame(rows)
