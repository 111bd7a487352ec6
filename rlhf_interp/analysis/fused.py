"""The receiver's forward pass as plain tensor code, for patching sweeps that start mid-network.

`transformer_lens.patching` runs one full forward per cell through the bridge's hooks. A sweep does not need that:
a cell changes the residual stream from one (layer, stage, position) on, and everything before is the clean run.
`FusedGPT2` reads the bridge's own weights (views of its parameters, no copies) and runs

    clean(tokens)                  every layer's resid_pre / resid_mid, z, keys and values, once
    run(layer, stage, x, start)    blocks from `layer` on, for positions start.. only: the keys and values of the
                                   positions before `start` are unchanged, so they come from the clean run;
                                   the last block's attention queries and MLP run only at the positions read out
                                   (and, from position 0, without forming its keys and values at all);
                                   the readout unembeds only the vocabulary columns the metric reads

GPT-2 family only (learned absolute positions added before the first block, LayerNorm, no parallel attention/MLP);
`from_bridge` returns None for anything else. `engine_for` verifies an engine once per model and state of its weights:
the clean run's logits against the bridge's own forward on the same tokens (callers fall back to hooked full forwards
where it returns None). Any in-place change of a parameter bumps its version and triggers a new check.
Shapes: batch b, positions p, heads h, d_head e, d_model d.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SQRT_8_OVER_PI = math.sqrt(8 / math.pi)


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's gelu_new, 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), as x σ(x (2√(2/π) + 2√(2/π) 0.044715 x²)): the
    same function (|Δ| < 1e-6 here), in place after one allocation, and 2× faster where tanh is not vectorised."""
    return x.square().mul_(SQRT_8_OVER_PI * 0.044715).add_(SQRT_8_OVER_PI).mul_(x).sigmoid_().mul_(x)


ACTIVATIONS = {"gelu_new": gelu_tanh, "gelu_fast": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "gelu": F.gelu,
               "relu": F.relu, "silu": F.silu}


@dataclass
class Clean:
    """The receiver's unpatched run on `tokens`, per layer."""

    tokens: Tensor
    resid_pre: list[Tensor]  # (b, p, d); resid_pre[n_layers] is the final residual (before ln_final)
    resid_mid: list[Tensor]  # (b, p, d)
    z: list[Tensor]  # (b, p, h, e)
    k: list[Tensor]  # (b, p, h, e)
    v: list[Tensor]
    logits: Tensor  # (b, p, vocab) when asked for (verification against the bridge), else empty


@dataclass
class _Layer:  # weights as (out, in) views for F.linear
    ln1: tuple[Tensor | None, Tensor | None]
    W_qkv: tuple[Tensor, Tensor, Tensor]  # (h e, d) each
    b_qkv: tuple[Tensor, Tensor, Tensor]  # (h e,) each
    W_O: Tensor  # (d, h e)
    b_O: Tensor
    ln2: tuple[Tensor | None, Tensor | None]
    W_in: Tensor  # (d_mlp, d)
    b_in: Tensor
    W_out: Tensor  # (d, d_mlp)
    b_out: Tensor


def _ln_params(module: Any) -> tuple[Tensor | None, Tensor | None]:
    """The (folded) LayerNorm gain and bias, None where the module has none."""
    inner = getattr(module, "original_component", None) or module
    return getattr(inner, "weight", None), getattr(inner, "bias", None)


