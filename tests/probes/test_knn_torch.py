"""The torch k-NN engine (``probes.knn_torch``), run on the CPU: against a float64 numpy brute force and the
FAISS path, on random data, exact duplicates, k = n, d = 1, tiny and many-block cases; and its selection in
``neighbors.search`` (a CUDA device stood in by the CPU, so the GPU branch runs here too).

Tolerance: distances re-ranked in float64 agree with the float64 reference to ``RTOL`` = 1e-10 relative (they
differ by summation order only, ~1e-15); indices are identical except between rows at exactly the same float64
distance (exact ties: duplicates), where any of the tied rows is a correct answer."""

# ruff: noqa: E741  (D, I follow FAISS naming)
import numpy as np
import pytest
import torch

from diffaudit.errors import DiffauditError
from diffaudit.probes import _torch, knn_torch
from diffaudit.probes.memorization import find_copies
from diffaudit.probes.neighbors import knn, search

RTOL = 1e-10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pair(q, b, metric):
    """float64 squared distance (or inner product) of rows q[i], b[i]; identical rows give identical values."""
    q, b = q.astype(np.float64), b.astype(np.float64)
    return ((q - b) ** 2).sum(-1) if metric == "l2" else (q * b).sum(-1)


def brute(xq, xb, k, metric="l2", exclude_self=False):
    """Reference: float64 values of every pair (in query chunks), stable sort: ties to the smaller index."""
    D, I = [], []
    for i0 in range(0, len(xq), 64):
        q = xq[i0 : i0 + 64]
        full = pair(q[:, None, :], xb[None], metric)
        key = full.copy() if metric == "l2" else -full
        if exclude_self:
            key[np.arange(len(q)), np.arange(i0, i0 + len(q))] = np.inf
        idx = np.argsort(key, axis=1, kind="stable")[:, :k]
        D.append(np.take_along_axis(full, idx, 1))
        I.append(idx)
    return np.concatenate(D), np.concatenate(I)


def same(r, ref, xq, xb, metric="l2", rtol=RTOL, exclude_self=False):
    """``r`` (a KnnResult or (D, I)) equals ``ref`` up to exact ties (module docstring); returns how many
    indices differ (all of them between exactly tied rows)."""
    D, I = (r.D, r.I) if hasattr(r, "D") else r
    Dr, Ir = (ref.D, ref.I) if hasattr(ref, "D") else ref
    assert I.shape == Ir.shape and I.dtype == np.int64
    np.testing.assert_allclose(D, Dr, rtol=rtol, atol=rtol * max(1.0, float(np.abs(Dr).max())))
    rows, cols = np.nonzero(I != Ir)
    np.testing.assert_array_equal(
        pair(xq[rows], xb[I[rows, cols]], metric), pair(xq[rows], xb[Ir[rows, cols]], metric)
    )
    s = np.sort(I, axis=1)
    assert (s[:, 1:] != s[:, :-1]).all(), "a database row listed twice"
    if exclude_self:
        assert not (I == np.arange(len(I))[:, None]).any()
    return len(rows)


def torch_search(xq, xb, k, **kw):
    r = search(xq, xb, k, index="exact", engine="torch", device="cpu", **kw)
    assert r.device == "cpu-torch" and r.method == "exact"
    return r


def faiss_search(xq, xb, k, **kw):
    r = search(xq, xb, k, index="exact", engine="faiss", **kw)
    assert r.device == "cpu"
    return r


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_random_matches_bruteforce_and_faiss(rng, metric):
    xb = (rng.standard_normal((1500, 20)) + 3).astype(np.float32)  # an offset: centring matters for l2
    xq = (rng.standard_normal((130, 20)) + 3).astype(np.float32)
    r = torch_search(xq, xb, 6, metric=metric)
    assert same(r, brute(xq, xb, 6, metric), xq, xb, metric) == 0  # no ties here: identical indices
    assert same(r, faiss_search(xq, xb, 6, metric=metric), xq, xb, metric, rtol=1e-12) == 0


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_exact_duplicates_across_many_blocks(rng, monkeypatch, metric, exclude_self):
    # tiny blocks (3 queries x 5 rows) force every merge; groups of exact duplicates larger than the
    # candidate list (k + 1 + 4) and straddling block borders
    monkeypatch.setattr(knn_torch, "_MIN_ROWS", (3, 5))
    x = rng.standard_normal((90, 16)).astype(np.float32)
    x[10:24] = x[3]  # 15 copies of one row, across four database blocks
    x[50] = x[49]
    x[77:80] = x[2]
    k = 4
    assert knn_torch.block_sizes(90, 90, 16, k + 5, 1e-3, True) == (3, 5)
    r = torch_search(x, x, k, metric=metric, exclude_self=exclude_self, budget_mib=1e-3)
    same(r, brute(x, x, k, metric, exclude_self), x, x, metric, exclude_self=exclude_self)
    same(
        r, faiss_search(x, x, k, metric=metric, exclude_self=exclude_self), x, x, metric, 1e-12, exclude_self
    )
    if metric == "l2":
        group = {3, *range(10, 24)}
        assert set(r.I[3]) <= group and (r.D[3] == 0).all()  # the float64 re-rank's exact zeros
        assert r.D[50, 0] == 0 and r.I[50, 0] == 49  # rows 49 and 50 tie at exactly 0: index order
        assert exclude_self or r.I[50, 1] == 50


