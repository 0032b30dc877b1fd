"""Distributional convergence probes (threshold 1): does the generated set match the data's bulk statistics?

Pure functions on feature arrays ``a`` (generated, ``(n_a, D)``) and ``b`` (reference, ``(n_b, D)``);
features are float32, every statistic is reduced in float64. No file I/O, no printing.

- ``frechet_distance`` / ``frechet_distance_from_stats``: FD between fitted Gaussians (Heusel et al. 2017,
  "GANs trained by a two time-scale update rule...", Eq. for FID; Dowson & Landau 1982), trace term through
  the symmetric form ``tr sqrt(sqrt(S1) S2 sqrt(S1))`` with ``eigh``/``eigvalsh``.
- ``fd_infinity``: FD extrapolated to infinitely many samples (Chong & Forsyth 2020, "Effectively unbiased
  FID and Inception Score and where to find them", Sec. 3).
- ``kid``: unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018, "Demystifying MMD GANs").
- ``moments``: mean / covariance / top-spectrum / excess-kurtosis errors.
- ``gaussian_kl``: closed-form KL between fitted Gaussians.
- ``precision_recall`` (Kynkaanniemi et al. 2019, "Improved precision and recall metric...") and
  ``density_coverage`` (Naeem et al. 2020, "Reliable fidelity and diversity metrics..."): k-NN balls, searched
  in blocks sized from a MiB budget, never an ``n x m`` matrix.
- ``sliced_wasserstein``: seeded random projections, exact 1-D Wasserstein between empirical quantile functions
  (Rabin et al. 2011; Bonneel et al. 2015).

On a GPU (``device="cuda"``; ``probes._torch``): ``gaussian_stats``, the Frechet distance (its ``eigh`` /
``eigvalsh``, bootstrap and jackknife), ``fd_infinity`` and ``kid`` compute in torch float64 on the device, the
same formulas in the same precision (``engine="torch"`` runs that path on the CPU too; tests hold it to the
numpy path at 1e-10 relative, FD with a singular covariance at 1e-7: the square roots of its round-off
eigenvalues move FD by ~sqrt(eps) on either path); the k-NN radii of precision/recall/density/coverage use the device's k-NN engine
(``neighbors.search``). On the CPU (the default) the numpy path runs.

Features wider than float32 (float64) are shifted by one per-coordinate offset in float64 before the float32
cast wherever the measure is translation invariant (FD, FD_inf, moments, KL, precision/recall/density/coverage,
sliced Wasserstein; ``gaussian_stats`` adds the offset back to ``mu``), so an offset far larger than the spread
does not round the spread away (``probes._checks``). KID's polynomial kernel is not translation invariant: its
features are cast as given (with a ``PrecisionWarning`` when that loses the spread).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes import _torch
from diffaudit.probes._checks import as_features, as_int, feature_pair, l2_offset, same_width
from diffaudit.probes.stats import (
    bca_interval,
    bootstrap_values,
    excess_kurtosis,
    jackknife_acceleration,
    shifted_percentile_interval,
    t_interval,
)

NEG_EIG_TOL = 1e-6  # negative-eigenvalue mass (relative to the spectrum's absolute mass) we clip silently
SYM_TOL = 1e-6  # relative asymmetry of a covariance accepted (and symmetrised away)
DEFAULT_BUDGET_MIB = 512
# fd_infinity's smallest default subset, in multiples of D (why: fd_infinity's docstring)
FDINF_MIN_PER_DIM = 4
# smallest (query, reference) block of the ball pass; tests lower it to force many blocks
_MIN_ROWS = (64, 256)
# fewest samples per set for FD's bootstrap interval: BCa's grouped jackknife leaves out each of at least 2 groups
# of at least 2 rows and refits a covariance (n' - 1 > 0) to the rest, so n >= 4 (FD itself needs n >= 2)
FD_BOOT_MIN_N = 4

__all__ = [
    "FDResult",
    "FDInfResult",
    "KIDResult",
    "MomentsResult",
    "PRResult",
    "DCResult",
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "fd_infinity",
    "kid",
    "moments",
    "gaussian_kl",
    "precision_recall",
    "density_coverage",
    "prdc",
    "sliced_wasserstein",
]


# --------------------------------------------------------------------------------------------- Gaussian stats


def _rows_per_block(dim: int, budget_mib: float, bytes_per_value: int = 8) -> int:
    return int(max(1, min(1 << 16, max(16.0, budget_mib) * (1 << 20) // (bytes_per_value * dim * 2))))


def gaussian_stats(
    a, *, budget_mib: float = 256, name: str = "features", device="cpu", engine: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``mu`` (D,) and unbiased covariance ``sigma`` (D, D) of ``a`` (n, D), both float64.

    Streamed like NVlabs EDM ``fid.py``: rows are converted to float64 one block at a time (block size from
    ``budget_mib``) and accumulated; the covariance is accumulated around the mean (two passes), which avoids
    the cancellation of ``E[xx^T] - mu mu^T`` for features with a large offset. ``device``/``engine``: on a
    CUDA device the blocks are reduced there in float64 (module docstring); the results are host arrays.
    Float64 input is shifted by a per-coordinate offset before its float32 cast and ``mu`` shifted back (in
    float64), so a large offset keeps the spread.
    """
    off = l2_offset(a)
    a = as_features(a, name, offset=off)
    n, dim = a.shape
    rows = _rows_per_block(dim, budget_mib)
    if _torch.use_torch(engine, device):
        mu, sigma = _gaussian_stats_torch(a, rows, _torch.torch_device(device))
        mu, sigma = mu.cpu().numpy(), sigma.cpu().numpy()
        return (mu if off is None else mu + off), sigma
    s = np.zeros(dim, np.float64)
    for i0 in range(0, n, rows):
        s += a[i0 : i0 + rows].astype(np.float64).sum(0)
    mu = s / n
    sigma = np.zeros((dim, dim), np.float64)
    for i0 in range(0, n, rows):
        x = a[i0 : i0 + rows].astype(np.float64) - mu
        sigma += x.T @ x
    sigma /= n - 1
    return (mu if off is None else mu + off), sigma


def _gaussian_stats_torch(a: np.ndarray, rows: int, dev):
    """``gaussian_stats``' two passes in torch float64 on ``dev``; (mu (D,), sigma (D, D)) tensors there."""
    import torch

    n, dim = a.shape
    s = torch.zeros(dim, dtype=torch.float64, device=dev)
    for i0 in range(0, n, rows):
        s += _torch.to_float64(a[i0 : i0 + rows], dev).sum(0)
    mu = s / n
    sigma = torch.zeros((dim, dim), dtype=torch.float64, device=dev)
    for i0 in range(0, n, rows):
        x = _torch.to_float64(a[i0 : i0 + rows], dev) - mu
        sigma += x.T @ x
    sigma /= n - 1
    return mu, sigma


