"""Tiny random models of the architecture families users bring, and planted changes in each (never downloaded).

`make_tiny_model(family, out)` builds a 2-layer model with a freshly trained BPE tokenizer (the embedded corpus) and
saves it with `save_model`. Families: GPT-2; Llama (tied and untied embeddings; RMSNorm, RoPE, GQA 4 query / 2
key-value heads, SwiGLU); Qwen2 (as Llama plus q/k/v biases); GPT-NeoX / Pythia (parallel attention and MLP, partial
rotary, LayerNorm with biases); Gemma 3 (Gemma3ForCausalLM: (1 + w) RMSNorm, q/k norms, sandwich norms, GQA, gelu-gated
MLP, scaled embeddings, local/global layers).

Random token embeddings have no shared direction, so a linear map of the residual has no consistent sign and a planted
change could not write one direction at every position. Real LMs do have a large mean embedding direction; the
non-GPT-2 builders add one (`DC_SCALE` x a fixed unit vector, about the norm of a token's own embedding), and the
planting reads the consistent part of the activation it keys on from a forward pass over a probe text set:

- `plant_head(src, out, family, layer, head)`: only the query head's columns of the attention output projection
  change: they map the head's mean z (over probe positions) onto alpha x the sentiment direction. Key/value heads,
  shared with other query heads under GQA, are untouched, so exactly one query head's weights change.
- `plant_neuron(src, out, family, layer, neuron)`: one MLP neuron made active on every token (its gate and up rows, or
  its input bias on ungated MLPs, get the mean normalised input) and its down-projection column (row of W_out) writes
  the sentiment direction.

GPT-2 uses tests/helpers.py's `plant_head` / `plant_neuron` (value bias / pre-activation bias), validated earlier.
"""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import plant_head as plant_gpt2_head
from helpers import plant_neuron as plant_gpt2_neuron
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rlhf_interp.embedded.corpus import generate_reviews
from rlhf_interp.embedded.pretrain import train_tokenizer
from rlhf_interp.models import load_causal_lm, save_model

FAMILIES = ("gpt2", "llama", "llama_untied", "qwen2", "neox", "gemma3")
ARCHITECTURE = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "llama_untied": "LlamaForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "neox": "GPTNeoXForCausalLM", "gemma3": "Gemma3ForCausalLM"}
D_MODEL, N_LAYERS, N_HEADS, N_KV_HEADS, D_MLP = 64, 2, 4, 2, 128
DC_SCALE = 1.0  # the shared embedding direction's norm, relative to the mean token-embedding norm
PROBE_TEXTS = ["This movie is", "The acting was", "I thought the plot", "Honestly, the film", "The ending felt",
               "Overall the story", "My friends said it", "The soundtrack is"]


def _config(family: str, tokenizer) -> object:
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer))
    if family == "gpt2":
        return GPT2Config(n_positions=128, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, **special)
    llama_like = dict(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                      num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS, max_position_embeddings=128,
                      rms_norm_eps=1e-6, attention_dropout=0.0, **special)
    if family in ("llama", "llama_untied"):
        return LlamaConfig(tie_word_embeddings=family == "llama", rope_theta=10000.0, **llama_like)
    if family == "qwen2":
        return Qwen2Config(tie_word_embeddings=False, use_sliding_window=False, **llama_like)
    if family == "neox":
        return GPTNeoXConfig(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                             num_attention_heads=N_HEADS, rotary_pct=0.25, use_parallel_residual=True,
                             max_position_embeddings=128, hidden_dropout=0.0, attention_dropout=0.0,
                             tie_word_embeddings=False, **special)
    if family == "gemma3":
        return Gemma3TextConfig(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                                num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS,
                                head_dim=D_MODEL // N_HEADS,
                                query_pre_attn_scalar=D_MODEL // N_HEADS, max_position_embeddings=128,
                                sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                                attention_dropout=0.0, final_logit_softcapping=None, attn_logit_softcapping=None,
                                **special)
    raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")


_CLASSES = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "llama_untied": LlamaForCausalLM,
            "qwen2": Qwen2ForCausalLM, "neox": GPTNeoXForCausalLM, "gemma3": Gemma3ForCausalLM}


