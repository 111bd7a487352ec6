"""`weight_diff`: how much each component's *raw* parameters changed, ‖W_tuned − W_base‖_F / ‖W_base‖_F, read from
the two checkpoints' own tensors (no LayerNorm folding, no centring: the bridges' processed weights put norm gains
inside QK / OV / MLP-in / unembedding, so a changed gain would show up as a changed circuit).

Rows (the `measure` column says what each one measures, `parameters` which checkpoint tensors it reads):
- per query head: `QK` = W̃_Qᵀ W̃_K and `OV` = W_O W̃_V, with W̃ = [W | b] where the model has q/k/v biases (the bias
  as one more input column: the affine map as a whole). Under grouped-query attention query head h reads key/value
  head h // (n_heads / n_kv_heads) (`kv_head`), so a changed key/value head shows in every query head of its group.
- per layer: `attn_out_bias` (where there is one), `mlp_in` ([W | b] of the input projections, gate and up stacked
  on gated MLPs), `mlp_out` ([W | b] of the output projection), and every norm's gain and bias (`norm_attn.gain`,
  `norm_mlp.bias`, ...; Gemma's sandwich and q/k norms too), the gain as the norm applies it (Gemma: 1 + w).
- once: `embed`, `pos_embed` (learned positions only), `unembed` (when not tied to the embedding), `norm_final.*`.
- `other`: any checkpoint tensor of a known family that no row above reads; every tensor on its own (`tensor`) for a
  family without a layout in analysis/arch.py.

Tensors are read one at a time from the memory-mapped safetensors files (no second model load): the extra memory is
about the largest tensor of both models (the embeddings) plus one layer's weights; measured on a GPT-2-small-shaped
pair, +0.53 GB of peak RSS over the loaded bridges (1.2 GB; mapped checkpoint pages included), below the peak of
loading them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from rlhf_interp.analysis.arch import RawLayout, adapter_for, raw_layout
from rlhf_interp.analysis.pair import ModelPair
from rlhf_interp.errors import NotSupported
from rlhf_interp.models import ModelSource, release_freed_memory

MEASURES = {
    "QK": "‖ΔA‖/‖A‖, A = W̃_Qᵀ W̃_K of the query head with its key/value head (raw; W̃ = [W | b] with q/k biases)",
    "OV": "‖ΔA‖/‖A‖, A = W_O W̃_V of the query head with its key/value head (raw; W̃_V = [W_V | b_V] with a bias)",
    "attn_out_bias": "‖Δb‖/‖b‖ of the attention output bias",
    "mlp_in": "‖ΔW‖/‖W‖, W = [W_in | b_in] of the MLP input projection(s), gate and up stacked",
    "mlp_out": "‖ΔW‖/‖W‖, W = [W_out | b_out] of the MLP output projection",
    "gain": "‖Δg‖/‖g‖ of the norm's gain g as applied",
    "bias": "‖Δb‖/‖b‖ of the norm's bias",
    "embed": "‖ΔW_E‖/‖W_E‖ of the token embedding",
    "pos_embed": "‖ΔW_pos‖/‖W_pos‖ of the learned position embedding",
    "unembed": "‖ΔW_U‖/‖W_U‖ of the unembedding (lm head)",
    "tensor": "‖ΔT‖/‖T‖ of the checkpoint tensor",
}


def diff_norm(base: Tensor, tuned: Tensor, rows: int = 8192) -> float:
    """‖tuned − base‖_F, over blocks of rows (no full-size temporary for an embedding matrix)."""
    if base.dim() < 2 or base.shape[0] <= rows:
        return (tuned - base).norm().item()
    return sum((tuned[i : i + rows] - base[i : i + rows]).pow(2).sum().item()
               for i in range(0, base.shape[0], rows)) ** 0.5


def rel_change(base: Tensor, tuned: Tensor) -> float:
    denom = base.norm().item()
    return diff_norm(base, tuned) / denom if denom > 0 else float("nan")


def checkpoint_dir(source: ModelSource) -> Path:
    """The local directory holding a model's safetensors files (a hub model: its cached snapshot)."""
    if source.path is not None:
        return source.path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source.hub_name), local_files_only=True,
                                      allow_patterns=["*.safetensors", "*.json"]))
    except Exception as e:  # any cache miss is the same user-facing problem
        raise NotSupported(f"{source.hub_name}: its checkpoint files are not in the local Hugging Face cache "
                           f"({e})") from e