# --------------------------------------------------------------------------------------------- Frechet distance


@dataclass
class FDResult:
    """Frechet distance ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    ``mean_term`` = ``||mu1 - mu2||^2``; ``trace_term`` = ``tr S1 + tr S2 - 2 tr sqrt(sqrt(S1) S2 sqrt(S1))``;
    ``neg_eig_mass``: mass of the clipped negative eigenvalues (of ``S1`` and of ``sqrt(S1) S2 sqrt(S1)``)
    relative to the spectrum's absolute mass; ``singular``: a covariance is rank-deficient (n <= D or a
    numerically singular ``S1``), so FD is biased and ``fd_infinity`` or more samples are advisable.
    With ``n_boot > 0`` (see ``frechet_distance``): ``value_ci``, a BCa interval for the POPULATION FD (None
    when the bootstrap cannot resolve it, reason in ``ci_note``); ``spread_ci``, the bias-shifted percentile
    band, an interval for where FD at these sample sizes falls (its sampling spread around ``value``,
    bias included); ``z0``/``acceleration``, the BCa constants.
    """

    value: float
    mean_term: float
    trace_term: float
    neg_eig_mass: float
    singular: bool
    value_ci: tuple[float, float] | None = None
    n_a: int | None = None
    n_b: int | None = None
    dim: int = 0
    spread_ci: tuple[float, float] | None = None
    ci_note: str | None = None
    z0: float | None = None
    acceleration: float | None = None


def _check_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1:
        raise DiffauditError(f"{name}: mean has shape {mu.shape}, expected (D,); pass the mean vector.")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise DiffauditError(
            f"{name}: covariance has shape {sigma.shape} but the mean has {d} entries; pass a ({d}, {d}) covariance."
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DiffauditError(
            f"{name}: mean or covariance contains NaN or Inf; recompute the statistics from finite features."
        )
    scale = max(np.abs(sigma).max(), 1e-300)
    if np.abs(sigma - sigma.T).max() > SYM_TOL * scale:
        raise DiffauditError(
            f"{name}: covariance is not symmetric; pass a covariance matrix (e.g. from gaussian_stats)."
        )
    return mu, (sigma + sigma.T) / 2


def _neg_mass(w: np.ndarray) -> float:
    tot = float(np.abs(w).sum())
    return float(np.abs(w[w < 0]).sum()) / tot if tot > 0 else 0.0


def _eig_psd(sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """``eigh`` of a PSD matrix: (clipped eigenvalues w, eigenvectors V, negative mass, numerically singular)."""
    w, v = np.linalg.eigh(sigma)
    neg = _neg_mass(w)
    _raise_if_negative(neg, name)
    w = np.clip(w, 0.0, None)
    singular = bool(w.min() <= max(w.max(), 1e-300) * w.size * np.finfo(np.float64).eps)
    return w, v, neg, singular


def _eig_psd_torch(sigma, name: str):
    """``_eig_psd`` of a float64 tensor on its device: (clipped w, V) tensors there, negative mass, singular."""
    import torch

    w, v = torch.linalg.eigh(sigma)
    wn = w.cpu().numpy()
    neg = _neg_mass(wn)
    _raise_if_negative(neg, name)
    wn = np.clip(wn, 0.0, None)
    singular = bool(wn.min() <= max(wn.max(), 1e-300) * wn.size * np.finfo(np.float64).eps)
    return w.clamp(min=0.0), v, neg, singular


def _raise_if_negative(neg: float, name: str) -> None:
    if neg > NEG_EIG_TOL:
        raise DiffauditError(
            f"{name} has negative eigenvalues carrying {neg:.2g} of the spectrum's mass (tolerance {NEG_EIG_TOL:g}); "
            "pass covariances estimated from data (gaussian_stats) or check the statistics for corruption."
        )


def _trace_sqrt(w1: np.ndarray, v1: np.ndarray, s2: np.ndarray) -> tuple[float, float]:
    """``tr sqrt(sqrt(S1) S2 sqrt(S1))`` from ``S1 = V1 diag(w1) V1^T``, with its negative-eigenvalue mass.

    ``sqrt(S1) S2 sqrt(S1) = V1 C V1^T`` with ``C = diag(sqrt w1) V1^T S2 V1 diag(sqrt w1)``: the same
    spectrum, so ``eigvalsh(C)`` suffices (one matrix product fewer than forming ``sqrt(S1)``).
    """
    sw = np.sqrt(w1)
    c = v1.T @ s2 @ v1
    c *= sw[:, None]
    c *= sw[None, :]
    c = (c + c.T) / 2
    lam = np.linalg.eigvalsh(c)
    neg = _neg_mass(lam)
    _raise_if_negative(neg, "sqrt(sigma1) sigma2 sqrt(sigma1)")
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum()), neg


def _trace_sqrt_torch(w1, v1, s2) -> tuple[float, float]:
    """``_trace_sqrt`` with ``w1``, ``v1``, ``s2`` float64 tensors on one device."""
    import torch

    sw = w1.sqrt()
    c = v1.T @ s2 @ v1
    c *= sw[:, None]
    c *= sw[None, :]
    c = (c + c.T) / 2
    lam = torch.linalg.eigvalsh(c).cpu().numpy()
    neg = _neg_mass(lam)
    _raise_if_negative(neg, "sqrt(sigma1) sigma2 sqrt(sigma1)")
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum()), neg


def frechet_distance_from_stats(
    mu1,
    sigma1,
    mu2,
    sigma2,
    *,
    n1: int | None = None,
    n2: int | None = None,
    device="cpu",
    engine: str = "auto",
) -> FDResult:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; FID, Heusel et al. 2017).

    ``mu`` (D,), ``sigma`` (D, D). Since ``S1 S2`` is similar to the symmetric PSD matrix
    ``sqrt(S1) S2 sqrt(S1)``, ``tr (S1 S2)^(1/2) = sum_i sqrt(lambda_i(sqrt(S1) S2 sqrt(S1)))``: one ``eigh``
    and one ``eigvalsh``, no complex ``sqrtm``. Tiny negative eigenvalues (round-off) are clipped and reported
    in ``neg_eig_mass``; a mass above ``NEG_EIG_TOL`` raises ``DiffauditError``. ``n1``/``n2`` (sample
    counts, optional) set ``singular`` when ``n <= D``. ``device``/``engine``: on a CUDA device the products
    and both eigen-decompositions run there in float64 (module docstring).
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "sigma1/mu1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "sigma2/mu2")
    if mu1.shape != mu2.shape:
        raise DiffauditError(
            f"the two statistics have {mu1.shape[0]} and {mu2.shape[0]} dimensions; compute both in the same feature space."
        )
    dim = mu1.shape[0]
    if _torch.use_torch(engine, device):
        dev = _torch.torch_device(device)
        w1, v1, neg1, sing1 = _eig_psd_torch(_torch.to_float64(sigma1, dev), "sigma1")
        tr_sqrt, neg2 = _trace_sqrt_torch(w1, v1, _torch.to_float64(sigma2, dev))
    else:
        w1, v1, neg1, sing1 = _eig_psd(sigma1, "sigma1")
        tr_sqrt, neg2 = _trace_sqrt(w1, v1, sigma2)
    diff = mu1 - mu2
    mean_term = float(diff @ diff)
    trace_term = float(np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)
    singular = sing1 or any(n is not None and n <= dim for n in (n1, n2))
    return FDResult(
        mean_term + trace_term, mean_term, trace_term, max(neg1, neg2), bool(singular), None, n1, n2, dim
    )


