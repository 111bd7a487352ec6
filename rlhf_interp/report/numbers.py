"""How numbers are written in reports, figures and the CLI: significant digits, not fixed decimals (an effect of
1e-3 must not print as "+0.00"), and fractions of the gap as percentages."""

from __future__ import annotations

import math


def sig(x: float, digits: int = 2, sign: bool = True) -> str:
    """`x` with `digits` significant digits: 0.0012 -> "+0.0012", 123.4 -> "+123", 0 -> "0", nan -> "nan"."""
    if x is None or not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - magnitude)
    if magnitude >= 5 or magnitude < -4:
        return f"{x:+.{digits - 1}e}" if sign else f"{x:.{digits - 1}e}"
    return f"{x:+.{decimals}f}" if sign else f"{x:.{decimals}f}"


def pct(fraction: float, digits: int = 2) -> str:
    """A fraction of the gap as a percentage with significant digits: 0.123 -> "+12%", 0.00042 -> "+0.042%"."""
    if fraction is None or not math.isfinite(fraction):
        return str(fraction)
    return sig(100 * fraction, digits) + "%"


def with_ci(value: float, low: float, high: float, percent: bool = False, digits: int = 2) -> str:
    """A value with its 95% CI: "+85% (95% CI +80% to +90%)"; the value alone when the CI is missing (NaN)."""
    fmt = (lambda v: pct(v, digits)) if percent else (lambda v: sig(v, digits))
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return fmt(value)
    return f"{fmt(value)} (95% CI {fmt(low)} to {fmt(high)})"