def test_ties_go_to_the_smaller_index():
    # the selection itself: a row whose kb-th and next keys tie is re-selected by a stable sort (torch.topk
    # returns tied entries in no particular order), and merges keep the earlier block's entries on ties
    g = torch.Generator().manual_seed(0)
    key = torch.rand(40, 200, generator=g) + 1.0
    key[:, 7::3] = 0.5  # 65 tied minima per row
    key[5, :] = 2.0  # a row that is one tie
    D, I = knn_torch._smallest(key, 6)
    assert (D == torch.where(torch.arange(40)[:, None] == 5, 2.0, 0.5)).all()
    assert I[5].tolist() == list(range(6))
    assert (I[torch.arange(40) != 5] == torch.arange(7, 25, 3)).all()
    D1, I1 = knn_torch._smallest(key[:, :100], 6)
    D2, I2 = knn_torch._smallest(key[:, 100:], 6)
    Dm, Im = knn_torch._merge(D1, I1, D2, I2 + 100, 6)
    assert torch.equal(Dm, D) and torch.equal(Im, I)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_k_equal_n_d1_and_tiny_sets(rng, exclude_self):
    x = rng.standard_normal((9, 1)).astype(np.float32)  # d = 1
    x[4] = x[7]
    k = len(x) - (1 if exclude_self else 0)  # every row: k = n (kk = n, no margin left)
    for metric in ("l2", "ip"):
        r = torch_search(x, x, k, metric=metric, exclude_self=exclude_self)
        same(r, brute(x, x, k, metric, exclude_self), x, x, metric, exclude_self=exclude_self)
    one = rng.standard_normal((1, 3)).astype(np.float32)
    same(torch_search(one, one, 1), brute(one, one, 1), one, one)
    two = rng.standard_normal((2, 3)).astype(np.float32)
    same(torch_search(two, two, 1, exclude_self=True), brute(two, two, 1, "l2", True), two, two)
    with pytest.raises(DiffauditError, match="k=10"):
        torch_search(x, x, 10)
    with pytest.raises(DiffauditError, match="k=9"):
        torch_search(x, x, 9, exclude_self=True)


def test_moderately_large_many_blocks(rng):
    # 6,000 x 4,000 in 64 x 256 blocks (budget 0.08 MiB): 94 query blocks, 16 database blocks each; 500
    # queries are near-copies of database rows (distances ~1e-5, where float32 cancellation is worst)
    xb = rng.standard_normal((4000, 24)).astype(np.float32)
    xq = np.concatenate([xb[:500] + 1e-3 * rng.standard_normal((500, 24)), rng.standard_normal((5500, 24))])
    xq = xq.astype(np.float32)
    assert knn_torch.block_sizes(6000, 4000, 24, 9, 0.08, True) == (64, 256)
    r = torch_search(xq, xb, 5, budget_mib=0.08)
    assert same(r, faiss_search(xq, xb, 5), xq, xb, rtol=1e-12) == 0
    assert (r.I[:500, 0] == np.arange(500)).all()
    sub = np.arange(0, 6000, 10)  # the float64 brute force on every 10th query
    assert same((r.D[sub], r.I[sub]), brute(xq[sub], xb, 5), xq[sub], xb) == 0


def test_ivf_recall_reference_runs_on_the_engine(rng):
    # IVF probing is FAISS's; the exact reference of its recall@1 sample (with exclude_self: own rows) is
    # the engine's. Probing every cell is exhaustive, so recall is exactly 1 either way.
    x = rng.standard_normal((2500, 10)).astype(np.float32)
    kw = dict(index="ivf", nlist=30, nprobe=30, exclude_self=True, recall_sample=300)
    t = search(x, x, 3, engine="torch", **kw)
    f = search(x, x, 3, engine="faiss", **kw)
    assert t.method == "ivf" and t.recall_at_1 == f.recall_at_1 == 1.0 and t.recall_sample == 300
    np.testing.assert_array_equal(t.I, f.I)


