"""PPO for RLHF: `run_training` is what `rlhf-interp train` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_interp.ppo.config import TrainConfig, apply_overrides, load_toml, normalise_key, validate


def run_training(
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Resolve the config (defaults < TOML file < overrides), prepare the run directory, train; returns the summary."""
    from rlhf_interp.ppo.rundir import prepare_run
    from rlhf_interp.ppo.trainer import PPOTrainer

    requested: dict[str, Any] = {}
    if config_file:
        requested.update({normalise_key(k): v for k, v in load_toml(config_file).items()})
    requested.update({normalise_key(k): v for k, v in (overrides or {}).items()})
    cfg = validate(apply_overrides(TrainConfig(), requested, str(config_file or "options")))
    cfg, files = prepare_run(cfg, requested, resume, overwrite)
    return PPOTrainer(cfg, files).train(resume=resume)


__all__ = ["TrainConfig", "run_training"]
