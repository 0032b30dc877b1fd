# ruff: noqa: E741  (D, I follow FAISS naming)
import numpy as np
import pytest

from diffaudit.errors import DiffauditError
from diffaudit.probes.neighbors import knn


def brute_l2(xq, xb):
    return ((xq[:, None, :].astype(np.float64) - xb[None].astype(np.float64)) ** 2).sum(-1)


@pytest.mark.parametrize("budget", [1, 64])
def test_l2_matches_bruteforce(rng, budget):
    xb = rng.standard_normal((3000, 24)).astype(np.float32)
    xq = rng.standard_normal((257, 24)).astype(np.float32)
    D, I = knn(xq, xb, 7, budget_mib=budget)
    bf = brute_l2(xq, xb)
    Ib = np.argsort(bf, 1, kind="stable")[:, :7]
    np.testing.assert_array_equal(I, Ib)
    np.testing.assert_allclose(D, np.take_along_axis(bf, Ib, 1), rtol=1e-10, atol=1e-10)


def test_inner_product_matches_bruteforce(rng):
    xb = rng.standard_normal((2000, 16)).astype(np.float32)
    xq = rng.standard_normal((100, 16)).astype(np.float32)
    D, I = knn(xq, xb, 3, metric="ip")
    ip = xq.astype(np.float64) @ xb.T.astype(np.float64)
    Ib = np.argsort(-ip, 1, kind="stable")[:, :3]
    np.testing.assert_array_equal(I, Ib)
    np.testing.assert_allclose(D, np.take_along_axis(ip, Ib, 1), rtol=1e-10)


def test_exclude_self_and_exact_duplicates(rng):
    x = rng.standard_normal((400, 8)).astype(np.float32)
    x[1] = x[0]  # an exact duplicate: its neighbour is at distance exactly 0
    D, I = knn(x, x, 2, exclude_self=True)
    bf = brute_l2(x, x)
    np.fill_diagonal(bf, np.inf)
    np.testing.assert_array_equal(I[:, 0], np.argmin(bf, 1))
    assert I[0, 0] == 1 and I[1, 0] == 0
    assert D[0, 0] == 0.0  # float64 re-ranking recovers the exact zero that float32 BLAS blurs


def test_bad_inputs(rng):
    x = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(DiffauditError, match="k=11"):
        knn(x, x, 11)
    with pytest.raises(DiffauditError, match="feature dimensions"):
        knn(x, x[:, :3], 1)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DiffauditError, match="NaN"):
        knn(bad, x, 1)