def test_without_rerank_float32_distances(rng):
    xb = rng.standard_normal((800, 16)).astype(np.float32)
    xq = rng.standard_normal((50, 16)).astype(np.float32)
    D, I = knn(xq, xb, 3, rerank=False, engine="torch", index="exact")
    Dr, Ir = brute(xq, xb, 3)
    np.testing.assert_array_equal(I, Ir)  # no near-ties at float32 precision in these data
    np.testing.assert_allclose(D, Dr, rtol=1e-5, atol=1e-5)


def test_engine_choice(rng, monkeypatch):
    x = rng.standard_normal((300, 8)).astype(np.float32)
    assert search(x, x, 2).device == "cpu"  # the default: FAISS on the CPU, numbers unchanged
    assert search(x, x, 2, device="cpu").device == "cpu"
    with pytest.raises(DiffauditError, match="engine"):
        search(x, x, 2, engine="numpy")
    if not torch.cuda.is_available():
        with pytest.raises(DiffauditError, match="no CUDA device"):
            search(x, x, 2, device="cuda")
    # a CUDA device stood in by the CPU: the selection and the GPU branch of the engine run here
    monkeypatch.setattr(_torch, "torch_device", lambda d: torch.device("cpu"))
    monkeypatch.setattr(knn_torch, "torch_device", lambda d: torch.device("cpu"))
    g = search(x, x, 2, device="cuda", exclude_self=True)
    assert g.device == "gpu-torch"
    same(g, brute(x, x, 2, "l2", True), x, x, exclude_self=True)
    assert search(x, x, 2, device="cuda", gpu=False).device == "cpu"  # gpu=False: no GPU at all
    assert search(x, x, 2, device="cuda", engine="faiss").device == "cpu"


def test_find_copies_forwards_the_device(rng, monkeypatch):
    calls = []
    exact = knn_torch.exact_search

    def spy(*a, **kw):
        calls.append(kw["device"])
        return exact(*a, **kw)

    train = rng.standard_normal((400, 12)).astype(np.float32)
    hold = rng.standard_normal((200, 12)).astype(np.float32)
    gen = np.concatenate([train[:20] + 1e-4, rng.standard_normal((30, 12)).astype(np.float32)])
    cpu = find_copies(gen, train, hold)
    monkeypatch.setattr(knn_torch, "torch_device", lambda d: torch.device("cpu"))
    monkeypatch.setattr(knn_torch, "exact_search", spy)
    gpu = find_copies(gen, train, hold, device="cuda")
    assert calls and set(calls) == {"cuda"}
    np.testing.assert_array_equal(gpu.is_copy, cpu.is_copy)
    np.testing.assert_array_equal(gpu.nn_index, cpu.nn_index)
    np.testing.assert_allclose(gpu.d1, cpu.d1, rtol=1e-12)
    assert gpu.is_copy[:20].all() and not gpu.is_copy[20:].any()


def test_one_far_off_row_does_not_move_the_centre():
    # review finding: centred on the database mean, one corrupted row at 1e5 among rows of scale 0.01 moved the
    # centre ~100 away from the bulk, and the float32 tiles missed the nearest row of 195 of 200 queries
    rng = np.random.default_rng(1)
    xb = (0.01 * rng.standard_normal((1000, 16))).astype(np.float32)
    xb[-1] = 1e5
    xq = (xb[:200] + 1e-3 * rng.standard_normal((200, 16))).astype(np.float32)
    same(torch_search(xq, xb, 3), brute(xq, xb, 3), xq, xb)
    same(
        torch_search(xb, xb, 2, exclude_self=True),
        brute(xb, xb, 2, exclude_self=True),
        xb,
        xb,
        exclude_self=True,
    )


@pytest.mark.parametrize("scale", [1e19, 1e-25])
def test_huge_and_tiny_features_neither_overflow_nor_underflow(scale):
    # review finding: squared distances of features ~1e19 overflow float32, of ~1e-25 underflow to 0 -- wrong
    # candidates either way; the tiles are scaled by a power of two (the returned distances are not)
    rng = np.random.default_rng(2)
    xb = (scale * rng.standard_normal((600, 8))).astype(np.float32)
    xq = (scale * rng.standard_normal((100, 8))).astype(np.float32)
    r = torch_search(xq, xb, 5)
    same(r, brute(xq, xb, 5), xq, xb)
    D, I = knn(xq, xb, 5, rerank=False, engine="torch", index="exact")
    Dr, _ = brute(xq, xb, 5)
    np.testing.assert_allclose(D, Dr, rtol=1e-4)
