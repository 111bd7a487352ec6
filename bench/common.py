"""Helpers shared by the benchmarks: machine notes, a GFLOP/s check, medians of interleaved runs."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def gflops(threads: int, n: int = 512, reps: int = 20) -> float:
    """A quick matmul throughput check (the machine is shared: report it beside every timing)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    elapsed = time.perf_counter() - t
    torch.set_num_threads(old)
    return 2 * n**3 * reps / elapsed / 1e9


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''}".strip() + f", torch {torch.__version__}"


def interleaved(a: Callable[[], object], b: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of `a` and of `b`, run A B A B ... so that machine noise hits both alike."""
    ta, tb = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def perturbed_pair(model: Any, tok: Any, root: Path, scale: float, seed: int) -> tuple[Path, Path]:
    """Save `model` as root/base, add seeded Gaussian noise (`scale` × each parameter's std) in place, save
    root/tuned."""
    from rlhf_interp.models import save_model

    save_model(model, tok, root / "base")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1))
    save_model(model, tok, root / "tuned")
    return root / "base", root / "tuned"
