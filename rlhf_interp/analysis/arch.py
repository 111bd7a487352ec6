"""What the analyses need to know about a model's architecture, in one place (no `if gpt2` in the analyses).

`adapter_for(bridge)` reads the bridge's config once: the final norm's kind (LayerNorm centres and scales, RMSNorm
only scales), whether positions enter as a learned embedding (GPT-2) or inside attention (rotary: no
`hook_pos_embed`), the key/value head of each query head (grouped-query attention), and where a neuron's activation
is hooked (`mlp.hook_post`: for a gated MLP that is act(gate) · up, the input of the down projection).
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
                post_attn_norm=str(getattr(cfg, "architecture", "")) in POST_ATTN_NORM)

