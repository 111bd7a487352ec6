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
    """Resolve the config (defaults < TOML file < overrides), prepare the run directory, train; returns the summary.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 prepares the run directory and tells the others.
    """
    from rlhf_interp.errors import UserError
    from rlhf_interp.models import resolve_device
    from rlhf_interp.ppo import distributed
    from rlhf_interp.ppo.rundir import prepare_run
    from rlhf_interp.ppo.trainer import PPOTrainer

    requested: dict[str, Any] = {}
    if config_file:
        requested.update({normalise_key(k): v for k, v in load_toml(config_file).items()})
    requested.update({normalise_key(k): v for k, v in (overrides or {}).items()})
    cfg = validate(apply_overrides(TrainConfig(), requested, str(config_file or "options")))
    dist = distributed.from_env()
    distributed.check_batch(cfg.batch_size, cfg.minibatches, dist.world)
    device = distributed.init(dist, resolve_device(cfg.device))
    try:
        prepared: tuple[Any, ...] = (None, None, None)
        if dist.is_main:
            try:
                prepared = (*prepare_run(cfg, requested, resume, overwrite), None)
            except UserError as e:
                prepared = (None, None, str(e))
        cfg, files, error = dist.broadcast_object(prepared)
        if error:
            raise UserError(error)
        summary = PPOTrainer(cfg, files, dist, device).train(resume=resume)
        dist.barrier()
        return summary
    finally:
        distributed.shutdown(dist)


__all__ = ["TrainConfig", "run_training"]
