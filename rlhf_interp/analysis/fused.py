"""The receiver's forward pass as plain tensor code, for patching sweeps that start mid-network.

`transformer_lens.patching` runs one full forward per cell through the bridge's hooks. A sweep does not need that:
a cell changes the residual stream from one (layer, stage, position) on, and everything before is the clean run.
`FusedForward` reads the bridge's own weights (views of its parameters, no copies) and runs

    clean(tokens)                  every layer's resid_pre / resid_mid, z, keys and values, once
    run(entries, stream, start)    patched streams entering at several (layer, stage) points, staggered in one
                                   pass (a block runs once for every stream that has entered by then), for
                                   positions start.. only: the keys and values of the
                                   positions before `start` are unchanged, so they come from the clean run;
                                   the last block's attention queries and MLP run only at the positions read out
                                   (and, from position 0 with learned positions, without forming its keys and values);
                                   the readout unembeds only the vocabulary columns the metric reads

What it covers is read from the architecture adapter (analysis/arch.py), never from a model name: pre-norm blocks,
attention then MLP, with
- LayerNorm (GPT-2) or RMSNorm (Llama, Qwen2: x / √(mean x² + ε), no centring). In compatibility mode the bridge folds
  every norm's gain (and LayerNorm's bias) into the weights that read it and leaves the gain at 1; the engine applies
  whatever gain the norm module still holds (none where it is exactly 1);
- learned absolute positions added to the embedding (GPT-2), or rotary positions (full width, rotate-half layout):
  cos/sin come from the bridge's own rotary module, once per prompt length, and a run starting at position `start`
  rotates its queries and new keys with the rows start.., so cached clean keys (stored rotated) stay valid;
- grouped-query attention: keys and values have n_kv_heads heads, query head h reads key/value head
  h // (n_heads / n_kv_heads) (as `repeat_kv` does); z stays per query head;
- an MLP act(x W_in) W_out, or gated act(x W_gate) · (x W_in) W_out (SwiGLU: silu);
- q/k/v/o and MLP biases where the model has them (Qwen2's q/k/v biases), none where it has not;
- the unembedding W_U (tied or untied: the bridge exposes the folded read-out either way) and b_U where nonzero.
`from_bridge` returns None where the adapter lists anything beyond that (`Arch.extras`: parallel attention and MLP,
post-attention norms, soft-caps, sliding windows, partial rotary, ...); those models use hooked forwards.
`engine_for` verifies an engine once per model and state of its weights: the clean run's logits against the bridge's
own forward on the same tokens (callers fall back to hooked full forwards, with a warning, where it fails). Any
in-place change of a parameter bumps its version and triggers a rebuild and a new check.
Shapes: batch b, positions p, heads h (key/value heads g), d_head e, d_model d.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_interp.analysis.arch import adapter_for
from rlhf_interp.errors import UserError

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
    k: list[Tensor]  # (b, p, g, e), rotated where positions are rotary
    v: list[Tensor]  # (b, p, g, e)
    logits: Tensor  # (b, p, vocab) when asked for (verification against the bridge), else empty


@dataclass
class _Layer:  # weights as (out, in) views for F.linear; None where the model has no such bias
    ln1: tuple[Tensor | None, Tensor | None]
    W_qkv: tuple[Tensor, Tensor, Tensor]  # (h e, d), (g e, d), (g e, d)
    b_qkv: tuple[Tensor | None, Tensor | None, Tensor | None]  # (h e,), (g e,), (g e,)
    W_O: Tensor  # (d, h e)
    b_O: Tensor | None
    ln2: tuple[Tensor | None, Tensor | None]
    W_in: Tensor  # (d_mlp, d); the "up" projection of a gated MLP
    b_in: Tensor | None
    W_gate: Tensor | None  # (d_mlp, d) for a gated MLP
    b_gate: Tensor | None
    W_out: Tensor  # (d, d_mlp)
    b_out: Tensor | None


def _ln_params(module: Any, centres: bool) -> tuple[Tensor | None, Tensor | None]:
    """The norm's (folded) gain and bias, None where the module has none; an RMSNorm gain of exactly 1 (what folding
    leaves) is dropped, so is any bias of an RMSNorm (the bridge applies none)."""
    inner = getattr(module, "original_component", None) or module
    w, b = getattr(inner, "weight", None), getattr(inner, "bias", None) if centres else None
    if w is not None and not centres and bool((w == 1).all()):
        w = None
    return w, b


def _flat(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.reshape(-1)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, rotate-half layout (as transformers' `apply_rotary_pos_emb`): x (b, n, heads, e), cos and sin
    (n, e) for the positions of x."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class FusedForward:
    def __init__(self, model: Any) -> None:
        cfg = model.cfg
        arch = adapter_for(model)
        self.n_layers, self.n_heads, self.d_head = int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head)
        self.n_kv_heads = arch.n_kv_heads
        self.centres = arch.centres
        self.eps = float(cfg.eps)
        self.act = ACTIVATIONS[cfg.act_fn]
        divisor = math.sqrt(self.d_head) if cfg.attn_scale in (None, -1, -1.0) else float(cfg.attn_scale)
        self.scale = 1.0 / divisor if getattr(cfg, "use_attn_scale", True) else 1.0
        self.W_E = model.W_E
        self.W_pos = model.W_pos if arch.pos_embed else None
        self.rotary = None if arch.pos_embed else model.rotary_emb
        self._cos_sin: dict[int, tuple[Tensor, Tensor]] = {}
        self.keyless = self.rotary is None and self.n_kv_heads == self.n_heads  # see `_attention_readout`
        if self.rotary is not None and self.rotary_table(1)[0].shape[-1] != self.d_head:
            raise TypeError("rotary embedding narrower than the head")  # partial rotary: not covered
        self.W_U = model.W_U
        b_U = getattr(model, "b_U", None)
        self.b_U = None if b_U is None or not bool(b_U.any()) else b_U
        self.ln_final = _ln_params(model.ln_final, self.centres)
        self.layers = []
        for block in model.blocks:
            a, m = block.attn, block.mlp
            W_qkv = tuple(w.permute(1, 0, 2).reshape(w.shape[1], -1).T for w in (a.W_Q, a.W_K, a.W_V))
            gate = getattr(m, "W_gate", None) if arch.gated_mlp else None
            self.layers.append(_Layer(
                ln1=_ln_params(block.ln1, self.centres), W_qkv=W_qkv,
                b_qkv=tuple(_flat(getattr(a, k, None)) for k in ("b_Q", "b_K", "b_V")),
                W_O=a.W_O.reshape(-1, a.W_O.shape[-1]).T, b_O=getattr(a, "b_O", None),
                ln2=_ln_params(block.ln2, self.centres),
                W_in=m.W_in.T, b_in=getattr(m, "b_in", None),
                W_gate=None if gate is None else gate.T,
                b_gate=None if gate is None else getattr(m, "b_gate", None),
                W_out=m.W_out.T, b_out=getattr(m, "b_out", None)))
            if arch.gated_mlp and gate is None:
                raise TypeError("gated MLP without W_gate")

    @classmethod
    def from_bridge(cls, model: Any) -> FusedForward | None:
        """The fused forward of a bridge, or None where its architecture is not covered (see the module docstring)."""
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "blocks"):
            return None
        try:
            arch = adapter_for(model)
        except UserError:
            return None
        if arch.extras or getattr(cfg, "act_fn", None) not in ACTIVATIONS or arch.n_heads % arch.n_kv_heads:
            return None
        try:
            return cls(model)
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError):  # a bridge laid out differently
            return None

    # -- pieces --------------------------------------------------------------------------------------------------
    def _ln(self, x: Tensor, params: tuple[Tensor | None, Tensor | None]) -> Tensor:
        if self.centres:
            return F.layer_norm(x, x.shape[-1:], params[0], params[1], self.eps)
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return out if params[0] is None else out * params[0]

    def rotary_table(self, n: int) -> tuple[Tensor, Tensor]:
        """cos and sin (n, e) of positions 0..n-1, from the bridge's rotary module (its scaling included)."""
        if n not in self._cos_sin:
            probe = self.W_E[:1, : self.d_head][None].expand(1, n, self.d_head)  # dtype and device only
            cos, sin = self.rotary(probe, torch.arange(n, device=probe.device)[None])
            self._cos_sin[n] = (cos[0].to(probe.dtype), sin[0].to(probe.dtype))
        return self._cos_sin[n]

    def _attention(self, layer: _Layer, x: Tensor, start: int, past: tuple[Tensor, Tensor] | None, n_query: int
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attention output (b, n_query, d) for the last `n_query` of the positions start.. in `x` (b, n, d), keys and
        values of positions < start taken from `past` ((b, start, g, e) each); also z (b, n_query, h, e) and the new
        positions' k, v (b, n, g, e), k rotated."""
        b, n, _ = x.shape
        h = self._ln(x, layer.ln1)
        q = F.linear(h[:, n - n_query:], layer.W_qkv[0], layer.b_qkv[0]).view(b, n_query, self.n_heads, self.d_head)
        k, v = (F.linear(h, w, bias).view(b, n, self.n_kv_heads, self.d_head)
                for w, bias in zip(layer.W_qkv[1:], layer.b_qkv[1:], strict=True))
        if self.rotary is not None:  # rows of the table at the positions of the new keys and of the queries
            cos, sin = self.rotary_table(start + n)
            k = _rotate(k, cos[start:], sin[start:])
            q = _rotate(q, cos[start + n - n_query:], sin[start + n - n_query:])
        k_all = k if past is None else torch.cat([past[0], k], 1)
        v_all = v if past is None else torch.cat([past[1], v], 1)
        q_pos = torch.arange(start + n - n_query, start + n, device=x.device)
        allowed = torch.arange(start + n, device=x.device)[None, :] <= q_pos[:, None]  # causal: (n_query, start + n)
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2),
                                           attn_mask=allowed, scale=self.scale,
                                           enable_gqa=self.n_kv_heads != self.n_heads).transpose(1, 2)
        return F.linear(z.reshape(b, n_query, -1), layer.W_O, layer.b_O), z, k, v

    def _attention_readout(self, layer: _Layer, x: Tensor, n_query: int) -> Tensor:
        """`_attention` for the last block when only the last `n_query` positions are read and no position is cached:
        keys and values are never formed. With h = ln1(x): q·k_j = (q W_K)·h_j + q·b_K (the last term is the same for
        every j, so softmax drops it), and Σ_j p_j v_j = (Σ_j p_j h_j) W_V + b_V. Per row that is O(n_query · d_model)
        per head instead of O(n · d_model · d_head). Learned positions and one key/value head per query head only:
        a rotary key depends on its position."""
        b, n, d = x.shape
        h = self._ln(x, layer.ln1)
        W_K, W_V = (w.reshape(self.n_heads, self.d_head, d) for w in layer.W_qkv[1:])  # (h, e, d) each
        q = F.linear(h[:, n - n_query:], layer.W_qkv[0], layer.b_qkv[0]).view(b, n_query, self.n_heads, self.d_head)
        qk = torch.einsum("bqhe,hed->bhqd", q, W_K)  # (b, h, n_query, d)
        scores = torch.einsum("bhqd,bkd->bhqk", qk, h) * self.scale  # (b, h, n_query, n)
        allowed = torch.arange(n, device=x.device)[None, :] <= torch.arange(n - n_query, n, device=x.device)[:, None]
        pattern = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        mixed = torch.einsum("bhqk,bkd->bqhd", pattern, h)  # (b, n_query, h, d)
        z = torch.einsum("bqhd,hed->bqhe", mixed, W_V)
        if layer.b_qkv[2] is not None:
            z = z + layer.b_qkv[2].view(self.n_heads, self.d_head)
        return F.linear(z.reshape(b, n_query, -1), layer.W_O, layer.b_O)

    def _mlp(self, layer: _Layer, x: Tensor) -> Tensor:
        h = self._ln(x, layer.ln2)
        hidden = self.act(F.linear(h, layer.W_gate if layer.W_gate is not None else layer.W_in,
                                   layer.b_gate if layer.W_gate is not None else layer.b_in))
        if layer.W_gate is not None:  # gated: act(x W_gate) · (x W_in)
            hidden = hidden.mul_(F.linear(h, layer.W_in, layer.b_in))
        return F.linear(hidden, layer.W_out, layer.b_out)

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
        x = self.W_E[tokens] if self.W_pos is None else self.W_E[tokens] + self.W_pos[:n]
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
    def run(self, entries: Sequence[tuple[int, str]], stream: Callable[[int], Tensor], start: int, clean: Clean,
            keep: int, columns: list[int] | None = None) -> Tensor:
        """Logits (rows, keep, vocab or len(columns)) at the last `keep` positions for several patched streams at
        once; rows = len(entries) × clean batch, in the order of `entries`. Stream j enters at `entries[j]` = (layer,
        stage), sorted by layer and, within a layer, "pre" before "mid" ((n_layers, "pre"): the final residual);
        `stream(j)` is its residual (batch, p - start, d) at positions start.. there, built when the run reaches
        it. The runs are staggered: the batch grows as streams enter, so every stream is computed from its own entry
        point on, and each block runs once for all the streams in flight (large matrix products instead of one small
        forward per entry point)."""
        order = [(layer, 0 if stage == "pre" else 1) for layer, stage in entries]
        if order != sorted(order):
            raise ValueError("entries must be sorted by layer, then stage (pre before mid)")
        batch, n = clean.tokens.shape[0], clean.tokens.shape[1] - start
        x: Tensor | None = None
        j = 0
        for i in range(order[0][0], self.n_layers):
            w = self.layers[i]
            n_query = min(keep, n) if i == self.n_layers - 1 else n  # the last block: only positions read out
            x, j = _enter(x, order, j, (i, 0), stream, n)
            if x is not None:
                if i == self.n_layers - 1 and start == 0 and n_query < n and self.keyless:
                    x = x[:, n - n_query:] + self._attention_readout(w, x, n_query)
                else:
                    past = None
                    if start > 0:  # positions before `start` are unchanged: their keys and values are the clean ones
                        copies = x.shape[0] // batch
                        past = tuple(t[i][:, :start].repeat(copies, 1, 1, 1) for t in (clean.k, clean.v))
                    attn, *_ = self._attention(w, x, start, past, n_query)
                    x = x[:, n - n_query:] + attn
            x, j = _enter(x, order, j, (i, 1), stream, n_query)  # entering after the attention: skipped
            assert x is not None
            x = x + self._mlp(w, x)
        if x is not None:
            x = x[:, x.shape[1] - keep:]
        x, j = _enter(x, order, j, (self.n_layers, 0), stream, keep)  # the final residual (the last MLP's output)
        if j != len(order):
            raise ValueError(f"entry {entries[j]} is past the last layer")
        assert x is not None
        return self.unembed(x[:, x.shape[1] - keep:], columns)

    @torch.no_grad()
    def verify(self, model: Any, clean: Clean, tol: float = 1e-5) -> float:
        """Max |Δ| between the fused clean logits and the bridge's forward on the same tokens, or inf if above
        `tol` × max(1, max |logit|)."""
        ref = model(clean.tokens)
        diff = (clean.logits - ref).abs().max().item()
        return diff if diff <= tol * max(1.0, ref.abs().max().item()) else math.inf


