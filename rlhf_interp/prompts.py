"""Default prompt sets and prompt files (plain text, one prompt per line, or JSONL with a "prompt" field)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from rlhf_interp.errors import UserError

# Review openings in the embedded model's vocabulary (the seed task used "This movie is").
EMBEDDED_PROMPTS: tuple[str, ...] = (
    "This movie is",
    "The acting was",
    "The plot is",
    "The ending was",
    "This film is",
    "The soundtrack is",
    "The characters were",
    "The script was",
    "This product is",
    "The battery is",
    "The screen was",
    "The design is",
    "These headphones are",
    "The price was",
    "This phone is",
    "The delivery was",
)

# English openings for real GPT-2 (used when the model is not the embedded one).
ENGLISH_PROMPTS: tuple[str, ...] = (
    "This movie is",
    "I watched this film last night and",
    "The acting in this movie was",
    "The plot of the film",
    "My honest review: the movie",
    "The director's new film is",
    "I have to say this movie",
    "After seeing it twice, I think the film",
    "The soundtrack of this movie",
    "The characters in this story",
    "This product is",
    "I bought this phone and",
    "The battery life of this laptop",
    "Customer service was",
    "The restaurant we tried was",
    "Overall, the experience was",
)


def default_prompts(tokenizer: Any) -> list[str]:
    """The default prompt set: review openings for models with the embedded vocabulary (the embedded model and
    anything trained from it), the English set otherwise."""
    return list(EMBEDDED_PROMPTS if uses_embedded_vocab(tokenizer) else ENGLISH_PROMPTS)


@functools.cache
def _embedded_vocab() -> tuple[tuple[str, int], ...]:
    from transformers import AutoTokenizer

    from rlhf_interp.models import EMBEDDED_DIR

    return tuple(sorted(AutoTokenizer.from_pretrained(EMBEDDED_DIR).get_vocab().items()))


def uses_embedded_vocab(tokenizer: Any) -> bool:
    return tuple(sorted(tokenizer.get_vocab().items())) == _embedded_vocab()


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line; blank lines and lines starting with '#' skipped) or a .jsonl file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"prompt file not found: {path} (pass a text file with one prompt per line)")
    if path.is_dir():
        raise UserError(f"prompt file is a directory: {path} (pass a text file with one prompt per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 text ({e.reason})") from e
    prompts: list[str] = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if isinstance(row, str):
                prompts.append(row)
            elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
                prompts.append(row["prompt"])
            else:
                raise UserError(f'{path}:{lineno}: expected a string or an object with a "prompt" string')
    else:
        prompts = [line.rstrip("\r") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompts (one prompt per line expected)")
    return prompts
