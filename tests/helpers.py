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
