"""`direction`: a sentiment direction per layer in each model — the difference of mean residuals (resid_post, last
token) between positive and negative review sentences (from the project's grammar, labelled by VADER) — the cosine
between the base and tuned directions, and the effect of patching only the component along the base direction:

    x_base + ((x_tuned - x_base) · u) u   at resid_post[layer], last position, u = unit base direction

reported as the fraction of the base→tuned metric gap it recovers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.sampling import prompt_token_ids


def labelled_sentences(n_per_class: int = 48, seed: int = 0) -> tuple[list[str], list[str]]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from rlhf_interp.embedded.corpus import generate_reviews

    analyzer = SentimentIntensityAnalyzer()
    pos: list[str] = []
    neg: list[str] = []
    for review in generate_reviews(20 * n_per_class, seed=seed + 777):
        first = review.split(". ")[0].rstrip(".!") + "."
        score = analyzer.polarity_scores(first)["compound"]
        if score > 0.5 and len(pos) < n_per_class:
            pos.append(first)
        elif score < -0.5 and len(neg) < n_per_class:
            neg.append(first)
    return pos, neg


@torch.no_grad()
def _mean_resid(model: Any, tokenizer: Any, texts: list[str], n_layers: int) -> Tensor:
    """Mean resid_post at the last token over `texts`: (layer, d_model)."""
    names = [f"blocks.{L}.hook_resid_post" for L in range(n_layers)]
    groups: dict[int, list[list[int]]] = defaultdict(list)
    for t in texts:
        ids = prompt_token_ids(tokenizer, t)
        groups[len(ids)].append(ids)
    total = 0
    for seqs in groups.values():
        tokens = torch.tensor(seqs, device=model.W_U.device)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        total = total + torch.stack([cache[n][:, -1].sum(0) for n in names])
    return total / len(texts)


@torch.no_grad()
def direction(pair: ModelPair, seed: int = 0) -> pd.DataFrame:
    pos, neg = labelled_sentences(seed=seed)
    n_layers = pair.n_layers
    dirs = {m: _mean_resid(pair.model(m), pair.tokenizer, pos, n_layers)
            - _mean_resid(pair.model(m), pair.tokenizer, neg, n_layers) for m in ("base", "tuned")}
    _, tokens = pair.main_group
    last = pair.metric.prompt_length(tokens) - 1  # the last prompt position (logprob_diff appends words after it)
    names = [f"blocks.{L}.hook_resid_post" for L in range(n_layers)]
    _, tuned_cache = pair.tuned.run_with_cache(tokens, names_filter=lambda n: n in names)
    _, base_cache = pair.base.run_with_cache(tokens, names_filter=lambda n: n in names)
    base_metric = pair.metric(pair.base(tokens)).mean().item()
    gap = pair.metric(pair.tuned(tokens)).mean().item() - base_metric
    rows = []
    for L in range(n_layers):
        u = dirs["base"][L] / dirs["base"][L].norm()
        name = names[L]
        diff = tuned_cache[name][:, last] - base_cache[name][:, last]  # (batch, d_model)

        def hook(act: Tensor, hook: Any = None, diff: Tensor = diff, u: Tensor = u) -> Tensor:
            act[:, last] = act[:, last] + (diff @ u).unsqueeze(-1) * u
            return act

        patched = pair.metric(pair.base.run_with_hooks(tokens, fwd_hooks=[(name, hook)])).mean().item()
        cos = torch.nn.functional.cosine_similarity(dirs["base"][L], dirs["tuned"][L], dim=0).clamp(-1, 1).item()
        rows.append({"layer": L, "cosine_base_tuned": cos, "norm_base": dirs["base"][L].norm().item(),
                     "norm_tuned": dirs["tuned"][L].norm().item(),
                     "projection_shift": (diff @ u).mean().item(),
                     "patch_along_direction_effect": (patched - base_metric) / gap if abs(gap) > 1e-9 else float("nan"),
                     "n_positive": len(pos), "n_negative": len(neg)})
    return pd.DataFrame(rows)
