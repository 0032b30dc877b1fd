"""Extensions of the k-NN engine: IVF with exact re-ranking and recall@1, prebuilt/cached indexes, GPU."""

import numpy as np
import pytest

from diffaudit.errors import DiffauditError
from diffaudit.probes import neighbors
from diffaudit.probes.neighbors import build_index, gpu_available, knn, search


def clustered(n, seed, D=16, K=40):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((K, D)) * 3
    return (c[rng.integers(0, K, n)] + rng.standard_normal((n, D))).astype(np.float32)


def brute(xq, xb, metric):
    q, b = xq.astype(np.float64), xb.astype(np.float64)
    if metric == "l2":
        d = (q * q).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * q @ b.T
        return d, np.argsort(d, 1, kind="stable")
    ip = q @ b.T
    return ip, np.argsort(-ip, 1, kind="stable")


@pytest.fixture(scope="module")
def sets():
    return clustered(20000, 0), clustered(1500, 1)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("index", ["exact", "ivf_all"])
def test_matches_bruteforce_numpy(rng, metric, index):
    xb = rng.standard_normal((2500, 20)).astype(np.float32)
    xq = rng.standard_normal((200, 20)).astype(np.float32)
    if index == "ivf_all":  # IVF probing every cell is exhaustive: same answer as brute force
        r = search(xq, xb, 5, metric=metric, index="ivf", nlist=30, nprobe=30)
        assert r.method == "ivf" and r.recall_at_1 == 1.0
    else:
        r = search(xq, xb, 5, metric=metric, index="exact")
    d, order = brute(xq, xb, metric)
    np.testing.assert_array_equal(r.I, order[:, :5])
    np.testing.assert_allclose(r.D, np.take_along_axis(d, order[:, :5], 1), atol=1e-4)


def test_ivf_recall_target(sets):
    xb, xq = sets
    r = search(xq, xb, 3, index="ivf", target_recall=0.99, recall_sample=500)
    e = search(xq, xb, 3, index="exact")
    true_recall = float((r.D[:, 0] <= e.D[:, 0] + 1e-9).mean())
    assert r.recall_at_1 >= 0.99 and true_recall >= 0.98
    assert r.nlist == neighbors.default_nlist(len(xb)) and 1 <= r.nprobe <= r.nlist
    found = r.I[:, 0] == e.I[:, 0]
    np.testing.assert_allclose(r.D[found, 0], e.D[found, 0], rtol=1e-12)  # re-ranked exactly
    # a deliberately starved index reports its low recall honestly
    low = search(xq, xb, 1, index="ivf", nprobe=1, recall_sample=1500)
    assert low.recall_at_1 == pytest.approx(float((low.D[:, 0] <= e.D[:, 0] + 1e-9).mean()))


def test_ivf_exclude_self(sets):
    xb, _ = sets
    q = xb[:800]
    r = search(q, xb, 2, index="ivf", exclude_self=True, recall_sample=800)
    e = search(q, xb, 2, index="exact", exclude_self=True)
    assert (r.I != np.arange(800)[:, None]).all()
    assert r.recall_at_1 == pytest.approx(float((r.D[:, 0] <= e.D[:, 0] + 1e-9).mean()))
    assert r.recall_at_1 >= 0.99


def test_auto_switches_to_ivf(sets, monkeypatch):
    xb, xq = sets
    assert search(xq, xb, 1).method == "exact"
    monkeypatch.setattr(neighbors, "IVF_AUTO_MIN", 10000)
    assert search(xq, xb, 1).method == "ivf"
    # knn keeps its old signature and (D, I) return
    Dk, Ik = knn(xq[:10], xb, 2, index="exact")
    assert Dk.shape == Ik.shape == (10, 2)


def test_prebuilt_and_cached_index(sets, tmp_path, monkeypatch):
    from diffaudit.pipeline.index_cache import cache_dir, cached_index, index_path

    xb, xq = sets
    params = {"index": "ivf", "nlist": 64, "seed": 0}
    idx = cached_index(xb, params)
    path = index_path(xb, params)
    assert path.exists() and path.parent == cache_dir()
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # atomic: no leftovers
    mtime = path.stat().st_mtime_ns
    idx2 = cached_index(xb, params)  # a hit: read, not rebuilt
    assert path.stat().st_mtime_ns == mtime and idx2.ntotal == len(xb)
    a = search(xq, xb, 3, index=idx2, nprobe=64)
    b = search(xq, xb, 3, index=build_index(xb, **params), nprobe=64)
    np.testing.assert_array_equal(a.I, b.I)
    e = search(xq, xb, 3, index="exact")
    np.testing.assert_array_equal(a.I, e.I)  # nprobe = nlist: exhaustive
    # content and parameters change the key
    assert index_path(xb[:-1], params) != path
    assert index_path(xb, {**params, "nlist": 32}) != path
    flat = cached_index(xb, {"index": "exact"})
    assert search(xq, xb, 1, index=flat).method == "exact"
    with pytest.raises(DiffauditError, match="prebuilt index"):
        search(xq, xb[:100], 1, index=idx)
    with pytest.raises(DiffauditError, match="not understood"):
        cached_index(xb, {"nlists": 3})


def test_find_copies_accepts_prebuilt_index(sets):
    from diffaudit.pipeline.index_cache import cached_index
    from diffaudit.probes.memorization import find_copies

    xb, xq = sets
    gen = xq.copy()
    gen[:20] = xb[:20]
    idx = cached_index(xb, {"index": "ivf", "nlist": 64})
    r = find_copies(gen, xb, index=idx)
    assert r.index_method == "ivf" and r.recall_at_1 >= 0.99
    assert r.is_copy[:20].all() and (r.nn_index[:20] == np.arange(20)).all()


def test_bad_inputs(rng):
    x = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(DiffauditError, match="k=10"):
        knn(x, x, 10, exclude_self=True)  # k >= n_train within a set
    with pytest.raises(DiffauditError, match="k=3"):
        knn(x, x[:2], 3)
    with pytest.raises(DiffauditError, match="index="):
        knn(x, x, 1, index="hnsw")
    with pytest.raises(DiffauditError, match="nlist"):
        build_index(x, nlist=50)
    if not gpu_available():
        with pytest.raises(DiffauditError, match="GPU"):
            knn(x, x, 1, gpu=True)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="the installed FAISS sees no GPU")
def test_gpu_matches_cpu(sets):
    xb, xq = sets
    g = search(xq, xb, 5, index="exact", gpu=True)
    c = search(xq, xb, 5, index="exact", gpu=False)
    assert g.device == "gpu" and c.device == "cpu"
    np.testing.assert_array_equal(g.I, c.I)
    np.testing.assert_allclose(g.D, c.D, rtol=1e-12)
