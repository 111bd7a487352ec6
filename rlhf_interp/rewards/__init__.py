"""Reward registry: one file per reward, one line to register it.

A reward is built by `get_reward(spec, cfg)` and called as `reward(texts) -> list[float]` (one score per text).
`check_scores` turns a reward that raises, returns NaN/inf or the wrong number of scores into a `RewardError`
naming the reward and the offending sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from rlhf_interp.errors import UserError

RewardFn = Callable[[list[str]], Sequence[float]]


class RewardError(UserError):
    """The reward function failed or returned bad scores."""


def _vader(arg: str, options: dict[str, Any]) -> RewardFn:
    from rlhf_interp.rewards.vader import VaderReward

    return VaderReward()


def _periods(arg: str, options: dict[str, Any]) -> RewardFn:
    from rlhf_interp.rewards.periods import count_periods

    return count_periods


def _classifier(arg: str, options: dict[str, Any]) -> RewardFn:
    from rlhf_interp.rewards.classifier import ClassifierReward

    return ClassifierReward(arg, label=options.get("label", ""), output=options.get("output", "prob"))


def _imdb(arg: str, options: dict[str, Any]) -> RewardFn:
    from rlhf_interp.rewards.imdb import ImdbReward

    return ImdbReward(output=options.get("output", "prob"))


def _rm(arg: str, options: dict[str, Any]) -> RewardFn:
    from rlhf_interp.rewards.reward_model import RewardModelReward

    return RewardModelReward(arg)


def _python(arg: str, options: dict[str, Any]) -> RewardFn:
    from rlhf_interp.rewards.python_fn import import_reward

    return import_reward(arg)


# name -> (builder, takes an argument after ':')
REGISTRY: dict[str, tuple[Callable[[str, dict[str, Any]], RewardFn], bool]] = {
    "vader": (_vader, False),
    "periods": (_periods, False),
    "imdb": (_imdb, False),
    "classifier": (_classifier, True),
    "python": (_python, True),
    "rm": (_rm, True),
}


def get_reward(spec: str, **options: Any) -> RewardFn:
    """Build the reward named by `spec` (`vader`, `periods`, `imdb`, `classifier:DIR`, `rm:DIR`,
    `python:module:function`)."""
    name, _, arg = spec.partition(":")
    if name not in REGISTRY:
        raise UserError(f"unknown reward {spec!r}; choose one of: vader, periods, imdb, classifier:DIR, "
                        "rm:DIR, python:module:function")
    builder, takes_arg = REGISTRY[name]
    if takes_arg and not arg:
        what = "DIR" if name in ("classifier", "rm") else "module:function"
        raise UserError(f"reward {name!r} needs an argument: {name}:{what}")
    if not takes_arg and arg:
        raise UserError(f"reward {name!r} takes no argument, got {spec!r}")
    return builder(arg, options)


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def reads_prompt(reward: RewardFn) -> bool:
    """A reward that must see prompt + response whatever `reward_text` says (a reward model trained on both)."""
    return bool(getattr(reward, "reads_prompt", False))


def check_scores(spec: str, reward: RewardFn, texts: list[str]) -> list[float]:
    """Call `reward` on `texts` and validate the result (length, numbers, finite)."""
    try:
        raw = reward(texts)
    except UserError:
        raise
    except Exception as e:
        raise RewardError(f"reward {spec!r} raised {type(e).__name__}: {e} (batch of {len(texts)}, first text "
                          f"{_show(texts[0]) if texts else '-'})") from e
    try:
        scores = [float(s) for s in raw]
    except (TypeError, ValueError) as e:
        raise RewardError(f"reward {spec!r} must return a list of numbers, got {type(raw).__name__}") from e
    if len(scores) != len(texts):
        raise RewardError(f"reward {spec!r} returned {len(scores)} scores for {len(texts)} texts")
    for text, score in zip(texts, scores, strict=True):
        if not math.isfinite(score):
            raise RewardError(f"reward {spec!r} returned {score} for sample {_show(text)}")
    return scores