def frechet_distance(
    a,
    b,
    *,
    n_boot: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    n_groups: int = 20,
    device="cpu",
    engine: str = "auto",
) -> FDResult:
    """Frechet distance between Gaussians fitted to ``a`` (n_a, D) and ``b`` (n_b, D); see
    ``frechet_distance_from_stats``.

    With ``n_boot > 0`` both sets are resampled with replacement (``seed``; each resample costs one FD, an
    ``eigh`` of D x D) and two intervals are returned:

    - ``value_ci``: BCa (Efron 1987; Efron & Tibshirani 1993, Ch. 14) for the population FD. ``z0`` from the
      share of bootstrap FDs below ``value``; the acceleration from a grouped (delete-a-group) jackknife:
      each set cut into ``n_groups`` seeded random groups, FD recomputed without each group (2 x
      ``n_groups`` extra FDs, the statistics updated by subtraction, no pass over the rows per group).
      Measured coverage of the population FD at nominal 0.95 (D = 4, n = 500 per set, population FD 0.5,
      fresh draws): 0.921 with 200 resamples (1000 replications), 0.937 with 1000 resamples (300
      replications; misses balanced, 11 low / 8 high) -- the usual slight small-sample undercoverage of
      bootstrap intervals; the shifted band below covers the population FD 0.93-0.94 there too. When FD's
      finite-sample bias (~ D tr(S) / n) dwarfs its spread -- n not much larger than D, or a population FD
      near 0, where every resample lies above ``value`` -- there is no BCa endpoint: ``value_ci`` is None
      and ``ci_note`` says why (use ``fd_infinity`` or more samples). Below ``FD_BOOT_MIN_N`` = 4 samples
      in a set the bootstrap is skipped: both intervals None, ``ci_note`` says so.
    - ``spread_ci``: the percentile band shifted by the bootstrap's own bias, mean(FD*) - FD (resampled sets
      hold only ~63 % distinct rows, which inflates FD's bias). Not an interval for the population FD: it
      says where FD at these n falls (its sampling spread around ``value``), e.g. for a real-vs-real floor.

    ``device``/``engine``: on a CUDA device every statistic, resample and eigen-decomposition runs there in
    float64 (module docstring); the resampling draws are the same.
    """
    a, b = feature_pair(a, b, shift_invariant=True)
    on = dict(device=device, engine=engine)
    stats_a, stats_b = gaussian_stats(a, **on), gaussian_stats(b, **on)
    r = frechet_distance_from_stats(*stats_a, *stats_b, n1=len(a), n2=len(b), **on)
    if n_boot <= 0:
        return r
    if n_groups < 2:
        raise DiffauditError(f"n_groups={n_groups} must be at least 2 for the jackknife; e.g. n_groups=20.")
    if min(len(a), len(b)) < FD_BOOT_MIN_N:
        # FD is defined from n = 2 on, its interval is not: report the value with the reason, not a failure
        r.ci_note = (
            f"no bootstrap interval: it needs at least {FD_BOOT_MIN_N} samples per set (BCa's grouped jackknife "
            f"leaves out 2 groups of 2 rows and refits the covariance) but got n_a={len(a)}, n_b={len(b)}; "
            "pass more samples."
        )
        return r

    def stat(rng):
        ia = rng.integers(0, len(a), len(a))
        ib = rng.integers(0, len(b), len(b))
        return frechet_distance_from_stats(
            *gaussian_stats(a[ia], **on), *gaussian_stats(b[ib], **on), **on
        ).value

    rng = np.random.default_rng(seed)
    boot = bootstrap_values(stat, int(n_boot), rng)
    lo, hi = shifted_percentile_interval(r.value, boot, confidence)
    r.spread_ci = (max(0.0, lo), max(0.0, hi))
    dev = _torch.torch_device(device) if _torch.use_torch(engine, device) else None
    jack_a = [
        frechet_distance_from_stats(mu, s, *stats_b, **on).value
        for mu, s in _delete_group_stats(a, *stats_a, n_groups, rng, dev)
    ]
    jack_b = [
        frechet_distance_from_stats(*stats_a, mu, s, **on).value
        for mu, s in _delete_group_stats(b, *stats_b, n_groups, rng, dev)
    ]
    r.acceleration = jackknife_acceleration(np.array(jack_a), np.array(jack_b))
    p0 = float(np.mean(boot < r.value))
    r.z0 = float(NormalDist().inv_cdf(p0)) if 0 < p0 < 1 else float(np.sign(p0 - 0.5) * np.inf)
    r.value_ci = bca_interval(r.value, boot, r.acceleration, confidence)
    if r.value_ci is None:
        r.ci_note = (
            f"{100 * (1 - p0):.0f} % of the bootstrap FDs lie above FD={r.value:.4g}: its finite-sample "
            "bias dominates its spread at these sample sizes, so no BCa interval for the population FD; "
            "use fd_infinity or more samples."
        )
    return r


