"""Small statistics shared by the probes: binomial intervals and bootstrap resampling."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as _st


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (Wilson 1927). ``(nan, nan)`` for n = 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = float(_st.norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(
    statistic: Callable[[np.random.Generator], float],
    n_boot: int,
    seed: int | np.random.Generator | None = 0,
    confidence: float = 0.95,
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap: ``statistic(rng)`` draws its own resample from ``rng``.

    Returns ``(lo, hi, values)``.
    """
    rng = np.random.default_rng(seed)
    vals = np.array([statistic(rng) for _ in range(n_boot)], dtype=np.float64)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi), vals
