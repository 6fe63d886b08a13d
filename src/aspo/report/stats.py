"""Small statistics over seeds: mean and 95 % t-interval, without scipy.

The interval is the two-sided 95 % confidence interval of the mean of ``n`` independent seeds,
``mean +- t(0.975, n-1) * sd / sqrt(n)`` with the sample standard deviation (ddof=1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# 0.975 quantile of Student's t by degrees of freedom (standard tables, 3 decimals).
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}
_Z975 = 1.960


def t_quantile_975(df: int) -> float:
    """t(0.975, df): exact table up to 30, then linear in 1/df between 30, 40, 60, 120 and infinity."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    knots = [30, 40, 60, 120]
    for lo, hi in zip(knots, knots[1:], strict=False):
        if lo < df < hi:
            return _interp_inverse(df, lo, _T975[lo], hi, _T975[hi])
    return _interp_inverse(df, 120, _T975[120], math.inf, _Z975)


def _interp_inverse(df: float, lo: float, t_lo: float, hi: float, t_hi: float) -> float:
    """Interpolate linearly in 1/df (t quantiles are nearly linear in 1/df for large df)."""
    x, x_lo, x_hi = 1 / df, 1 / lo, (0.0 if math.isinf(hi) else 1 / hi)
    return t_hi + (t_lo - t_hi) * (x - x_hi) / (x_lo - x_hi)


def mean_ci95(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """``{"mean", "ci95", "n"}`` over the finite ``values``; ci95 is the half-width (None when n < 2)."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(finite)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = float(finite.mean())
    if n < 2:
        return {"mean": mean, "ci95": None, "n": 1}
    half = t_quantile_975(n - 1) * float(finite.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95": half, "n": n}


def diff_ci95(
    a: dict[str, float | int | None], b: dict[str, float | int | None]
) -> tuple[float, float, float] | None:
    """(difference of means a - b, lower, upper): the Welch 95 % interval from two ``mean_ci95`` results.

    Each side's standard error is recovered from its half-width (ci95 / t(0.975, n-1)); the degrees of
    freedom are Welch-Satterthwaite's, rounded down (conservative). None when either side has < 2 seeds.
    """
    if a.get("mean") is None or b.get("mean") is None or a.get("ci95") is None or b.get("ci95") is None:
        return None
    n_a, n_b = int(a["n"] or 0), int(b["n"] or 0)
    se_a = float(a["ci95"]) / t_quantile_975(n_a - 1)
    se_b = float(b["ci95"]) / t_quantile_975(n_b - 1)
    diff = float(a["mean"]) - float(b["mean"])
    var = se_a**2 + se_b**2
    if var == 0:
        return diff, diff, diff
    df = var**2 / (se_a**4 / (n_a - 1) + se_b**4 / (n_b - 1))
    half = t_quantile_975(max(1, math.floor(df))) * math.sqrt(var)
    return diff, diff - half, diff + half


def band(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95 % half-width over axis 0 of ``stack`` (seeds, points); zeros when one seed."""
    mean = stack.mean(axis=0)
    n = stack.shape[0]
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, t_quantile_975(n - 1) * stack.std(axis=0, ddof=1) / math.sqrt(n)


def trailing_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of each point and up to ``window - 1`` points before it (no look-ahead)."""
    arr = np.asarray(values, dtype=float)
    if window <= 1 or len(arr) == 0:
        return arr
    csum = np.cumsum(np.insert(arr, 0, 0.0))
    idx = np.arange(1, len(arr) + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)
