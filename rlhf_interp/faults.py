"""Fault injection for the kill-and-resume tests: `RLHF_INTERP_DIE_AT=point:n` SIGKILLs the process the n-th time
execution reaches `point`. Unset (always, outside tests) it does nothing."""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def maybe_die(point: str) -> None:
    spec = os.environ.get("RLHF_INTERP_DIE_AT")
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
