"""`TrainConfig`: every hyperparameter of `rlhf-interp train`, one line of help each.

Resolution order: dataclass defaults < TOML file (`--config`) < command-line options. The resolved config is saved
as `config.toml` in the run directory, and `--resume` reads it back from there.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rlhf_interp.errors import UserError


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    # what to train, on what
    model: str = _f("embedded", "policy to start from: 'embedded', a local HF directory or a hub name")
    reward: str = _f("vader", "reward: vader | periods | imdb | classifier:DIR | python:module:function")
    reward_text: str = _f("response", "text the reward sees: 'response' or 'prompt+response'")
    classifier_label: str = _f("", "classifier reward: label name or index to score (default: the last label)")
    classifier_output: str = _f("prob", "classifier reward: 'prob' (softmax probability) or 'logit' (raw logit)")
    prompts: str = _f("", "prompt file (one per line or JSONL); empty: the default prompt set")
    eval_prompts: str = _f("", "evaluation prompt file; empty: hold out eval_fraction of the prompts")
    eval_fraction: float = _f(0.25, "share of the unique prompts held out for evaluation when no eval_prompts file")
    out: str = _f("", "run directory; empty: runs/<model>-<reward>-s<seed>")
    seed: int = _f(0, "seed of every random generator")
    device: str = _f("auto", "auto | cpu | cuda")
    # rollout
    steps: int = _f(50, "PPO updates (each one a fresh rollout)")
    batch_size: int = _f(64, "episodes (prompt + sampled response) per rollout")
    response_length: int = _f(32, "new tokens sampled per episode (then truncated after the first EOS)")
    temperature: float = _f(1.0, "sampling temperature; also applied when recomputing log-probs")
    top_k: int = _f(0, "top-k filter at sampling and recomputation (0: off)")
    top_p: float = _f(1.0, "nucleus filter at sampling and recomputation (1.0: off)")
    missing_eos_penalty: float = _f(0.0, "subtracted from the score of responses with no EOS (0: off)")
    # reward shaping
    kl_coef: float = _f(0.05, "initial KL penalty coefficient beta (reward -= beta * KL per token)")
    adaptive_kl: bool = _f(False, "adapt beta towards target_kl (Ziegler et al. 2019)")
    target_kl: float = _f(6.0, "adaptive KL: target of the mean per-sequence KL")
    kl_horizon: float = _f(10_000.0, "adaptive KL: horizon in episodes")
    whiten_scores: bool = _f(False, "normalise scores by a running mean/std before adding the KL penalty")
    # advantage estimation
    gamma: float = _f(1.0, "discount factor")
    lam: float = _f(0.95, "GAE lambda")
    whiten_advantages: bool = _f(True, "whiten advantages over valid tokens of each batch")
    # optimisation
    ppo_epochs: int = _f(4, "passes over each rollout")
    minibatches: int = _f(4, "minibatches per pass (batch_size must be divisible)")
    lr: float = _f(1e-4, "learning rate of the language model body")
    value_lr: float = _f(1e-3, "learning rate of the value head")
    adam_eps: float = _f(1e-5, "AdamW epsilon")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    cliprange: float = _f(0.2, "policy ratio clip epsilon")
    cliprange_value: float = _f(0.2, "value clip range around the rollout's values")
    vf_coef: float = _f(0.1, "value loss coefficient c1")
    ent_coef: float = _f(0.0, "entropy bonus coefficient c2")
    max_grad_norm: float = _f(1.0, "gradient clipping (global L2 norm)")
    # LoRA (rlhf_interp.ppo.lora): adapters instead of full fine-tuning; the reference is the model, adapters off
    lora_r: int = _f(0, "LoRA rank (0: full fine-tuning); needs peft")
    lora_alpha: float = _f(16.0, "LoRA alpha (adapter scale alpha / r)")
    lora_targets: str = _f("auto", "LoRA target modules: 'auto' (every attention and MLP projection) or a comma list")
    # logging and saving
    log_every: int = _f(5, "write samples.jsonl rows (eval set + some rollouts) every N updates")
    eval_samples_per_prompt: int = _f(16, "samples per evaluation prompt (before training, every log, at the end)")
    log: str = _f("none", "extra metric sink besides metrics.csv: none | tensorboard | wandb (offline)")
    save_every: int = _f(10, "checkpoint (tuned model + trainer state) every N updates")
    snapshot_every: int = _f(0, "keep the policy every K updates in snapshots/step-NNNNNN/ (HF; step 0 = base; 0: off)")
    max_bad_updates: int = _f(3, "consecutive NaN/inf updates tolerated (skipped) before the run stops")


FIELDS = {f.name: f for f in fields(TrainConfig)}
_POSITIVE = ("steps", "batch_size", "response_length", "ppo_epochs", "minibatches", "log_every", "save_every",
             "eval_samples_per_prompt", "temperature", "lr", "value_lr", "adam_eps", "cliprange", "cliprange_value",
             "max_grad_norm", "kl_horizon", "target_kl", "max_bad_updates")
_NON_NEGATIVE = ("snapshot_every", "kl_coef", "vf_coef", "ent_coef", "weight_decay", "top_k", "missing_eos_penalty")
_UNIT = ("gamma", "lam")
_POSITIVE += ("lora_alpha",)
_NON_NEGATIVE += ("lora_r",)


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = FIELDS[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise UserError(f"{source}: '{name}' must be {kind}, got {value!r}") from None


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range checks; a `UserError` names the key and the allowed range."""
    for name in _POSITIVE:
        value = getattr(cfg, name)
        if not (value > 0 and math.isfinite(value)):
            raise UserError(f"config '{name}' must be > 0, got {value}")
    for name in _NON_NEGATIVE:
        value = getattr(cfg, name)
        if not (value >= 0 and math.isfinite(value)):
            raise UserError(f"config '{name}' must be >= 0, got {value}")
    ranges = [(name, 0 <= getattr(cfg, name) <= 1, "[0, 1]") for name in _UNIT]
    ranges += [("eval_fraction", 0 <= cfg.eval_fraction < 1, "[0, 1)"), ("top_p", 0 < cfg.top_p <= 1, "(0, 1]")]
    for name, ok, allowed in ranges:
        if not ok:
            raise UserError(f"config '{name}' must be in {allowed}, got {getattr(cfg, name)}")
    if cfg.batch_size % cfg.minibatches:
        raise UserError(
            f"config 'batch_size' ({cfg.batch_size}) must be divisible by 'minibatches' ({cfg.minibatches})"
        )
    for name, choices in (("reward_text", ("response", "prompt+response")), ("classifier_output", ("prob", "logit")),
                          ("log", ("none", "tensorboard", "wandb"))):
        if getattr(cfg, name) not in choices:
            raise UserError(f"config '{name}' must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise UserError(f"config 'device' must be auto, cpu or cuda, got {cfg.device!r}")
    return cfg


def normalise_key(key: str) -> str:
    return key.lstrip("-").replace("-", "_")


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """`cfg` with `overrides` applied; unknown keys and wrong types are `UserError`s naming the key."""
    clean: dict[str, Any] = {}
    for key, value in overrides.items():
        name = normalise_key(key)
        if name not in FIELDS:
            close = difflib.get_close_matches(name, list(FIELDS), n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join('--' + k.replace('_', '-') for k in close)}?)" if close else ""
            raise UserError(f"{source}: unknown config key '{key}'{hint}; `rlhf-interp train-keys` lists every key")
        clean[name] = _coerce(name, value, source)
    return dataclasses.replace(cfg, **clean)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML ({e})") from e
    # accept a flat file or one with a [train] table
    return data.get("train", data) if isinstance(data.get("train"), dict) else data


