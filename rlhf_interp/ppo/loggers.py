"""Optional metric sinks besides metrics.csv: TensorBoard event files and wandb (offline), under TRL's metric names.

`--log tensorboard` writes RUN/tensorboard/ (extra `rlhf-interp[tensorboard]`);
`--log wandb` writes an offline wandb run under RUN/wandb/ (`wandb sync` uploads it later). Only rank 0 logs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlhf_interp.errors import UserError

# our metrics.csv column -> the name TRL's PPO trainer logs it under (ours where TRL has none)
TRL_NAMES = {
    "kl_k1": "objective/kl",
    "entropy": "objective/entropy",
    "reward_kl": "objective/non_score_reward",
    "reward_total": "objective/rlhf_reward",
    "score_mean": "objective/scores",
    "kl_coef": "objective/kl_coef",
    "approx_kl": "policy/approxkl_avg",
    "clipfrac": "policy/clipfrac_avg",
    "policy_loss": "loss/policy_avg",
    "value_loss": "loss/value_avg",
    "vf_clipfrac": "val/clipfrac_avg",
    "ratio": "val/ratio",
    "explained_var": "val/explained_var",
    "eos_rate": "val/eos_rate",
    "response_len": "val/response_len",
    "kl_k3": "objective/kl_k3",
    "score_std": "objective/scores_std",
    "grad_norm": "policy/grad_norm",
    "distinct_2": "text/distinct_2",
    "repetition_3": "text/repetition_3",
    "skipped_steps": "policy/skipped_steps",
    "episodes_per_s": "time/episodes_per_s",
}


class Logger:
    """No-op sink (`--log none`)."""

    def metrics(self, step: int, row: dict[str, Any]) -> None: ...

    def evaluation(self, step: int, row: dict[str, Any]) -> None: ...

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def _scalars(row: dict[str, Any], prefix: str | None = None) -> dict[str, float]:
    out = {}
    for k, v in row.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or k in ("step", "episodes", "time_s"):
            continue
        out[f"{prefix}/{k}" if prefix else TRL_NAMES.get(k, f"train/{k}")] = float(v)
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| split | prompt | response | score |", "|---|---|---|---|"]
    lines += [f"| {r['split']} | {esc(r['prompt'])} | {esc(r['response'])} | {r['score']:+.3f} |" for r in rows]
    return "\n".join(lines)


class TensorBoardLogger(Logger):
    def __init__(self, root: Path, start_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise UserError("--log tensorboard needs the tensorboard package: pip install 'rlhf-interp[tensorboard]'"
                            ) from e
        # purge_step: on --resume, events from updates after the checkpoint (redone now) are dropped
        self.writer = SummaryWriter(str(root / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def metrics(self, step: int, row: dict[str, Any]) -> None:
        for k, v in _scalars(row).items():
            self.writer.add_scalar(k, v, step)

    def evaluation(self, step: int, row: dict[str, Any]) -> None:
        for k, v in _scalars(row, "eval").items():
            self.writer.add_scalar(k, v, step)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        self.writer.add_text("samples", _table(rows), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbLogger(Logger):
    def __init__(self, root: Path, config: dict[str, Any], resume: bool) -> None:
        try:
            import wandb
        except ImportError as e:
            raise UserError("--log wandb needs the wandb package: pip install wandb") from e
        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb = wandb
        self.run = wandb.init(mode="offline", dir=str(root), project="rlhf-interp", config=config,
                              name=root.name, id=_wandb_id(root), resume="allow" if resume else None)

    def metrics(self, step: int, row: dict[str, Any]) -> None:
        self.run.log(_scalars(row), step=step)

    def evaluation(self, step: int, row: dict[str, Any]) -> None:
        self.run.log(_scalars(row, "eval"), step=step)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        table = self.wandb.Table(columns=["split", "prompt", "response", "score"],
                                 data=[[r["split"], r["prompt"], r["response"], r["score"]] for r in rows])
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_id(root: Path) -> str:
    """One wandb run id per run directory (kept in RUN/wandb_id), so --resume continues the same run."""
    path = root / "wandb_id"
    if path.is_file():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id)
    return run_id


def make_logger(kind: str, root: Path, start_step: int, config: dict[str, Any], resume: bool) -> Logger:
    if kind == "tensorboard":
        return TensorBoardLogger(root, start_step)
    if kind == "wandb":
        return WandbLogger(root, config, resume)
    return Logger()
