"""Bootstrap CIs over prompts for the causal tables (ablation, patching), of the very statistic each table reports.

Every draw resamples the prompts with replacement (seeded: `numpy.random.default_rng(seed).integers(0, n, (B, n))`)
and recomputes the table's statistic on that resample, with the same draw for every term of it:

- ablation: effect = mean(ablated) − mean(clean), a mean of per-prompt differences;
- patching: effect = (mean(patched) − mean(receiver)) / (mean(donor) − mean(receiver)), a *ratio of means* (the
  normalised recovery of the table), not a mean of per-prompt ratios (those explode on prompts with a small gap).

The CI is the 2.5% and 97.5% percentiles of the draws. With fewer than 2 prompts it is NaN (nothing to resample).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

N_BOOT = 1000


def resample_weights(n: int, seed: int, n_boot: int = N_BOOT) -> np.ndarray:
    """(n_boot, n) weights: row b holds how often each prompt appears in draw b, divided by n (so weights @ x is the
    draw's mean of x)."""
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    flat = (np.arange(n_boot)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n) / n


def _array(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=float)


def mean_draws(values: Tensor | np.ndarray, seed: int, n_boot: int = N_BOOT) -> np.ndarray:
    """Bootstrap draws of the mean over prompts: values (cells, n) -> (cells, n_boot)."""
    v = _array(values)
    return v @ resample_weights(v.shape[-1], seed, n_boot).T


def recovery_draws(patched: Tensor | np.ndarray, receiver: Tensor | np.ndarray, donor: Tensor | np.ndarray,
                   seed: int, n_boot: int = N_BOOT) -> np.ndarray:
    """Bootstrap draws of the normalised recovery (mean patched − mean receiver) / (mean donor − mean receiver):
    patched (cells, n), receiver and donor (n,) per-prompt metrics -> (cells, n_boot). A draw whose gap is 0 is NaN."""
    p, r, d = _array(patched), _array(receiver), _array(donor)
    w = resample_weights(p.shape[-1], seed, n_boot)  # (B, n)
    rb, db = w @ r, w @ d  # (B,)
    gap = db - rb
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(gap) < 1e-9, np.nan, (p @ w.T - rb) / gap)


def percentile_ci(draws: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per cell of draws (cells, n_boot): the alpha/2 and 1 − alpha/2 percentiles; NaN where the draws
    are not all finite or there are no draws."""
    if draws.shape[-1] == 0:
        nan = np.full(draws.shape[:-1], np.nan)
        return nan, nan.copy()
    low = np.quantile(draws, alpha / 2, axis=-1)
    high = np.quantile(draws, 1 - alpha / 2, axis=-1)
    bad = ~np.isfinite(draws).all(-1)
    low[bad], high[bad] = np.nan, np.nan
    return low, high


def mean_ci(values: Tensor | np.ndarray, seed: int, n_boot: int = N_BOOT) -> tuple[np.ndarray, np.ndarray]:
    """95% CI of the mean over prompts per cell: values (cells, n); NaN with fewer than 2 prompts."""
    v = _array(values)
    if v.shape[-1] < 2:
        nan = np.full(v.shape[:-1], np.nan)
        return nan, nan.copy()
    return percentile_ci(mean_draws(v, seed, n_boot))


def recovery_ci(patched: Tensor | np.ndarray, receiver: Tensor | np.ndarray, donor: Tensor | np.ndarray, seed: int,
                n_boot: int = N_BOOT) -> tuple[np.ndarray, np.ndarray]:
    """95% CI of the normalised recovery per cell (see `recovery_draws`); NaN with fewer than 2 prompts."""
    p = _array(patched)
    if p.shape[-1] < 2:
        nan = np.full(p.shape[:-1], np.nan)
        return nan, nan.copy()
    return percentile_ci(recovery_draws(p, receiver, donor, seed, n_boot))
