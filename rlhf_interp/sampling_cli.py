"""`rlhf-interp sample`: sampled continuations of a prompt set, with VADER scores."""

from __future__ import annotations

from pathlib import Path

from rlhf_interp.embedded.evaluate import vader_scores
from rlhf_interp.errors import UserError
from rlhf_interp.models import load_causal_lm, resolve_model_spec
from rlhf_interp.prompts import default_prompts, load_prompts
from rlhf_interp.sampling import sample_seeded


def run_sample(
    model_spec: str, prompts_file: Path | None, n: int, max_new_tokens: int, temperature: float, seed: int
) -> list[dict]:
    """Sample `n` continuations per prompt; rows of prompt, response and VADER score."""
    if n < 1 or max_new_tokens < 1:
        raise UserError("-n and --max-new-tokens must be >= 1")
    if temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {temperature}")
    source = resolve_model_spec(model_spec)
    prompts = load_prompts(prompts_file) if prompts_file else None
    model, tokenizer = load_causal_lm(source)
    prompts = prompts or default_prompts(tokenizer)
    batch = [p for p in prompts for _ in range(n)]
    _, texts = sample_seeded(model, tokenizer, batch, max_new_tokens, seed, temperature=temperature)
    return [
        {"prompt": p, "response": t, "score": s}
        for p, t, s in zip(batch, texts, vader_scores(texts), strict=True)
    ]
