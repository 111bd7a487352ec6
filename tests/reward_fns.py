"""User reward functions for the `python:` reward tests (imported as python:reward_fns:NAME)."""

import os

_calls = {"n": 0}


def length_reward(texts):
    return [len(t) / 10 for t in texts]


def wrong_length(texts):
    return [1.0]


def nan_reward(texts):
    return [float("nan")] * len(texts)


def raises(texts):
    raise RuntimeError("boom")


def fail_at_call(texts):
    """VADER-free reward that raises on the N-th call when RLHF_TEST_FAIL_AT_CALL=N (a simulated interruption)."""
    _calls["n"] += 1
    if str(_calls["n"]) == os.environ.get("RLHF_TEST_FAIL_AT_CALL"):
        raise RuntimeError("simulated failure")
    return [t.count(" ") / 5.0 - t.count("bad") for t in texts]


def zero_reward(texts):
    return [0.0] * len(texts)
