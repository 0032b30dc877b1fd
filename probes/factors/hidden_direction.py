"""Hidden-direction recovery in the mixed cumulant model (Bardone & Goldt 2024): the whitened direction of
extremal excess kurtosis (FOBI, Cardoso 1989, refined by the FastICA fixed point, Hyvarinen & Oja 1997)
and its overlap with the hidden direction v.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes.factors._common import flat as _flat
from diffaudit.probes.stats import excess_kurtosis


def mcm_target_kurtosis(beta_v: float) -> float:
    """Excess kurtosis of v.x in the mixed cumulant model: -2 beta_v^2 / (1 + beta_v)^2 (Bardone & Goldt 2024)."""
    b = float(beta_v)
    return -2.0 * b * b / (1.0 + b) ** 2


@dataclass
class DirectionResult:
    """Hidden-direction recovery on whitened samples.

    ``w_hat`` (d,): unit direction of extremal kurtosis in whitened space; ``overlap`` = |<w_hat, v_w>|
    where v_w = C^{1/2} v / ||C^{1/2} v|| is the whitened-space direction whose projection is
    proportional to v.x (for mcm, C v = v, so v_w = v); ``chance_overlap`` = E|<w, v>| for a random
    unit w, sqrt(2 / (pi d)). ``kurtosis_v`` / ``kurtosis_u``: excess kurtosis of v.x / u.x;
    ``kurtosis_w_hat``: along w_hat; ``target_kurtosis`` for v (mcm: -2 beta_v^2/(1+beta_v)^2).
    ``w_hat_data`` (d,): the data-space direction W w_hat (unit), for inspection.
    """

    overlap: float
    chance_overlap: float
    kurtosis_w_hat: float
    kurtosis_v: float
    kurtosis_u: float | None
    target_kurtosis: float | None
    kurtosis_error: float | None
    w_hat: np.ndarray
    w_hat_data: np.ndarray


def _fastica_kurtosis(Y: np.ndarray, w: np.ndarray, n_iter: int, tol: float) -> np.ndarray:
    """One-unit FastICA fixed point with g(s) = s^3 (Hyvarinen & Oja 1997): w <- E[y (w.y)^3] - 3 w."""
    w = w / np.linalg.norm(w)
    for _ in range(n_iter):
        s = Y @ w
        w_new = (Y * (s**3)[:, None]).mean(0) - 3.0 * w
        nrm = np.linalg.norm(w_new)
        if nrm == 0:
            break
        w_new /= nrm
        done = 1.0 - abs(float(w_new @ w)) < tol
        w = w_new
        if done:
            break
    return w


def hidden_direction_overlap(
    x,
    v,
    *,
    u=None,
    target_kurtosis: float | None = None,
    sign: str | None = None,
    n_restarts: int = 8,
    n_iter: int = 200,
    tol: float = 1e-10,
    seed: int = 0,
) -> DirectionResult:
    """Find the direction of extremal excess kurtosis of whitened samples and its overlap with ``v``.

    ``x`` (n, d); ``v`` (d,) hidden direction; ``u`` (d,) optional spike direction. Candidates: the
    FOBI eigenvectors of E[|y|^2 y y^T] - (d + 2) I (Cardoso 1989; its eigenvalues are the excess
    kurtoses of independent components) and ``n_restarts`` seeded random starts, each refined by the
    FastICA kurtosis fixed point. The winner has the most negative kurtosis (``sign="negative"``),
    the most positive (``"positive"``) or the largest |excess| (None; default: the sign of
    ``target_kurtosis`` when given).
    """
    X = _flat(x, "samples", min_n=10).astype(np.float64)
    n, d = X.shape
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if len(v) != d:
        raise DiffauditError(
            f"v has {len(v)} entries but the samples have {d} dimensions; pass the dataset's v."
        )
    v = v / np.linalg.norm(v)
    mu = X.mean(0)
    Xc = X - mu
    C = Xc.T @ Xc / (n - 1)
    lam, Q = np.linalg.eigh(C)
    if lam.min() <= 1e-12 * max(lam.max(), 1e-300):
        raise DiffauditError(
            "samples: their covariance is singular; pass more samples than dimensions (n > d)."
        )
    W = (Q / np.sqrt(lam)) @ Q.T  # C^{-1/2}
    Csqrt = (Q * np.sqrt(lam)) @ Q.T
    Y = Xc @ W
    if sign is None and target_kurtosis is not None:
        sign = "negative" if target_kurtosis < 0 else "positive"
    # FOBI
    r2 = (Y * Y).sum(1)
    M = (Y * r2[:, None]).T @ Y / n - (d + 2) * np.eye(d)
    ev, E = np.linalg.eigh(M)
    rng = np.random.default_rng(seed)
    starts = [E[:, 0], E[:, -1]] + [rng.standard_normal(d) for _ in range(n_restarts)]
    best, best_key, best_k = None, -np.inf, np.nan
    for w0 in starts:
        w = _fastica_kurtosis(Y, w0, n_iter, tol)
        k = excess_kurtosis(Y @ w)
        key = -k if sign == "negative" else (k if sign == "positive" else abs(k))
        if key > best_key:
            best, best_key, best_k = w, key, k
    v_w = Csqrt @ v
    v_w /= np.linalg.norm(v_w)
    w_data = W @ best
    w_data /= np.linalg.norm(w_data)
    kv = excess_kurtosis(Xc @ v)
    ku = None
    if u is not None:
        uu = np.asarray(u, dtype=np.float64).reshape(-1)
        ku = excess_kurtosis(Xc @ (uu / np.linalg.norm(uu)))
    return DirectionResult(
        overlap=float(abs(best @ v_w)),
        chance_overlap=float(np.sqrt(2.0 / (np.pi * d))),
        kurtosis_w_hat=float(best_k),
        kurtosis_v=kv,
        kurtosis_u=ku,
        target_kurtosis=None if target_kurtosis is None else float(target_kurtosis),
        kurtosis_error=None if target_kurtosis is None else float(kv - target_kurtosis),
        w_hat=best,
        w_hat_data=w_data,
    )
