"""Exact k-nearest-neighbour search in torch: the engine ``neighbors.search`` runs on a CUDA device when the
installed FAISS has no GPU (the CPU-only wheel; FAISS-GPU wheels do not load on CUDA 13).

The same scheme as ``neighbors._exact_blocks`` (after faiss ``contrib/exhaustive_search.py``): queries ``xq``
and database ``xb`` are cut into blocks sized from a MiB budget; each (query block, database block) distance
tile is a float32 matmul, reduced by ``topk`` and merged into a running top-``kk`` -- never an ``n x m``
matrix. The ``kk`` candidates (k plus a margin) are then re-ranked with distances recomputed in float64 on the
device, which makes the result exact whenever the true k nearest are among them (the margin absorbs float32
rounding, as on the FAISS path). L2 tiles are computed on data centred on the coordinate-wise median of (up to
65,536 evenly spaced) database rows -- distances do not change, and the float32 cancellation in
``|x|^2 + |y|^2 - 2 x.y`` shrinks with the norms; a median, not the mean, so that one far-off row cannot move
the centre away from the bulk (one row at 1e5 among rows of scale 0.01 made a mean-centred search miss the
nearest neighbour of 195 of 200 queries) -- and scaled by an exact power of two that brings the largest
centred coordinate to about 1, so that squared distances neither overflow nor underflow float32 (features
around 1e19 or 1e-25 otherwise give wrong candidates; the float64 re-ranking uses the unscaled rows).

Conventions are ``neighbors``': ``metric="l2"`` gives squared distances ascending, ``"ip"`` inner products
descending (cosine for L2-normalised rows); exact float32 ties of the tiles go to the smaller database index (a
row whose ``kk``-th candidate ties with the next one is re-selected by a stable sort), so a group of exact
duplicates larger than the candidate list is kept in index order; rows at equal distance that are not
duplicates may tie differently after centring (the distances returned are exact either way, and FAISS's BLAS
path may keep other members too: the tests accept any tied index); ``exclude_self`` drops each query's own database
row from its float32 candidates, or the last candidate when the row is not among them, before re-ranking --
the FAISS path's rule. Runs on any torch device; the tests run it on the CPU against FAISS and a float64 brute force.
"""

# ruff: noqa: E741  (D, I follow FAISS naming)
from __future__ import annotations

import contextlib
import math

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes._checks import as_int
from diffaudit.probes._torch import torch_device

# Smallest (query, database) block in rows; tests lower it to force many blocks and merges.
_MIN_ROWS = (64, 256)
# Cap of a distance tile on the CPU (MiB): 8, 32 and 128 timed alike on 2 cores (20k x 10k, d = 64 / 768), so a
# large budget does not buy a working set that only spills the caches; on a GPU the tiles take half the budget.
_CPU_TILE_MIB = 32
_CPU_RERANK_MIB = 16  # float64 candidate gather per chunk on the CPU (neighbors._exact_rerank's size)


class _Rows:
    """Row blocks of a host float32 array on ``dev``: held there whole when it fits (on the CPU always: a
    zero-copy view), otherwise uploaded per block; ``take`` gathers rows for the float64 re-ranking."""

    def __init__(self, x: np.ndarray, dev, hold: bool):
        import torch

        self.x, self.dev = x, dev
        self.t = torch.from_numpy(x).to(dev) if hold else None

    def get(self, i0: int, i1: int):
        import torch

        return self.t[i0:i1] if self.t is not None else torch.from_numpy(self.x[i0:i1]).to(self.dev)

    def take(self, idx):
        import torch

        if self.t is not None:
            return self.t[idx]
        return torch.from_numpy(self.x[idx.cpu().numpy()]).to(self.dev)


def _fits(nbytes: int, dev, budget: float) -> bool:
    """Whether an input of ``nbytes`` is held on ``dev`` whole: on the CPU always (no copy); on a GPU when it
    takes at most a quarter of the free memory (or of the budget, whichever is larger)."""
    if dev.type == "cpu":
        return True
    import torch

    try:
        free = torch.cuda.mem_get_info(dev)[0]
    except RuntimeError:
        free = 0
    return nbytes <= max(budget, 0.25 * free)


@contextlib.contextmanager
def _full_float32(dev):
    """Full-precision float32 matmuls on a GPU while searching: TF32 (a 10-bit mantissa, if the process turned
    it on for training) would blur the distance tiles far past what the re-ranking margin absorbs."""
    if dev.type != "cuda":
        yield
        return
    import torch

    m = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(m, "fp32_precision") else "allow_tf32"  # torch >= 2.9 / older
    prev = getattr(m, name)
    setattr(m, name, "ieee" if name == "fp32_precision" else False)
    try:
        yield
    finally:
        setattr(m, name, prev)


