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

Index options (``index=``): ``"exact"`` (the blocked brute force above), ``"ivf"`` (an inverted-file
index, ``IndexIVFFlat``: k-means cells, only ``nprobe`` cells searched; its candidates are re-ranked
exactly, and ``search`` reports recall@1 against exact search on a sample of queries), ``"auto"``
(IVF from ``IVF_AUTO_MIN`` database vectors up, exact below), or a prebuilt ``faiss.Index`` over
``xb`` (e.g. from ``diffaudit.index_cache.cached_index``).

Engines of the exact brute force (``engine="auto"`` picks the first that applies; ``KnnResult.device`` says
which ran): FAISS on a GPU when the installed FAISS sees one (``gpu="auto"``; ``"gpu"``); else, when the caller
passes a CUDA ``device``, the torch engine ``probes.knn_torch`` on that device (``"gpu-torch"``: blocked float32
matmul + top-k, float64 re-ranking on the device; the CPU-only FAISS wheel is all there is on CUDA 13); else
FAISS on the CPU (``"cpu"``). ``engine="torch"`` runs the torch engine on ``device`` even on the CPU
(``"cpu-torch"``), ``engine="faiss"`` never does. The float64 re-ranking makes every engine's results equal up
to exact ties (rows at the same float64 distance): the torch engine keeps a tied group in index order even
in its float32 selection, FAISS's BLAS path may keep a later member of a group larger than the candidate list.
IVF probing is always FAISS on the CPU.

Inputs wider than float32 (float64, int64) are, for ``metric="l2"`` without a prebuilt index, shifted by one
per-coordinate offset (``_checks.l2_offset``: the median of the database's rows) in float64 before the float32
cast -- squared distances do not change, and the cast keeps float32's precision relative to the data's spread
rather than to its distance from 0 (cast as given, features 1e4 + 1e-4 noise all became one point). Arguments
are checked when the search starts: ``k`` a whole number >= 1, ``budget_mib`` > 0 (``inf``: no limit, one
block), ``seed`` a whole number >= 0.
"""

# ruff: noqa: E741  (D, I follow FAISS naming)
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes import knn_torch
from diffaudit.probes._checks import as_features, as_int, l2_offset, same_width
from diffaudit.probes._torch import is_cuda

DEFAULT_BUDGET_MIB = 512
IVF_AUTO_MIN = 4_000_000  # "auto" switches to IVF from this many database vectors up
DEFAULT_RECALL_SAMPLE = 1000  # queries checked against exact search to estimate IVF recall@1
_RERANK_EXTRA = 4  # extra float32 candidates kept per query before exact float64 re-ranking
ENGINES = ("auto", "faiss", "torch")  # exact-search engines (module docstring)


def _faiss():
    import faiss  # imported lazily: loading it costs ~0.3 s

    return faiss


def _blocks(n: int, size: int):
    for i0 in range(0, n, size):
        yield i0, min(n, i0 + size)


def _block_sizes(nq: int, nb: int, dim: int, kk: int, budget_mib: float) -> tuple[int, int]:
    """Rows per query block and per database block so that one step stays inside the budget.

    One step holds: a database block (bb*dim*4), FAISS's BLAS distance tile (fixed: 4096 x 1024
    float32 = 16 MiB, however large the blocks), and per query row its features (dim*4), the merge
    buffers (2kk*12) and the float64 re-ranking gather (2*kk*dim*8). An infinite budget gives one block
    of each (row counts are clipped to nq, nb before they become ints).
    """
    budget = max(64.0, float(budget_mib)) * (1 << 20)
    bb = int(min(nb, max(1024, budget * 0.4 / (dim * 4))))
    rest = budget - bb * dim * 4 - (16 << 20)
    qb = int(min(nq, max(64, rest / (dim * 4 + 2 * kk * 12 + 2 * kk * dim * 8))))
    return qb, bb


def _check_budget(budget_mib) -> float:
    """``budget_mib`` as a float > 0. ``inf`` means no limit: one query and one database block (FAISS still
    tiles its own distance computation and the re-ranking gathers in chunks, so memory stays about
    ``nq * kk`` candidates plus the inputs) -- what a user writing "no budget" expects, as a very large
    finite budget already gives; refusing it would only make them pick an arbitrary large number."""
    if isinstance(budget_mib, bool) or not isinstance(budget_mib, numbers.Real):
        raise DiffauditError(
            f"budget_mib={budget_mib!r} is not a number; pass MiB > 0, e.g. 512 (inf: no limit)."
        )
    b = float(budget_mib)
    if not b > 0:  # also NaN
        raise DiffauditError(f"budget_mib={budget_mib!r} must be > 0 MiB; e.g. 512 (inf: no limit).")
    return b


def _check_seed(seed) -> int:
    return as_int(seed, "seed", minimum=0, hint=", e.g. seed=0")


def _faiss_seed(seed: int) -> int:
    """``seed`` (>= 0) as a seed FAISS takes (a C int, < 2**31): itself below 2**31 -- indexes built before
    keep their k-means -- else a deterministic 31-bit hash of it (numpy's ``SeedSequence``)."""
    seed = _check_seed(seed)
    if seed < 2**31:
        return seed
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0] >> 1)


