"""The float64 torch paths of the convergence statistics (``probes.convergence``) and of E1
(``probes.moment_error``), run on the CPU (``engine="torch"``) against the numpy path they replace on a GPU.

Tolerance: both paths compute the same formulas in float64 and differ only in summation order and LAPACK
build (~1e-15 relative per operation), so every value, interval and standard error must agree to ``RTOL`` =
1e-10 relative; KID's cubic kernel sums m^2 terms of size ~1 to a small difference, so it is held to 1e-10 of
the kernel's scale instead. A CUDA device is stood in by the CPU to check that ``device="cuda"`` selects the
torch path and that the default (CPU) runs numpy."""

import numpy as np
import pytest
import torch

from diffaudit.errors import DiffauditError
from diffaudit.probes import _torch
from diffaudit.probes import convergence as cv
from diffaudit.probes import moment_error as me

RTOL = 1e-10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(7)
    mix = rng.standard_normal((24, 24)) / 5
    a = (rng.standard_normal((700, 24)) @ (np.eye(24) + mix) * 1.2 + 4.0).astype(np.float32)  # offset, shape
    b = (rng.standard_normal((520, 24)) + 4.0).astype(np.float32)
    return a, b


def close(x, y, rtol=RTOL, scale=None):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    s = np.abs(y).max() if scale is None else scale
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(float(s), 1e-300))


def test_gaussian_stats(sets):
    a, _ = sets
    mu, sigma = cv.gaussian_stats(a, budget_mib=0.01)  # many row blocks (16 rows each)
    mu_t, sigma_t = cv.gaussian_stats(a, budget_mib=0.01, engine="torch")
    assert mu_t.dtype == sigma_t.dtype == np.float64
    close(mu_t, mu)
    close(sigma_t, sigma)
    close(sigma_t, np.cov(a.astype(np.float64), rowvar=False))  # and the textbook covariance


@pytest.mark.parametrize("n_boot", [0, 12])
def test_frechet_distance(sets, n_boot):
    a, b = sets
    r = cv.frechet_distance(a, b, n_boot=n_boot, seed=3, n_groups=6)
    t = cv.frechet_distance(a, b, n_boot=n_boot, seed=3, n_groups=6, engine="torch")
    for f in ("value", "mean_term", "trace_term"):
        close(getattr(t, f), getattr(r, f), scale=np.trace(np.cov(b, rowvar=False)))
    assert t.singular == r.singular and t.neg_eig_mass <= 1e-12
    if n_boot:
        close(t.spread_ci, r.spread_ci)
        close(t.acceleration, r.acceleration, rtol=1e-8)  # a ratio of jackknife moments: less headroom
        assert (t.value_ci is None) == (r.value_ci is None)
        if r.value_ci is not None:
            close(t.value_ci, r.value_ci)


def test_frechet_distance_singular():
    # n < D: sigma1 has zero eigenvalues, and sqrt() of eigenvalues at round-off level (~eps tr S) moves the
    # trace term by ~sqrt(eps): the numpy path's own FD(a, b) and FD(b, a) differ by ~1e-9 relative here, so
    # the two paths are held to 1e-7 (not RTOL)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 64)).astype(np.float32)
    b = rng.standard_normal((300, 64)).astype(np.float32)
    r, t = cv.frechet_distance(a, b), cv.frechet_distance(a, b, engine="torch")
    assert r.singular and t.singular
    close(t.value, r.value, rtol=1e-7)
    close(t.value, cv.frechet_distance(b, a).value, rtol=1e-7)


def test_frechet_distance_analytic_and_refusal():
    # equal covariances: FD = |mu1 - mu2|^2 exactly (pytorch-fid's analytic test), on the torch path
    rng = np.random.default_rng(1)
    s = np.cov(rng.standard_normal((200, 6)), rowvar=False)
    mu1, mu2 = np.zeros(6), np.arange(6.0)
    r = cv.frechet_distance_from_stats(mu1, s, mu2, s, engine="torch")
    close(r.value, 55.0, rtol=1e-9)
    bad = s.copy()
    bad[0, 0] = -5.0  # real negative mass: refused on the torch path too
    with pytest.raises(DiffauditError, match="negative eigenvalues"):
        cv.frechet_distance_from_stats(mu1, bad, mu2, s, engine="torch")


