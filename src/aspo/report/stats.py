"""Small statistics over seeds: mean and 95 % t-interval, paired and Welch tests, Holm, power.

The interval is the two-sided 95 % confidence interval of the mean of ``n`` independent seeds,
``mean +- t(0.975, n-1) * sd / sqrt(n)`` with the sample standard deviation (ddof=1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


def t_quantile_975(df: float) -> float:
    """t(0.975, df), the two-sided 95 % critical value of Student's t."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(scipy_stats.t.ppf(0.975, df))


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


@dataclass(frozen=True)
class TestResult:
    """A two-sided test of ``mean(a) - mean(b) == 0`` over seeds.

    ``kind`` is "paired" (the differences of runs that share a seed: one-sample t on them) or "welch"
    (independent seeds, Welch's unequal-variance t). ``sd`` is the spread a power calculation needs: the
    standard deviation of the paired differences, or for Welch the arms' pooled standard deviation
    (the root of the mean of the two variances).
    """

    kind: str
    n: int  # pairs (paired) or the smaller arm (welch)
    diff: float
    low: float
    high: float
    p: float
    sd: float


def paired_test(a: Sequence[float], b: Sequence[float]) -> TestResult | None:
    """Paired t-test on ``a[i] - b[i]`` (``a[i]`` and ``b[i]`` share a seed); None with < 2 pairs."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n < 2:
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:  # every pair differs by the same amount: no spread to test against
        return TestResult("paired", n, mean, mean, mean, 1.0 if mean == 0.0 else 0.0, 0.0)
    se = sd / math.sqrt(n)
    half = t_quantile_975(n - 1) * se
    p = float(2 * scipy_stats.t.sf(abs(mean) / se, n - 1))
    return TestResult("paired", n, mean, mean - half, mean + half, p, sd)


def welch_test(a: Sequence[float], b: Sequence[float]) -> TestResult | None:
    """Welch's t-test of independent samples; None when either has < 2 values."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(xa) < 2 or len(xb) < 2:
        return None
    diff = float(xa.mean() - xb.mean())
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    var = float(va + vb)
    n = min(len(xa), len(xb))
    pooled_sd = math.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2)
    if var == 0.0:
        return TestResult("welch", n, diff, diff, diff, 1.0 if diff == 0.0 else 0.0, 0.0)
    df = var**2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))  # Welch-Satterthwaite
    se = math.sqrt(var)
    half = t_quantile_975(df) * se
    p = float(2 * scipy_stats.t.sf(abs(diff) / se, df))
    return TestResult("welch", n, diff, diff - half, diff + half, p, pooled_sd)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) becomes ``max_{j<=i} min(1, (m - j) * p_(j))``; rejecting
    where the adjusted p is below alpha controls the family-wise error rate at alpha.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def power(sd: float, effect: float, n: int, alpha: float = 0.05, kind: str = "paired") -> float:
    """Power of a two-sided t-test at ``alpha`` to detect a true difference ``effect`` with ``n`` seeds
    (noncentral t).

    ``kind="paired"``: one-sample test on ``n`` differences of standard deviation ``sd``. ``kind="welch"``:
    two arms of ``n`` seeds each with standard deviation ``sd`` (equal variances, df = 2n - 2).
    """
    if n < 2:
        return 0.0
    if sd <= 0.0:
        return 1.0
    if kind == "paired":
        df, se = n - 1, sd / math.sqrt(n)
    else:
        df, se = 2 * n - 2, sd * math.sqrt(2 / n)
    crit = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    nc = effect / se
    return float(scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc))


def seeds_for_power(
    sd: float,
    effect: float,
    target: float = 0.8,
    alpha: float = 0.05,
    kind: str = "paired",
    max_n: int = 10_000,
) -> int | None:
    """The fewest seeds (pairs, or seeds per arm) whose test reaches ``target`` power for ``effect``;
    None past ``max_n``."""
    if effect == 0.0:
        return None
    n = 2
    while n <= max_n:
        if power(sd, effect, n, alpha, kind) >= target:
            return n
        n = n + 1 if n < 64 else int(n * 1.1)
    return None
