"""rlhf-interp: RLHF with PPO on GPT-2-family models, then interpretability of what RLHF changed."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def compare(*args: Any, **kwargs: Any) -> Any:
    """See `rlhf_interp.analysis.compare` (imported lazily: the package root stays light)."""
    from rlhf_interp.analysis import compare as _compare

    return _compare(*args, **kwargs)


def train(*args: Any, **kwargs: Any) -> Any:
    """See `rlhf_interp.ppo.run_training`."""
    from rlhf_interp.ppo import run_training

    return run_training(*args, **kwargs)