def _merge(D0, I0, D1, I1, kk: int, descending: bool):
    D = np.concatenate([D0, D1], axis=1)
    I = np.concatenate([I0, I1], axis=1)
    key = -D if descending else D
    # lexsort: primary key distance, secondary key index (deterministic ties)
    order = np.lexsort((I, key), axis=1)[:, :kk]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def _finish(xq, xb, Dq, Iq, k: int, metric: str, rerank: bool):
    """Top ``k`` of a query block's candidates: exactly re-ranked in float64, or FAISS's order as is."""
    if rerank:
        return _exact_rerank(xq, xb, Iq, k, metric)
    return Dq[:, :k].astype(np.float64), Iq[:, :k]


def _exact_rerank(xq: np.ndarray, xb: np.ndarray, I: np.ndarray, k: int, metric: str, chunk_mib: float = 16):
    """Recompute candidate distances in float64 and re-sort; returns the top ``k``.

    Works in query chunks of about ``chunk_mib`` so the gathered (rows, kk, D) float64 block stays in
    cache-sized pieces (one big gather was 15x slower at D = 2048).
    """
    nq, kk = I.shape
    dim = xq.shape[1]
    valid = I >= 0
    Ic = np.where(valid, I, 0)
    D = np.empty((nq, kk), np.float64)
    rows = max(1, int(chunk_mib * (1 << 20) / (kk * dim * 8)))
    for i0 in range(0, nq, rows):
        i1 = min(nq, i0 + rows)
        cand = xb[Ic[i0:i1]].astype(np.float64)
        q = xq[i0:i1, None, :].astype(np.float64)
        if metric == "l2":
            diff = cand - q
            D[i0:i1] = np.einsum("ijk,ijk->ij", diff, diff)
        else:
            D[i0:i1] = np.einsum("ijk,ijk->ij", cand, q)
    if metric == "l2":
        D[~valid] = np.inf
        order = np.lexsort((Ic, D), axis=1)[:, :k]
    else:
        D[~valid] = -np.inf
        order = np.lexsort((Ic, -D), axis=1)[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


@dataclass
class KnnResult:
    """Result of ``search``: ``D``, ``I`` (nq, k) as in ``knn`` plus how they were found.

    ``recall_at_1``: share of a random sample of ``recall_sample`` queries whose first neighbour
    distance equals exact search's (1.0 by construction for ``method="exact"``; distances, not
    indices, are compared so that tied duplicates count as found).
    """

    D: np.ndarray
    I: np.ndarray
    method: str  # "exact" | "ivf"
    device: str  # the engine that ran: "cpu" | "gpu" (FAISS) | "gpu-torch" | "cpu-torch" (knn_torch)
    recall_at_1: float = 1.0
    recall_sample: int = 0
    nlist: int | None = None
    nprobe: int | None = None


_GPU_RES = None


def gpu_available() -> bool:
    """True when the installed FAISS was built with GPU support and sees at least one device."""
    faiss = _faiss()
    try:
        return hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0
    except Exception:  # a CPU build without the symbol
        return False


def _use_gpu(gpu) -> bool:
    if gpu == "auto":
        return gpu_available()
    if gpu is True or gpu == "gpu":
        if not gpu_available():
            raise DiffauditError(
                "gpu=True but the installed FAISS sees no GPU; use gpu='auto' (with device='cuda' the torch "
                "engine runs on the GPU) or install faiss-gpu."
            )
        return True
    if gpu is False or gpu == "cpu":
        return False
    raise DiffauditError(f"gpu={gpu!r} is not understood; use 'auto', True or False.")


def _engine(engine: str, gpu, device) -> str:
    """The exact-search engine (module docstring), named as ``KnnResult.device`` reports it."""
    if engine not in ENGINES:
        raise DiffauditError(f"engine={engine!r} is not understood; use one of {', '.join(ENGINES)}.")
    if engine == "torch":
        return "gpu-torch" if is_cuda(device) else "cpu-torch"
    if _use_gpu(gpu):
        return "gpu"
    if engine == "auto" and gpu not in (False, "cpu") and is_cuda(device):
        return "gpu-torch"
    return "cpu"


def _exact(xq, xb, k, kk, metric, budget_mib, exclude_self, rerank, engine, device, own=None):
    """The blocked exact search on ``engine`` (``_engine``'s name)."""
    if engine.endswith("-torch"):
        return knn_torch.exact_search(
            xq,
            xb,
            k,
            kk,
            metric=metric,
            device=device,
            budget_mib=budget_mib,
            exclude_self=exclude_self,
            rerank=rerank,
            own=own,
        )
    return _exact_blocks(xq, xb, k, kk, metric, budget_mib, exclude_self, rerank, engine == "gpu", own=own)


def _gpu_res():
    global _GPU_RES
    if _GPU_RES is None:
        _GPU_RES = _faiss().StandardGpuResources()
    return _GPU_RES


def _check_metric(metric: str) -> None:
    if metric not in ("l2", "ip"):
        raise DiffauditError(f"metric {metric!r} is not supported; use 'l2' or 'ip'.")


def _drop_self(Dq, Iq, own: np.ndarray):
    """Remove each query's own database index ``own`` (n,); rows without it drop their last candidate."""
    own = np.asarray(own)[:, None]
    is_self = Iq == own
    drop = np.where(is_self.any(1), is_self.argmax(1), Iq.shape[1] - 1)
    keep = np.ones_like(Iq, dtype=bool)
    keep[np.arange(len(Iq)), drop] = False
    return Dq[keep].reshape(len(Dq), -1), Iq[keep].reshape(len(Iq), -1)


def _exact_blocks(xq, xb, k, kk, metric, budget_mib, exclude_self, rerank, use_gpu, own=None):
    """Blocked brute force; ``own`` (nq,) gives each query's own database row for ``exclude_self``
    (default: query i is database row i)."""
    faiss = _faiss()
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    descending = metric == "ip"
    nq, dim = xq.shape
    nb = xb.shape[0]
    qb, bb = _block_sizes(nq, nb, dim, kk, budget_mib)
    D_out = np.empty((nq, k), np.float64)
    I_out = np.empty((nq, k), np.int64)
    for q0, q1 in _blocks(nq, qb):
        Dq = np.full((q1 - q0, 0), 0.0, np.float32)
        Iq = np.full((q1 - q0, 0), -1, np.int64)
        for b0, b1 in _blocks(nb, bb):
            kb = min(kk, b1 - b0)
            if use_gpu:
                Db, Ib = faiss.knn_gpu(_gpu_res(), xq[q0:q1], xb[b0:b1], kb, metric=faiss_metric)
            else:
                Db, Ib = faiss.knn(xq[q0:q1], xb[b0:b1], kb, metric=faiss_metric)
            Ib = np.where(Ib >= 0, Ib + b0, -1)
            Dq, Iq = _merge(Dq, Iq, Db, Ib, kk, descending)
        if exclude_self:
            Dq, Iq = _drop_self(Dq, Iq, np.arange(q0, q1) if own is None else own[q0:q1])
        D_out[q0:q1], I_out[q0:q1] = _finish(xq[q0:q1], xb, Dq, Iq, k, metric, rerank)
    return D_out, I_out


def default_nlist(nb: int) -> int:
    """About 4 sqrt(n) cells (the FAISS wiki's rule of thumb), at least 39 training points per cell."""
    return int(max(1, min(nb // 39, round(4 * np.sqrt(nb)))))


def build_index(
    xb,
    *,
    index: str = "ivf",
    metric: str = "l2",
    nlist: int | None = None,
    seed: int = 0,
    train_size: int | None = None,
):
    """Build a FAISS index over ``xb`` (nb, D): ``"exact"`` -> ``IndexFlat``; ``"ivf"`` -> ``IndexIVFFlat``
    with ``nlist`` k-means cells (default ``default_nlist``) trained on ``train_size`` rows (default
    64 per cell) drawn with ``seed``. Deterministic for a given (xb, params)."""
    _check_metric(metric)
    cp_seed = _faiss_seed(seed)
    xb = as_features(xb, "training set", min_n=2)
    faiss = _faiss()
    nb, dim = xb.shape
    fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if index == "exact":
        idx = faiss.IndexFlat(dim, fm)
        idx.add(xb)
        return idx
    if index != "ivf":
        raise DiffauditError(f"index={index!r} cannot be built; use 'exact' or 'ivf'.")
    nlist = int(nlist or default_nlist(nb))
    if not 1 <= nlist <= nb:
        raise DiffauditError(f"nlist={nlist} IVF cells for {nb} training vectors; use 1 <= nlist <= {nb}.")
    ivf = faiss.index_factory(dim, f"IVF{nlist},Flat", fm)  # owns its quantizer
    ivf.cp.seed = cp_seed
    n_tr = int(min(nb, train_size or 64 * nlist))
    rng = np.random.default_rng(seed)
    sample = xb if n_tr >= nb else xb[np.sort(rng.choice(nb, n_tr, replace=False))]
    ivf.train(sample)
    ivf.add(xb)
    return ivf


def _is_ivf(idx) -> bool:
    faiss = _faiss()
    try:
        faiss.extract_index_ivf(idx)
        return True
    except Exception:
        return False


def _ivf_blocks(ivf, xq, xb, k, kk, metric, exclude_self, rerank, own=None):
    nq = len(xq)
    D_out = np.empty((nq, k), np.float64)
    I_out = np.empty((nq, k), np.int64)
    for q0, q1 in _blocks(nq, 8192):
        Dq, Iq = ivf.search(xq[q0:q1], kk)
        if exclude_self:
            Dq, Iq = _drop_self(Dq, Iq, np.arange(q0, q1) if own is None else own[q0:q1])
        D_out[q0:q1], I_out[q0:q1] = _finish(xq[q0:q1], xb, Dq, Iq, k, metric, rerank)
    return D_out, I_out


def _first_found(D_approx, D_exact, metric) -> np.ndarray:
    a, e = D_approx[:, 0], D_exact[:, 0]
    tol = 1e-9 * np.maximum(1.0, np.abs(e))
    return (a <= e + tol) if metric == "l2" else (a >= e - tol)


def search(
    xq,
    xb,
    k: int,
    *,
    metric: str = "l2",
    index="auto",
    gpu="auto",
    device="cpu",
    engine: str = "auto",
    budget_mib: float = DEFAULT_BUDGET_MIB,
    exclude_self: bool = False,
    rerank: bool = True,
    nlist: int | None = None,
    nprobe: int | None = None,
    target_recall: float | None = 0.99,
    recall_sample: int = DEFAULT_RECALL_SAMPLE,
    seed: int = 0,
    name_q: str = "queries",
    name_b: str = "database",
) -> KnnResult:
    """k-NN of each row of ``xq`` (nq, D) among the rows of ``xb`` (nb, D); see the module docstring.

    ``index``: ``"exact"``, ``"ivf"``, ``"auto"`` (IVF when nb >= ``IVF_AUTO_MIN``) or a prebuilt
    ``faiss.Index`` over ``xb`` (an IVF one is searched with re-ranking; a flat one means exact).
    IVF: ``nprobe`` cells are searched; with ``target_recall`` (and no fixed ``nprobe``) nprobe starts
    at 8 and doubles until recall@1 on ``recall_sample`` random queries reaches it (or all cells are
    searched). Candidates (k + 4 per query) are always re-ranked in float64.
    ``engine``/``gpu``/``device``: which engine runs the exact search (module docstring); ``device`` is the
    caller's torch device ("cpu", "cuda", "cuda:1"), ``gpu`` governs FAISS's own GPU (``gpu=False``: no GPU
    at all unless ``engine="torch"``).
    """
    _check_metric(metric)
    k = as_int(k, "k", hint=" (the number of nearest neighbours), e.g. k=1")
    budget_mib = _check_budget(budget_mib)
    seed = _check_seed(seed)
    # l2 distances are translation invariant: wide inputs are shifted before the float32 cast (module
    # docstring); not with a prebuilt index, whose vectors are the unshifted float32 database
    off = l2_offset(xb, xq) if metric == "l2" and isinstance(index, str) else None
    xq = as_features(xq, name_q, min_n=1, offset=off)
    xb = as_features(xb, name_b, min_n=1, offset=off)
    same_width(xq, xb, name_q, name_b)
    nq, dim = xq.shape
    nb = xb.shape[0]
    k_eff = k + (1 if exclude_self else 0)
    if k_eff > nb:
        raise DiffauditError(
            f"k={k} nearest neighbours requested but {name_b} has {nb} sample(s); "
            f"use k <= {nb - (1 if exclude_self else 0)} or a larger {name_b}."
        )
    kk = min(nb, k_eff + (_RERANK_EXTRA if rerank else 0))
    eng = _engine(engine, gpu, device)

    prebuilt = None
    if isinstance(index, str):
        if index not in ("exact", "ivf", "auto"):
            raise DiffauditError(
                f"index={index!r} is not supported; use 'exact', 'ivf', 'auto' or a faiss.Index."
            )
        method = "ivf" if index == "ivf" or (index == "auto" and nb >= IVF_AUTO_MIN) else "exact"
    else:
        prebuilt = index
        if getattr(prebuilt, "d", None) != dim or getattr(prebuilt, "ntotal", None) != nb:
            raise DiffauditError(
                f"the prebuilt index holds {getattr(prebuilt, 'ntotal', '?')} vectors of dimension "
                f"{getattr(prebuilt, 'd', '?')} but {name_b} is {nb} x {dim}; build the index from this {name_b}."
            )
        method = "ivf" if _is_ivf(prebuilt) else "exact"
        faiss = _faiss()
        want = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if prebuilt.metric_type != want:
            raise DiffauditError(
                f"the prebuilt index uses a different metric than metric={metric!r}; rebuild it."
            )

    if method == "exact":
        D, I = _exact(xq, xb, k, kk, metric, budget_mib, exclude_self, rerank, eng, device)
        return KnnResult(D, I, "exact", eng, 1.0, 0)

    ivf = (
        prebuilt
        if prebuilt is not None
        else build_index(xb, index="ivf", metric=metric, nlist=nlist, seed=seed)
    )
    ivf_core = _faiss().extract_index_ivf(ivf)
    n_cells = int(ivf_core.nlist)
    rng = np.random.default_rng(seed)
    sample = (
        np.sort(rng.choice(nq, min(nq, int(recall_sample)), replace=False)) if recall_sample > 0 else None
    )

    n_sample = len(sample) if sample is not None else 0
    if n_sample:
        own = sample if exclude_self else None
        De, _ = _exact(
            xq[sample],
            xb,
            1,
            min(nb, k_eff + _RERANK_EXTRA),
            metric,
            budget_mib,
            exclude_self,
            True,
            eng,
            device,
            own=own,
        )

    def on_sample(p: int) -> float:
        ivf_core.nprobe = int(p)
        Da, _ = _ivf_blocks(ivf, xq[sample], xb, 1, kk, metric, exclude_self, True, own=own)
        return float(_first_found(Da, De, metric).mean())

    recall = float("nan")
    if nprobe is not None:
        p = int(min(max(1, nprobe), n_cells))
        if n_sample:
            recall = on_sample(p)
    else:
        p = min(8, n_cells)
        if n_sample:
            recall = on_sample(p)
            while target_recall is not None and recall < target_recall and p < n_cells:
                p = min(n_cells, 2 * p)
                recall = on_sample(p)
        else:
            p = min(n_cells, 32)
    ivf_core.nprobe = p
    D, I = _ivf_blocks(ivf, xq, xb, k, kk, metric, exclude_self, rerank)
    return KnnResult(D, I, "ivf", "cpu", recall, n_sample, n_cells, p)


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
    index="auto",
    gpu="auto",
    device="cpu",
    engine: str = "auto",
    **ivf_options,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of each row of ``xq`` (nq, D) among the rows of ``xb`` (nb, D).

    Returns ``(D, I)``, both ``(nq, k)``: ``D`` float64 (squared L2 ascending, or inner product
    descending), ``I`` int64 database indices. With ``exclude_self`` (``xq`` is ``xb``), row ``i``'s
    own index is dropped from its list, as k-NN radii of a set within itself require.
    ``index``/``gpu``/``device``/``engine``/``ivf_options`` as in ``search`` (which also reports IVF
    recall@1); the default ``index="auto"`` stays exact below ``IVF_AUTO_MIN`` database vectors.
    """
    r = search(
        xq,
        xb,
        k,
        metric=metric,
        budget_mib=budget_mib,
        exclude_self=exclude_self,
        rerank=rerank,
        name_q=name_q,
        name_b=name_b,
        index=index,
        gpu=gpu,
        device=device,
        engine=engine,
        **ivf_options,
    )
    return r.D, r.I
