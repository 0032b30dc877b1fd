"""Exact k-nearest-neighbour search with FAISS, in blocks, reduced into a fixed-size top-k.

Like faiss ``contrib/exhaustive_search.py``: queries ``xq`` and database ``xb`` are cut into blocks
sized from a MiB budget, each (query block, database block) pair is searched with FAISS's brute-force
kernel, and the result is merged into a running top-k -- never an ``n x m`` matrix. The candidate list
is then re-ranked with distances recomputed in float64, because FAISS's BLAS path computes
``|x|^2 + |y|^2 - 2 x.y`` in float32, which blurs the small distances that copy detection cares about.

Conventions (all callers rely on them):
- ``metric="l2"``: ``D`` holds **squared** Euclidean distances, ascending.
- ``metric="ip"``: ``D`` holds inner products, descending (cosine similarity for L2-normalised rows).
- Ties are broken by the smaller database index.
"""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes._checks import as_features, same_width

DEFAULT_BUDGET_MIB = 512
_RERANK_EXTRA = 4  # extra float32 candidates kept per query before exact float64 re-ranking


def _faiss():
    import faiss  # imported lazily: loading it costs ~0.3 s

    return faiss


def _blocks(n: int, size: int):
    for i0 in range(0, n, size):
        yield i0, min(n, i0 + size)


def _block_sizes(nq: int, nb: int, dim: int, kk: int, budget_mib: float) -> tuple[int, int]:
    """Rows per query block and per database block so that one step stays inside the budget.

    One step holds: a query block (qb*dim*4), a database block (bb*dim*4), FAISS's distance tile
    (qb*bb*4) and the merge buffers (qb*2kk*12).
    """
    budget = max(16.0, float(budget_mib)) * (1 << 20)
    bb = int(min(nb, max(1024, budget * 0.4 / (dim * 4))))
    rest = budget - bb * dim * 4
    qb = int(rest / (dim * 4 + bb * 4 + 2 * kk * 12))
    qb = int(min(nq, max(64, qb)))
    return qb, bb


def _merge(D0, I0, D1, I1, kk: int, descending: bool):
    D = np.concatenate([D0, D1], axis=1)
    I = np.concatenate([I0, I1], axis=1)
    key = -D if descending else D
    # lexsort: primary key distance, secondary key index (deterministic ties)
    order = np.lexsort((I, key), axis=1)[:, :kk]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def _exact_rerank(xq: np.ndarray, xb: np.ndarray, I: np.ndarray, k: int, metric: str):
    """Recompute candidate distances in float64 and re-sort; returns the top ``k``."""
    nq, kk = I.shape
    valid = I >= 0
    Ic = np.where(valid, I, 0)
    q = xq.astype(np.float64)[:, None, :]
    cand = xb[Ic.reshape(-1)].astype(np.float64).reshape(nq, kk, -1)
    if metric == "l2":
        D = ((cand - q) ** 2).sum(-1)
        D[~valid] = np.inf
        order = np.lexsort((Ic, D), axis=1)[:, :k]
    else:
        D = (cand * q).sum(-1)
        D[~valid] = -np.inf
        order = np.lexsort((Ic, -D), axis=1)[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def knn(
    xq,
    xb,
    k: int,
    *,
    metric: str = "l2",
    budget_mib: float = DEFAULT_BUDGET_MIB,
    exclude_self: bool = False,
    rerank: bool = True,
    name_q: str = "queries",
    name_b: str = "database",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of each row of ``xq`` (nq, D) among the rows of ``xb`` (nb, D).

    Returns ``(D, I)``, both ``(nq, k)``: ``D`` float64 (squared L2 ascending, or inner product
    descending), ``I`` int64 database indices. With ``exclude_self`` (``xq`` is ``xb``), row ``i``'s
    own index is dropped from its list, as k-NN radii of a set within itself require.
    """
    if metric not in ("l2", "ip"):
        raise DiffauditError(f"metric {metric!r} is not supported; use 'l2' or 'ip'.")
    xq = as_features(xq, name_q, min_n=1)
    xb = as_features(xb, name_b, min_n=1)
    same_width(xq, xb, name_q, name_b)
    nq, dim = xq.shape
    nb = xb.shape[0]
    k_eff = k + (1 if exclude_self else 0)
    if k < 1 or k_eff > nb:
        raise DiffauditError(
            f"k={k} nearest neighbours requested but {name_b} has {nb} sample(s); "
            f"use k <= {nb - (1 if exclude_self else 0)} or a larger {name_b}."
        )
    kk = min(nb, k_eff + (_RERANK_EXTRA if rerank else 0))
    faiss = _faiss()
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    descending = metric == "ip"
    qb, bb = _block_sizes(nq, nb, dim, kk, budget_mib)

    D_out = np.empty((nq, k), np.float64)
    I_out = np.empty((nq, k), np.int64)
    for q0, q1 in _blocks(nq, qb):
        Dq = np.full((q1 - q0, 0), 0.0, np.float32)
        Iq = np.full((q1 - q0, 0), -1, np.int64)
        for b0, b1 in _blocks(nb, bb):
            kb = min(kk, b1 - b0)
            Db, Ib = faiss.knn(xq[q0:q1], xb[b0:b1], kb, metric=faiss_metric)
            Ib = np.where(Ib >= 0, Ib + b0, -1)
            Dq, Iq = _merge(Dq, Iq, Db, Ib, kk, descending)
        if exclude_self:
            own = np.arange(q0, q1)[:, None]
            is_self = Iq == own
            # drop the own index (keep order); rows where it was not found drop their last candidate
            drop = np.where(is_self.any(1), is_self.argmax(1), Iq.shape[1] - 1)
            keep = np.ones_like(Iq, dtype=bool)
            keep[np.arange(len(Iq)), drop] = False
            Iq = Iq[keep].reshape(len(Iq), -1)
            Dq = Dq[keep].reshape(len(Dq), -1)
        if rerank:
            Dr, Ir = _exact_rerank(xq[q0:q1], xb, Iq, k, metric)
        else:
            Dr, Ir = Dq[:, :k].astype(np.float64), Iq[:, :k]
        D_out[q0:q1] = Dr
        I_out[q0:q1] = Ir
    return D_out, I_out