class Checkpoint:
    """A model's checkpoint tensors, read one at a time (float32) from its memory-mapped safetensors files."""

    def __init__(self, source: ModelSource) -> None:
        from safetensors import safe_open

        folder = checkpoint_dir(source)
        self.files: dict[str, Path] = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as s:
                self.files.update({k: f for k in s.keys()})  # noqa: SIM118 - safe_open is not a mapping
        if not self.files:
            raise NotSupported(f"{folder}: no safetensors tensors found (weight_diff and unembed_change read the raw "
                               "checkpoint)")
        cfg_path = folder / "config.json"
        self.config: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}

    def name(self, name: str) -> str | None:
        """The stored key for `name` (hub GPT-2 checkpoints omit the `transformer.` prefix), or None."""
        if name in self.files:
            return name
        short = name.split(".", 1)[1] if "." in name else name
        return short if short in self.files else None

    def get(self, name: str) -> Tensor:
        from safetensors import safe_open

        key = self.name(name)
        if key is None:
            raise KeyError(name)
        with safe_open(str(self.files[key]), framework="pt") as s:
            return s.get_tensor(key).float()

    def maybe(self, name: str) -> Tensor | None:
        return self.get(name) if self.name(name) is not None else None


class _Reader:
    """Both checkpoints, read through one family layout; remembers which keys were read."""

    def __init__(self, checkpoints: dict[str, Checkpoint], layout: RawLayout) -> None:
        self.ck = checkpoints
        self.layout = layout
        self.used: set[str] = set()

    def tensors(self, name: str) -> tuple[Tensor, Tensor] | None:
        found = [self.ck[m].maybe(name) for m in ("base", "tuned")]
        if found[0] is None or found[1] is None:
            return None
        self.used.add(str(self.ck["base"].name(name)))
        return found[0], found[1]

    def linear(self, module: str) -> tuple[Tensor, Tensor]:
        """(out, in) weights of both models."""
        pair = self.tensors(module + ".weight")
        if pair is None:
            raise NotSupported(f"checkpoint lacks {module}.weight (layout of analysis/arch.py does not match)")
        return (pair[0].T, pair[1].T) if self.layout.conv1d else pair

    def bias(self, module: str) -> tuple[Tensor, Tensor] | None:
        return self.tensors(module + ".bias")


def _affine(w: Tensor, b: Tensor | None) -> Tensor:
    """[W | b]: (..., out, in) -> (..., out, in + 1); W itself without a bias."""
    return w if b is None else torch.cat([w, b.unsqueeze(-1)], dim=-1)


