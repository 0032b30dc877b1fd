"""Union-of-subspaces probe for the mixture of low-rank Gaussians (Wang et al. 2024): on-union rate and
K-subspace recovery error (Bradley & Mangasarian 2000; Ho et al. 2003).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from diffaudit.errors import DiffauditError
from diffaudit.probes.factors._common import ci as _ci
from diffaudit.probes.factors._common import flat as _flat


@dataclass
class UnionResult:
    """Union-of-subspaces probe (mixture of low-rank Gaussians, Wang et al. 2024).

    ``on_union_rate``: share of samples with max_k ||U_k^T x||^2 / ||x||^2 >= threshold (Wilson CI);
    ``energy`` (n,) that maximum. ``subspace_error``: mean over true components of the projection
    distance ||P_hat - P_k||_F / sqrt(2 r) (0 = same subspace, 1 = orthogonal) after K-subspace
    clustering of the samples and Hungarian matching; ``per_component_error`` (K,); ``labels`` (n,).
    """

    on_union_rate: float
    on_union_rate_ci: tuple[float, float] | None
    subspace_error: float
    per_component_error: np.ndarray
    energy: np.ndarray
    labels: np.ndarray
    threshold: float


def _as_bases(bases, d: int) -> np.ndarray:
    B = np.asarray(bases, dtype=np.float64)
    if B.ndim == 2:
        B = B[None]
    if B.ndim != 3 or B.shape[1] != d:
        raise DiffauditError(f"bases: expected (K, d, r) orthonormal bases with d={d}, got shape {B.shape}.")
    return B


def k_subspaces(
    X: np.ndarray, K: int, r: int, *, n_init: int = 5, n_iter: int = 50, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """K-subspace clustering (Bradley & Mangasarian 2000; Ho et al. 2003) of linear subspaces through 0:
    alternate assignment by largest projection energy and refit by the top-r right singular vectors.
    Returns ``(bases (K, d, r), labels (n,))`` of the restart with the largest captured energy."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    best, best_obj = None, -np.inf
    for _ in range(n_init):
        # init: each subspace spanned by r random samples' neighbourhood in angle (seeded)
        B = np.empty((K, d, r))
        for k in range(K):
            c = X[rng.choice(n, size=r, replace=False)].T
            B[k] = np.linalg.qr(c + 1e-9 * rng.standard_normal(c.shape))[0][:, :r]
        labels = np.full(n, -1)
        for _ in range(n_iter):
            E = np.stack([((X @ B[k]) ** 2).sum(1) for k in range(K)], 1)
            new = E.argmax(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for k in range(K):
                Xk = X[labels == k]
                if len(Xk) >= r:
                    B[k] = np.linalg.svd(Xk, full_matrices=False)[2][:r].T
                else:  # empty cluster: restart it on the worst-fitted samples
                    worst = np.argsort(E.max(1) / ((X * X).sum(1) + 1e-300))[:r]
                    B[k] = np.linalg.qr(X[worst].T)[0][:, :r]
        obj = float(np.stack([((X @ B[k]) ** 2).sum(1) for k in range(K)], 1).max(1).sum())
        if obj > best_obj:
            best, best_obj = (B.copy(), labels.copy()), obj
    return best


def union_of_subspaces(x, bases, *, threshold: float = 0.9, n_init: int = 5, seed: int = 0) -> UnionResult:
    """On-union fraction and subspace recovery error for samples ``x`` (n, d) and true ``bases``
    (K, d, r) (orthonormal columns U_k). Matching estimated to true subspaces by the Hungarian
    algorithm on the projection distance."""
    X = _flat(x, "samples", min_n=2).astype(np.float64)
    n, d = X.shape
    B = _as_bases(bases, d)
    K, _, r = B.shape
    nrm2 = (X * X).sum(1)
    nrm2[nrm2 == 0] = 1e-300
    energy = np.stack([((X @ B[k]) ** 2).sum(1) for k in range(K)], 1).max(1) / nrm2
    on = energy >= threshold
    Bh, labels = k_subspaces(X, K, r, n_init=n_init, seed=seed)
    P = np.einsum("kdr,ker->kde", B, B)
    Ph = np.einsum("kdr,ker->kde", Bh, Bh)
    cost = np.sqrt(((P[:, None] - Ph[None]) ** 2).sum((-1, -2))) / np.sqrt(2 * r)
    rows, cols = linear_sum_assignment(cost)
    per = cost[rows, cols]
    k_on = int(on.sum())
    return UnionResult(
        on_union_rate=k_on / n,
        on_union_rate_ci=_ci(k_on, n),
        subspace_error=float(per.mean()),
        per_component_error=per,
        energy=energy,
        labels=labels,
        threshold=float(threshold),
    )
