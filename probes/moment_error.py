"""Threshold 1: the whitened second-moment error E1, a size-free statistic referenced to the data population.

Definition. With the population mean ``mu`` and covariance ``sigma`` of the data (D,) / (D, D), the whitening
``W = (sigma + delta I)^(-1/2)`` and ``y = W (x - mu)``,

    E1 = || E_g[y y^T] - P ||_F^2 / d,        P = W sigma W  (= I when delta = 0),

where ``E_g`` is over the generated distribution and d the dimension of the whitened space. ``P`` is the
population's own whitened second moment, so the true generator scores E1 = 0 exactly whatever ``delta``.
E_g[y y^T] is the second moment about the *population* mean, so E1 sees both moments:
E_g[y y^T] = C_g + m m^T with m = W (mu_g - mu) and C_g the whitened generated covariance.

Meaning of the tolerance ``DEFAULT_EPS1 = 0.1``. Since ||I||_F^2 = d, E1 = ||M_g - P||_F^2 / ||I||_F^2 is the
squared relative Frobenius error of the whitened second moment, i.e. the mean squared error per whitened
dimension (eigenvalue errors of 10 % in every direction give E1 = 0.01). E1 <= 0.1 allows a relative
Frobenius error up to sqrt(0.1) = 32 %. Closed forms: N(mu, c sigma) has E1 = (c - 1)^2 (c = 1.32 sits at the
tolerance); N(mu + m, sigma) has E1 = |W m|^4 / d.

n-sample learners. The empirical distribution of n true samples (the memorizer) and the Gaussian with their
maximum-likelihood mean and covariance both have the second moment (1/n) sum x_i x_i^T about mu, so their
population E1 has expectation exactly

    E[E1] = (d + kappa) / n,      kappa = (E|y|^4 - d (d + 1)) / d   (= 1 for Gaussian data),

(E ||(1/n) sum y_i y_i^T - I||_F^2 = (E|y|^4 - d) / n). With the unbiased covariance (n - 1 divisor, the
``gaussian`` control) and Gaussian data it is (d + 1)/(n - 1) + (d + 2)/n^2. So the verdict E1 <= eps1 flips
near n1* = (d + kappa) / eps1, linear in d: a property of the data and the tolerance, not of the audit size.

Estimator (``whitened_moment_error``). E1 is the squared norm of a mean in feature space,
phi(y) = vec(y y^T - P), so the degree-2 U-statistic with kernel
h(a, b) = <phi(a), phi(b)> / d = ((a^T b)^2 - a^T P a - b^T P b + ||P||_F^2) / d is unbiased at every
n_generated (Hoeffding 1948; the one-sample analogue of the unbiased MMD^2 of Gretton et al. 2012, JMLR 13,
"A kernel two-sample test", Eq. 3). Its value is computed as ``(||Y^T Y||_F^2 - sum_i |y_i|^4) / (n (n-1))``
from a (d, d) float64 accumulator streamed in row blocks. Interval: Wald, with the exact U-statistic variance
2 (2 (n-2) zeta1 + zeta2) / (n (n-1)) (Hoeffding 1948; Serfling 1980, Sec. 5.2.1) whose zetas are unbiased
distinct-index averages of the kernel matrix, streamed in Gram blocks. At the oracle zeta1 = 0 (a degenerate
U-statistic) and only the zeta2 term is left; zeta1's estimate is clipped at 0, which makes the interval
conservative there. Measured coverage (nominal 95 %, Gaussian data): 97.8 % at E1 = 0 (d = 8, n = 200; se 10 %
above the analytic sd), 95 % at E1 = 0.09 (d = 16, n = 500), 94 % (d = 8, n = 200 - 500): at small n the
value and its se are correlated (r ~ 0.9), so a low value gets a short interval and misses above.

Two-sample version (``two_sample_moment_mmd``), for real data without a known population: see its docstring.

On a GPU (``device="cuda"``; ``probes._torch``) both estimators run their eigen-decomposition, whitening,
second-moment sums and Gram-block variance passes in torch float64 on the device: the same formulas in the same
precision (``engine="torch"`` runs that path on the CPU too; tests hold it to the numpy path at 1e-10 relative).
On the CPU (the default) the numpy path runs.

Inputs wider than float32 (float64 far from 0) are shifted by one offset in float64 before the float32 cast, the
population mean ``mu`` by the same offset (a covariance does not move): both statistics depend on differences only,
so nothing changes but what the cast keeps (``_checks`` module docstring). Float32 inputs are used as given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes import _torch
from diffaudit.probes._checks import as_features, l2_offset, same_width
from diffaudit.probes.convergence import gaussian_stats
from diffaudit.probes.stats import normal_interval

DEFAULT_EPS1 = (
    0.1  # threshold-1 tolerance on E1: mean squared relative error per whitened dimension (module doc)
)
# delta = DEFAULT_RIDGE * tr(sigma) / D. Generated variance v along a direction where the data have none costs
# (v / delta)^2 / d, so off-support noise at ~3 % of the data's RMS scale (v = delta) in every such direction
# costs about (their share of d) -- a real failure -- while 1 % noise costs 1 % of that. Directions with
# population variance lam >> delta are whitened to relative precision delta / lam.
DEFAULT_RIDGE = 1e-3
# Two-sample whitening: the estimated whitening of a half with n_half rows inflates a non-zero E1 by
# E tr(S^-2) / k = nu^2 (nu - 1) / ((nu - k)(nu - k - 1)(nu - k - 3)), nu = n_half - 1, for Gaussian data
# (inverse-Wishart moment; Monte Carlo 1.103 vs 1.103 at k = 31, n_half = 1000). The rank is the largest k
# keeping that factor <= 1 + WHITENING_INFLATION: k = 30 at n_half = 1000 (about n_half / 33), 0 below n_half = 66;
# the directions beyond k share one isotropic residual scale (``two_sample_moment_mmd``), none is dropped.
WHITENING_INFLATION = 0.1
MAX_VARIANCE_ROWS = (
    4096  # rows per sample entering the O(n^2 d) variance pass (zetas are unbiased on a subset)
)
DEFAULT_BUDGET_MIB = 256

__all__ = [
    "DEFAULT_EPS1",
    "DEFAULT_RIDGE",
    "WHITENING_INFLATION",
    "MomentErrorResult",
    "whitened_moment_error",
    "two_sample_moment_mmd",
    "max_whitening_rank",
    "whitening_inflation",
]


@dataclass
class MomentErrorResult:
    """E1 and its parts (module docstring). Every value is already divided by ``dim``.

    ``value``: unbiased estimate of E1 (can be slightly negative when E1 ~ 0); ``ci``/``se``: Wald interval
    and standard error from the U-statistic's variance; ``plugin``: the biased plug-in ||M_hat - P||^2 / d
    (expectation E1 + O(d / n_generated)); ``mean_part``: unbiased estimate of ||W (mu_g - mu_ref)||^2 / d, the
    whitened mean shift per dimension (NOT an additive share of E1: a pure mean shift m gives E1 = d mean_part^2);
    ``dim``: whitened dimension d (= D, the feature dimension, on every route); ``whitening``: "population"
    (known mu, sigma), or for the two-sample route "full", "top-k+isotropic-residual" or "isotropic";
    ``rank``: number of individually whitened principal directions (= dim except on the last two routes);
    ``delta``: the ridge used; ``inflation``: the Gaussian-data factor by which the estimated whitening inflates
    a non-zero value (1 for the population route; for "top-k+isotropic-residual" the top-k block's factor,
    see ``two_sample_moment_mmd`` for the measured total).
    """

    value: float
    ci: tuple[float, float]
    se: float
    plugin: float
    mean_part: float
    dim: int
    n_generated: int
    n_reference: int | None
    whitening: str
    rank: int
    delta: float
    inflation: float = 1.0


def _wald(value: float, var: float, confidence: float) -> tuple[float, tuple[float, float], float]:
    """(value, Wald interval, standard error) from the estimate's variance ``var``: a result's first fields."""
    se = float(np.sqrt(var))
    return float(value), normal_interval(value, se, confidence), se


# --------------------------------------------------------------------------------------------- whitening


def _rows_per_block(width: int, budget_mib: float, arrays: int = 4) -> int:
    return int(max(8, min(1 << 16, max(16.0, budget_mib) * (1 << 20) // (8 * max(width, 1) * arrays))))


def _check_population(mu, sigma, D: int) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.shape != (D,) or sigma.shape != (D, D):
        raise DiffauditError(
            f"population moments have shapes {mu.shape} and {sigma.shape} but the samples have {D} dimensions; "
            f"pass mu ({D},) and sigma ({D}, {D}) of the same feature space."
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DiffauditError("population mu or sigma contains NaN or Inf; recompute the population moments.")
    scale = max(float(np.abs(sigma).max()), 1e-300)
    if np.abs(sigma - sigma.T).max() > 1e-6 * scale:
        raise DiffauditError("population sigma is not symmetric; pass a covariance matrix.")
    return mu, (sigma + sigma.T) / 2


def _same(offset, x):
    """``offset`` when ``x`` is (n, D) of its width, else None: ``same_width`` then names the mismatch."""
    a = np.asarray(x)
    return offset if offset is not None and a.ndim == 2 and a.shape[1] == len(offset) else None


def _whitener(
    sigma: np.ndarray, delta: float | None, eigh=np.linalg.eigh
) -> tuple[np.ndarray, np.ndarray, float]:
    """(Wt (D, k), p (k,), delta) with y = (x - mu) @ Wt and P = diag(p) the population's whitened moment.

    Whitening in the eigenbasis of sigma, diag((lam + delta)^-1/2) V^T: E1 and the quadratic kernel are
    invariant under rotations of y, so this equals W = (sigma + delta I)^(-1/2) and saves a product.
    ``eigh``: the symmetric eigen-decomposition to use (numpy's, or ``_device_eigh``).
    """
    lam, V = eigh(sigma)
    tot = float(np.abs(lam).sum())
    neg = float(np.abs(lam[lam < 0]).sum()) / tot if tot > 0 else 0.0
    if neg > 1e-6:
        raise DiffauditError(
            f"population sigma has negative eigenvalues carrying {neg:.2g} of its mass; pass a covariance matrix."
        )
    lam = np.clip(lam, 0.0, None)[::-1]
    V = V[:, ::-1]
    if delta is None:
        delta = DEFAULT_RIDGE * float(lam.sum()) / len(lam)
    delta = float(delta)
    if delta < 0 or not np.isfinite(delta):
        raise DiffauditError(f"delta={delta} must be a finite number >= 0; pass None for the default ridge.")
    if delta == 0 and lam.min() <= lam.max() * len(lam) * np.finfo(np.float64).eps:
        raise DiffauditError(
            "population sigma is singular and delta=0; pass delta > 0 (or None for the default)."
        )
    return V / np.sqrt(lam + delta), lam / (lam + delta), delta


def _residual_whitener(
    S: np.ndarray, delta: float | None, k: int, eigh=np.linalg.eigh
) -> tuple[np.ndarray, float, float]:
    """(Wt (D, D), s_res2, delta): y = (x - mu) @ Wt = [W_k (x - mu); (I - P_k)(x - mu) / s_res] in S's eigenbasis.

    The top k principal directions of S are whitened with (lam_i + delta)^(-1/2); the orthogonal complement is
    kept and scaled by ONE scalar, s_res^2 = mean(lam_k+1..D) + delta (isotropic whitening of the residual), so
    no direction of feature space is dropped. k = D is the full whitening, k = 0 the isotropic one. The
    kernel (a^T b)^2 is rotation-invariant, so the complement's coordinates in S's eigenbasis stand for
    (I - P_k)(x - mu) without forming P_k. ``eigh`` as in ``_whitener``.
    """
    lam, V = eigh(S)
    lam = np.clip(lam, 0.0, None)[::-1]
    V = V[:, ::-1]
    D = len(lam)
    if delta is None:
        delta = DEFAULT_RIDGE * float(lam.sum()) / D
    delta = float(delta)
    if delta < 0 or not np.isfinite(delta):
        raise DiffauditError(f"delta={delta} must be a finite number >= 0; pass None for the default ridge.")
    scale = np.empty(D)
    scale[:k] = lam[:k] + delta
    s_res2 = float(lam[k:].mean()) + delta if k < D else float("nan")
    scale[k:] = s_res2
    tiny = max(float(lam.max()), 1e-300) * D * np.finfo(np.float64).eps
    if scale.min() <= tiny:
        raise DiffauditError(
            "the reference half's covariance is singular along the whitened directions and delta=0; pass "
            "delta > 0 (or None for the default)."
        )
    return V / np.sqrt(scale), s_res2, delta


def _device_eigh(dev):
    """``np.linalg.eigh`` computed by torch in float64 on ``dev`` (host arrays in and out)."""

    def eigh(sigma: np.ndarray):
        import torch

        lam, V = torch.linalg.eigh(_torch.to_float64(sigma, dev))
        return lam.cpu().numpy(), V.cpu().numpy()

    return eigh


def _whiten_torch(x: np.ndarray, mu: np.ndarray, Wt: np.ndarray, budget_mib: float, dev):
    """``_whiten`` on ``dev``: Y = (x - mu) @ Wt as a float64 tensor there, x uploaded in row blocks."""
    import torch

    rows = _rows_per_block(x.shape[1], budget_mib)
    mu_t, W = _torch.to_float64(mu, dev), _torch.to_float64(Wt, dev)
    return torch.cat(
        [(_torch.to_float64(x[i0 : i0 + rows], dev) - mu_t) @ W for i0 in range(0, len(x), rows)]
    )


def _second_moment_sums_torch(Y, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_second_moment_sums`` of a float64 tensor, streamed in row blocks on its device; host arrays out."""
    S2 = Y.new_zeros((Y.shape[1], Y.shape[1]))
    for i0 in range(0, len(Y), rows):
        b = Y[i0 : i0 + rows]
        S2 += b.T @ b
    return S2.cpu().numpy(), Y.sum(0).cpu().numpy(), (Y * Y).sum(1).cpu().numpy()


def _whiten_blocks(x: np.ndarray, mu: np.ndarray, Wt: np.ndarray, rows: int):
    for i0 in range(0, len(x), rows):
        yield (x[i0 : i0 + rows].astype(np.float64) - mu) @ Wt


def _whiten(x: np.ndarray, mu: np.ndarray, Wt: np.ndarray, budget_mib: float) -> np.ndarray:
    rows = _rows_per_block(x.shape[1], budget_mib)
    return np.concatenate(list(_whiten_blocks(x, mu, Wt, rows)), axis=0)


def _second_moment_sums(Y: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S2 = sum y y^T (k, k), s1 = sum y (k,), norms |y_i|^2 (n,)), float64, streamed in row blocks."""
    k = Y.shape[1]
    S2, s1 = np.zeros((k, k)), np.zeros(k)
    for i0 in range(0, len(Y), rows):
        b = Y[i0 : i0 + rows]
        S2 += b.T @ b
        s1 += b.sum(0)
    return S2, s1, np.einsum("ij,ij->i", Y, Y)


def _ff(n: int, k: int) -> float:
    """Falling factorial n (n-1) ... (n-k+1)."""
    out = 1.0
    for i in range(k):
        out *= n - i
    return out


# --------------------------------------------------------------------------------------------- one sample


def _u2_zetas_streamed(Y: np.ndarray, p: np.ndarray, rows: int) -> tuple[float, float, float]:
    """``probes.stats.u2_zetas`` for the kernel h(a, b) = ((a^T b)^2 - a^T P a - b^T P b + ||P||^2), computed
    from Gram blocks (rows x m) instead of the m x m kernel matrix: (theta, zeta1, zeta2)."""
    m = len(Y)
    q = (Y * Y) @ p
    pp = float(p @ p)
    r = np.zeros(m)
    Q = 0.0
    for i0 in range(0, m, rows):
        G = Y[i0 : i0 + rows] @ Y.T
        H = G * G
        H -= q[i0 : i0 + rows, None]
        H -= q[None, :]
        H += pp
        idx = np.arange(i0, min(i0 + rows, m))
        H[idx - i0, idx] = 0.0
        r[i0 : i0 + rows] = H.sum(1)
        Q += float((H * H).sum())
    return _u2_zetas_from_sums(m, r, Q)


def _u2_zetas_torch(Y, p: np.ndarray, rows: int) -> tuple[float, float, float]:
    """``_u2_zetas_streamed`` with ``Y`` a float64 tensor: the Gram blocks on its device."""
    import torch

    m = len(Y)
    p_t = _torch.to_float64(p, Y.device)
    q = (Y * Y) @ p_t
    pp = float(p @ p)
    r = Y.new_zeros(m)
    Q = Y.new_zeros(())
    for i0 in range(0, m, rows):
        i1 = min(i0 + rows, m)
        H = Y[i0:i1] @ Y.T
        H *= H
        H -= q[i0:i1, None]
        H -= q[None, :]
        H += pp
        idx = torch.arange(i0, i1, device=Y.device)
        H[idx - i0, idx] = 0.0
        r[i0:i1] = H.sum(1)
        Q += (H * H).sum()
    return _u2_zetas_from_sums(m, r.cpu().numpy(), float(Q))


def _u2_zetas_from_sums(m: int, r: np.ndarray, Q: float) -> tuple[float, float, float]:
    """(theta, zeta1, zeta2) from the kernel matrix's row sums ``r`` (m,) and squared sum ``Q`` (zero diagonal)."""
    S = float(r.sum())
    T = float(r @ r) - Q
    theta = S / _ff(m, 2)
    theta2 = (S * S - 2.0 * Q - 4.0 * T) / _ff(m, 4)
    return theta, T / _ff(m, 3) - theta2, Q / _ff(m, 2) - theta2


def whitened_moment_error(
    generated,
    mu,
    sigma,
    *,
    delta: float | None = None,
    confidence: float = 0.95,
    budget_mib: float = DEFAULT_BUDGET_MIB,
    max_variance_rows: int = MAX_VARIANCE_ROWS,
    device="cpu",
    engine: str = "auto",
) -> MomentErrorResult:
    """E1 of ``generated`` (n, D) against the population moments ``mu`` (D,), ``sigma`` (D, D).

    Unbiased degree-2 U-statistic (module docstring; Hoeffding 1948, Gretton et al. 2012 Eq. 3): its
    expectation is E1 at every n >= 4. ``delta``: ridge of the whitening, default ``DEFAULT_RIDGE`` *
    tr(sigma) / D; it keeps W finite for a singular sigma (the oracle still scores 0 because the reference is
    P = W sigma W, not I); generated variance v in a direction where the data have (almost) none is counted
    as (v / delta)^2 / d -- a real failure (off-support mass), not noise. ``confidence``: Wald interval from
    the exact U-statistic variance; its zetas are unbiased distinct-index averages over the first
    ``max_variance_rows`` rows (all rows when fewer), streamed in Gram blocks sized from ``budget_mib``.
    ``device``/``engine``: on a CUDA device the linear algebra runs there in float64 (module docstring).
    """
    # E1 depends on x - mu only: wide input is shifted by an offset in float64 before its float32 cast, and mu by
    # the same offset (sigma, a covariance, does not move), so the cast keeps float32's precision relative to the
    # spread, not to the distance from 0 (``_checks`` module docstring); float32 input is used as given
    off = l2_offset(generated)
    x = as_features(generated, "generated features", min_n=4, offset=off)
    n, D = x.shape
    mu, sigma = _check_population(mu, sigma, D)
    if off is not None:
        mu = mu - off
    if not 0 < confidence < 1:
        raise DiffauditError(f"confidence={confidence} must be between 0 and 1, e.g. 0.95.")
    dev = _torch.torch_device(device) if _torch.use_torch(engine, device) else None
    Wt, p, delta = _whitener(sigma, delta, np.linalg.eigh if dev is None else _device_eigh(dev))
    d = len(p)
    m = min(n, max(4, int(max_variance_rows)))
    if dev is None:
        Y = _whiten(x, mu, Wt, budget_mib)
        S2, s1, sq = _second_moment_sums(Y, _rows_per_block(d, budget_mib))
        q = (Y * Y) @ p
        _, zeta1, zeta2 = _u2_zetas_streamed(Y[:m], p, _rows_per_block(m, budget_mib))
    else:
        Y = _whiten_torch(x, mu, Wt, budget_mib, dev)
        S2, s1, sq = _second_moment_sums_torch(Y, _rows_per_block(d, budget_mib))
        q = ((Y * Y) @ _torch.to_float64(p, dev)).cpu().numpy()
        _, zeta1, zeta2 = _u2_zetas_torch(Y[:m], p, _rows_per_block(m, budget_mib))
    pp = float(p @ p)
    cross = (float((S2 * S2).sum()) - float((sq * sq).sum())) / _ff(n, 2)  # mean_{i != j} (y_i^T y_j)^2
    value = (cross - 2.0 * float(q.mean()) + pp) / d
    plugin = float(((S2 / n - np.diag(p)) ** 2).sum()) / d
    mean_part = (float(s1 @ s1) - float(sq.sum())) / _ff(n, 2) / d
    # Var = 4 zeta1 / n + 2 (zeta2 - 2 zeta1) / (n (n-1)) (= u2_variance); zeta2 - 2 zeta1 = tr C^2 of phi is the
    # degenerate part. zeta1's unbiased estimate is noisy around 0 at the null: clip it, not the total.
    var = (4.0 * max(zeta1, 0.0) / n + 2.0 * max(zeta2 - 2.0 * zeta1, 0.0) / _ff(n, 2)) / d**2
    return MomentErrorResult(
        *_wald(value, var, confidence), plugin, float(mean_part), d, n, None, "population", d, delta
    )


# --------------------------------------------------------------------------------------------- two samples


def whitening_inflation(k: int, n_half: int) -> float:
    """Gaussian-data factor E tr(S^-2) / k by which whitening with the covariance S of ``n_half`` rows inflates
    a non-zero E1 in k dimensions: nu^2 (nu - 1) / ((nu - k)(nu - k - 1)(nu - k - 3)), nu = n_half - 1
    (inverse-Wishart second moment, e.g. Press 1982, Sec. 5.2); inf when nu <= k + 3."""
    nu = n_half - 1
    if nu <= k + 3:
        return float("inf")
    return nu**2 * (nu - 1) / ((nu - k) * (nu - k - 1) * (nu - k - 3))


def max_whitening_rank(n_half: int, inflation: float = WHITENING_INFLATION) -> int:
    """Largest whitening rank k with ``whitening_inflation(k, n_half) <= 1 + inflation`` (0 if none)."""
    k = 0
    while whitening_inflation(k + 1, n_half) <= 1.0 + inflation:
        k += 1
    return k


def _two_sample_sums(X: np.ndarray, Y: np.ndarray, rows: int):
    """Row sums and squared sums of the kernel matrices (a^T b)^2 of ``X`` (m, k) and ``Y`` (n, k), diagonals
    of the within-sample ones left out: (rx (m,), Qxx, ry (n,), Qyy, cx (m,), cy (n,), Qxy)."""
    m, n = len(X), len(Y)

    def within(Z):
        r, Q = np.zeros(len(Z)), 0.0
        for i0 in range(0, len(Z), rows):
            K = (Z[i0 : i0 + rows] @ Z.T) ** 2
            idx = np.arange(i0, min(i0 + rows, len(Z)))
            K[idx - i0, idx] = 0.0
            r[i0 : i0 + rows] = K.sum(1)
            Q += float((K * K).sum())
        return r, Q

    rx, Qxx = within(X)
    ry, Qyy = within(Y)
    cx, cy, Qxy = np.zeros(m), np.zeros(n), 0.0
    for i0 in range(0, m, rows):
        K = (X[i0 : i0 + rows] @ Y.T) ** 2
        cx[i0 : i0 + rows] = K.sum(1)
        cy += K.sum(0)
        Qxy += float((K * K).sum())
    return rx, Qxx, ry, Qyy, cx, cy, Qxy


def _two_sample_sums_torch(X, Y, rows: int):
    """``_two_sample_sums`` of float64 tensors on one device; host arrays and floats out."""
    import torch

    def within(Z):
        r, Q = Z.new_zeros(len(Z)), Z.new_zeros(())
        for i0 in range(0, len(Z), rows):
            i1 = min(i0 + rows, len(Z))
            K = (Z[i0:i1] @ Z.T) ** 2
            idx = torch.arange(i0, i1, device=Z.device)
            K[idx - i0, idx] = 0.0
            r[i0:i1] = K.sum(1)
            Q += (K * K).sum()
        return r.cpu().numpy(), float(Q)

    rx, Qxx = within(X)
    ry, Qyy = within(Y)
    cx, cy, Qxy = X.new_zeros(len(X)), Y.new_zeros(len(Y)), X.new_zeros(())
    for i0 in range(0, len(X), rows):
        K = (X[i0 : i0 + rows] @ Y.T) ** 2
        cx[i0 : i0 + rows] = K.sum(1)
        cy += K.sum(0)
        Qxy += (K * K).sum()
    return rx, Qxx, ry, Qyy, cx.cpu().numpy(), cy.cpu().numpy(), float(Qxy)


def _two_sample_variance(X, Y, M: int, N: int, rows: int, sums=_two_sample_sums) -> float:
    """Variance of the unbiased MMD^2 with kernel k(a, b) = (a^T b)^2 at sample sizes (M, N).

    With phi = vec(y y^T), means mu/nu, covariances C_a/C_b and Delta = mu - nu, the statistic is
    |Delta|^2 + 2<Delta, a_bar> - 2<Delta, b_bar> + three degenerate U-terms, all uncorrelated, so exactly
    Var = 4 D'C_aD / M + 4 D'C_bD / N + 2 tr C_a^2 / (M (M-1)) + 2 tr C_b^2 / (N (N-1)) + 4 tr C_a C_b / (M N).
    Each moment is estimated without bias from distinct-index averages of the kernel matrices of ``X`` (m, k)
    and ``Y`` (n, k) (the rows given may be a subset of the M, N rows), streamed in Gram blocks by ``sums``
    (``_two_sample_sums``, or ``_two_sample_sums_torch`` for tensors).
    """
    m, n = len(X), len(Y)
    rx, Qxx, ry, Qyy, cx, cy, Qxy = sums(X, Y, rows)
    Sxx, Syy, Sxy = float(rx.sum()), float(ry.sum()), float(cx.sum())
    Txx, Tyy = float(rx @ rx) - Qxx, float(ry @ ry) - Qyy
    Tx, Ty = float(cx @ cx) - Qxy, float(cy @ cy) - Qxy  # same x / distinct y's; same y / distinct x's
    Fxx, Fyy = Sxx * Sxx - 2 * Qxx - 4 * Txx, Syy * Syy - 2 * Qyy - 4 * Tyy
    Fxy = Sxy * Sxy - Qxy - Tx - Ty
    Rx, Ry = float(rx @ cx), float(ry @ cy)  # k(x1, x2) k(x1, y); k(y1, y2) k(x, y1)
    A_xx, B_xx, D_xx = Qxx / _ff(m, 2), Txx / _ff(m, 3), Fxx / _ff(m, 4)  # E k^2, mu'S_a mu, |mu|^4
    A_yy, B_yy, D_yy = Qyy / _ff(n, 2), Tyy / _ff(n, 3), Fyy / _ff(n, 4)
    A_xy = Qxy / (m * n)  # tr S_a S_b
    nSn = Tx / (m * _ff(n, 2))  # nu' S_a nu
    mSm = Ty / (_ff(m, 2) * n)  # mu' S_b mu
    mn2 = Fxy / (_ff(m, 2) * _ff(n, 2))  # (mu . nu)^2
    mSa_n = Rx / (_ff(m, 2) * n)  # mu' S_a nu
    nSb_m = Ry / (_ff(n, 2) * m)  # nu' S_b mu
    m2mn = (Sxx * Sxy - 2 * Rx) / (_ff(m, 3) * n)  # |mu|^2 (mu . nu)
    n2mn = (Syy * Sxy - 2 * Ry) / (_ff(n, 3) * m)  # |nu|^2 (mu . nu)
    tr_a2 = max(A_xx - 2 * B_xx + D_xx, 0.0)
    tr_b2 = max(A_yy - 2 * B_yy + D_yy, 0.0)
    tr_ab = max(A_xy - mSm - nSn + mn2, 0.0)
    dCad = B_xx - 2 * mSa_n + nSn - (D_xx - 2 * m2mn + mn2)
    dCbd = B_yy - 2 * nSb_m + mSm - (D_yy - 2 * n2mn + mn2)
    degenerate = 2 * tr_a2 / (M * (M - 1)) + 2 * tr_b2 / (N * (N - 1)) + 4 * tr_ab / (M * N)
    # The linear part is >= 0 but its unbiased estimate is noisy around 0 at the null; clipping the sum (not
    # each term) keeps the variance at least its degenerate part with the least upward bias.
    return degenerate + max(4 * dCad / M + 4 * dCbd / N, 0.0)


def two_sample_moment_mmd(
    generated,
    reference,
    *,
    rank: int | None = None,
    delta: float | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    budget_mib: float = DEFAULT_BUDGET_MIB,
    max_variance_rows: int = MAX_VARIANCE_ROWS,
    device="cpu",
    engine: str = "auto",
) -> MomentErrorResult:
    """E1 of ``generated`` (n_g, D) against a reference sample ``reference`` (n_r, D) (the holdout).

    ``reference`` is split at random (``seed``) into halves A and B. A fixes the coordinates, from its
    eigen-decomposition S_A = V diag(lam) V^T: the top k principal directions are whitened one by one and the
    orthogonal complement is kept, scaled by one scalar (an isotropic whitening of the residual),

        y = [W_k (x - mu_A); (I - P_k)(x - mu_A) / s_res],   W_k = diag((lam_1..k + delta)^-1/2) V_k^T,
        s_res^2 = mean(lam_k+1..D) + delta,

    so y has all D dimensions and no direction is dropped (``delta`` as in ``whitened_moment_error``). k = D is
    the full whitening ("full", y = (S_A + delta I)^(-1/2)(x - mu_A)); 0 < k < D "top-k+isotropic-residual";
    k = 0 "isotropic" (y = (x - mu_A) / s). k = min(D, k_max) with k_max = ``max_whitening_rank(n_half)``,
    which keeps the Gaussian-data inflation of the whitened block below ``WHITENING_INFLATION`` (about
    n_half / 33, 0 below 132 reference rows: small references get the isotropic route, the minimum is 16
    rows); ``rank`` overrides it (0 <= rank < n_half - 4). Then the unbiased MMD^2 between generated rows and
    B with the homogeneous quadratic kernel k(a, b) = (a^T b)^2 (Gretton et al. 2012, JMLR 13, Lemma 6 /
    Eq. 3), whose feature map is vec(y y^T), estimates ||M_g - M_B||_F^2 (second moments about mu_A in y);
    divided by D it is on E1's scale.

    Relation to E1: (i) with the true coordinates (A infinite) and k = D its expectation is E1 exactly; (ii) it
    is exactly 0 in expectation for a generator equal to the reference distribution, whatever A and k; (iii)
    for a non-zero E1, estimating the coordinates from n_half rows inflates it: by
    ``whitening_inflation(D, n_half)`` on the full route (Gaussian data; Monte Carlo on N(0, 1.3 I) vs
    N(0, I), D = 16, n_half = 200: value / E1 matches the factor 1.31, see tests), by m^2 / ((m - 2)(m - 4)),
    m = (n_half - 1) D, on the isotropic route (one chi-square scale: 1.07 at D = 3, 60 rows). On the residual route the residual
    scale is fitted on the same half as the subspace, so PCA's optimism biases it low and inflates the residual
    block beyond the top-k block's factor ``whitening_inflation(k, n_half)`` that is reported: measured total
    value / E1 on N(0, 1.3 I) vs N(0, I) at the rule's k: 1.15 (D = 64, n_half = 150, k = 3), 1.19 (D = 64,
    n_half = 300, k = 8), 1.16 (D = 64, n_half = 1000, k = 30), 1.11 (D = 256, n_half = 300, k = 8); it only
    ever inflates, and is never divided out (it depends on the data). (iv) Off the full route the residual
    block is the relative error in units of the complement's MEAN variance, so an error in a low-variance
    residual direction counts less than full whitening would count it (exactly as much when the complement is
    isotropic). Example (the case that "top-k" alone missed): 8 directions at std 3 and 56 at 0.5, a model
    exact in the 8 and 3x too wide in the 56 (E1 = 56): 4.7 at 300 reference rows (k = 3: 5 strong directions
    share the residual scale), 58 at 600 (k = 8), 63 at 2,000 (k = 30); the top-k statistic read ~0 at both.
    The kernel has no "+1" term on purpose: (a^T b + 1)^2 would add 2 ||m_g - m_B||^2 / d and then no longer
    estimate E1; the mean shift is reported in ``mean_part`` instead.

    Interval: Wald with the exact variance of the two-sample U-statistic (see ``_two_sample_variance``),
    moments estimated without bias on the first ``max_variance_rows`` rows of each sample; the linear part is
    clipped at 0 as a whole. It covers the value conditional on A (the target at the coordinates A fixed);
    measured (d = 8, n_g = 300, n_ref = 600, 1,000 draws): 98.8 % at the null, 94.3 % at E1 = 0.09.
    ``device``/``engine``: on a CUDA device the linear algebra runs there in float64 (module docstring).
    """
    # second moments about mu_A in both samples: one shift of both changes nothing, so wide inputs are shifted by
    # ONE offset (the reference rows' median) in float64 before the float32 cast (``_checks`` module docstring)
    off = l2_offset(reference, generated)
    x = as_features(generated, "generated features", min_n=4, offset=_same(off, generated))
    ref = as_features(reference, "reference features", min_n=16, offset=off)
    same_width(x, ref, "generated features", "reference features")
    if not 0 < confidence < 1:
        raise DiffauditError(f"confidence={confidence} must be between 0 and 1, e.g. 0.95.")
    D = x.shape[1]
    perm = np.random.default_rng(seed).permutation(len(ref))
    n_half = len(ref) // 2
    A, B = ref[np.sort(perm[:n_half])], ref[np.sort(perm[n_half : 2 * n_half])]
    if rank is None:
        k = min(D, max_whitening_rank(n_half))
    else:
        if isinstance(rank, bool) or int(rank) != rank or int(rank) < 0 or int(rank) >= n_half - 4:
            raise DiffauditError(
                f"rank={rank} must be an integer from 0 to {n_half - 5} (half the reference minus 5); "
                "pass None for the derived rank."
            )
        k = min(D, int(rank))
    dev = _torch.torch_device(device) if _torch.use_torch(engine, device) else None
    mu_A, S_A = gaussian_stats(
        A, budget_mib=budget_mib, name="reference features", device=device, engine=engine
    )
    Wt, s_res2, delta = _residual_whitener(
        S_A, delta, k, np.linalg.eigh if dev is None else _device_eigh(dev)
    )
    M, N = len(x), len(B)
    rows = _rows_per_block(D, budget_mib)
    mv = max(4, int(max_variance_rows))
    if dev is None:
        Yg = _whiten(x, mu_A, Wt, budget_mib)
        Yb = _whiten(B, mu_A, Wt, budget_mib)
        Sg, sg, qg = _second_moment_sums(Yg, rows)
        Sb, sb, qb = _second_moment_sums(Yb, rows)
        sums = _two_sample_sums
    else:
        Yg = _whiten_torch(x, mu_A, Wt, budget_mib, dev)
        Yb = _whiten_torch(B, mu_A, Wt, budget_mib, dev)
        Sg, sg, qg = _second_moment_sums_torch(Yg, rows)
        Sb, sb, qb = _second_moment_sums_torch(Yb, rows)
        sums = _two_sample_sums_torch
    u_gg = (float((Sg * Sg).sum()) - float((qg * qg).sum())) / _ff(M, 2)
    u_bb = (float((Sb * Sb).sum()) - float((qb * qb).sum())) / _ff(N, 2)
    u_gb = float((Sg * Sb).sum()) / (M * N)
    value = (u_gg + u_bb - 2.0 * u_gb) / D
    plugin = float(((Sg / M - Sb / N) ** 2).sum()) / D
    mean_part = (
        (float(sg @ sg) - float(qg.sum())) / _ff(M, 2)
        + (float(sb @ sb) - float(qb.sum())) / _ff(N, 2)
        - 2.0 * float(sg @ sb) / (M * N)
    ) / D
    Xv, Yv = Yg[:mv], Yb[:mv]
    var = _two_sample_variance(Xv, Yv, M, N, _rows_per_block(max(len(Xv), len(Yv)), budget_mib), sums) / D**2
    whitening = "full" if k == D else ("isotropic" if k == 0 else "top-k+isotropic-residual")
    m_iso = (n_half - 1) * D  # chi-square degrees of freedom of the isotropic scale (Gaussian data)
    inflation = whitening_inflation(k, n_half) if k else m_iso**2 / ((m_iso - 2) * (m_iso - 4))
    return MomentErrorResult(
        *_wald(value, var, confidence),
        plugin,
        float(mean_part),
        D,
        M,
        len(ref),
        whitening,
        k,
        delta,
        inflation,
    )