def build_tiny_model(family: str, vocab_size: int = 1000, seed: int = 0):
    """(model, tokenizer): a random-init `family` model (eval mode) and its freshly trained tokenizer."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(generate_reviews(400, seed=seed), vocab_size)
    model = _CLASSES[family](_config(family, tokenizer)).eval()
    if family == "gemma3":  # random norm gains (Gemma stores w with a 1 + w scale; zero init would hide bugs in it)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0.0, 0.2)
    elif family != "gpt2":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight") and p.dim() == 1:
                    p.uniform_(0.7, 1.3)
    if family != "gpt2":
        g = torch.Generator().manual_seed(1000 + seed)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            m = torch.randn(emb.shape[1], generator=g)
            emb += DC_SCALE * emb.norm(dim=1).mean() * m / m.norm()
    return model, tokenizer


def make_tiny_model(family: str, out: Path, vocab_size: int = 1000, seed: int = 0) -> Path:
    """Build a tiny random `family` model with its own tokenizer and save it to `out`; returns `out`."""
    model, tokenizer = build_tiny_model(family, vocab_size, seed)
    save_model(model, tokenizer, out)
    return out


def family_of(model: PreTrainedModel) -> str:
    arch = type(model).__name__
    if arch == "LlamaForCausalLM":
        return "llama" if model.config.tie_word_embeddings else "llama_untied"
    return {v: k for k, v in ARCHITECTURE.items() if k != "llama_untied"}[arch]


def _blocks(model: PreTrainedModel):
    return model.gpt_neox.layers if hasattr(model, "gpt_neox") else model.model.layers


def final_norm_gain(model: PreTrainedModel) -> torch.Tensor:
    """The per-dimension gain of the final norm (Gemma's (1 + w) included)."""
    fam = family_of(model)
    if fam == "gpt2":
        return model.transformer.ln_f.weight.detach()
    if fam == "neox":
        return model.gpt_neox.final_layer_norm.weight.detach()
    w = model.model.norm.weight.detach()
    return 1.0 + w if fam == "gemma3" else w


def sentiment_direction(model: PreTrainedModel, tokenizer) -> torch.Tensor:
    """Residual-space direction (before the final norm) that raises the logit_diff metric, unit norm."""
    from rlhf_interp.analysis.metric import NEGATIVE_WORDS, POSITIVE_WORDS, single_token_ids

    w_u = model.get_output_embeddings().weight.detach()
    pos = list(single_token_ids(tokenizer, POSITIVE_WORDS).values())
    neg = list(single_token_ids(tokenizer, NEGATIVE_WORDS).values())
    assert len(pos) >= 3 and len(neg) >= 3, "the tiny vocabulary lacks sentiment words"
    d = (w_u[pos].mean(0) - w_u[neg].mean(0)) * final_norm_gain(model)
    return d / d.norm()


def _mean_input(model: PreTrainedModel, tokenizer, module: torch.nn.Module) -> torch.Tensor:
    """The mean over probe-text positions of what `module` receives (its first positional input)."""
    seen: list[torch.Tensor] = []
    def keep(_module, args):
        seen.append(args[0].detach().reshape(-1, args[0].shape[-1]))

    handle = module.register_forward_pre_hook(keep)
    try:
        with torch.no_grad():
            for text in PROBE_TEXTS:
                ids = tokenizer(text, return_tensors="pt")["input_ids"]
                ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
                model(ids)
    finally:
        handle.remove()
    return torch.cat(seen).mean(0)


def _attn_out_proj(model: PreTrainedModel, layer: int) -> torch.nn.Linear:
    block = _blocks(model)[layer]
    return block.attention.dense if family_of(model) == "neox" else block.self_attn.o_proj


def plant_head(src: Path, out: Path, family: str, layer: int, head: int, alpha: float = 30.0) -> Path:
    """Copy of `src` whose query head (layer, head) also writes about alpha x the sentiment direction at every
    position (through its output-projection columns only)."""
    if family == "gpt2":
        return plant_gpt2_head(src, out, layer, head, alpha)
    model, tok = load_causal_lm(str(src))
    d = sentiment_direction(model, tok)
    proj = _attn_out_proj(model, layer)
    d_head = model.config.hidden_size // model.config.num_attention_heads
    if family == "gemma3":
        d_head = model.config.head_dim
    cols = slice(head * d_head, (head + 1) * d_head)
    z_mean = _mean_input(model, tok, proj)[cols]
    with torch.no_grad():
        proj.weight[:, cols] += alpha * torch.outer(d, z_mean) / z_mean.dot(z_mean)
    save_model(model, tok, out)
    return out


def plant_neuron(src: Path, out: Path, family: str, layer: int, neuron: int, alpha: float = 10.0) -> Path:
    """Copy of `src` whose MLP neuron (layer, neuron) is active on every token (pre-activation ~ +3; on gated MLPs
    gate and up both ~ +3) and whose output row writes about alpha x the sentiment direction."""
    if family == "gpt2":
        return plant_gpt2_neuron(src, out, layer, neuron, alpha)
    model, tok = load_causal_lm(str(src))
    d = sentiment_direction(model, tok)
    block = _blocks(model)[layer]
    with torch.no_grad():
        if family == "neox":
            mlp = block.mlp
            mlp.dense_h_to_4h.bias[neuron] += 3.0
            mlp.dense_4h_to_h.weight[:, neuron] += alpha / 3 * d
        else:
            mlp = block.mlp
            x = _mean_input(model, tok, mlp.gate_proj)
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight[neuron] += 3.0 * x / x.dot(x)
            act = mlp.act_fn(torch.tensor(3.0)).item() * 3.0
            mlp.down_proj.weight[:, neuron] += alpha / act * d
    save_model(model, tok, out)
    return out
