"""`amplification`: logit-diff amplification (Aranguri & McGrath 2025). Sample from

    logits_amp = logits_tuned + α · (logits_tuned − logits_base)

for a small grid of α (α = 0 is plain tuned sampling, token for token with the same seed), and per α report the reward,
distinct-n, KL(sampler ‖ tuned) and KL(sampler ‖ base), and the tokens whose frequency rises most against the tuned
samples: behaviours the tuned model shows rarely become frequent.

Both plain HF models are stepped in lockstep with a KV cache, in the same batch layout and with the same random stream
as `rlhf_interp.sampling.sample`, so α = 0 reproduces `sample_seeded(tuned, ...)` exactly. Temperature 1, no top-k/p.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.rewards import check_scores, get_reward
from rlhf_interp.sampling import (
    cache_keyword,
    check_fits_context,
    encode_prompts,
    pad_id,
    position_ids_from_mask,
    truncate_at_eos,
)
from rlhf_interp.text_stats import distinct_n

ALPHAS = (0.0, 0.5, 1.0, 2.0)


@torch.no_grad()
def lockstep_sample(
    models: Sequence[Any],
    combine: Callable[[list[Tensor]], Tensor],
    tokenizer: Any,
    prompts: list[str],
    new_tokens: int,
    seed: int,
    kl_against: Sequence[int] = (),
) -> dict[str, Any]:
    """Sample from `combine([last-position logits of each model])` with a KV cache per model entry.

    `models` may repeat one module (e.g. the same model with a hook switched on and off by a wrapper): each entry keeps
    its own cache. Returns response ids and mask (as `sample`), the decoded texts and, for each index in `kl_against`,
    the per-token KL(sampler ‖ that model) (batch, new_tokens).
    """
    device = next(models[0].parameters()).device
    query_ids, query_mask = encode_prompts(tokenizer, prompts, device)
    check_fits_context(models[0], prompts, query_mask.sum(-1).tolist(), new_tokens)
    gen = torch.Generator(device=device).manual_seed(seed)
    batch = query_ids.shape[0]
    attention_mask = query_mask.long()
    position_ids = position_ids_from_mask(query_mask)
    input_ids = query_ids
    pasts: list[Any] = [None] * len(models)
    tokens, kls = [], {i: [] for i in kl_against}
    for _ in range(new_tokens):
        logits_each = []
        for j, m in enumerate(models):
            kw = cache_keyword(getattr(m, "steer_inner", m))
            out = m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                    **{kw: pasts[j]})
            pasts[j] = getattr(out, kw)
            logits_each.append(out.logits[:, -1, :].float())
        logprobs = combine(logits_each).log_softmax(-1)
        token = torch.multinomial(logprobs.exp(), 1, generator=gen)
        tokens.append(token)
        for i in kl_against:
            ref = logits_each[i].log_softmax(-1)
            kls[i].append((logprobs.exp() * (logprobs - ref)).sum(-1))
        input_ids = token
        position_ids = position_ids[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
    response_ids = torch.cat(tokens, dim=1)
    mask = truncate_at_eos(response_ids, tokenizer.eos_token_id)
    response_ids = response_ids.masked_fill(~mask, pad_id(tokenizer))
    texts = [tokenizer.decode(ids[m].tolist(), skip_special_tokens=True)
             for ids, m in zip(response_ids, mask, strict=True)]
    kl = {i: (torch.stack(v, 1) * mask).sum(-1).cpu() for i, v in kls.items()}
    return {"response_ids": response_ids.cpu(), "response_mask": mask.cpu(), "texts": texts, "kl": kl}


def token_counts(response_ids: Tensor, mask: Tensor) -> Counter:
    return Counter(response_ids[mask].tolist())


def rising_tokens(counts: Counter, ref: Counter, tokenizer: Any, top: int = 15, min_count: int = 2) -> list[dict]:
    """Tokens whose frequency rises most against `ref`: add-one smoothed log ratio of frequencies."""
    n, n_ref = sum(counts.values()), sum(ref.values())
    vocab = len(set(counts) | set(ref)) or 1
    scored = []
    for tok, c in counts.items():
        if c < min_count:
            continue
        ratio = math.log((c + 1) / (n + vocab)) - math.log((ref.get(tok, 0) + 1) / (n_ref + vocab))
        scored.append((ratio, tok, c))
    scored.sort(reverse=True)
    return [{"rank": r, "token_id": tok, "token": tokenizer.decode([tok]), "count": c,
             "tuned_count": ref.get(tok, 0), "freq": c / max(n, 1), "tuned_freq": ref.get(tok, 0) / max(n_ref, 1),
             "log_ratio": ratio} for r, (ratio, tok, c) in enumerate(scored[:top]) if ratio > 0]


def amplification(pair: Any, reward: str, samples_per_prompt: int, new_tokens: int, seed: int,
                  alphas: Sequence[float] = ALPHAS) -> dict[str, pd.DataFrame]:
    if 0.0 not in alphas:
        alphas = (0.0, *alphas)  # the tuned samples are the reference of the token table
    reward_fn = get_reward(reward)
    batch = [p for p in pair.prompts for _ in range(samples_per_prompt)]
    base, tuned = pair.hf("base"), pair.hf("tuned")
    summary, token_rows, sample_rows, counts = [], [], [], {}
    for alpha in sorted(alphas):
        def combine(ls: list[Tensor], a: float = alpha) -> Tensor:
            return ls[0] + a * (ls[0] - ls[1])

        out = lockstep_sample([tuned, base], combine, pair.tokenizer, batch, new_tokens, seed, kl_against=(0, 1))
        scores = check_scores(reward, reward_fn, out["texts"])
        counts[alpha] = token_counts(out["response_ids"], out["response_mask"])
        summary.append({"alpha": alpha, "reward_mean": float(torch.tensor(scores).mean()),
                        "reward_std": float(torch.tensor(scores).std()),
                        "distinct_1": distinct_n(out["texts"], 1), "distinct_2": distinct_n(out["texts"], 2),
                        "kl_vs_tuned": out["kl"][0].mean().item(), "kl_vs_base": out["kl"][1].mean().item(),
                        "length_mean": out["response_mask"].sum(-1).float().mean().item()})
        for i, (p, t, s) in enumerate(zip(batch, out["texts"], scores, strict=True)):
            sample_rows.append({"alpha": alpha, "sample": i, "prompt": p, "response": t, "reward": s})
    pair.release_hf()
    for alpha in sorted(alphas):
        if alpha != 0.0:
            token_rows += [{"alpha": alpha, **r} for r in rising_tokens(counts[alpha], counts[0.0], pair.tokenizer)]
    tok_cols = ["alpha", "rank", "token_id", "token", "count", "tuned_count", "freq", "tuned_freq", "log_ratio"]
    return {"amplification": pd.DataFrame(summary),
            "amplification_tokens": pd.DataFrame(token_rows, columns=tok_cols),
            "amplification_samples": pd.DataFrame(sample_rows)}
