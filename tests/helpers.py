"""Helpers for tests: small models built on the spot (never downloaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf_interp.embedded.corpus import generate_reviews
from rlhf_interp.embedded.pretrain import train_tokenizer
from rlhf_interp.models import save_model


def make_tiny_gpt2(out: Path, vocab_size: int = 300, seed: int = 0, n_layer: int = 2, n_embd: int = 32) -> Path:
    """A randomly initialised GPT-2 (n_layer x n_embd, 4 heads) with a freshly trained BPE tokenizer, saved to `out`."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(generate_reviews(400, seed=seed), vocab_size)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    save_model(GPT2LMHeadModel(config).eval(), tokenizer, out)
    return out


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `rlhf-interp ARGS` as a user would (a fresh process), capturing output."""
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rlhf_interp.cli.app", *args],
        capture_output=True, text=True, cwd=cwd, env=full_env, timeout=600,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, a single `error: ...` line on stderr naming the offending thing, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def sentiment_direction(model, tokenizer) -> torch.Tensor:
    """Residual-space direction that raises the default logit_diff metric (through ln_f's gain), unit norm."""
    from rlhf_interp.analysis.metric import NEGATIVE_WORDS, POSITIVE_WORDS, single_token_ids

    wte = model.transformer.wte.weight.detach()
    pos = list(single_token_ids(tokenizer, POSITIVE_WORDS).values())
    neg = list(single_token_ids(tokenizer, NEGATIVE_WORDS).values())
    d = (wte[pos].mean(0) - wte[neg].mean(0)) * model.transformer.ln_f.weight.detach()
    return d / d.norm()


def plant_head(src: Path, out: Path, layer: int, head: int, alpha: float = 30.0) -> Path:
    """Copy of `src` whose head (layer, head) writes alpha * the sentiment direction at every position:
    its value bias gets a vector u and its OV output maps u onto the direction."""
    from rlhf_interp.models import load_causal_lm

    model, tok = load_causal_lm(str(src))
    d = sentiment_direction(model, tok)
    attn = model.transformer.h[layer].attn
    d_model, n_heads = model.config.n_embd, model.config.n_head
    d_head = d_model // n_heads
    g = torch.Generator().manual_seed(layer * 10 + head)
    u = torch.randn(d_head, generator=g)
    u = 3 * u / u.norm()
    with torch.no_grad():
        attn.c_attn.bias[2 * d_model + head * d_head : 2 * d_model + (head + 1) * d_head] += u
        attn.c_proj.weight[head * d_head : (head + 1) * d_head] += alpha * torch.outer(u, d) / u.dot(u)
    save_model(model, tok, out)
    return out


def plant_neuron(src: Path, out: Path, layer: int, neuron: int, alpha: float = 10.0) -> Path:
    """Copy of `src` whose MLP neuron (layer, neuron) is always on (pre-activation bias +3) and writes
    alpha / 3 * the sentiment direction."""
    from rlhf_interp.models import load_causal_lm

    model, tok = load_causal_lm(str(src))
    d = sentiment_direction(model, tok)
    mlp = model.transformer.h[layer].mlp
    with torch.no_grad():
        mlp.c_fc.bias[neuron] += 3.0
        mlp.c_proj.weight[neuron] += alpha / 3 * d
    save_model(model, tok, out)
    return out
