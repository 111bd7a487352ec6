"""`periods`: the number of '.' characters in the text (the seed's example of a non-sentiment reward)."""

from __future__ import annotations


def count_periods(texts: list[str]) -> list[float]:
    return [float(t.count(".")) for t in texts]