def _enter(x: Tensor | None, order: list[tuple[int, int]], j: int, here: tuple[int, int],
           stream: Callable[[int], Tensor], width: int) -> tuple[Tensor | None, int]:
    """Append to the batch `x` the streams from entry j on that enter `here` (their last `width` positions);
    returns the batch and the next entry."""
    new = []
    while j < len(order) and order[j] == here:
        t = stream(j)
        new.append(t[:, t.shape[1] - width:])
        j += 1
    if new:
        x = torch.cat(new if x is None else [x, *new])
    return x, j


FusedGPT2 = FusedForward  # the name from when it covered GPT-2 only


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (weights key, verified engine or None)


def _weights_key(model: Any) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


def engine_for(model: Any, tokens: Tensor) -> tuple[FusedForward, Clean] | None:
    """`model`'s verified fused engine and its clean run on `tokens`, or None where the architecture is not covered
    or the fused logits do not match the bridge's (checked once per model and state of its weights)."""
    key = _weights_key(model)
    hit = _ENGINES.get(model)
    if hit is not None and hit[0] == key:
        return None if hit[1] is None else (hit[1], hit[1].clean(tokens))
    engine, result = FusedForward.from_bridge(model), None
    if engine is not None:
        clean = engine.clean(tokens, logits=True)
        if engine.verify(model, clean) < math.inf:
            result = (engine, clean)
        else:
            warnings.warn("the fused forward does not match the bridge's: patching with full hooked forwards "
                          "(slower)", RuntimeWarning, stacklevel=3)
    _ENGINES[model] = (key, None if result is None else engine)
    return result
