"""Behavioural numbers of a model on the default prompts: mean VADER of sampled continuations, distinct-2, EOS rate."""

from __future__ import annotations

import statistics

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_interp.prompts import EMBEDDED_PROMPTS
from rlhf_interp.sampling import sample_seeded
from rlhf_interp.text_stats import distinct_n, repetition_rate


def vader_scores(texts: list[str]) -> list[float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def evaluate_base(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples_per_prompt: int = 4,
    new_tokens: int = 32,
    seed: int = 0,
    prompts: tuple[str, ...] = EMBEDDED_PROMPTS,
) -> dict:
    """Sample continuations of `prompts` and summarise them (the model card's numbers)."""
    batch = [p for p in prompts for _ in range(samples_per_prompt)]
    out, texts = sample_seeded(model, tokenizer, batch, new_tokens, seed)
    scores = vader_scores(texts)
    has_eos = (out.response_ids == tokenizer.eos_token_id).any(-1)
    examples = [{"prompt": p, "response": t, "score": s} for p, t, s in zip(batch, texts, scores, strict=True)]
    return {
        "eval_prompts": len(prompts),
        "vader_mean": statistics.mean(scores),
        "vader_std": statistics.pstdev(scores),
        "vader_pos_frac": sum(s > 0.05 for s in scores) / len(scores),
        "vader_neg_frac": sum(s < -0.05 for s in scores) / len(scores),
        "distinct_2": distinct_n(texts, 2),
        "repetition_3": repetition_rate(texts, 3),
        "eos_rate": has_eos.float().mean().item(),
        "examples": examples[:: samples_per_prompt][:8],
    }
