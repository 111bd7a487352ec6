"""`vader`: VADER compound sentiment of the text, in [-1, 1] (Hutto & Gilbert 2014; lexicon ships with the package)."""

from __future__ import annotations


class VaderReward:
    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: list[str]) -> list[float]:
        return [self.analyzer.polarity_scores(t)["compound"] for t in texts]
