"""Helpers shared by the benchmarks: machine notes, a GFLOP/s check, medians of interleaved runs."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

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
