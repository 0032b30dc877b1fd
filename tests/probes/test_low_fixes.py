"""Regression tests of six low-severity defects, each against a reference:

1. ``budget_mib=inf`` is "no limit" (one block), not an OverflowError: results equal a float64 brute force.
2. ``k`` that is not a whole number >= 1 (2.5, True, 0, -1, "2", 2.0) is a ``DiffauditError`` naming k; a numpy
   integer k works on the FAISS engine too.
3. FD / KID with n = 1, 2, 3 per set: FD is defined from n = 2 (checked against scipy's ``sqrtm`` formula); its
   bootstrap needs n >= 4 and says so in ``ci_note`` (it raised "contains NaN or Inf"); KID says why it has
   no interval.
4. float64 features far from 0 (1e4 + 1e-4 noise, int64 around 2**40) keep their spread through the float32
   cast in every translation-invariant measure (k-NN, FD, moments, PRDC: against float64 brute force / the
   same measure on the centred data); other lossy casts warn (``PrecisionWarning``).
5. IVF ``seed`` >= 2**31 (FAISS takes a C int) is mapped into range deterministically; below it, unchanged.
6. ``basin.calibrate``, ``partial_copies.find_partial_copies`` and ``factors.novelty`` pass ``device`` to the
   k-NN search.
"""

# ruff: noqa: E741  (D, I follow FAISS naming)
import importlib
import warnings

import numpy as np
import pytest
import scipy.linalg

from diffaudit.errors import DiffauditError
from diffaudit.probes import _checks, basin, knn_torch, neighbors, partial_copies
from diffaudit.probes import convergence as cv
from diffaudit.probes.neighbors import build_index, knn, search

nov_mod = importlib.import_module("diffaudit.probes.factors.novelty")  # the package re-exports the function

ENGINES = ("faiss", "torch")


def brute_l2(xq, xb):
    xq, xb = np.asarray(xq, np.float64), np.asarray(xb, np.float64)
    return ((xq[:, None, :] - xb[None]) ** 2).sum(-1)


def assert_knn_matches_bruteforce(D, I, bf, rtol):
    Ib = np.argsort(bf, 1, kind="stable")[:, : I.shape[1]]
    np.testing.assert_array_equal(I, Ib)
    np.testing.assert_allclose(D, np.take_along_axis(bf, Ib, 1), rtol=rtol, atol=0)


# ------------------------------------------------------------------------------------------- 1. infinite budget


@pytest.mark.parametrize("engine", ENGINES)
def test_infinite_budget_means_no_limit(rng, engine):
    xb = rng.standard_normal((700, 6)).astype(np.float32)
    xq = rng.standard_normal((90, 6)).astype(np.float32)
    D, I = knn(xq, xb, 3, budget_mib=float("inf"), engine=engine)
    assert_knn_matches_bruteforce(D, I, brute_l2(xq, xb), rtol=1e-10)
    r = search(xq, xb, 3, budget_mib=float("inf"), engine=engine, index="exact")
    np.testing.assert_array_equal(r.I, I)
    De, Ie = knn(xb, xb, 2, budget_mib=np.inf, engine=engine, exclude_self=True)
    bf = brute_l2(xb, xb)
    np.fill_diagonal(bf, np.inf)
    assert_knn_matches_bruteforce(De, Ie, bf, rtol=1e-10)


def test_infinite_budget_block_sizes_are_one_block():
    assert neighbors._block_sizes(1000, 5000, 64, 8, float("inf")) == (1000, 5000)
    assert knn_torch.block_sizes(1000, 5000, 64, 8, float("inf"), on_cpu=False) == (1000, 5000)


def test_torch_rerank_in_one_chunk_with_an_infinite_budget(rng):
    """The GPU re-ranking chunk is a quarter of the budget: inf must give one chunk (run here on the CPU)."""
    import torch

    xb = rng.standard_normal((50, 5)).astype(np.float32)
    xq = rng.standard_normal((7, 5)).astype(np.float32)
    I = torch.from_numpy(np.argsort(brute_l2(xq, xb), 1)[:, :4].copy())
    base = knn_torch._Rows(xb, torch.device("cpu"), True)
    D, I2 = knn_torch._rerank(torch.from_numpy(xq), base, I, 2, "l2", float("inf"))
    assert_knn_matches_bruteforce(D.numpy(), I2.numpy(), brute_l2(xq, xb), rtol=1e-10)


