"""Linear probes of a model's activations to the true factors: held-out ridge R^2 and DCI scores
(Eastwood & Williams 2018, "A framework for the quantitative evaluation of disentangled representations").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes.factors._common import flat as _flat


@dataclass
class ReprResult:
    """Linear (ridge) probe of activations to true factors, and DCI scores (Eastwood & Williams 2018).

    ``r2[name]``: held-out R^2 per factor (informativeness = their mean). Importance matrix R (F_act,
    n_factors) = |ridge coefficients| fitted on standardised activations and standardised factors.
    ``disentanglement``: sum_i rho_i (1 - H_K(P_i.)), rho_i = row share of R; ``completeness``:
    mean_j (1 - H_Fact(P_.j)); entropies in base K (factors) / F_act (units).
    """

    r2: dict[str, float]
    informativeness: float
    disentanglement: float
    completeness: float
    importance: np.ndarray
    alpha: float
    n_train: int
    n_test: int


def ridge_fit(A: np.ndarray, Z: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ridge without intercept on centred inputs: (A^T A + alpha I)^{-1} A^T Z (float64)."""
    G = A.T @ A
    G[np.diag_indices_from(G)] += alpha
    return np.linalg.solve(G, A.T @ Z)


def _entropy_rows(P: np.ndarray, base: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(P > 0, P * np.log(P), 0.0)
    return -t.sum(1) / np.log(max(base, 2))


def representation_probe(
    activations, z, *, factor_names=None, test_fraction: float = 0.25, alpha: float = 0.01, seed: int = 0
) -> ReprResult:
    """Ridge regression from ``activations`` (n, F_act) to true factors ``z`` (n, n_factors), held-out R^2.

    Rows are split at random (``seed``) into train/test (``test_fraction``); activations and factors
    are standardised with the training split's statistics; categorical factors are regressed on their
    codes. ``alpha``: ridge penalty per training sample on the standardised problem (the solve uses
    alpha * n_train); 0.01 keeps nearly collinear units from trading weight (which would blur DCI).
    """
    A = _flat(activations, "activations", min_n=8).astype(np.float64)
    Z = np.asarray(z, dtype=np.float64)
    Z = Z.reshape(len(Z), -1)
    if len(Z) != len(A):
        raise DiffauditError(
            f"activations have {len(A)} rows but z has {len(Z)}; pass factors of the same samples."
        )
    nf = Z.shape[1]
    names = tuple(factor_names) if factor_names is not None else tuple(f"z{j}" for j in range(nf))
    if len(names) != nf:
        raise DiffauditError(
            f"factor_names has {len(names)} names for {nf} factor columns; pass one name per column."
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(A))
    n_test = max(2, int(round(test_fraction * len(A))))
    te, tr = perm[:n_test], perm[n_test:]
    ma, sa = A[tr].mean(0), A[tr].std(0)
    sa[sa == 0] = 1.0
    mz, sz = Z[tr].mean(0), Z[tr].std(0)
    sz[sz == 0] = 1.0
    Atr, Ate = (A[tr] - ma) / sa, (A[te] - ma) / sa
    Ztr, Zte = (Z[tr] - mz) / sz, (Z[te] - mz) / sz
    coef = ridge_fit(Atr, Ztr, alpha * len(tr))
    pred = Ate @ coef
    ss_res = ((Zte - pred) ** 2).sum(0)
    ss_tot = ((Zte - Zte.mean(0)) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    R = np.abs(coef)
    tot = R.sum()
    if tot > 0:
        row = R.sum(1)
        Prow = np.divide(R, row[:, None], out=np.zeros_like(R), where=row[:, None] > 0)
        rho = row / tot
        dis = float((rho * (1.0 - _entropy_rows(Prow, nf))).sum()) if nf > 1 else 1.0
        col = R.sum(0)
        Pcol = np.divide(R, col[None], out=np.zeros_like(R), where=col[None] > 0)
        comp = float((1.0 - _entropy_rows(Pcol.T, R.shape[0])).mean()) if R.shape[0] > 1 else 1.0
    else:
        dis = comp = float("nan")
    return ReprResult(
        r2={nm: float(v) for nm, v in zip(names, r2, strict=True)},
        informativeness=float(np.nanmean(r2)),
        disentanglement=dis,
        completeness=comp,
        importance=R,
        alpha=float(alpha),
        n_train=len(tr),
        n_test=len(te),
    )