def parse_cli_overrides(args: list[str]) -> dict[str, str]:
    """`--key value`, `--key=value` and bare `--flag` (true) / `--no-flag` (false) into a dict of strings."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; config keys are given as --key value")
        key, eq, value = arg[2:].partition("=")
        name = normalise_key(key)
        if eq:
            out[name] = value
        elif name in FIELDS and FIELDS[name].type == "bool" and (i + 1 == len(args) or args[i + 1].startswith("--")):
            out[name] = "true"
        elif name.startswith("no_") and name[3:] in FIELDS and FIELDS[name[3:]].type == "bool":
            out[name[3:]] = "false"
        elif i + 1 < len(args):
            out[name] = args[i + 1]
            i += 1
        else:
            raise UserError(f"option --{key} needs a value")
        i += 1
    return out


def to_toml(cfg: TrainConfig) -> str:
    """The config as a flat TOML document with each key's help as a comment."""
    lines = ["# rlhf-interp train: resolved configuration", "[train]"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = repr(value)
        lines.append(f"{f.name} = {text}  # {f.metadata['help']}")
    return "\n".join(lines) + "\n"


def help_text() -> str:
    return "\n".join(f"--{f.name.replace('_', '-')} ({f.type}, default {f.default!r}): {f.metadata['help']}"
                     for f in fields(TrainConfig))
