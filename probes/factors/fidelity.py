"""Factor-distribution fidelity and factor-space coverage of the factors recovered from valid samples.

Per-factor 1-D Wasserstein-1 (Vallender 1974: W1 = integral |F - G|) and two-sample Kolmogorov-Smirnov
distances between the oracle's factors of generated samples and the true prior, and the share of a
quantile partition of factor space that the samples reach (coverage, as in Naeem et al. 2020 but on
the true factors instead of features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from diffaudit.errors import DiffauditError


@dataclass
class FidelityResult:
    """Per-factor distances between z_hat of valid samples and the true prior, and factor-space coverage.

    ``wasserstein[name]``: 1-D W1 in the factor's units (categorical: W1 under the 0/1 metric = total
    variation); ``wasserstein_rel[name]`` = W1 / std of the true factor (categorical: = TV);
    ``ks[name]``: two-sample KS statistic (categorical: max CDF gap over the code order).
    ``coverage``: share of partition cells occupied by true samples that valid samples reach;
    ``reference_coverage``: the same for an equal-size subsample of the true samples.
    """

    names: tuple[str, ...]
    wasserstein: dict[str, float]
    wasserstein_rel: dict[str, float]
    ks: dict[str, float]
    coverage: float
    reference_coverage: float
    n_cells: int
    n_valid: int


def _factor_kind(f) -> str:
    return getattr(f, "kind", "continuous")


def _cells(z: np.ndarray, edges: list, kinds: list[str]) -> np.ndarray:
    """Cell id of each row of z (n, F) under per-factor bin edges (categorical: the code itself)."""
    ids = np.zeros(len(z), np.int64)
    for j, (e, kind) in enumerate(zip(edges, kinds, strict=True)):
        if kind == "categorical":
            b = np.clip(np.rint(z[:, j]).astype(np.int64), 0, e - 1)
            nb = e
        else:
            b = np.searchsorted(e, z[:, j], side="right")
            nb = len(e) + 1
        ids = ids * nb + b
    return ids


def factor_fidelity(
    z_hat_valid, z_true, factors, *, bins_per_factor: int | None = None, seed: int = 0
) -> FidelityResult:
    """Per-factor 1-D Wasserstein-1 and KS distance between ``z_hat_valid`` (m, F) (the oracle's
    factors of the VALID generated samples) and ``z_true`` (n, F) (fresh prior samples), plus coverage.

    Partition: continuous factors cut at true-sample quantiles into ``bins_per_factor`` equal-mass bins
    (default: the largest b with b^F_cont * prod(K_cat) <= n_true / 10, at least 2); categorical
    factors by category. ``factors``: sequence of objects with ``name`` and ``kind`` (or plain names).
    """
    zt = np.asarray(z_true, dtype=np.float64)
    zv = np.asarray(z_hat_valid, dtype=np.float64)
    if zt.ndim != 2 or len(zt) < 2:
        raise DiffauditError(f"z_true: expected (n, F) true factors with n >= 2, got shape {zt.shape}.")
    F = zt.shape[1]
    zv = zv.reshape(-1, F) if zv.size else np.zeros((0, F))
    factors = list(factors)
    if len(factors) != F:
        raise DiffauditError(
            f"factors: {len(factors)} factor specs for {F} factor columns; pass the dataset's factors."
        )
    names = tuple(getattr(f, "name", str(f)) for f in factors)
    kinds = [_factor_kind(f) for f in factors]
    W, Wr, K = {}, {}, {}
    for j, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        if len(zv) == 0:
            W[name] = Wr[name] = K[name] = float("nan")
            continue
        if kind == "categorical":
            cats = np.union1d(np.rint(zt[:, j]), np.rint(zv[:, j]))
            pt = np.array([(np.rint(zt[:, j]) == c).mean() for c in cats])
            pv = np.array([(np.rint(zv[:, j]) == c).mean() for c in cats])
            W[name] = Wr[name] = float(0.5 * np.abs(pt - pv).sum())
            K[name] = float(np.abs(np.cumsum(pt) - np.cumsum(pv)).max())
        else:
            W[name] = float(st.wasserstein_distance(zv[:, j], zt[:, j]))
            sd = float(zt[:, j].std())
            Wr[name] = W[name] / sd if sd > 0 else float("nan")
            K[name] = float(st.ks_2samp(zv[:, j], zt[:, j]).statistic)

    n_cats = [
        max(len(getattr(f, "categories", ()) or ()), int(np.rint(zt[:, j]).max()) + 1)
        if kind == "categorical"
        else 0
        for j, (f, kind) in enumerate(zip(factors, kinds, strict=True))
    ]
    n_cat_cells = int(np.prod([c for c in n_cats if c > 0])) if any(n_cats) else 1
    n_cont = sum(k != "categorical" for k in kinds)
    if bins_per_factor is None:
        target = max(1.0, len(zt) / 10 / n_cat_cells)
        b = int(np.floor(target ** (1.0 / n_cont) + 1e-9)) if n_cont else 1
        bins_per_factor = max(2, b)
    edges = [
        n_cats[j]
        if kind == "categorical"
        else np.quantile(zt[:, j], np.arange(1, bins_per_factor) / bins_per_factor)
        for j, kind in enumerate(kinds)
    ]
    cells_true = np.unique(_cells(zt, edges, kinds))
    n_cells = len(cells_true)
    if len(zv):
        reached = np.isin(cells_true, _cells(zv, edges, kinds)).mean()
        m = min(len(zv), len(zt))
        sub = np.random.default_rng(seed).choice(len(zt), size=m, replace=False)
        ref = np.isin(cells_true, _cells(zt[sub], edges, kinds)).mean()
    else:
        reached, ref = 0.0, float("nan")
    return FidelityResult(
        names=names,
        wasserstein=W,
        wasserstein_rel=Wr,
        ks=K,
        coverage=float(reached),
        reference_coverage=float(ref),
        n_cells=int(n_cells),
        n_valid=int(len(zv)),
    )
