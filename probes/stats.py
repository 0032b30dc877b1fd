"""Interval helpers shared by the probes (their one home): binomial, bootstrap (percentile, bias-shifted,
BCa), U-statistic variance, and ROC-AUC (DeLong) intervals; and the one excess-kurtosis estimator. Pure
functions on arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as _st

__all__ = [
    "z_value",
    "normal_interval",
    "t_interval",
    "wilson_interval",
    "bootstrap_ci",
    "bootstrap_values",
    "shifted_percentile_interval",
    "bca_interval",
    "jackknife_acceleration",
    "u2_zetas",
    "u2_variance",
    "auc_delong",
    "excess_kurtosis",
]


def z_value(confidence: float) -> float:
    """Two-sided standard-normal quantile, e.g. 1.96 for ``confidence`` = 0.95."""
    return float(_st.norm.ppf(0.5 + confidence / 2))


def normal_interval(value: float, se: float, confidence: float = 0.95) -> tuple[float, float]:
    """``value -+ z se`` (Wald interval)."""
    h = z_value(confidence) * float(se)
    return (float(value) - h, float(value) + h)


def t_interval(value: float, se: float, dof: int, confidence: float = 0.95) -> tuple[float, float]:
    """``value -+ t_{dof} se`` (Student t), for a mean of dof + 1 i.i.d. values."""
    h = float(_st.t.ppf(0.5 + confidence / 2, dof)) * float(se)
    return (float(value) - h, float(value) + h)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (Wilson 1927). ``(nan, nan)`` for n = 0."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = z_value(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# --------------------------------------------------------------------------------------------- bootstrap


def bootstrap_values(
    statistic: Callable[[np.random.Generator], float], n_boot: int, seed: int | np.random.Generator | None = 0
) -> np.ndarray:
    """``n_boot`` bootstrap replicates; ``statistic(rng)`` draws its own resample from ``rng``."""
    rng = np.random.default_rng(seed)
    return np.array([statistic(rng) for _ in range(int(n_boot))], dtype=np.float64)


def bootstrap_ci(
    statistic: Callable[[np.random.Generator], float],
    n_boot: int,
    seed: int | np.random.Generator | None = 0,
    confidence: float = 0.95,
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap (Efron & Tibshirani 1993, Sec. 13.3): returns ``(lo, hi, values)``."""
    vals = bootstrap_values(statistic, n_boot, seed)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi), vals


def shifted_percentile_interval(
    theta: float, boot: np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile band of ``boot`` shifted by the bootstrap's own bias ``mean(boot) - theta``.

    Its target is the statistic's sampling distribution at the given sample sizes (where a fresh
    ``theta`` would fall, i.e. roughly ``E[theta_n] -+`` its spread), NOT the population parameter: it
    carries the statistic's full finite-sample bias. Used for "spread at this n" statements such as a
    real-vs-real floor.
    """
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [a, 1 - a])
    bias = float(np.mean(boot)) - float(theta)
    return float(lo - bias), float(hi - bias)


def jackknife_acceleration(*deletion_values: np.ndarray) -> float:
    """BCa acceleration ``a = sum U^3 / (6 (sum U^2)^(3/2))`` from (grouped) jackknife values.

    Each argument holds the statistic recomputed with one unit (a point, or a group of points) of one
    sample deleted; ``U = mean - value`` within each sample (Efron & Tibshirani 1993, Eq. 14.15; for several
    samples the influence components of all samples are pooled, Davison & Hinkley 1997, Sec. 5.3.2, which
    holds for groups when every sample is cut into the same number of groups).
    """
    u = np.concatenate([np.mean(v) - np.asarray(v, np.float64) for v in deletion_values])
    s2 = float((u**2).sum())
    return float((u**3).sum() / (6.0 * s2**1.5)) if s2 > 0 else 0.0


def bca_interval(
    theta: float, boot: np.ndarray, acceleration: float, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Bias-corrected and accelerated bootstrap interval (Efron 1987; Efron & Tibshirani 1993, Sec. 14.3).

    ``z0 = Phi^-1(#{boot < theta} / B)`` (ties count one half), endpoints at the bootstrap quantiles
    ``Phi(z0 + (z0 + z_alpha) / (1 - a (z0 + z_alpha)))``. Returns None when the bootstrap distribution
    lies (almost) entirely on one side of ``theta`` (|z0| beyond what B replicates resolve): the statistic's
    bias then dominates its spread and no BCa endpoint is defined.
    """
    boot = np.asarray(boot, np.float64)
    B = len(boot)
    p0 = (np.count_nonzero(boot < theta) + 0.5 * np.count_nonzero(boot == theta)) / B
    if not 1.0 / B <= p0 <= 1.0 - 1.0 / B:
        return None
    z0 = float(_st.norm.ppf(p0))
    zs = np.array([-z_value(confidence), z_value(confidence)])
    den = 1.0 - acceleration * (z0 + zs)
    if (den <= 0).any():
        return None
    alpha = _st.norm.cdf(z0 + (z0 + zs) / den)
    lo, hi = np.quantile(boot, alpha)
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------- U-statistics