def test_fd_infinity_and_kid(sets):
    a, b = sets
    r = cv.fd_infinity(a, b, min_size=100, n_points=5, seed=2)
    t = cv.fd_infinity(a, b, min_size=100, n_points=5, seed=2, engine="torch")
    close(t.values, r.values)
    close(t.value, r.value, scale=np.abs(r.values).max())
    k = cv.kid(a, b, n_subsets=4, subset_size=150, seed=5, n_blocks=3)
    kt = cv.kid(a, b, n_subsets=4, subset_size=150, seed=5, n_blocks=3, engine="torch")
    scale = float(np.mean((a[:50].astype(np.float64) @ b[:50].T.astype(np.float64) / 24 + 1) ** 3))
    close(kt.values, k.values, scale=scale)
    close(kt.block_values, k.block_values, scale=scale)
    close(kt.value_ci, k.value_ci, scale=scale)


@pytest.mark.parametrize("case", ["gaussian", "singular"])
def test_whitened_moment_error(sets, case):
    a, _ = sets
    rng = np.random.default_rng(4)
    mu = np.full(24, 4.0)
    sigma = np.cov(rng.standard_normal((2000, 24)) * 1.1, rowvar=False)
    if case == "singular":  # rank-deficient population: the ridge keeps W finite
        v = rng.standard_normal((24, 20))
        sigma = v @ v.T / 20
    kw = dict(budget_mib=0.05, max_variance_rows=300)  # several Gram blocks, the variance on a subset
    r = me.whitened_moment_error(a, mu, sigma, **kw)
    t = me.whitened_moment_error(a, mu, sigma, engine="torch", **kw)
    for f in ("value", "se", "plugin", "mean_part", "delta"):
        close(getattr(t, f), getattr(r, f))
    close(t.ci, r.ci, scale=abs(r.value))
    assert (t.dim, t.rank, t.whitening) == (r.dim, r.rank, r.whitening)


@pytest.mark.parametrize("rank", [None, 0, 24])
def test_two_sample_moment_mmd(sets, rank):
    a, b = sets  # 260 rows per half: rank None is the top-k + isotropic residual route
    kw = dict(rank=rank, seed=9, budget_mib=0.05, max_variance_rows=200)
    r = me.two_sample_moment_mmd(a, b, **kw)
    t = me.two_sample_moment_mmd(a, b, engine="torch", **kw)
    for f in ("value", "se", "plugin", "mean_part", "delta", "inflation"):
        close(getattr(t, f), getattr(r, f), scale=max(abs(getattr(r, f)), abs(r.value)))
    close(t.ci, r.ci, scale=abs(r.value))
    assert (t.rank, t.whitening) == (r.rank, r.whitening)


def test_device_selects_the_path(sets, monkeypatch):
    a, b = sets
    calls = []
    real = cv._gaussian_stats_torch

    def spy(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(cv, "_gaussian_stats_torch", spy)
    ref = cv.frechet_distance(a, b)  # the default, device="cpu": numpy
    assert calls == []
    with pytest.raises(DiffauditError, match="engine"):
        cv.frechet_distance(a, b, engine="cupy")
    if not torch.cuda.is_available():
        with pytest.raises(DiffauditError, match="no CUDA device"):
            me.whitened_moment_error(a, np.zeros(24), np.eye(24), device="cuda")
    monkeypatch.setattr(_torch, "torch_device", lambda d: torch.device("cpu"))  # a CUDA device stood in
    got = cv.frechet_distance(a, b, device="cuda")
    assert len(calls) == 2
    close(got.value, ref.value, scale=np.trace(np.cov(b, rowvar=False)))
    e = me.two_sample_moment_mmd(a, b, device="cuda:0")
    assert len(calls) == 3
    close(e.value, me.two_sample_moment_mmd(a, b).value)
