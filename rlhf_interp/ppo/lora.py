"""LoRA for the PPO trainer (`train --lora-r R`), through peft.

- The policy stays the ordinary `transformers` model, with peft's LoRA layers injected in place
  (`peft.inject_adapter_in_model`): sampling, the PPO forward, the value head on the trunk and DDP see the same model
  class as in full fine-tuning. Only the adapters (A, B) train; every base weight is frozen.
- The reference is the same model with its adapters switched off (`AdaptersOff`): the frozen base, without a second
  copy of its weights. B starts at zero (peft's default), so the policy equals the base before the first update.
- What is written for other tools is merged (`Merged`): `W + (alpha / r) * B @ A` for every adapted weight, under the
  original parameter names, so `tuned/` (and `base/`, and the checkpoint's `policy/`) load as plain HF models. The
  checkpoint's `policy/` also holds `adapter.safetensors` (the adapters themselves) for `--resume`.

Targets: `auto` adapts every linear projection inside the transformer blocks, attention and MLP (Llama: q/k/v/o and
gate/up/down; GPT-2: c_attn, c_proj, c_fc; GPT-NeoX: query_key_value, dense, dense_h_to_4h, dense_4h_to_h), never
the embeddings or the unembedding; or a comma-separated list of module names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlhf_interp.errors import UserError
from rlhf_interp.ppo.config import TrainConfig

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_NAME = "default"


def _lora_modules() -> tuple[type, type]:
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError as e:
        raise UserError("LoRA training (--lora-r) needs the peft package: pip install peft "
                        "(or pip install 'rlhf-interp[real]')") from e
    return LoraLayer, BaseTunerLayer


def projection_names(model: nn.Module) -> list[str]:
    """Short names of the linear projections inside the transformer blocks (not embeddings, not the unembedding)."""
    from transformers.pytorch_utils import Conv1D

    skip = {id(m) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if isinstance(m, nn.Linear | Conv1D) and id(m) not in skip and "." in name}
    return sorted(names)


def target_modules(model: nn.Module, spec: str) -> list[str]:
    available = projection_names(model)
    if spec.strip() in ("", "auto"):
        if not available:
            raise UserError("--lora-targets auto found no linear projections in this model; name them explicitly")
        return available
    wanted = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise UserError(f"--lora-targets: no module named {', '.join(unknown)} in this model "
                        f"(its projections: {', '.join(available)})")
    return wanted


def apply_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Inject LoRA adapters (rank `cfg.lora_r`, `cfg.lora_alpha`, dropout 0) into `model` in place; freeze the rest.
    The A matrices are drawn from a generator seeded with `cfg.seed` (every rank draws the same ones)."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    _lora_modules()
    targets = target_modules(model, cfg.lora_targets)
    conv = {type(m) is Conv1D for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in targets}
    if len(conv) > 1:
        raise UserError("--lora-targets mixes Conv1D and Linear projections; adapt one kind at a time")
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets,
                        bias="none", fan_in_fan_out=conv == {True})
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if "lora_" in n}


def load_adapters(model: nn.Module, policy_dir: Path) -> None:
    """Put the adapters saved beside a checkpoint's merged policy back into `model` (resume)."""
    from safetensors.torch import load_file

    path = Path(policy_dir) / ADAPTER_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {policy_dir.parent} holds no LoRA adapters ({path.name} missing): it was not "
                        f"written by a --lora-r run; rerun with --overwrite")
    saved = load_file(path)
    params = dict(model.named_parameters())
    if set(saved) != {n for n in params if "lora_" in n}:
        raise UserError(f"{path}: its adapters do not match this model's (rank or targets differ); rerun with "
                        f"--overwrite")
    with torch.no_grad():
        for name, t in saved.items():
            params[name].copy_(t)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Every LoRA layer of `model` computes its base layer only, inside the block."""
    _, BaseTunerLayer = _lora_modules()
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)  # also restores requires_grad of the adapters


class AdaptersOff(nn.Module):
    """The frozen base model as the policy with its adapters switched off; holds no weights of its own (the policy
    is kept outside the module tree, so it is neither saved nor moved through this module)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self._policy = (policy,)

    @property
    def config(self) -> Any:
        return self._policy[0].config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with adapters_disabled(self._policy[0]):
            return self._policy[0](*args, **kwargs)


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of the plain model: each adapted weight merged (`W + scale * B @ A`) under its original name,
    adapter tensors dropped. Nothing in `model` changes; unadapted tensors are shared, not copied (ties kept)."""
    LoraLayer, _ = _lora_modules()
    lora = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    out: dict[str, Tensor] = {}
    for key, t in model.state_dict(keep_vars=False).items():
        if "lora_" in key:
            continue
        module, _, leaf = key.rpartition(".")
        if module.endswith(".base_layer") and module[: -len(".base_layer")] in lora:
            owner = module[: -len(".base_layer")]
            if leaf == "weight":
                with torch.no_grad():
                    t = t + lora[owner].get_delta_weight(ADAPTER_NAME).to(t.dtype)
            key = f"{owner}.{leaf}"
        out[key] = t
    return out


class Merged:
    """Something with `save_pretrained` that writes `model` merged (see module docstring); with `with_adapters`, also
    writes the adapters as `adapter.safetensors` in the same directory (the checkpoint's policy)."""

    def __init__(self, model: nn.Module, with_adapters: bool = False) -> None:
        self.model, self.with_adapters = model, with_adapters

    def save_pretrained(self, path: str | Path, **kwargs: Any) -> None:
        from safetensors.torch import save_file

        self.model.save_pretrained(path, state_dict=merged_state_dict(self.model), **kwargs)
        if self.with_adapters:
            save_file(adapter_state(self.model), Path(path) / ADAPTER_FILE)
