"""The run directory: its layout, its tables (kept in memory, written atomically), and preparing it safely.

    run/config.toml      resolved configuration        run/metrics.csv    one row per update
    run/base/            the starting model (HF)       run/eval.csv       the evaluation set, before/during/after
    run/tuned/           the trained policy (HF)       run/samples.jsonl  eval and rollout samples per logged update
    run/checkpoint/      trainer state for --resume    run/summary.json   before/after numbers, timings
    run/snapshots/step-NNNNNN/  the policy every snapshot_every updates (HF; step-000000 is the base)
    run/curves.png       training curves           run/prompts_{train,eval}.txt  the two prompt splits
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rlhf_interp.errors import UserError
from rlhf_interp.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir, write_table
from rlhf_interp.ppo.config import TrainConfig, apply_overrides, load_toml, to_toml, validate

RESUMABLE_KEYS = {"steps", "device", "out"}  # what may change when a run is resumed


@dataclass
class RunFiles:
    root: Path
    clear_first: bool = False  # --overwrite: the old run is removed by `start`, once the new one has loaded
    write: bool = True  # False on ranks other than 0: the tables are kept in memory, nothing is written
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    sink: Any = None  # rlhf_interp.ppo.loggers.Logger on rank 0 (tensorboard / wandb), set by the trainer

    base = property(lambda self: self.root / "base")
    tuned = property(lambda self: self.root / "tuned")
    checkpoint = property(lambda self: self.root / "checkpoint")
    snapshots = property(lambda self: self.root / "snapshots")

    def snapshot(self, step: int) -> Path:
        """snapshots/step-NNNNNN/: the policy after `step` updates (step 0: the base model)."""
        return self.snapshots / f"step-{step:06d}"

    def drop_snapshots_after(self, step: int) -> None:
        """On resume: snapshots written after the checkpoint (a kill between them) are redone by the resumed run."""
        if not self.write or not self.snapshots.is_dir():
            return
        for d in self.snapshots.glob("step-*"):
            if d.name[5:].isdigit() and int(d.name[5:]) > step:
                shutil.rmtree(d)

    def start(self, cfg: TrainConfig) -> None:
        """Called once models, prompts and reward have loaded: clear an overwritten run, save the resolved config."""
        if not self.write:
            return
        if self.clear_first:
            for child in self.root.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else os.unlink(child)
            self.clear_first = False
        atomic_write_text(self.root / "config.toml", to_toml(cfg))

    def write_prompts(self, train: list[str], evaluation: list[str]) -> None:
        """The prompts each split used (prompts_train.txt, prompts_eval.txt), one per line."""
        if self.write:
            atomic_write_text(self.root / "prompts_train.txt", "".join(p + "\n" for p in dict.fromkeys(train)))
            atomic_write_text(self.root / "prompts_eval.txt", "".join(p + "\n" for p in evaluation))

    def add_metrics(self, row: dict[str, Any]) -> None:
        self.metrics.append(row)
        self.flush()
        if self.sink is not None:
            self.sink.metrics(row["step"], row)

    def add_samples(self, step: int, split: str, prompts: list[str], texts: list[str], scores: list[float]) -> None:
        rows = [{"step": step, "split": split, "prompt": p, "response": t, "score": s}
                for p, t, s in zip(prompts, texts, scores, strict=True)]
        self.samples += rows
        if self.sink is not None:
            self.sink.samples(step, rows)

    def add_eval(self, step: int, result: dict[str, Any]) -> None:
        self.evals.append({"step": step, **{k: v for k, v in result.items() if k != "samples"}})
        rows = [{"step": step, "split": "eval", **row} for row in result["samples"]]
        self.samples += rows
        self.flush()
        if self.sink is not None:
            self.sink.evaluation(step, self.evals[-1])
            self.sink.samples(step, rows[:16])

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"metrics": self.metrics, "evals": self.evals, "samples": self.samples}

    def restore(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        self.metrics, self.evals, self.samples = tables["metrics"], tables["evals"], tables["samples"]
        self.flush()

    def flush(self) -> None:
        """Rewrite the tables atomically (small files; a kill never leaves a torn one)."""
        if not self.write:
            return
        if self.metrics:
            write_table(self.root / "metrics.csv", pd.DataFrame(self.metrics))
        if self.evals:
            write_table(self.root / "eval.csv", pd.DataFrame(self.evals))
        atomic_write_text(self.root / "samples.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.samples))

    def finish(self, cfg: TrainConfig) -> dict[str, Any]:
        before, after = self.evals[0], self.evals[-1]
        summary = {
            "run": str(self.root),
            "model": cfg.model,
            "reward": cfg.reward,
            "steps": len(self.metrics),
            "episodes": len(self.metrics) * cfg.batch_size,
            "train_seconds": self.metrics[-1]["time_s"] if self.metrics else 0.0,
            "eval_prompts": str(self.root / "prompts_eval.txt"),
            "eval_held_out": not set(_lines(self.root / "prompts_eval.txt"))
            & set(_lines(self.root / "prompts_train.txt")),
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "eval_before": before,
            "eval_after": after,
            "score_gain": after["score_mean"] - before["score_mean"],
        }
        if not self.write:
            return summary
        atomic_write_text(self.root / "summary.json", json.dumps(summary, indent=1))
        if self.metrics:
            from rlhf_interp.report.render import render_training

            render_training(self.root)  # draws the curves once: figures/training_curves.png, also saved as curves.png
            atomic_write_bytes(self.root / "curves.png", (self.root / "figures" / "training_curves.png").read_bytes())
        return summary


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def default_run_dir(cfg: TrainConfig) -> Path:
    model = "embedded" if cfg.model == "embedded" else Path(cfg.model.rstrip("/")).name
    reward = cfg.reward.split(":")[0]
    return Path("runs") / f"{model}-{reward}-s{cfg.seed}"


def prepare_run(cfg: TrainConfig, requested: dict[str, Any], resume: bool, overwrite: bool
                ) -> tuple[TrainConfig, RunFiles]:
    """Decide the run directory, refuse to clobber an existing run, and save the resolved config."""
    root = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if root.exists() and not root.is_dir():
        raise UserError(f"output {root} is a file; pass a directory with --out")
    if resume:
        saved = root / "config.toml"
        if not saved.is_file():
            raise UserError(f"cannot resume: {root} holds no run (no config.toml); start it without --resume")
        saved_cfg = apply_overrides(TrainConfig(), load_toml(saved), str(saved))
        cfg = validate(apply_overrides(saved_cfg, requested, "command line"))
        differing = sorted(k for k in requested if k not in RESUMABLE_KEYS and getattr(cfg, k) != getattr(saved_cfg, k))
        if differing:
            raise UserError(f"cannot change {', '.join(differing)} when resuming {root} (only steps/device may change)")
    elif root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UserError(f"{root} already holds a run; pass --resume to continue it or --overwrite to replace it")
        if not (root / "config.toml").exists():
            raise UserError(f"{root} is not empty and is not a run directory; refusing to --overwrite it")
    ensure_writable_dir(root)
    cfg = apply_overrides(cfg, {"out": str(root)}, "run")
    return cfg, RunFiles(root, clear_first=overwrite and not resume)