def _heads(reader: _Reader, L: int, n_heads: int, n_kv: int, d_head: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Per model: W̃_Q (head, d_head, in), W̃_K and W̃_V (kv_head, d_head, in), W_O (head, d_model, d_head)."""
    lay = reader.layout
    names = [t.format(L=L) for t in lay.attn]
    out: dict[str, list[Tensor]] = {"q": [], "k": [], "v": [], "o": []}
    o_b, o_t = reader.linear(names[-1])
    for o in (o_b, o_t):
        out["o"].append(o.reshape(o.shape[0], n_heads, d_head).permute(1, 0, 2))
    if lay.qkv == "split":
        for part, module, n in (("q", names[0], n_heads), ("k", names[1], n_kv), ("v", names[2], n_kv)):
            ws, bs = reader.linear(module), reader.bias(module)
            for i in range(2):
                w = ws[i].reshape(n, d_head, -1)
                out[part].append(_affine(w, None if bs is None else bs[i].reshape(n, d_head)))
    else:
        ws, bs = reader.linear(names[0]), reader.bias(names[0])
        for i in range(2):
            d_in = ws[i].shape[1]
            if lay.qkv == "gpt2":  # rows [q | k | v], heads contiguous within each
                w = ws[i].reshape(3, n_heads, d_head, d_in)
                b = None if bs is None else bs[i].reshape(3, n_heads, d_head)
            else:  # neox: rows [q, k, v] per head
                w = ws[i].reshape(n_heads, 3, d_head, d_in).transpose(0, 1)
                b = None if bs is None else bs[i].reshape(n_heads, 3, d_head).transpose(0, 1)
            for j, part in enumerate("qkv"):
                out[part].append(_affine(w[j], None if b is None else b[j]))
    return {k: (v[0], v[1]) for k, v in out.items()}


def _rows(reader: _Reader, pair: ModelPair) -> Iterator[dict[str, Any]]:
    lay, arch, cfg = reader.layout, adapter_for(pair.base), pair.base.cfg
    n_heads, n_kv, d_head = arch.n_heads, arch.n_kv_heads, int(cfg.d_head)

    def row(component: str, layer: int | None, head: int | None, wb: Tensor, wt: Tensor, params: str,
            measure: str, kv: int | None = None) -> dict[str, Any]:
        return {"component": component, "layer": layer, "head": head, "kv_head": kv,
                "rel_change": rel_change(wb, wt), "change_norm": diff_norm(wb, wt),
                "base_norm": wb.norm().item(), "measure": measure, "parameters": params}

    for L in range(pair.n_layers):
        attn = ", ".join(t.format(L=L) for t in lay.attn)
        w = _heads(reader, L, n_heads, n_kv, d_head)
        for h in range(n_heads):
            kv = arch.kv_head(h)
            qk = [w["q"][i][h].T @ w["k"][i][kv] for i in range(2)]
            ov = [w["o"][i][h] @ w["v"][i][kv] for i in range(2)]
            yield row("QK", L, h, *qk, attn, MEASURES["QK"], kv)
            yield row("OV", L, h, *ov, attn, MEASURES["OV"], kv)
        o_bias = reader.bias(lay.attn[-1].format(L=L))
        if o_bias is not None:
            yield row("attn_out_bias", L, None, *o_bias, lay.attn[-1].format(L=L) + ".bias", MEASURES["attn_out_bias"])
        ins = [m.format(L=L) for m in lay.mlp_in]
        parts = [(reader.linear(m), reader.bias(m)) for m in ins]
        mlp_in = [torch.cat([_affine(ws[i], None if bs is None else bs[i]) for ws, bs in parts]) for i in range(2)]
        yield row("mlp_in", L, None, *mlp_in, ", ".join(ins), MEASURES["mlp_in"])
        out_m = lay.mlp_out.format(L=L)
        ws, bs = reader.linear(out_m), reader.bias(out_m)
        yield row("mlp_out", L, None, *[_affine(ws[i], None if bs is None else bs[i]) for i in range(2)], out_m,
                  MEASURES["mlp_out"])
        for role, module in lay.norms.items():
            yield from _norm_rows(reader, role, L, module.format(L=L), row)
    yield from _norm_rows(reader, "norm_final", None, lay.final_norm, row)
    unembed = reader.tensors(lay.unembed + ".weight") if lay.unembed is not None else None
    tied = unembed is None or bool(reader.ck["base"].config.get("tie_word_embeddings", False))
    emb = reader.tensors(lay.embed + ".weight")
    if emb is None:
        raise NotSupported(f"checkpoint lacks {lay.embed}.weight (layout of analysis/arch.py does not match)")
    yield row("embed", None, None, *emb, lay.embed + ".weight" + (" (tied: also the unembedding)" if tied else ""),
              MEASURES["embed"])
    if lay.pos_embed and arch.pos_embed:
        pos = reader.tensors(lay.pos_embed + ".weight")
        if pos is not None:
            yield row("pos_embed", None, None, *pos, lay.pos_embed + ".weight", MEASURES["pos_embed"])
    if unembed is not None and not tied:
        yield row("unembed", None, None, *unembed, f"{lay.unembed}.weight", MEASURES["unembed"])
    u_bias = reader.bias(lay.unembed) if lay.unembed is not None else None
    if u_bias is not None:
        yield row("unembed_bias", None, None, *u_bias, f"{lay.unembed}.bias", "‖Δb_U‖/‖b_U‖ of the unembedding bias")


def _norm_rows(reader: _Reader, role: str, layer: int | None, module: str, row: Any) -> Iterator[dict[str, Any]]:
    gain = reader.tensors(module + ".weight")
    if gain is not None:
        off = reader.layout.gain_offset
        measure = MEASURES["gain"] + (f" ({off:g} + weight)" if off else "")
        yield row(f"{role}.gain", layer, None, gain[0] + off, gain[1] + off, module + ".weight", measure)
    bias = reader.tensors(module + ".bias")
    if bias is not None:
        yield row(f"{role}.bias", layer, None, *bias, module + ".bias", MEASURES["bias"])


def _tensor_rows(checkpoints: dict[str, Checkpoint], names: list[str], component: str) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        b, t = checkpoints["base"].maybe(name), checkpoints["tuned"].maybe(name)
        if b is None or t is None or b.shape != t.shape or b.dim() > 3 or not b.is_floating_point():
            continue  # missing in one model, or a buffer such as GPT-2's causal-mask `attn.bias`
        rows.append({"component": component, "layer": None, "head": None, "kv_head": None,
                     "rel_change": rel_change(b, t), "change_norm": diff_norm(b, t),
                     "base_norm": b.norm().item(), "measure": MEASURES["tensor"], "parameters": name})
    return rows


@torch.no_grad()
def weight_diff(pair: ModelPair) -> pd.DataFrame:
    """One row per component (see the module docstring), from the raw checkpoint tensors."""
    ck = {"base": Checkpoint(pair.base_source), "tuned": Checkpoint(pair.tuned_source)}
    archs = ck["base"].config.get("architectures") or [getattr(pair.base.cfg, "architecture", "")]
    layout = raw_layout(str(archs[0]))
    if layout is None:
        rows = _tensor_rows(ck, sorted(ck["base"].files), "tensor")
    else:
        reader = _Reader(ck, layout)
        rows = list(_rows(reader, pair))
        rows += _tensor_rows(ck, sorted(set(ck["base"].files) - reader.used), "other")
    release_freed_memory()
    df = pd.DataFrame(rows)
    for col in ("layer", "head", "kv_head"):
        df[col] = df[col].astype("Int64")
    return df
