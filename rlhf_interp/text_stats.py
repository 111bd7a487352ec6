"""Statistics of generated text used to spot reward hacking: distinct-n, repetition, word tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (tokenizer-independent, so two models' texts compare fairly)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n of Li et al. (2016): unique n-grams / all n-grams, pooled over all texts (NaN if none)."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_rate(texts: Sequence[str], n: int = 3) -> float:
    """Mean over texts of the fraction of n-grams that already occurred earlier in the same text.

    0 for text without loops; it approaches 1 for "so good so good so good ..." (the seed's reward hack).
    """
    rates = []
    for t in texts:
        grams = ngrams(words(t), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else float("nan")