def u2_zetas(H: np.ndarray) -> tuple[float, float, float]:
    """Unbiased estimates ``(theta, zeta1, zeta2)`` for a degree-2 U-statistic from its kernel matrix.

    ``H`` (m, m) symmetric, ``H[i, j] = h(z_i, z_j)`` for i != j (the diagonal is ignored), m >= 4.
    ``theta = E h``, ``zeta1 = Cov(h(z, z1), h(z, z2))``, ``zeta2 = Var h(z, z1)`` (Hoeffding 1948), each
    from averages over distinct indices: ``E[h_ij h_ik]`` over distinct (i, j, k) and ``theta^2`` over
    distinct (i, j, k, l), obtained from ``(sum H)^2`` minus its overlapping terms. O(m^2).
    """
    H = np.array(H, dtype=np.float64)
    m = len(H)
    np.fill_diagonal(H, 0.0)
    r = H.sum(1)
    S = float(r.sum())
    Q = float((H * H).sum())
    T = float(r @ r) - Q  # sum over distinct (i, j, k) of H_ij H_ik
    theta = S / (m * (m - 1))
    theta2 = (S * S - 2.0 * Q - 4.0 * T) / (m * (m - 1) * (m - 2) * (m - 3))
    return theta, T / (m * (m - 1) * (m - 2)) - theta2, Q / (m * (m - 1)) - theta2


def u2_variance(zeta1: float, zeta2: float, n: int) -> float:
    """Exact variance of a degree-2 U-statistic on n points: ``2 (2 (n - 2) zeta1 + zeta2) / (n (n - 1))``
    (Hoeffding 1948; Serfling 1980, Sec. 5.2.1). Under a degenerate null zeta1 = 0 and the O(1/n^2) term
    is all there is, which is why a first-order (projection) variance alone gives zero width there."""
    return 2.0 * (2.0 * (n - 2) * zeta1 + zeta2) / (n * (n - 1))


# --------------------------------------------------------------------------------------------- ROC AUC


def auc_delong(
    pos: np.ndarray, neg: np.ndarray, confidence: float = 0.95
) -> tuple[float, tuple[float, float], float]:
    """ROC AUC = P(pos > neg) + P(tie) / 2 with DeLong, DeLong & Clarke-Pearson (1988)'s variance.

    ``pos`` (m,) scores of positives, ``neg`` (n,) of negatives. The variance is built from the
    structural components ``V10_i = P(pos_i > neg)`` and ``V01_j = P(pos > neg_j)`` (computed from
    ranks, O((m + n) log(m + n))): ``var = s10^2 / m + s01^2 / n``. Returns ``(auc, (lo, hi), se)`` with a
    Wald interval clipped to [0, 1].

    When that variance is 0 the Wald interval collapses to a point ([1, 1] for 3 vs 3 perfectly separated
    items). Then: for observed AUC 1, k = min(m, n) disjoint (positive, negative) pairs are independent and each
    is ordered correctly with probability P(pos > neg) <= A, so a perfect ordering has probability <= A^k and
    A < (alpha / 2)^(1 / k) is rejected at level alpha / 2: the interval is [(alpha / 2)^(1 / k), 1] (exact and
    conservative; 0.29 at k = 3, 0.69 at k = 10, 0.93 at k = 50 for 95 %); for AUC 0, symmetrically,
    [0, 1 - (alpha / 2)^(1 / k)]. Any other zero-variance case (every score tied) gets [0, 1].
    """
    pos = np.asarray(pos, np.float64)
    neg = np.asarray(neg, np.float64)
    m, n = len(pos), len(neg)
    r_all = _st.rankdata(np.concatenate([pos, neg]))
    r_pos, r_neg = _st.rankdata(pos), _st.rankdata(neg)
    v10 = (r_all[:m] - r_pos) / n  # share of negatives below each positive (ties 1/2)
    v01 = 1.0 - (r_all[m:] - r_neg) / m  # share of positives above each negative
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    se = float(np.sqrt(max(var, 0.0)))
    if not se > 0:  # perfect separation (or all ties): no Wald interval, the exact bound on A^k instead
        edge = ((1.0 - confidence) / 2.0) ** (1.0 / max(1, min(m, n)))
        if auc >= 1.0:
            return auc, (float(edge), 1.0), se
        if auc <= 0.0:
            return auc, (0.0, float(1.0 - edge)), se
        return auc, (0.0, 1.0), se
    lo, hi = normal_interval(auc, se, confidence)
    return auc, (max(0.0, lo), min(1.0, hi)), se


# --------------------------------------------------------------------------------------------- moments


def excess_kurtosis(p) -> float | np.ndarray:
    """Plug-in excess kurtosis ``m4 / m2^2 - 3`` (central sample moments, no small-sample correction;
    scipy's ``kurtosis(fisher=True, bias=True)``) of ``p`` (n,) -> float, or of each column of ``p`` (n, k)
    -> (k,). NaN where the variance is zero. Accumulated in float64.
    """
    p = np.asarray(p, dtype=np.float64)
    c = p - p.mean(0)
    m2 = (c * c).mean(0)
    m4 = (c**4).mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(m2 > 0, m4 / np.where(m2 > 0, m2, 1.0) ** 2 - 3.0, np.nan)
    return float(k) if p.ndim == 1 else k
