"""What the analyses need to know about a model's architecture, in one place (no `if gpt2` in the analyses).

`adapter_for(bridge)` reads the bridge's config once: the final norm's kind (LayerNorm centres and scales, RMSNorm
only scales), whether positions enter as a learned embedding (GPT-2) or inside attention (rotary: no
`hook_pos_embed`), the key/value head of each query head (grouped-query attention), and where a neuron's activation
is hooked (`mlp.hook_post`: for a gated MLP that is act(gate) · up, the input of the down projection), and what a
block does beyond the plain pre-norm attention-then-MLP block (`extras`: the fused patching engine, analysis/fused.py,
covers a model only where that is empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rlhf_interp.errors import UserError

# models whose attention output passes a norm before it joins the residual stream (Gemma 2/3 "sandwich" norms): a
# single head's output difference (z·W_O) is then not an additive part of `hook_attn_out`
POST_ATTN_NORM = {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"}
NORMS = {"LN": True, "LNPre": True, "RMS": False, "RMSPre": False}  # normalization_type -> centres?


@dataclass(frozen=True)
class Arch:
    norm: str
    centres: bool
    pos_embed: bool
    n_heads: int
    n_kv_heads: int
    post_attn_norm: bool = False
    gated_mlp: bool = False
    parallel: bool = False  # attention and MLP read the same residual (GPT-NeoX, GPT-J)
    extras: tuple[str, ...] = ()  # features beyond the plain block, see `block_extras`

    def embedding_hooks(self) -> dict[str, str]:
        """Row name -> hook of what enters the residual stream before the first block."""
        return {"embed": "hook_embed", **({"pos_embed": "hook_pos_embed"} if self.pos_embed else {})}

    def neuron_hook(self, layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    def kv_head(self, head: int) -> int:
        """The key/value head query head `head` reads (grouped-query attention: h // (n_heads / n_kv))."""
        return head // (self.n_heads // self.n_kv_heads)

    def norm_scale(self, resid: Tensor, eps: float) -> Tensor:
        """The final norm's divisor for residual vectors (..., d_model) -> (..., 1)."""
        x = resid - resid.mean(-1, keepdim=True) if self.centres else resid
        return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def block_extras(model: Any) -> tuple[str, ...]:
    """What the blocks of `model` do beyond pre-norm attention (causal, full-width rotary in the rotate-half layout or
    none) then MLP, with one norm kind throughout and an unscaled embedding: names of the features found."""
    cfg = model.cfg
    d_head = int(cfg.d_head)
    rope = getattr(cfg, "rope_parameters", None)
    rms = NORMS.get(str(getattr(cfg, "normalization_type", None))) is False
    checks = {
        "parallel attention and MLP": getattr(cfg, "parallel_attn_mlp", False),
        "norms after attention and MLP": bool(getattr(cfg, "use_normalization_before_and_after", False))
        or str(getattr(cfg, "architecture", "")) in POST_ATTN_NORM,
        "query/key norms": getattr(cfg, "use_qk_norm", False),
        "(1 + w) norm gains": getattr(cfg, "rmsnorm_uses_offset", False)
        or any(getattr(n, "uses_weight_offset", False) for n in _norm_modules(model)),
        "scaled embedding": bool(getattr(cfg, "scale_embedding", None)),
        "norm after the embedding": getattr(cfg, "post_embedding_ln", False),
        "attention score soft-cap": (getattr(cfg, "attn_scores_soft_cap", -1) or -1) > 0,
        "logit soft-cap": (getattr(cfg, "output_logits_soft_cap", -1) or -1) > 0,
        "local attention": getattr(cfg, "use_local_attn", False) or getattr(cfg, "window_size", None) is not None
        or any(getattr(_hf_attention(b), "sliding_window", None) is not None for b in getattr(model, "blocks", [])),
        "attention only": getattr(cfg, "attn_only", False),
        "mixture of experts": bool(getattr(cfg, "num_experts", None)),
        "attention scaled by inverse layer index": getattr(cfg, "scale_attn_by_inverse_layer_idx", False),
        "split per-head attention inputs": getattr(cfg, "use_split_qkv_input", False) or getattr(cfg, "use_attn_in",
                                                                                                  False),
        "adjacent-pair rotary": getattr(cfg, "rotary_adjacent_pairs", False)
        or getattr(cfg, "rotary_interleaved_cos_sin", False),
        "partial rotary": getattr(cfg, "positional_embedding_type", None) == "rotary"
        and getattr(cfg, "rotary_dim", None) not in (None, d_head),
        "llama-4 query scaling": isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None,
        "norms of another kind than normalization_type": any(
            getattr(n, "uses_rms_norm", rms) != rms for n in _norm_modules(model)),
        "per-layer head shapes": getattr(cfg, "per_layer_head_dim", None) is not None
        or getattr(cfg, "per_layer_num_key_value_heads", None) is not None,
        "positions other than learned or rotary": getattr(cfg, "positional_embedding_type", "standard")
        not in ("standard", "rotary"),
    }
    return tuple(name for name, found in checks.items() if found)


def _norm_modules(model: Any) -> list[Any]:
    blocks = list(getattr(model, "blocks", []))
    found = [getattr(b, name, None) for b in blocks for name in ("ln1", "ln2")] + [getattr(model, "ln_final", None)]
    return [n for n in found if n is not None]


def _hf_attention(block: Any) -> Any:
    attn = getattr(block, "attn", None)
    return getattr(attn, "original_component", None) or attn


def adapter_for(model: Any) -> Arch:
    cfg = model.cfg
    norm = str(getattr(cfg, "normalization_type", None))
    if norm not in NORMS:
        raise UserError(f"normalization {norm!r} is not supported; supported: LayerNorm (GPT-2, GPT-NeoX) and "
                        "RMSNorm (Llama, Qwen2, Gemma) models")
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    return Arch(norm=norm, centres=NORMS[norm], n_heads=n_heads, n_kv_heads=n_kv,
                pos_embed=getattr(cfg, "positional_embedding_type", "standard") == "standard",
                post_attn_norm=str(getattr(cfg, "architecture", "")) in POST_ATTN_NORM,
                gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
                parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
                extras=block_extras(model))



# --- where each family keeps its parameters in a Hugging Face checkpoint (raw, unprocessed tensors) ---------------
@dataclass(frozen=True)
class RawLayout:
    """Names of one family's checkpoint tensors (`{L}` = layer; module prefixes: `.weight` / `.bias` are appended).

    `qkv`: how queries, keys and values are stored — "split" (separate q/k/v projections, `nn.Linear` (out, in)),
    "gpt2" (one `Conv1D` (in, out) with columns [q | k | v], heads contiguous in each) or "neox" (one `nn.Linear` whose
    output rows are [q, k, v] of head 0, then of head 1, ...). `conv1d`: every matrix is stored (in, out) (GPT-2).
    `norms`: role -> module of each per-layer norm (role names are the table's components). `gain_offset`: the gain a
    norm applies is offset + weight (Gemma's RMSNorm scales by 1 + w). `unembed` None: the unembedding is the token
    embedding (tied)."""

    qkv: str
    attn: tuple[str, ...]  # "split": (q, k, v, o); "gpt2"/"neox": (qkv, o)
    mlp_in: tuple[str, ...]  # gate and up (gated MLPs) or the one input projection
    mlp_out: str
    norms: dict[str, str]
    final_norm: str
    embed: str
    unembed: str | None
    pos_embed: str | None = None
    conv1d: bool = False
    gain_offset: float = 0.0


_LLAMA_ATTN = tuple(f"model.layers.{{L}}.self_attn.{p}_proj" for p in "qkvo")
_LLAMA_MLP = dict(mlp_in=("model.layers.{L}.mlp.gate_proj", "model.layers.{L}.mlp.up_proj"),
                  mlp_out="model.layers.{L}.mlp.down_proj", final_norm="model.norm", embed="model.embed_tokens",
                  unembed="lm_head")
_LLAMA_NORMS = {"norm_attn": "model.layers.{L}.input_layernorm",
                "norm_mlp": "model.layers.{L}.post_attention_layernorm"}
RAW_LAYOUTS = {
    "GPT2LMHeadModel": RawLayout(
        qkv="gpt2", attn=("transformer.h.{L}.attn.c_attn", "transformer.h.{L}.attn.c_proj"),
        mlp_in=("transformer.h.{L}.mlp.c_fc",), mlp_out="transformer.h.{L}.mlp.c_proj",
        norms={"norm_attn": "transformer.h.{L}.ln_1", "norm_mlp": "transformer.h.{L}.ln_2"},
        final_norm="transformer.ln_f", embed="transformer.wte", unembed="lm_head", pos_embed="transformer.wpe",
        conv1d=True),
    "LlamaForCausalLM": RawLayout(qkv="split", attn=_LLAMA_ATTN, norms=_LLAMA_NORMS, **_LLAMA_MLP),
    "Qwen2ForCausalLM": RawLayout(qkv="split", attn=_LLAMA_ATTN, norms=_LLAMA_NORMS, **_LLAMA_MLP),
    "GPTNeoXForCausalLM": RawLayout(
        qkv="neox", attn=("gpt_neox.layers.{L}.attention.query_key_value", "gpt_neox.layers.{L}.attention.dense"),
        mlp_in=("gpt_neox.layers.{L}.mlp.dense_h_to_4h",), mlp_out="gpt_neox.layers.{L}.mlp.dense_4h_to_h",
        norms={"norm_attn": "gpt_neox.layers.{L}.input_layernorm",
               "norm_mlp": "gpt_neox.layers.{L}.post_attention_layernorm"},
        final_norm="gpt_neox.final_layer_norm", embed="gpt_neox.embed_in", unembed="embed_out"),
    "Gemma3ForCausalLM": RawLayout(
        qkv="split", attn=_LLAMA_ATTN, gain_offset=1.0,
        norms={"norm_attn": "model.layers.{L}.input_layernorm",
               "norm_attn_out": "model.layers.{L}.post_attention_layernorm",
               "norm_mlp": "model.layers.{L}.pre_feedforward_layernorm",
               "norm_mlp_out": "model.layers.{L}.post_feedforward_layernorm",
               "norm_q": "model.layers.{L}.self_attn.q_norm", "norm_k": "model.layers.{L}.self_attn.k_norm"},
        **_LLAMA_MLP),
}


def raw_layout(architecture: str) -> RawLayout | None:
    """The checkpoint layout of a family whose raw tensors the weight analyses map to components (None: unknown,
    the analyses then compare tensor by tensor)."""
    return RAW_LAYOUTS.get(architecture)