class FusedGPT2:
    def __init__(self, model: Any) -> None:
        cfg = model.cfg
        self.n_layers, self.n_heads, self.d_head = int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head)
        self.eps = float(cfg.eps)
        self.act = ACTIVATIONS[cfg.act_fn]
        divisor = math.sqrt(self.d_head) if cfg.attn_scale in (None, -1, -1.0) else float(cfg.attn_scale)
        self.scale = 1.0 / divisor if getattr(cfg, "use_attn_scale", True) else 1.0
        self.W_E, self.W_pos = model.W_E, model.W_pos
        self.W_U, self.b_U = model.W_U, getattr(model, "b_U", None)
        self.ln_final = _ln_params(model.ln_final)
        self.layers = []
        for block in model.blocks:
            a, m = block.attn, block.mlp
            W_qkv = tuple(w.permute(1, 0, 2).reshape(w.shape[1], -1).T for w in (a.W_Q, a.W_K, a.W_V))
            self.layers.append(_Layer(
                ln1=_ln_params(block.ln1), W_qkv=W_qkv, b_qkv=tuple(b.reshape(-1) for b in (a.b_Q, a.b_K, a.b_V)),
                W_O=a.W_O.reshape(-1, a.W_O.shape[-1]).T, b_O=a.b_O, ln2=_ln_params(block.ln2),
                W_in=m.W_in.T, b_in=m.b_in, W_out=m.W_out.T, b_out=m.b_out))

    @classmethod
    def from_bridge(cls, model: Any) -> FusedGPT2 | None:
        """The fused forward of a GPT-2-family bridge, or None where its architecture is not covered."""
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "blocks"):
            return None
        covered = (getattr(cfg, "positional_embedding_type", None) == "standard"
                   and getattr(cfg, "normalization_type", None) in ("LN", "LNPre")
                   and getattr(cfg, "act_fn", None) in ACTIVATIONS
                   and not any(getattr(cfg, k, False) for k in ("parallel_attn_mlp", "gated_mlp", "attn_only",
                                                                  "use_local_attn", "scale_attn_by_inverse_layer_idx",
                                                                  "final_rms"))
                   and getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads))
        if not covered:
            return None
        try:
            return cls(model)
        except (AttributeError, KeyError, RuntimeError, TypeError):  # a bridge laid out differently
            return None

    # -- pieces --------------------------------------------------------------------------------------------------
    def _ln(self, x: Tensor, params: tuple[Tensor | None, Tensor | None]) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], params[0], params[1], self.eps)

    def _attention(self, layer: _Layer, x: Tensor, start: int, past: tuple[Tensor, Tensor] | None, n_query: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attention output (b, n_query, d) for the last `n_query` of the positions start.. in `x` (b, n, d), keys and
        values of positions < start taken from `past` ((b, start, h, e) each); also z, k, v of the new positions."""
        b, n, _ = x.shape
        h = self._ln(x, layer.ln1)
        q, k, v = (F.linear(h, w, bias).view(b, n, self.n_heads, self.d_head)  # (b, n, h, e)
                   for w, bias in zip(layer.W_qkv, layer.b_qkv, strict=True))
        k_all = k if past is None else torch.cat([past[0], k], 1)
        v_all = v if past is None else torch.cat([past[1], v], 1)
        q = q[:, n - n_query:]
        q_pos = torch.arange(start + n - n_query, start + n, device=x.device)
        allowed = torch.arange(start + n, device=x.device)[None, :] <= q_pos[:, None]  # causal: (n_query, start + n)
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2),
                                           attn_mask=allowed, scale=self.scale).transpose(1, 2)  # (b, n_query, h, e)
        return F.linear(z.reshape(b, n_query, -1), layer.W_O, layer.b_O), z, k, v

    def _attention_readout(self, layer: _Layer, x: Tensor, n_query: int) -> Tensor:
        """`_attention` for the last block when only the last `n_query` positions are read and no position is cached:
        keys and values are never formed. With h = ln1(x): q·k_j = (q W_K)·h_j + q·b_K (the last term is the same for
        every j, so softmax drops it), and Σ_j p_j v_j = (Σ_j p_j h_j) W_V + b_V. Per row that is O(n_query · d_model)
        per head instead of O(n · d_model · d_head)."""
        b, n, d = x.shape
        h = self._ln(x, layer.ln1)
        W_K, W_V = (w.reshape(self.n_heads, self.d_head, d) for w in layer.W_qkv[1:])  # (h, e, d) each
        q = F.linear(h[:, n - n_query:], layer.W_qkv[0], layer.b_qkv[0]).view(b, n_query, self.n_heads, self.d_head)
        qk = torch.einsum("bqhe,hed->bhqd", q, W_K)  # (b, h, n_query, d)
        scores = torch.einsum("bhqd,bkd->bhqk", qk, h) * self.scale  # (b, h, n_query, n)
        allowed = torch.arange(n, device=x.device)[None, :] <= torch.arange(n - n_query, n, device=x.device)[:, None]
        pattern = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        mixed = torch.einsum("bhqk,bkd->bqhd", pattern, h)  # (b, n_query, h, d)
        z = torch.einsum("bqhd,hed->bqhe", mixed, W_V) + layer.b_qkv[2].view(self.n_heads, self.d_head)
        return F.linear(z.reshape(b, n_query, -1), layer.W_O, layer.b_O)

    def _mlp(self, layer: _Layer, x: Tensor) -> Tensor:
        return F.linear(self.act(F.linear(self._ln(x, layer.ln2), layer.W_in, layer.b_in)), layer.W_out, layer.b_out)

    def unembed(self, x: Tensor, columns: list[int] | None = None) -> Tensor:
        """ln_final then the unembedding, restricted to the vocabulary `columns` when given."""
        x = self._ln(x, self.ln_final)
        if columns is None:
            return x @ self.W_U + (0 if self.b_U is None else self.b_U)
        return x @ self.W_U[:, columns] + (0 if self.b_U is None else self.b_U[columns])

    # -- runs ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def clean(self, tokens: Tensor, logits: bool = False) -> Clean:
        """The unpatched run, every layer's streams kept; with `logits`, the full logits too (for `verify`)."""
        n = tokens.shape[1]
        x = self.W_E[tokens] + self.W_pos[:n]
        c = Clean(tokens, [], [], [], [], [], logits=torch.empty(0))
        for layer in self.layers:
            c.resid_pre.append(x)
            attn, z, k, v = self._attention(layer, x, 0, None, n)
            x = x + attn
            c.resid_mid.append(x)
            c.z.append(z)
            c.k.append(k)
            c.v.append(v)
            x = x + self._mlp(layer, x)
        c.resid_pre.append(x)
        if logits:
            c.logits = self.unembed(x)
        return c

    @torch.no_grad()
    def run(self, layer: int, stage: str, x: Tensor, start: int, clean: Clean, keep: int,
            columns: list[int] | None = None) -> Tensor:
        """Logits (rows, keep, vocab or len(columns)) at the last `keep` positions, continuing from the residual `x`
        (rows, p - start, d) at positions start.. of (layer, stage); rows = copies × clean batch, copy-major."""
        copies = x.shape[0] // clean.tokens.shape[0]
        for i in range(layer, self.n_layers):
            w = self.layers[i]
            last = i == self.n_layers - 1
            n_query = min(keep, x.shape[1]) if last else x.shape[1]  # the last block: only positions read out
            if (i > layer or stage == "pre") and last and start == 0 and n_query < x.shape[1]:
                x = x[:, x.shape[1] - n_query:] + self._attention_readout(w, x, n_query)
            elif i > layer or stage == "pre":
                past = None
                if start > 0:  # positions before `start` are unchanged: their keys and values are the clean ones
                    past = tuple(t[i][:, :start].repeat(copies, 1, 1, 1) for t in (clean.k, clean.v))
                attn, *_ = self._attention(w, x, start, past, n_query)
                x = x[:, x.shape[1] - n_query:] + attn
            else:
                x = x[:, x.shape[1] - n_query:]
            x = x + self._mlp(w, x)
        return self.unembed(x[:, x.shape[1] - keep:], columns)

    @torch.no_grad()
    def verify(self, model: Any, clean: Clean, tol: float = 1e-5) -> float:
        """Max |Δ| between the fused clean logits and the bridge's forward on the same tokens, or inf if above
        `tol` × max(1, max |logit|)."""
        ref = model(clean.tokens)
        diff = (clean.logits - ref).abs().max().item()
        return diff if diff <= tol * max(1.0, ref.abs().max().item()) else math.inf


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (weights key, verified engine or None)


def _weights_key(model: Any) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


def engine_for(model: Any, tokens: Tensor) -> tuple[FusedGPT2, Clean] | None:
    """`model`'s verified fused engine and its clean run on `tokens`, or None where the architecture is not covered
    or the fused logits do not match the bridge's (checked once per model and state of its weights)."""
    key = _weights_key(model)
    hit = _ENGINES.get(model)
    if hit is not None and hit[0] == key:
        return None if hit[1] is None else (hit[1], hit[1].clean(tokens))
    engine, result = FusedGPT2.from_bridge(model), None
    if engine is not None:
        clean = engine.clean(tokens, logits=True)
        if engine.verify(model, clean) < math.inf:
            result = (engine, clean)
        else:
            warnings.warn("the fused forward does not match the bridge's: patching with full hooked forwards "
                          "(slower)", RuntimeWarning, stacklevel=3)
    _ENGINES[model] = (key, None if result is None else engine)
    return result
