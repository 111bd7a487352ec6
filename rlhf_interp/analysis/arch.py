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