def block_sizes(nq: int, nb: int, dim: int, kk: int, budget_mib: float, on_cpu: bool) -> tuple[int, int]:
    """Rows per query block and per database block so that one step stays inside the budget.

    One step holds a centred database block (bb*dim*4, at most a quarter of the budget) and, per query row,
    its centred features (dim*4), its tile row (bb*(4 + 4): the float32 distances and topk's workspace) and
    the running candidates (2kk*12); the tiles take half the budget (on the CPU at most ``_CPU_TILE_MIB``).
    """
    budget = max(1e-3, float(budget_mib)) * (1 << 20)
    bb = int(min(nb, max(_MIN_ROWS[1], budget * 0.25 / (dim * 4))))
    tiles = budget * 0.5
    if on_cpu:
        tiles = min(tiles, _CPU_TILE_MIB * (1 << 20))
    qb = int(min(nq, max(_MIN_ROWS[0], tiles / (bb * 8 + dim * 4 + 2 * kk * 12))))
    return qb, bb


def _order(D, I):
    """Rows of (D, I) sorted by D, ties by the smaller index (I distinct within a row)."""
    import torch

    o = torch.argsort(I, dim=1)
    D, I = D.gather(1, o), I.gather(1, o)
    o = torch.argsort(D, dim=1, stable=True)
    return D.gather(1, o), I.gather(1, o)


def _smallest(key, kb: int):
    """The ``kb`` smallest entries of each row of ``key`` (rows, cols), ties to the smaller column, ordered."""
    import torch

    cols = key.shape[1]
    take = min(kb + 1, cols)
    D, I = torch.topk(key, take, dim=1, largest=False, sorted=True)
    if take > kb:
        # topk picks among equal values arbitrarily: rows whose kb-th and next values tie are re-selected by a
        # stable sort (rare: exact float32 ties, i.e. duplicates, across the cut)
        tied = torch.nonzero(D[:, kb] == D[:, kb - 1]).flatten()
        D, I = D[:, :kb].clone(), I[:, :kb].clone()
        if tied.numel():
            Ds, Is = torch.sort(key[tied], dim=1, stable=True)
            D[tied], I[tied] = Ds[:, :kb], Is[:, :kb]
    return _order(D, I)


def _merge(D0, I0, D1, I1, kk: int):
    """Running top-kk with a later database block's candidates: a stable sort keeps ties on the earlier
    (smaller) indices because every index of block 1 exceeds every index of block 0."""
    import torch

    D = torch.cat([D0, D1], dim=1)
    I = torch.cat([I0, I1], dim=1)
    o = torch.argsort(D, dim=1, stable=True)[:, :kk]
    return D.gather(1, o), I.gather(1, o)


def _drop_self(D, I, own):
    """``neighbors._drop_self`` on tensors: remove each row's own index ``own`` (rows,), else its last column."""
    import torch

    rows, kk = I.shape
    is_self = I == own[:, None]
    drop = torch.where(is_self.any(1), is_self.to(torch.int8).argmax(1), kk - 1)
    keep = torch.ones_like(I, dtype=torch.bool)
    keep[torch.arange(rows, device=I.device), drop] = False
    return D[keep].view(rows, kk - 1), I[keep].view(rows, kk - 1)


def _rerank(q, base: _Rows, I, k: int, metric: str, chunk_bytes: float):
    """Candidates ``I`` (rows, kk) of the queries ``q`` (rows, dim) float32: distances recomputed in float64
    on the device, re-sorted (ties to the smaller index), the top ``k`` returned."""
    import torch

    rows, kk = I.shape
    dim = q.shape[1]
    D = torch.empty((rows, kk), dtype=torch.float64, device=q.device)
    step = int(max(1, min(rows, chunk_bytes / (kk * dim * 8))))  # clipped before int(): the budget may be inf
    for i0 in range(0, rows, step):
        i1 = min(rows, i0 + step)
        cand = base.take(I[i0:i1].reshape(-1)).to(torch.float64).view(i1 - i0, kk, dim)
        q64 = q[i0:i1].to(torch.float64)[:, None, :]
        if metric == "l2":
            cand -= q64
            D[i0:i1] = (cand * cand).sum(-1)
        else:
            D[i0:i1] = (cand * q64).sum(-1)
    D, I = _order(D if metric == "l2" else -D, I)
    D, I = D[:, :k], I[:, :k]
    return (D if metric == "l2" else -D), I