def _delete_group_stats(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray, n_groups: int, rng, dev=None):
    """(mu, sigma) of ``x`` (n, D) without each of ``n_groups`` seeded random groups of rows.

    Removing rows g: ``mu' = mu - delta / n'`` and ``(n' - 1) sigma' = (n - 1) sigma - C_g - delta delta^T / n'``
    with ``delta = sum_g (x - mu)``, ``C_g = sum_g (x - mu)(x - mu)^T`` and n' = n - |g| (float64; the group
    products on the torch device ``dev`` when given).
    """
    n = len(x)
    groups = np.array_split(rng.permutation(n), min(n_groups, n // 2))
    scatter = sigma * (n - 1)
    mu_t = None if dev is None else _torch.to_float64(mu, dev)
    for g in groups:
        if dev is None:
            xc = x[np.sort(g)].astype(np.float64) - mu
            delta = xc.sum(0)
            cg = xc.T @ xc
        else:
            xc = _torch.to_float64(x[np.sort(g)], dev) - mu_t
            delta = xc.sum(0).cpu().numpy()
            cg = (xc.T @ xc).cpu().numpy()
        n1 = n - len(g)
        s = scatter - cg - np.outer(delta, delta) / n1
        yield mu - delta / n1, (s + s.T) / (2 * (n1 - 1))


@dataclass
class FDInfResult:
    """FD extrapolated to N -> infinity (Chong & Forsyth 2020): fit ``FD_N = value + slope / N``.

    ``sizes`` (p,) subset sizes of the generated set; ``values`` (p,) FD of each subset against the full
    reference statistics; ``value`` the intercept (FD_inf), ``slope`` the 1/N coefficient; ``r2`` of the fit
    (close to 1 even when the 1/N law does not hold, so it is no check of the extrapolation).
    ``warning``: None, or why ``value`` should not be read as the population FD (a negative intercept, or
    subsets smaller than ``FDINF_MIN_PER_DIM`` x D).
    """

    value: float
    slope: float
    r2: float
    sizes: np.ndarray
    values: np.ndarray
    warning: str | None = None


def fd_infinity(
    a,
    b,
    *,
    sizes=None,
    n_points: int = 15,
    min_size: int | None = None,
    seed: int = 0,
    device="cpu",
    engine: str = "auto",
) -> FDInfResult:
    """FD_inf (Chong & Forsyth 2020, Sec. 3): FD of random subsets of the generated ``a`` (n_a, D), of sizes
    ``sizes``, against the statistics of all of ``b``; least-squares line in 1/N; the intercept is FD_inf.

    Default sizes: ``n_points`` sizes evenly spaced from ``min_size`` (default ``FDINF_MIN_PER_DIM`` x D) to
    n_a; n_a must be at least twice ``min_size`` (else ``DiffauditError``). Why a multiple of D: FD_N =
    FD + c / N holds only up to O((D / N)^2) terms, which pull the intercept down when subsets are not much
    larger than D (measured, D = 64, population FD ~ 0.05: subsets from 0.6 D gave FD_inf = -1.66, from 2 D
    -0.20, from 4 D +0.02 +- 0.04); the paper's 5k..50k subsets of 2048-d features start at 2.4 D. Each size
    draws its own random subset (``seed``), so the points' errors are not nested partial sums of one order.

    ``eigh(S_b)`` is computed once: ``tr sqrt(sqrt(S_b) S_a sqrt(S_b))`` equals the trace term with the roles
    swapped (same spectrum), so each size costs one ``eigvalsh``. ``device``/``engine``: on a CUDA device the
    statistics and eigen-decompositions run there in float64 (module docstring).
    """
    a, b = feature_pair(a, b, shift_invariant=True)
    n, dim = a.shape
    floor = FDINF_MIN_PER_DIM * dim
    if sizes is None:
        lo = max(2, floor if min_size is None else int(min_size))
        if n < 2 * lo:
            raise DiffauditError(
                f"fd_infinity needs at least 2 x {lo} = {2 * lo} generated samples (subsets from "
                f"{'min_size' if min_size is not None else f'{FDINF_MIN_PER_DIM} x D'} = {lo} rows up to n_a, spanning "
                f"a factor 2 in 1/N) but got {n}; pass more samples, or report FD with its interval instead."
            )
        sizes = np.unique(np.linspace(lo, n, n_points).round().astype(int))
    sizes = np.asarray(sizes, dtype=int)
    if sizes.ndim != 1 or len(np.unique(sizes)) < 2 or sizes.min() < 2 or sizes.max() > n:
        raise DiffauditError(
            f"fd_infinity needs at least 2 distinct subset sizes between 2 and {n} (got {sizes.tolist()}); "
            "pass more generated samples or other sizes."
        )
    on = dict(device=device, engine=engine)
    mu_b, sigma_b = gaussian_stats(b, **on)
    dev = _torch.torch_device(device) if _torch.use_torch(engine, device) else None
    if dev is None:
        w_b, v_b, _, _ = _eig_psd(sigma_b, "reference covariance")
    else:
        w_b, v_b, _, _ = _eig_psd_torch(_torch.to_float64(sigma_b, dev), "reference covariance")
    tr_b = float(np.trace(sigma_b))
    rng = np.random.default_rng(seed)
    values = []
    for m in sizes:
        mu_a, sigma_a = gaussian_stats(a[np.sort(rng.choice(n, int(m), replace=False))], **on)
        if dev is None:
            tr_sqrt, _ = _trace_sqrt(w_b, v_b, sigma_a)
        else:
            tr_sqrt, _ = _trace_sqrt_torch(w_b, v_b, _torch.to_float64(sigma_a, dev))
        d = mu_a - mu_b
        values.append(float(d @ d + np.trace(sigma_a) + tr_b - 2 * tr_sqrt))
    values = np.array(values)
    x = 1.0 / sizes
    slope, intercept = np.polyfit(x, values, 1)
    resid = values - (intercept + slope * x)
    ss = float(((values - values.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else 1.0
    warn = []
    if intercept < 0:
        warn.append(
            f"FD_inf = {intercept:.4g} < 0: the 1/N fit extrapolates below any possible FD, so the "
            "population FD is not resolved by these subsets (too small next to D, or FD near 0); "
            "report FD at the largest size with its interval, or use more samples"
        )
    if sizes.min() < floor:
        warn.append(
            f"the smallest subset ({sizes.min()}) is below {FDINF_MIN_PER_DIM} x D = {floor} rows, where "
            "FD_N deviates from the 1/N law and FD_inf is biased low"
        )
    return FDInfResult(
        float(intercept), float(slope), r2, sizes, values, "; ".join(warn) + "." if warn else None
    )


# --------------------------------------------------------------------------------------------- KID


@dataclass
class KIDResult:
    """Kernel Inception Distance: ``value`` = mean of the unbiased MMD^2 over ``n_subsets`` random subset pairs.

    ``std`` (alias ``subset_std``): the spread (ddof=1) of the per-subset values ``values`` (n_subsets,) -- a
    property of the subset size and of the subsets' overlap, NOT an uncertainty of ``value`` (it is zero
    when the subset is the whole set).
    ``value_ci``: a confidence interval for the population MMD^2 from ``n_blocks`` DISJOINT block pairs
    (one seeded random partition of both sets): the block values ``block_values`` are i.i.d., so
    ``block_value -+ t_{B-1} se`` with ``se = std(block_values) / sqrt(B)`` is valid whatever the
    distributions, including P = Q where MMD^2_u is a degenerate U-statistic (variance O(1/n^2), skewed) and
    plug-in variance estimates fail. It is centred on ``block_value``, the mean over the blocks (an unbiased
    estimate of the same quantity as ``value``), not on ``value``. ``ci_note``: why ``value_ci`` is None (fewer
    than 4 samples in a set: no 2 disjoint blocks of 2 rows), else None.
    """

    value: float
    std: float
    value_ci: tuple[float, float] | None
    values: np.ndarray
    subset_size: int
    block_value: float = float("nan")
    se: float = float("nan")
    block_values: np.ndarray | None = None
    n_blocks: int = 0
    ci_note: str | None = None

    @property
    def subset_std(self) -> float:
        return self.std


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) with k(x, y) = (x.y / D + 1)^3; x, y (m, D) float64."""
    m = len(x)
    kxx = _poly_kernel(x, x)
    kyy = _poly_kernel(y, y)
    kxy = _poly_kernel(x, y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def _mmd2_unbiased_torch(x, y) -> float:
    """``_mmd2_unbiased`` on float64 tensors (one device)."""
    m, dim = x.shape

    def kern(u, v):
        return (u @ v.T / dim + 1.0) ** 3

    kxx, kyy, kxy = kern(x, x), kern(y, y), kern(x, y)
    sxx = (kxx.sum() - kxx.trace()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.trace()) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(
    a,
    b,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    *,
    n_blocks: int = 10,
    device="cpu",
    engine: str = "auto",
) -> KIDResult:
    """KID (Binkowski et al. 2018, Sec. 3/Appendix): unbiased MMD^2 with the cubic polynomial kernel
    ``(x.y / D + 1)^3`` averaged over ``n_subsets`` pairs of subsets of ``m = min(subset_size, n_a, n_b)``
    rows each, drawn without replacement with ``seed`` (as in the reference implementation and clean-fid).
    Gram matrices in float64; memory ``3 m^2`` floats.

    The interval (``value_ci``) comes from ``n_blocks`` disjoint block pairs of ``min(n_a, n_b) // n_blocks``
    rows (at most ``m``; one seeded partition), a Student-t interval on their i.i.d. values (the B-test
    construction, Zaremba et al. 2013). Overlapping subsets cannot give one: their spread is not the
    estimator's uncertainty. Measured coverage of the population MMD^2 at nominal 0.95 (fresh draws, 10
    blocks, n = 400 per set, 600 replications): D = 4 / 8 / 32: 0.945 / 0.960 / 0.950 under P = Q and
    0.930 / 0.945 / 0.942 with a mean shift; at n = 200 (blocks of 20 rows) 0.92-0.935 (the block values are
    skewed, the t interval assumes a symmetric mean; tests/probes/test_convergence.py). Ten blocks: fewer blocks make the t quantile large, more blocks make each block value
    noisier under P = Q (its variance grows as the block shrinks, O(1/m^2)). ``device``/``engine``: on a CUDA
    device the Gram matrices are computed there in float64, from the same draws (module docstring).
    """
    a, b = feature_pair(a, b)
    if n_subsets < 1 or subset_size < 2:
        raise DiffauditError(
            f"kid needs n_subsets >= 1 and subset_size >= 2 (got {n_subsets}, {subset_size})."
        )
    if n_blocks < 2:
        raise DiffauditError(f"kid needs n_blocks >= 2 for its interval (got {n_blocks}); e.g. n_blocks=10.")
    m = int(min(subset_size, len(a), len(b)))
    if _torch.use_torch(engine, device):
        dev = _torch.torch_device(device)

        def mmd2(ia, ib):
            return _mmd2_unbiased_torch(_torch.to_float64(a[ia], dev), _torch.to_float64(b[ib], dev))
    else:

        def mmd2(ia, ib):
            return _mmd2_unbiased(a[ia].astype(np.float64), b[ib].astype(np.float64))

    rng = np.random.default_rng(seed)
    vals = np.empty(n_subsets)
    for s in range(n_subsets):
        ia = rng.choice(len(a), m, replace=False)
        vals[s] = mmd2(ia, rng.choice(len(b), m, replace=False))
    mean = float(vals.mean())
    std = float(vals.std(ddof=1)) if n_subsets > 1 else float("nan")
    res = KIDResult(mean, std, None, vals, m)
    n_min = min(len(a), len(b))
    n_b = int(min(n_blocks, n_min // 2))
    if n_b >= 2:
        mb = int(min(m, n_min // n_b))
        pa = rng.permutation(len(a))[: n_b * mb].reshape(n_b, mb)
        pb = rng.permutation(len(b))[: n_b * mb].reshape(n_b, mb)
        bv = np.array([mmd2(i, j) for i, j in zip(pa, pb, strict=True)])
        res.block_values, res.n_blocks = bv, n_b
        res.block_value = float(bv.mean())
        res.se = float(bv.std(ddof=1) / np.sqrt(n_b))
        res.value_ci = t_interval(res.block_value, res.se, n_b - 1, confidence)
    else:
        res.ci_note = (
            f"no interval: it needs at least 2 disjoint blocks of 2 rows, so at least 4 samples per set, but got "
            f"n_a={len(a)}, n_b={len(b)}; pass more samples."
        )
    return res


# --------------------------------------------------------------------------------------------- moments, KL


@dataclass
class MomentsResult:
    """Moment errors of ``a`` against ``b``.

    ``mean_error`` = ||mu_a - mu_b||_2; ``cov_rel_error`` = ||S_a - S_b||_F / ||S_b||_F;
    ``top_eig_a``/``top_eig_b`` (top,) largest covariance eigenvalues (descending) and ``spectrum_rel_error``
    = ||l_a - l_b|| / ||l_b|| on them; ``kurtosis_a``/``kurtosis_b`` (top,) excess kurtosis of both sets
    projected on ``b``'s top principal directions, ``kurtosis_error`` = max |difference|;
    ``dir_kurtosis_a``/``dir_kurtosis_b`` (k,) and ``dir_kurtosis_error`` for user ``directions`` (else None).
    """

    mean_error: float
    cov_rel_error: float
    spectrum_rel_error: float
    top_eig_a: np.ndarray
    top_eig_b: np.ndarray
    kurtosis_error: float
    kurtosis_a: np.ndarray
    kurtosis_b: np.ndarray
    dir_kurtosis_error: float | None = None
    dir_kurtosis_a: np.ndarray | None = None
    dir_kurtosis_b: np.ndarray | None = None


def _projected_kurtosis(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Excess kurtosis of the projections p = x u, x (n, D), u (D, k) -> (k,); x is cast to float64 in
    blocks so that only the (n, k) projections are held at once."""
    rows = _rows_per_block(x.shape[1], 128)
    p = np.concatenate([x[i : i + rows].astype(np.float64) @ u for i in range(0, len(x), rows)])
    return excess_kurtosis(p)


def moments(a, b, directions=None, top: int = 10) -> MomentsResult:
    """Mean, covariance, top-spectrum and excess-kurtosis errors of ``a`` (n_a, D) against ``b`` (n_b, D).

    Kurtosis is the 4th standardized cumulant along unit directions: along ``b``'s ``top`` principal
    directions (eigenvectors of S_b) and along ``directions`` (k, D) or (D,) given by the user (normalised
    here) -- hidden non-Gaussian directions (threshold 2) show up there and not in FD.
    """
    a, b = feature_pair(a, b, shift_invariant=True)
    dim = a.shape[1]
    top = int(max(1, min(top, dim)))
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    nb = float(np.linalg.norm(s_b))
    cov_rel = float(np.linalg.norm(s_a - s_b)) / nb if nb > 0 else float("inf")
    la = np.linalg.eigvalsh(s_a)[::-1][:top]
    lb, vb = np.linalg.eigh(s_b)
    lb, vb = lb[::-1][:top], vb[:, ::-1][:, :top]
    nlb = float(np.linalg.norm(lb))
    spec = float(np.linalg.norm(la - lb)) / nlb if nlb > 0 else float("inf")
    ka, kb = _projected_kurtosis(a, vb), _projected_kurtosis(b, vb)
    res = MomentsResult(
        float(np.linalg.norm(mu_a - mu_b)),
        cov_rel,
        spec,
        la,
        lb,
        float(np.nanmax(np.abs(ka - kb))) if np.isfinite(ka - kb).any() else float("nan"),
        ka,
        kb,
    )
    if directions is not None:
        u = np.asarray(directions, dtype=np.float64)
        if u.ndim == 1:
            u = u[None]
        if u.ndim != 2 or u.shape[1] != dim or not np.isfinite(u).all():
            raise DiffauditError(
                f"directions have shape {u.shape}; pass finite unit directions of shape (k, {dim}) in the feature space."
            )
        norms = np.linalg.norm(u, axis=1, keepdims=True)
        if (norms == 0).any():
            raise DiffauditError("directions contain a zero vector; pass non-zero directions.")
        u = (u / norms).T
        da, db = _projected_kurtosis(a, u), _projected_kurtosis(b, u)
        res.dir_kurtosis_a, res.dir_kurtosis_b = da, db
        res.dir_kurtosis_error = (
            float(np.nanmax(np.abs(da - db))) if np.isfinite(da - db).any() else float("nan")
        )
    return res


def gaussian_kl(a, b, ridge: float = 0.0) -> float:
    """KL(N_a || N_b) between Gaussians fitted to ``a`` (n_a, D) and ``b`` (n_b, D), in nats:

    ``0.5 [tr(S_b^-1 S_a) + (mu_b - mu_a)^T S_b^-1 (mu_b - mu_a) - D + ln det S_b - ln det S_a]``
    (e.g. Bishop 2006, Eq. 2.x / Duchi's notes), through Cholesky factors. ``ridge`` is added to both
    diagonals; with n <= D a covariance is singular and a ``ridge > 0`` is required.
    """
    a, b = feature_pair(a, b, shift_invariant=True)
    if not np.isfinite(ridge) or ridge < 0:
        raise DiffauditError(f"ridge={ridge} must be a finite number >= 0.")
    dim = a.shape[1]
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    s_a[np.diag_indices(dim)] += ridge
    s_b[np.diag_indices(dim)] += ridge
    try:
        la = np.linalg.cholesky(s_a)
        lb = np.linalg.cholesky(s_b)
    except np.linalg.LinAlgError:
        raise DiffauditError(
            f"a fitted covariance is singular (n_a={len(a)}, n_b={len(b)}, D={dim}); pass ridge > 0 "
            "(CLI: --kl-ridge) or more samples."
        ) from None
    from scipy.linalg import solve_triangular

    m = solve_triangular(lb, la, lower=True)  # L_b^-1 L_a: tr(S_b^-1 S_a) = ||m||_F^2
    d = solve_triangular(lb, mu_b - mu_a, lower=True)
    logdet_a = 2.0 * np.log(np.diag(la)).sum()
    logdet_b = 2.0 * np.log(np.diag(lb)).sum()
    return float(0.5 * ((m**2).sum() + d @ d - dim + logdet_b - logdet_a))


# --------------------------------------------------------------------------------------------- k-NN balls


@dataclass
class PRResult:
    """Improved precision/recall (Kynkaanniemi et al. 2019, Eq. 1-3) with k-NN balls.

    ``precision``: share of fake samples inside at least one real ball; ``recall``: share of real samples
    inside at least one fake ball. ``*_ci``: Wilson intervals (samples treated as independent trials).
    ``fake_in_real`` (m,) and ``real_in_fake`` (n,) boolean per-sample memberships; ``k``.
    """

    precision: float
    recall: float
    precision_ci: tuple[float, float] | None
    recall_ci: tuple[float, float] | None
    fake_in_real: np.ndarray
    real_in_fake: np.ndarray
    k: int


@dataclass
class DCResult:
    """Density and coverage (Naeem et al. 2020, Eq. 3-4) with k-NN balls around real samples.

    ``density`` = (1 / (k m)) sum_j #{real balls containing fake j} (unbounded above, ~1 when matched);
    ``coverage`` = share of real samples whose ball contains at least one fake sample (``coverage_ci``:
    Wilson). ``fake_count`` (m,) ball counts per fake sample; ``real_covered`` (n,) booleans; ``k``.
    """

    density: float
    coverage: float
    coverage_ci: tuple[float, float] | None
    fake_count: np.ndarray
    real_covered: np.ndarray
    k: int


def _knn_radii(x: np.ndarray, k: int, budget_mib: float, name: str, device="cpu") -> np.ndarray:
    """Squared distances of each row of ``x`` (n, D) to its 1st..k-th nearest other rows, (n, k) ascending.

    Candidates come from ``neighbors.knn(exclude_self=True)`` (float32 FAISS, k + 4 per row, the same margin
    as its own re-ranking); their distances are recomputed in float64 here with ``_exact_d2`` -- the formula
    the ball pass uses for borderline pairs, so a point at exactly a radius compares equal to it. ``device``:
    the caller's torch device, for ``neighbors.search``'s choice of engine.
    """
    from diffaudit.probes.neighbors import knn

    k = as_int(k, "k", hint=" (the number of nearest neighbours of a ball's radius), e.g. k=3")
    if k >= len(x):
        raise DiffauditError(
            f"k={k} nearest neighbours need at least k + 1 = {k + 1} {name} samples (got {len(x)}); "
            f"pass more samples or a smaller k."
        )
    kk = min(len(x) - 1, k + 4)
    _, nbr = knn(
        x,
        x,
        kk,
        exclude_self=True,
        rerank=False,
        budget_mib=budget_mib,
        name_q=name,
        name_b=name,
        index="exact",
        device=device,
    )
    valid = nbr >= 0
    iq = np.repeat(np.arange(len(x)), kk)
    d2 = _exact_d2(x, x, iq, np.where(valid, nbr, 0).reshape(-1)).reshape(len(x), kk)
    d2[~valid] = np.inf
    return np.sort(d2, axis=1)[:, :k]


def _exact_d2(xq: np.ndarray, xb: np.ndarray, iq: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """float64 squared distances ``sum((xb[ib] - xq[iq])^2)`` of the pairs, in cache-sized chunks."""
    out = np.empty(len(iq))
    step = max(1, (4 << 20) // (8 * xq.shape[1]))
    for s in range(0, len(iq), step):
        d = xb[ib[s : s + step]].astype(np.float64)
        d -= xq[iq[s : s + step]]
        d *= d
        out[s : s + step] = d.sum(-1)
    return out


def _block_mean(x: np.ndarray) -> np.ndarray:
    rows = _rows_per_block(x.shape[1], 64)
    return sum(x[i : i + rows].astype(np.float64).sum(0) for i in range(0, len(x), rows)) / len(x)


def _centered32(x: np.ndarray, center: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, np.float32)
    rows = _rows_per_block(x.shape[1], 64)
    for i in range(0, len(x), rows):
        out[i : i + rows] = x[i : i + rows] - center
    return out


def _centered_norms(x: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Squared norms of the float32 centred rows (as the GEMM sees them), summed in float64, (n,) float32."""
    rows = _rows_per_block(x.shape[1], 64)
    out = np.empty(len(x), np.float32)
    for i in range(0, len(x), rows):
        xc = _centered32(x[i : i + rows], center)
        out[i : i + rows] = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)
    return out


def _ball_pass(fake, real, *, rad_real=(), rad_fake=None, budget_mib: float = DEFAULT_BUDGET_MIB):
    """One blocked pass over all (fake j, real i) pairs, never holding more than a budget's worth of them.

    For each radius vector ``r`` in ``rad_real`` (squared, (n,)) returns ``(count (m,), any_col (n,))``:
    ``count[j] = #{i : d2(f_j, r_i) <= r[i]}`` and ``any_col[i] = exists j : d2(f_j, r_i) <= r[i]``; for
    ``rad_fake`` ((m,)) returns ``any_real (n,)``: ``exists j : d2(f_j, r_i) <= rad_fake[j]``.

    Distances are screened with a float32 GEMM on mean-centred data; every pair whose float32 distance lies
    within a rigorous round-off bound of its radius is recomputed in float64 exactly as ``neighbors.knn``
    computes radii, so the decisions (``<=``, ties inside) equal a float64 brute force.
    """
    m, dim = fake.shape
    n = len(real)
    center = _block_mean(real)
    nf, nr = _centered_norms(fake, center), _centered_norms(real, center)
    # |fl32(d2) - d2| <= c (|f|^2 + |r|^2 + radius): GEMM error gamma_D (D u), float32 norms, sums and
    # centring (~10 u), float32 thresholds (u radius); factor 2 spare
    c = 2.0 * (dim + 16) * 2.0**-24
    rad_real = [np.asarray(r, np.float64) for r in rad_real]
    counts = [np.zeros(m, np.int64) for _ in rad_real]
    anycol = [np.zeros(n, bool) for _ in rad_real]
    any_real = np.zeros(n, bool) if rad_fake is not None else None
    n_cmp = len(rad_real) + (rad_fake is not None)
    budget = max(1e-3, float(budget_mib)) * (1 << 20)  # no floor: _MIN_ROWS bounds the block sizes
    # bytes per pair in flight: d2 (4), two masks and their temporaries (4); plus the row blocks
    per_pair = 8 + 2 * n_cmp
    rb = int(min(n, max(_MIN_ROWS[1], min(budget * 0.25 / (dim * 4), 4096))))
    qb = int(min(m, max(_MIN_ROWS[0], (budget - rb * dim * 4) / (per_pair * rb + dim * 4))))

    def decide(d2, lo, hi, j0, i0, rad_of_pair):
        inside = d2 <= lo
        maybe = d2 <= hi
        if np.count_nonzero(maybe) != np.count_nonzero(inside):
            jj, ii = np.nonzero(maybe & ~inside)
            rad = rad_of_pair(jj, ii)
            # the per-pair bound settles most candidates of the loose per-column screen without float64 work
            diff = d2[jj, ii].astype(np.float64) - rad
            tight = c * (nf[jj + j0].astype(np.float64) + nr[ii + i0] + np.abs(rad))
            sure = np.abs(diff) > tight
            inside[jj[sure], ii[sure]] = diff[sure] < 0
            jj, ii = jj[~sure], ii[~sure]
            inside[jj, ii] = _exact_d2(fake, real, jj + j0, ii + i0) <= rad[~sure]
        return inside

    for i0 in range(0, n, rb):
        i1 = min(n, i0 + rb)
        rblk = _centered32(real[i0:i1], center)  # centred per block: no full-size copies of the inputs
        nr_blk = nr[i0:i1].astype(np.float64)
        for j0 in range(0, m, qb):
            j1 = min(m, j0 + qb)
            nf_blk = nf[j0:j1].astype(np.float64)
            g = _centered32(fake[j0:j1], center) @ rblk.T
            g *= -2.0
            g += nf[j0:j1, None]
            g += nr[None, i0:i1]  # g is now the float32 squared distance
            # |fl32 error| <= c (|f_j|^2 + |r_i|^2) <= c (max_j |f_j|^2 + |r_i|^2 + radius): one margin per column
            for r, cnt, anyc in zip(rad_real, counts, anycol, strict=True):
                rr = r[i0:i1]
                t = c * (nf_blk.max() + nr_blk + rr)
                inside = decide(
                    g,
                    (rr - t).astype(np.float32)[None, :],
                    (rr + t).astype(np.float32)[None, :],
                    j0,
                    i0,
                    lambda jj, ii, rr=rr: rr[ii],
                )
                cnt[j0:j1] += np.count_nonzero(inside, axis=1)
                anyc[i0:i1] |= inside.any(0)
            if rad_fake is not None:
                rf = np.asarray(rad_fake[j0:j1], np.float64)
                t = c * (nr_blk.max() + nf_blk + rf)
                inside = decide(
                    g,
                    (rf - t).astype(np.float32)[:, None],
                    (rf + t).astype(np.float32)[:, None],
                    j0,
                    i0,
                    lambda jj, ii, rf=rf: rf[jj],
                )
                any_real[i0:i1] |= inside.any(0)
    return counts, anycol, any_real


def _prep(real, fake):
    off = l2_offset(real, fake)  # k-NN balls are L2: one shift for both sets (module docstring)
    real = as_features(real, "reference features", offset=off)
    fake = as_features(fake, "generated features", offset=off)
    same_width(real, fake, "reference features", "generated features")
    return real, fake


def precision_recall(
    real, fake, k: int = 3, *, budget_mib: float = DEFAULT_BUDGET_MIB, device="cpu"
) -> PRResult:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-3), ``real`` (n, D), ``fake`` (m, D).

    Ball of sample x = {y : ||y - x||^2 <= r_k(x)^2}, r_k the distance to x's k-th nearest neighbour in its own
    set (self excluded; an exact duplicate counts as a neighbour at distance 0). Tie convention: a point at
    exactly the radius is INSIDE (``<=``). k-NN radii from ``neighbors.knn`` (exact, float64), memberships
    from a blocked pass bounded by ``budget_mib`` (never an n x m matrix). ``device``: the k-NN search's
    torch device (``neighbors.search``: its torch engine on a GPU without FAISS-GPU); the ball pass is numpy.
    """
    from diffaudit.probes.stats import wilson_interval

    real, fake = _prep(real, fake)
    rr = _knn_radii(real, k, budget_mib, "reference features", device)[:, k - 1]
    rf = _knn_radii(fake, k, budget_mib, "generated features", device)[:, k - 1]
    counts, _, real_in = _ball_pass(fake, real, rad_real=[rr], rad_fake=rf, budget_mib=budget_mib)
    fake_in = counts[0] > 0
    kp, kr = int(fake_in.sum()), int(real_in.sum())
    return PRResult(
        kp / len(fake),
        kr / len(real),
        wilson_interval(kp, len(fake)),
        wilson_interval(kr, len(real)),
        fake_in,
        real_in,
        k,
    )


def density_coverage(
    real, fake, k: int = 5, *, budget_mib: float = DEFAULT_BUDGET_MIB, device="cpu"
) -> DCResult:
    """Density and coverage (Naeem et al. 2020, Eq. 3-4), ``real`` (n, D), ``fake`` (m, D).

    Balls around real samples only, radius = distance to the k-th nearest other real sample; tie convention:
    ``<=`` radius is inside. Same blocked, budget-bounded search as ``precision_recall`` (``device`` too).
    """
    from diffaudit.probes.stats import wilson_interval

    real, fake = _prep(real, fake)
    rr = _knn_radii(real, k, budget_mib, "reference features", device)[:, k - 1]
    counts, anycol, _ = _ball_pass(fake, real, rad_real=[rr], budget_mib=budget_mib)
    kc = int(anycol[0].sum())
    return DCResult(
        float(counts[0].sum()) / (k * len(fake)),
        kc / len(real),
        wilson_interval(kc, len(real)),
        counts[0],
        anycol[0],
        k,
    )


def prdc(
    real, fake, *, k_pr: int = 3, k_dc: int = 5, budget_mib: float = DEFAULT_BUDGET_MIB, device="cpu"
) -> tuple[PRResult, DCResult]:
    """``precision_recall`` and ``density_coverage`` together, sharing one k-NN search per set and one
    blocked pass over the pairs (same results as calling both; ``device`` as there)."""
    from diffaudit.probes.stats import wilson_interval

    real, fake = _prep(real, fake)
    rad_r = _knn_radii(real, max(k_pr, k_dc), budget_mib, "reference features", device)
    rf = _knn_radii(fake, k_pr, budget_mib, "generated features", device)[:, k_pr - 1]
    counts, anycol, real_in = _ball_pass(
        fake, real, rad_real=[rad_r[:, k_pr - 1], rad_r[:, k_dc - 1]], rad_fake=rf, budget_mib=budget_mib
    )
    fake_in = counts[0] > 0
    kp, kr, kc = int(fake_in.sum()), int(real_in.sum()), int(anycol[1].sum())
    n, m = len(real), len(fake)
    pr = PRResult(kp / m, kr / n, wilson_interval(kp, m), wilson_interval(kr, n), fake_in, real_in, k_pr)
    dc = DCResult(
        float(counts[1].sum()) / (k_dc * m), kc / n, wilson_interval(kc, n), counts[1], anycol[1], k_dc
    )
    return pr, dc


# --------------------------------------------------------------------------------------------- sliced Wasserstein


def _wasserstein_1d_sorted(xs: np.ndarray, ys: np.ndarray, p: float) -> np.ndarray:
    """Exact W_p^p between empirical measures, columns of sorted ``xs`` (n, P) and ``ys`` (m, P).

    W_p^p = int_0^1 |F^-1(t) - G^-1(t)|^p dt with step quantile functions; the breakpoints i/n and j/m are
    merged so unequal n, m are handled exactly (no interpolation error).
    """
    n, m = len(xs), len(ys)
    t = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    w = np.diff(t)
    mid = (t[:-1] + t[1:]) / 2
    ia = np.minimum((mid * n).astype(np.int64), n - 1)
    ib = np.minimum((mid * m).astype(np.int64), m - 1)
    return (w[:, None] * np.abs(xs[ia] - ys[ib]) ** p).sum(0)


def _project(x: np.ndarray, th: np.ndarray) -> np.ndarray:
    rows = _rows_per_block(x.shape[1], 64)
    return np.concatenate([x[i : i + rows].astype(np.float64) @ th for i in range(0, len(x), rows)])


def sliced_wasserstein(a, b, n_projections: int = 128, seed: int = 0, p: int = 2) -> float:
    """Sliced Wasserstein distance SW_p (Rabin et al. 2011; Bonneel et al. 2015) between ``a`` (n_a, D) and
    ``b`` (n_b, D): ``(mean_theta W_p^p(theta.a, theta.b))^(1/p)`` over ``n_projections`` unit directions
    drawn from N(0, I) with ``seed`` (the same directions for both sets). 1-D W_p is exact for unequal sizes.
    """
    a, b = feature_pair(a, b, shift_invariant=True)
    if n_projections < 1 or p < 1:
        raise DiffauditError(
            f"sliced_wasserstein needs n_projections >= 1 and p >= 1 (got {n_projections}, {p})."
        )
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((a.shape[1], n_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    total = 0.0
    step = max(1, (128 << 20) // (8 * 3 * (len(a) + len(b))))
    for s in range(0, n_projections, step):
        th = theta[:, s : s + step]
        xs = np.sort(_project(a, th), axis=0)
        ys = np.sort(_project(b, th), axis=0)
        total += float(_wasserstein_1d_sorted(xs, ys, p).sum())
    return float((total / n_projections) ** (1.0 / p))
