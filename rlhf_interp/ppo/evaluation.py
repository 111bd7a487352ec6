"""The fixed evaluation set of a run: the same prompts and sampling seed at every evaluation, so that numbers from
before training, during it and after it are comparable (mean score of the run's reward, KL to the base, text stats).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_interp.ppo.config import TrainConfig
from rlhf_interp.ppo.core import kl_estimates, logprobs_of, masked_sum
from rlhf_interp.ppo.rollout import forward_response
from rlhf_interp.rewards import RewardFn, check_scores
from rlhf_interp.sampling import has_eos, sample_seeded
from rlhf_interp.text_stats import distinct_n, repetition_rate

MAX_EVAL_PROMPTS = 32


def split_prompts(prompts: list[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training prompts, held-out evaluation prompts): a seeded `fraction` of the unique prompts is held out (at
    least one, if there are two or more); a single prompt cannot be split and is used for both (`fraction` 0 too)."""
    unique = list(dict.fromkeys(prompts))
    n_eval = max(1, round(fraction * len(unique))) if fraction > 0 and len(unique) >= 2 else 0
    if n_eval == 0:
        return prompts, unique
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {unique[i] for i in order[:n_eval]}
    return [p for p in prompts if p not in held], [p for p in unique if p in held]


def eval_prompts(prompts: list[str], per_prompt: int) -> list[str]:
    unique = list(dict.fromkeys(prompts))[:MAX_EVAL_PROMPTS]
    return [p for p in unique for _ in range(per_prompt)]


@torch.no_grad()
def evaluate_policy(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: TrainConfig,
    reward_fn: RewardFn,
) -> dict[str, Any]:
    """Sample the evaluation set with a fixed seed; score it; KL(policy || base) summed over each response."""
    batch = eval_prompts(prompts, cfg.eval_samples_per_prompt)
    s, texts = sample_seeded(policy, tokenizer, batch, cfg.response_length, cfg.seed + 12_345,
                             temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    with_prompt = cfg.reward_text == "prompt+response" or getattr(reward_fn, "reads_prompt", False)
    scored = [p + t for p, t in zip(batch, texts, strict=True)] if with_prompt else texts
    scores = torch.tensor(check_scores(cfg.reward, reward_fn, scored))
    ref_logits, _ = forward_response(ref, s.query_ids, s.query_mask, s.response_ids, cfg, filtered=False)
    k1, _ = kl_estimates(s.logprobs, logprobs_of(ref_logits, s.response_ids))
    kl_seq = masked_sum(k1, s.response_mask, -1)
    return {
        "score_mean": scores.mean().item(),
        "score_std": scores.std().item(),
        "kl": kl_seq.mean().item(),
        "response_len": s.response_mask.sum(-1).float().mean().item(),
        "eos_rate": has_eos(s.response_ids, s.response_mask, tokenizer.eos_token_id).float().mean().item(),
        "distinct_2": distinct_n(texts, 2),
        "repetition_3": repetition_rate(texts, 3),
        "samples": [{"prompt": p, "response": t, "score": float(sc)}
                    for p, t, sc in zip(batch, texts, scores.tolist(), strict=True)],
    }