@pytest.mark.parametrize("budget", [float("nan"), 0, -1, "512", True])
def test_budget_must_be_positive(rng, budget):
    x = rng.standard_normal((20, 3)).astype(np.float32)
    with pytest.raises(DiffauditError, match="budget_mib"):
        knn(x, x, 1, budget_mib=budget)


# ------------------------------------------------------------------------------------------- 2. k


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("k", [2.5, True, 0, -1, "2", None, 2.0])
def test_k_must_be_a_whole_number_of_neighbours(rng, engine, k):
    x = rng.standard_normal((30, 3)).astype(np.float32)
    with pytest.raises(DiffauditError, match=r"^k="):
        knn(x, x, k, engine=engine)
    with pytest.raises(DiffauditError, match=r"^k="):
        search(x, x, k, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_numpy_integer_k_works(rng, engine):
    xb = rng.standard_normal((80, 4)).astype(np.float32)
    xq = rng.standard_normal((10, 4)).astype(np.float32)
    D, I = knn(xq, xb, np.int64(2), engine=engine)
    assert_knn_matches_bruteforce(D, I, brute_l2(xq, xb), rtol=1e-10)


def test_torch_entry_refuses_bad_k(rng):
    x = rng.standard_normal((30, 3)).astype(np.float32)
    with pytest.raises(DiffauditError, match=r"^k="):
        knn_torch.exact_search(x, x, 2.5, 6)
    with pytest.raises(DiffauditError, match=r"^kk="):
        knn_torch.exact_search(x, x, 3, 3, exclude_self=True)  # no room for the dropped self row


def test_ball_probes_refuse_bad_k(rng):
    a = rng.standard_normal((40, 3))
    with pytest.raises(DiffauditError, match=r"^k="):
        cv.precision_recall(a, a + 0.1, k=2.5)
    with pytest.raises(DiffauditError, match=r"^k="):
        cv.density_coverage(a, a + 0.1, k=True)


# ------------------------------------------------------------------------------------------- 3. FD / KID, small n


def fd_reference(a, b):
    """FD with scipy's sqrtm (pytorch-fid's formula), float64."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("n", [2, 3])
def test_fd_with_too_few_samples_for_its_bootstrap(rng, n, engine):
    a, b = rng.standard_normal((n, 3)), rng.standard_normal((n + 1, 3)) + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old path divided by zero on its way to the NaN statistics
        r = cv.frechet_distance(a, b, n_boot=50, engine=engine)
    # the point value is defined (n >= 2) and equals the reference; the rank-deficient covariances make the
    # reference's sqrtm and our eigen route differ by ~sqrt(eps)
    assert r.value == pytest.approx(fd_reference(a, b), rel=1e-6, abs=1e-6)
    assert r.value == cv.frechet_distance(a, b, engine=engine).value
    assert r.value_ci is None and r.spread_ci is None
    assert "at least 4 samples per set" in r.ci_note and f"n_a={n}" in r.ci_note


def test_fd_bootstrap_from_four_samples(rng):
    a, b = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)) + 1.0
    r = cv.frechet_distance(a, b, n_boot=40)
    assert r.spread_ci is not None and np.isfinite(r.spread_ci).all()
    assert r.ci_note is None or "samples per set" not in r.ci_note  # a BCa note, if any, is about the bias


def test_fd_and_kid_with_one_sample_name_the_count(rng):
    one, many = rng.standard_normal((1, 3)), rng.standard_normal((10, 3))
    for f in (cv.frechet_distance, cv.kid):
        with pytest.raises(DiffauditError, match="has 1 sample"):
            f(one, many)


@pytest.mark.parametrize("n", [2, 3])
def test_kid_with_too_few_samples_for_its_interval(rng, n):
    a, b = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
    r = cv.kid(a, b, n_subsets=3)
    # m = n: every subset is the whole set, so the value is the sets' unbiased MMD^2 (cubic kernel, D = 3) of
    # the float32 features (KID casts as given: its kernel is not shift invariant)
    a, b = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    kxx, kyy, kxy = ((a @ a.T / 3 + 1) ** 3, (b @ b.T / 3 + 1) ** 3, (a @ b.T / 3 + 1) ** 3)
    ref = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    assert r.value == pytest.approx(ref, rel=1e-12)
    assert r.value_ci is None and "at least 4 samples per set" in r.ci_note
    assert cv.kid(rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), n_subsets=3).ci_note is None


# ------------------------------------------------------------------------------------------- 4. float64 -> float32


def offset_set(rng, n, d=8, offset=1e4, noise=1e-4):
    return offset + noise * rng.standard_normal((n, d))


@pytest.mark.parametrize("engine", ENGINES)
def test_large_offset_features_keep_their_distances(rng, engine):
    xb = offset_set(rng, 400)
    xq = np.concatenate([xb[:30] + 1e-6 * rng.standard_normal((30, 8)), offset_set(rng, 30)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shifted cast loses nothing worth a warning
        D, I = knn(xq, xb, 2, engine=engine)
    # float32 keeps ~2^-24 of the centred values (~1e-4): distances to ~1e-6 relative of the spread
    assert_knn_matches_bruteforce(D, I, brute_l2(xq, xb), rtol=1e-4)
    assert (D[:30, 0] > 0).all()  # near copies are not exact copies
    De, Ie = knn(xb, xb, 1, engine=engine, exclude_self=True)
    bf = brute_l2(xb, xb)
    np.fill_diagonal(bf, np.inf)
    assert_knn_matches_bruteforce(De, Ie, bf, rtol=1e-4)


def test_large_integers_keep_their_distances(rng):
    xb = (2**40 + rng.integers(0, 1000, (300, 4))).astype(np.int64)
    xq = (2**40 + rng.integers(0, 1000, (20, 4))).astype(np.int64)
    D, I = knn(xq, xb, 3)
    bf = brute_l2(xq, xb)
    np.testing.assert_array_equal(D, np.sort(bf, 1)[:, :3])  # integers: exact


@pytest.mark.parametrize("engine", ENGINES)
def test_ordinary_float64_distances_match_bruteforce(rng, engine):
    xb = rng.standard_normal((500, 12))
    xq = rng.standard_normal((60, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D, I = knn(xq, xb, 4, engine=engine)
        Di, Ii = knn(xq, xb, 4, engine=engine, metric="ip")
    assert_knn_matches_bruteforce(D, I, brute_l2(xq, xb), rtol=1e-6)
    ip = xq @ xb.T
    np.testing.assert_array_equal(Ii, np.argsort(-ip, 1, kind="stable")[:, :4])


def test_lossy_casts_warn_and_float32_inputs_are_unchanged(rng):
    x = offset_set(rng, 50)
    with pytest.warns(_checks.PrecisionWarning, match="bits of their spread"):
        _checks.as_features(x, "features")
    with pytest.warns(_checks.PrecisionWarning):
        knn(x, x, 1, metric="ip")  # inner products are not translation invariant: cast as given, and said so
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _checks.as_features(rng.standard_normal((50, 8)), "features")  # ordinary float64: no warning
        x32 = (1e4 + rng.standard_normal((50, 8))).astype(np.float32)
        assert _checks.l2_offset(x32) is None  # nothing to round: float32 input is used as given
        np.testing.assert_array_equal(_checks.as_features(x32, "f"), x32)
    with pytest.raises(DiffauditError, match="complex"):
        _checks.as_features(np.ones((3, 2), complex), "features")


def test_large_offset_fd_moments_and_stats(rng):
    a, b = offset_set(rng, 300, 4), offset_set(rng, 300, 4) + 3e-5
    a0, b0 = a - 1e4, b - 1e4  # the same sets near 0: the reference (FD and moments are shift invariant)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = cv.frechet_distance(a, b).value
        mo = cv.moments(a, b)
        kl = cv.gaussian_kl(a, b)
        sw = cv.sliced_wasserstein(a, b, n_projections=16)
        mu, sigma = cv.gaussian_stats(a)
    assert fd == pytest.approx(fd_reference(a0, b0), rel=1e-5)
    assert mo.mean_error == pytest.approx(np.linalg.norm(a0.mean(0) - b0.mean(0)), rel=1e-5)
    assert kl == pytest.approx(cv.gaussian_kl(a0, b0), rel=1e-4)
    assert sw == pytest.approx(cv.sliced_wasserstein(a0, b0, n_projections=16), rel=1e-5)
    np.testing.assert_allclose(mu, a.mean(0), rtol=1e-14)
    ref = np.cov(a, rowvar=False)
    np.testing.assert_allclose(sigma, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_large_offset_prdc_matches_the_centred_sets(rng):
    real, fake = offset_set(rng, 200, 3), offset_set(rng, 150, 3) + 2e-5
    pr, dc = cv.prdc(real, fake)
    pr0, dc0 = cv.prdc(real - 1e4, fake - 1e4)
    assert (pr.precision, pr.recall, dc.density, dc.coverage) == pytest.approx(
        (pr0.precision, pr0.recall, dc0.density, dc0.coverage), abs=0.02
    )
    assert 0.3 < pr.precision < 1.0  # cast as given, every point collapsed onto a few grid points


# ------------------------------------------------------------------------------------------- 5. IVF seed


def test_ivf_seed_beyond_31_bits(rng):
    xb = rng.standard_normal((2000, 8)).astype(np.float32)
    xq = rng.standard_normal((50, 8)).astype(np.float32)
    r = search(xq, xb, 2, index="ivf", seed=2**40, recall_sample=50)
    D, I = knn(xq, xb, 2, index="exact")
    assert r.method == "ivf" and r.recall_at_1 >= 0.99
    assert np.mean(r.I[:, 0] == I[:, 0]) >= 0.95
    i1, i2 = build_index(xb, seed=2**40), build_index(xb, seed=2**40)
    assert i1.cp.seed == i2.cp.seed == neighbors._faiss_seed(2**40)
    assert 0 <= i1.cp.seed < 2**31
    assert build_index(xb, seed=7).cp.seed == 7  # in range: unchanged, so indexes built before stay valid
    c1 = i1.quantizer.reconstruct_n(0, i1.nlist)
    np.testing.assert_array_equal(c1, i2.quantizer.reconstruct_n(0, i2.nlist))  # deterministic


@pytest.mark.parametrize("seed", [-1, 2.5, None])
def test_bad_seed_is_refused(rng, seed):
    x = rng.standard_normal((100, 4)).astype(np.float32)
    with pytest.raises(DiffauditError, match="seed="):
        build_index(x, seed=seed)
    with pytest.raises(DiffauditError, match="seed="):
        search(x, x, 1, seed=seed)


# ------------------------------------------------------------------------------------------- 6. device threading


def spy(monkeypatch, module, name, seen):
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        seen.append(kwargs.get("device"))
        kwargs["device"] = "cpu"  # the stand-in CUDA device runs on the CPU
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_basin_calibrate_passes_device(rng, monkeypatch):
    seen = []
    spy(monkeypatch, basin, "knn", seen)
    train, holdout = rng.standard_normal((60, 2, 3)), rng.standard_normal((40, 2, 3))
    cal = basin.calibrate(train, holdout, 0.1, device="cuda:7")
    assert seen == ["cuda:7"]
    d = np.sqrt(brute_l2(holdout.reshape(40, -1), train.reshape(60, -1)).min(1))
    assert cal.radius == pytest.approx(np.quantile(d, 0.1), rel=1e-6)  # float32 features


def test_partial_copies_pass_device(rng, monkeypatch):
    seen = []
    spy(monkeypatch, partial_copies, "search", seen)
    train = rng.random((40, 1, 4, 4))
    holdout = rng.random((partial_copies.min_holdout(), 1, 4, 4))
    gen = rng.random((10, 1, 4, 4))
    partial_copies.find_partial_copies(gen, train, holdout, device="cuda:7")
    assert seen and set(seen) == {"cuda:7"}


def test_novelty_passes_device(rng, monkeypatch):
    seen = []
    spy(monkeypatch, nov_mod, "knn", seen)
    spy(monkeypatch, nov_mod, "find_copies", seen)
    gen, train = rng.standard_normal((30, 4)), rng.standard_normal((50, 4))
    valid = np.ones(30, bool)
    nov_mod.novelty(gen, train, valid, device="cuda:7")
    nov_mod.novelty(gen, train, valid, is_copy=np.zeros(30, bool), device="cuda:7")
    nov_mod.novelty(gen, train, valid, holdout=rng.standard_normal((40, 4)), device="cuda:7")
    nov_mod.novelty(gen, train, valid, z_gen=gen[:, :2], z_train=train[:, :2], device="cuda:7")
    assert seen == ["cuda:7"] * 5