def exact_search(
    xq: np.ndarray,
    xb: np.ndarray,
    k: int,
    kk: int,
    *,
    metric: str = "l2",
    device="cpu",
    budget_mib: float = 512,
    exclude_self: bool = False,
    rerank: bool = True,
    own: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-NN of each row of ``xq`` (nq, D) among the rows of ``xb`` (nb, D), both float32 C-contiguous and
    checked (``neighbors.search`` checks them and chooses ``kk``): ``kk`` float32 candidates per query
    (k + 1 with ``exclude_self``, plus the re-ranking margin; kk <= nb), re-ranked in float64 on ``device``
    when ``rerank``, else their float32 distances as they are. ``own`` (nq,): each query's own database row
    for ``exclude_self`` (default: query i is row i). Returns ``(D, I)`` (nq, k) float64 / int64, as
    ``neighbors.knn``. ``budget_mib=inf``: no limit (one block of each; the re-ranking in one chunk on a GPU)."""
    import torch

    dev = torch_device(device)
    nq, dim = xq.shape
    nb = xb.shape[0]
    k = as_int(k, "k", hint=" (the number of nearest neighbours), e.g. k=1")
    kk = as_int(kk, "kk", minimum=k + bool(exclude_self), hint=" (candidates: k, plus 1 with exclude_self)")
    if kk > nb:
        raise DiffauditError(f"kk={kk} candidates requested but the database has {nb} rows; pass kk <= {nb}.")
    budget = max(1e-3, float(budget_mib)) * (1 << 20)
    on_cpu = dev.type == "cpu"
    qb, bb = block_sizes(nq, nb, dim, kk, budget_mib, on_cpu)
    chunk = _CPU_RERANK_MIB * (1 << 20) if on_cpu else 0.25 * budget
    base = _Rows(xb, dev, _fits(xb.nbytes, dev, budget))
    queries = _Rows(xq, dev, _fits(xq.nbytes, dev, budget))
    l2 = metric == "l2"

    with torch.no_grad(), _full_float32(dev):
        c32 = bnorm = None
        scale = 1.0
        # l2: the centre (median of sampled rows), the power-of-two scale, and the centred, scaled rows'
        # squared norms (float64 sums, kept in float32)
        if l2:
            pick = np.unique(np.linspace(0, nb - 1, min(nb, 65_536)).round().astype(np.int64))
            c32 = base.take(torch.from_numpy(pick).to(dev)).median(0).values.to(torch.float32)
            amax = 0.0
            for rows, n in ((base, nb), (queries, nq)):
                for i0 in range(0, n, bb):
                    amax = max(amax, float((rows.get(i0, min(n, i0 + bb)) - c32).abs().max()))
            if 0.0 < amax < float("inf"):
                scale = 2.0 ** min(126, max(-126, -math.floor(math.log2(amax))))
            bnorm = torch.empty(nb, dtype=torch.float32, device=dev)
            for b0 in range(0, nb, bb):
                bc = ((base.get(b0, min(nb, b0 + bb)) - c32) * scale).to(torch.float64)
                bnorm[b0 : b0 + len(bc)] = (bc * bc).sum(1).to(torch.float32)

        def prepared(b0: int, b1: int):
            """The block as the tile's matmul takes it: -2 s (b - c) for l2, -b for ip (exact scalings), so that
            key = q.w (+ |s (b - c)|^2) is smaller for nearer rows: s^2 times the squared distance, less
            |s (q - c)|^2."""
            return ((base.get(b0, b1) - c32) * scale).mul_(-2.0) if l2 else base.get(b0, b1).neg()

        whole = prepared(0, nb) if bb >= nb else None  # one database block (the usual case): prepared once
        own_t = None if own is None else torch.from_numpy(np.asarray(own, np.int64)).to(dev)
        D_out = np.empty((nq, k), np.float64)
        I_out = np.empty((nq, k), np.int64)
        for q0 in range(0, nq, qb):
            q1 = min(nq, q0 + qb)
            q = queries.get(q0, q1)
            qc = (q - c32) * scale if l2 else q
            Dq = torch.empty((q1 - q0, 0), dtype=torch.float32, device=dev)
            Iq = torch.empty((q1 - q0, 0), dtype=torch.int64, device=dev)
            for b0 in range(0, nb, bb):
                b1 = min(nb, b0 + bb)
                w = whole if whole is not None else prepared(b0, b1)
                key = torch.mm(qc, w.T)
                if l2:
                    key += bnorm[b0:b1]
                Db, Ib = _smallest(key, min(kk, b1 - b0))
                del key
                Dq, Iq = _merge(Dq, Iq, Db, Ib + b0, kk)
            if exclude_self:
                mine = torch.arange(q0, q1, device=dev) if own_t is None else own_t[q0:q1]
                Dq, Iq = _drop_self(Dq, Iq, mine)
            if rerank:
                D, I = _rerank(q, base, Iq, k, metric, chunk)
            else:  # the float32 distances as they are: the key plus |q|^2 (clipped at 0), or -key
                D, I = Dq[:, :k].to(torch.float64), Iq[:, :k]
                if l2:
                    D = (D + (qc.to(torch.float64) ** 2).sum(1, keepdim=True)).clamp_(min=0.0) / scale**2
                else:
                    D = -D
            D_out[q0:q1] = D.cpu().numpy()
            I_out[q0:q1] = I.cpu().numpy()
    return D_out, I_out
