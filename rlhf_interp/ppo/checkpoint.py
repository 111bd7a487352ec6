"""Trainer state for `--resume`, without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is one directory written atomically (`rlhf_interp.io.atomic_dir`):
    checkpoint/policy/                 the policy, HF format
    checkpoint/value_head.safetensors
    checkpoint/optimizer.safetensors   every tensor of the optimizer state, keyed `state.<param>.<name>`
    checkpoint/rng.safetensors         states of the torch generators (of every rank)
    checkpoint/state.json              step, KL controller, score moments, optimizer param groups, tables so far
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rlhf_interp.errors import UserError
from rlhf_interp.io import atomic_dir


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            key = f"state.{pid}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().to("cpu").contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    path: Path,
    policy: torch.nn.Module,
    tokenizer: Any,
    value_head: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """Write the whole trainer state atomically: the directory is complete under `path` or not there at all."""
    opt_tensors, opt_meta = optimizer_to_flat(opt)
    with atomic_dir(path) as tmp:
        policy.save_pretrained(tmp / "policy", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "policy")
        save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()},
                  tmp / "value_head.safetensors")
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        save_file({name: v.contiguous() for name, v in rng.items()}, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1), encoding="utf-8")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint's tensors and JSON (the policy is loaded separately from `path / 'policy'`)."""
    needed = ["state.json", "value_head.safetensors", "optimizer.safetensors", "rng.safetensors", "policy"]
    missing = [n for n in needed if not (path / n).exists()]
    if missing:
        raise UserError(f"checkpoint {path} is incomplete (missing {', '.join(missing)}); rerun with --overwrite")
    try:
        return {
            "state": json.loads((path / "state.json").read_text(encoding="utf-8")),
            "value_head": load_file(path / "value_head.safetensors"),
            "optimizer": load_file(path / "optimizer.safetensors"),
            "rng": load_file(path / "rng.safetensors"),
        }
    except (OSError, ValueError, json.JSONDecodeError, SafetensorError) as e:
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); rerun with --overwrite") from e
