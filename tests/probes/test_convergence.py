"""Convergence probes: analytic cases, reference implementations, properties, bad inputs."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import linalg

from diffaudit.errors import DiffauditError
from diffaudit.probes import convergence as cv


def random_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w = np.geomspace(1.0, cond, d)
    return (q * w) @ q.T


def fd_sqrtm_recipe(mu1, s1, mu2, s2):
    """pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm of S1 S2, real part)."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if isinstance(covmean, tuple):
        covmean = covmean[0]
    assert np.abs(np.imag(covmean)).max() < 1e-3
    covmean = np.real(covmean)
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


# ----------------------------------------------------------------------------------------- FD


def test_fd_equal_covariances_is_mean_term(rng):
    d = 12
    s = random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    r = cv.frechet_distance_from_stats(mu1, s, mu2, s)
    np.testing.assert_allclose(r.value, ((mu1 - mu2) ** 2).sum(), rtol=1e-9)
    assert abs(r.trace_term) < 1e-9 * np.trace(s)
    assert not r.singular


def test_fd_known_gaussians_diagonal(rng):
    d = 7
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    r = cv.frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    np.testing.assert_allclose(r.value, exact, rtol=1e-12)


def test_fd_identical_sets_is_zero(rng):
    a = rng.standard_normal((300, 10)).astype(np.float32)
    r = cv.frechet_distance(a, a)
    assert abs(r.value) < 1e-9
    assert r.neg_eig_mass == 0.0 or r.neg_eig_mass < 1e-12


@pytest.mark.parametrize("d", [16, 96])
def test_fd_matches_sqrtm_recipe_from_stats(rng, d):
    s1, s2 = random_spd(rng, d, 20), random_spd(rng, d, 50)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    r = cv.frechet_distance_from_stats(mu1, s1, mu2, s2)
    np.testing.assert_allclose(r.value, fd_sqrtm_recipe(mu1, s1, mu2, s2), rtol=1e-6)


def test_fd_matches_sqrtm_recipe_from_samples(rng):
    a = rng.standard_normal((800, 24)).astype(np.float32)
    b = (rng.standard_normal((900, 24)) @ random_spd(rng, 24, 3) + 0.3).astype(np.float32)
    r = cv.frechet_distance(a, b)
    mu1, s1 = np.mean(a, 0, dtype=np.float64), np.cov(a.astype(np.float64), rowvar=False)
    mu2, s2 = np.mean(b, 0, dtype=np.float64), np.cov(b.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(r.value, fd_sqrtm_recipe(mu1, s1, mu2, s2), rtol=1e-6)
    np.testing.assert_allclose(r.mean_term + r.trace_term, r.value, rtol=1e-12)


def test_gaussian_stats_match_numpy_with_offset(rng):
    a = (rng.standard_normal((1000, 5)) + 1e3).astype(np.float32)
    mu, sigma = cv.gaussian_stats(a, budget_mib=0.001)  # tiny budget: many blocks
    np.testing.assert_allclose(mu, a.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(a.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


def test_fd_singular_flag(rng):
    a = rng.standard_normal((10, 20)).astype(np.float32)
    b = rng.standard_normal((50, 20)).astype(np.float32)
    r = cv.frechet_distance(a, b)
    assert r.singular
    assert np.isfinite(r.value) and r.neg_eig_mass < cv.NEG_EIG_TOL
    assert not cv.frechet_distance(rng.standard_normal((60, 5)), rng.standard_normal((60, 5))).singular


def test_fd_bootstrap_ci_is_seeded(rng):
    a = rng.standard_normal((2000, 2)).astype(np.float32)
    b = (rng.standard_normal((2000, 2)) + np.sqrt(0.5)).astype(np.float32)
    r1 = cv.frechet_distance(a, b, n_boot=50, seed=3)
    r2 = cv.frechet_distance(a, b, n_boot=50, seed=3)
    assert r1.value_ci == r2.value_ci and r1.spread_ci == r2.spread_ci
    assert cv.frechet_distance(a, b).value_ci is None
    # the population FD is exactly 1 (mean shift 2 * 0.5, equal covariances); the interval covers it
    assert r1.value_ci[0] < 1.0 < r1.value_ci[1] and r1.value_ci[1] - r1.value_ci[0] < 0.5
    assert r1.ci_note is None and np.isfinite(r1.z0) and abs(r1.acceleration) < 0.1


def test_delete_group_stats_match_direct_statistics(rng):
    x = (rng.standard_normal((103, 5)) * 3 + 50).astype(np.float32)
    mu, sigma = cv.gaussian_stats(x)
    draw = np.random.default_rng(4)
    groups = np.array_split(np.random.default_rng(4).permutation(103), 7)
    for g, (mu_g, s_g) in zip(groups, cv._delete_group_stats(x, mu, sigma, 7, draw), strict=True):
        keep = np.setdiff1d(np.arange(103), g)
        mu_ref, s_ref = cv.gaussian_stats(x[keep])
        np.testing.assert_allclose(mu_g, mu_ref, rtol=1e-12)
        np.testing.assert_allclose(s_g, s_ref, rtol=1e-9, atol=1e-9)


def test_fd_bca_covers_the_population_fd():
    # Coverage against fresh draws with a known population FD: N(0, I) vs N(mu, I), FD = |mu|^2 = 0.5, D = 4.
    # Measured with more replications (docstring): 0.92-0.94. Here 120 replications of n = 300, B = 100:
    # binomial sd ~ 0.02, so the band [0.85, 0.99] is ~ 3 sd around 0.92-0.95. The half-width shrinks ~ 1/sqrt(n).
    d, n, reps = 4, 300, 120
    mu = np.zeros(d)
    mu[0] = np.sqrt(0.5)
    rng = np.random.default_rng(11)
    hit, width = 0, []
    for r in range(reps):
        f = cv.frechet_distance(
            rng.standard_normal((n, d)), rng.standard_normal((n, d)) + mu, n_boot=100, seed=r
        )
        hit += f.value_ci[0] <= 0.5 <= f.value_ci[1]
        width.append(f.value_ci[1] - f.value_ci[0])
    assert 0.85 <= hit / reps <= 0.99, hit / reps
    # not trivially wide: about 2 x 1.96 x the FD's standard deviation (~ 2 |mu| sqrt(2 / n) = 0.08)
    assert 0.2 < np.mean(width) < 0.5


def test_bca_reduces_to_known_cases():
    from diffaudit.probes.stats import bca_interval, jackknife_acceleration

    # symmetric bootstrap centred on theta, a = 0: the percentile interval
    boot = np.random.default_rng(0).standard_normal(20001)
    boot -= np.median(boot)
    lo, hi = bca_interval(0.0, boot, 0.0)
    np.testing.assert_allclose([lo, hi], np.quantile(boot, [0.025, 0.975]), atol=1e-3)
    # acceleration of the mean = skewness / (6 sqrt(n)) (Efron & Tibshirani 1993, Eq. 14.15): exponential, skew 2
    x = np.random.default_rng(1).exponential(size=4000)
    jack = (x.sum() - x) / (len(x) - 1)
    assert jackknife_acceleration(jack) == pytest.approx(2 / (6 * np.sqrt(4000)), rel=0.15)
    # the whole bootstrap distribution on one side: no endpoint
    assert bca_interval(0.0, np.abs(boot) + 1.0, 0.0) is None


def test_fd_rejects_non_psd_and_asymmetric(rng):
    d = 6
    s = random_spd(rng, d)
    bad = s.copy()
    bad[0, 0] = -50.0
    with pytest.raises(DiffauditError, match="negative eigenvalues"):
        cv.frechet_distance_from_stats(np.zeros(d), bad, np.zeros(d), s)
    asym = s.copy()
    asym[0, 1] += 1.0
    with pytest.raises(DiffauditError, match="not symmetric"):
        cv.frechet_distance_from_stats(np.zeros(d), asym, np.zeros(d), s)
    with pytest.raises(DiffauditError, match="dimensions"):
        cv.frechet_distance_from_stats(np.zeros(d), s, np.zeros(d + 1), np.eye(d + 1))
    with pytest.raises(DiffauditError, match="covariance has shape"):
        cv.frechet_distance_from_stats(np.zeros(d), s[:-1], np.zeros(d), s)
    nan = s.copy()
    nan[1, 1] = np.nan
    with pytest.raises(DiffauditError, match="NaN"):
        cv.frechet_distance_from_stats(np.zeros(d), nan, np.zeros(d), s)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n=st.integers(3, 40), d=st.integers(1, 6))
def test_fd_symmetric_and_permutation_invariant(seed, n, d):
    r = np.random.default_rng(seed)
    a = r.standard_normal((n, d)).astype(np.float32)
    b = (r.standard_normal((n + 5, d)) * 2 + 1).astype(np.float32)
    ab, ba = cv.frechet_distance(a, b).value, cv.frechet_distance(b, a).value
    np.testing.assert_allclose(ab, ba, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(cv.frechet_distance(a[r.permutation(n)], b).value, ab, rtol=1e-7, atol=1e-9)


def test_fd_infinity_points_and_fit(rng):
    a = rng.standard_normal((2000, 6)).astype(np.float32)
    b = rng.standard_normal((20000, 6)).astype(np.float32)
    r = cv.fd_infinity(a, b, n_points=6, seed=1)
    assert r.sizes.min() == cv.FDINF_MIN_PER_DIM * 6 and r.sizes.max() == 2000
    # each point is the plain FD of its own seeded subset (checks the precomputed sqrt(S_b) shortcut)
    draw = np.random.default_rng(1)
    for m, v in zip(r.sizes, r.values, strict=True):
        sub = a[np.sort(draw.choice(len(a), m, replace=False))]
        np.testing.assert_allclose(v, cv.frechet_distance(sub, b).value, rtol=1e-9, atol=1e-12)
    slope, intercept = np.polyfit(1 / r.sizes, r.values, 1)
    np.testing.assert_allclose([r.value, r.slope], [intercept, slope], rtol=1e-9)
    # same distribution: the O(1/N) bias is removed, FD_inf is near 0 and below the full-set FD
    assert abs(r.value) < 0.01 and r.value < r.values[-1]
    assert r.warning is None or r.value < 0
    with pytest.raises(DiffauditError, match="subset sizes"):
        cv.fd_infinity(a, b, sizes=[100])


def test_fd_infinity_known_population_value(rng):
    # N(mu, I) against 20000 reference rows of N(0, I): population FD = |mu|^2 = 0.5 (+ the reference's own
    # O(D / n_b) bias, < 1e-3). Measured over 30 fresh draws: FD_inf 0.511 +- 0.032 (sd); 4 sd tolerance each.
    d = 6
    mu = np.full(d, np.sqrt(0.5 / d))
    b = rng.standard_normal((20000, d))
    vals = np.array([cv.fd_infinity(rng.standard_normal((2000, d)) + mu, b, seed=s).value for s in range(3)])
    assert np.all(np.abs(vals - 0.5) < 0.13) and abs(vals.mean() - 0.5) < 0.075, vals


def test_fd_infinity_refuses_subsets_not_much_larger_than_d(rng):
    # d = 64, n = 400, population FD 0: nested subsets from n // 10 = 40 rows gave FD_inf = -1.55 with r2 = 0.99.
    d = 64
    b = rng.standard_normal((20000, d))
    a = rng.standard_normal((400, d))
    with pytest.raises(DiffauditError, match="more samples"):
        cv.fd_infinity(a, b)
    # forcing small subsets is allowed, but a negative extrapolation comes with a warning
    r = cv.fd_infinity(a, b, min_size=40)
    assert r.value < -0.5 and r.r2 > 0.9 and "below" in r.warning
    # with enough samples (subsets from 4 D = 256 rows) FD_inf is near the target (the reference's bias ~0.05):
    # measured 0.02 +- 0.04 over 10 seeds
    r = cv.fd_infinity(rng.standard_normal((1000, d)), b)
    assert abs(r.value - 0.05) < 0.15, r.value
    assert (r.warning is None) == (r.value >= 0)


# ----------------------------------------------------------------------------------------- KID


def naive_mmd2(x, y):
    m, d = len(x), x.shape[1]

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return sxx + syy - 2 * sxy


def test_kid_matches_naive_mmd_on_fixed_subsets(rng):
    a = rng.standard_normal((60, 5)).astype(np.float32)
    b = (rng.standard_normal((50, 5)) + 0.4).astype(np.float32)
    r = cv.kid(a, b, n_subsets=4, subset_size=20, seed=7, n_blocks=3)
    draw = np.random.default_rng(7)
    want = []
    for _ in range(4):
        x = a[draw.choice(60, 20, replace=False)].astype(np.float64)
        y = b[draw.choice(50, 20, replace=False)].astype(np.float64)
        want.append(naive_mmd2(x, y))
    np.testing.assert_allclose(r.values, want, rtol=1e-10)
    np.testing.assert_allclose([r.value, r.std], [np.mean(want), np.std(want, ddof=1)], rtol=1e-10)
    assert r.subset_std == r.std
    # the interval's blocks: one seeded partition of each set into 3 disjoint blocks of 50 // 3 = 16 rows
    pa = draw.permutation(60)[:48].reshape(3, 16)
    pb = draw.permutation(50)[:48].reshape(3, 16)
    blocks = [
        naive_mmd2(a[i].astype(np.float64), b[j].astype(np.float64)) for i, j in zip(pa, pb, strict=True)
    ]
    np.testing.assert_allclose(r.block_values, blocks, rtol=1e-10)
    se = np.std(blocks, ddof=1) / np.sqrt(3)
    t = 4.302652729911275  # t_{0.975, 2}
    np.testing.assert_allclose(r.value_ci, [np.mean(blocks) - t * se, np.mean(blocks) + t * se], rtol=1e-9)


def test_kid_subset_size_capped_and_full_set_is_order_free(rng):
    a = rng.standard_normal((25, 3)).astype(np.float32)
    b = rng.standard_normal((30, 3)).astype(np.float32)
    r = cv.kid(a, b, n_subsets=2, subset_size=1000, seed=0)
    assert r.subset_size == 25
    # a full-size subset of a is a permutation of a: MMD_u does not depend on the order
    r2 = cv.kid(a[::-1], b, n_subsets=2, subset_size=1000, seed=0)
    np.testing.assert_allclose(r.values, r2.values, rtol=1e-10)
    # subsets equal to the whole set have zero spread, but the interval is not zero-width
    r3 = cv.kid(a, b[:25], n_subsets=3, subset_size=1000, seed=0)
    assert r3.std < 1e-12 and r3.value_ci[1] - r3.value_ci[0] > 1e-3


def test_kid_separates_same_from_shifted(rng):
    a = rng.standard_normal((600, 8)).astype(np.float32)
    same = rng.standard_normal((600, 8)).astype(np.float32)
    shifted = same + np.float32(0.5)
    r0 = cv.kid(a, same, n_subsets=20, subset_size=200)
    r1 = cv.kid(a, shifted, n_subsets=20, subset_size=200)
    assert r0.value_ci[0] < 0 < r0.value_ci[1]  # unbiased: the interval holds 0
    assert r1.value_ci[0] > 0 and r1.value > 10 * max(abs(r0.value), 1e-4)


def _pop_kid(mu, d):
    """Population MMD^2 of N(0, I) vs N(mu, I) for k(x, y) = (x.y / d + 1)^3: E k = 1 + 3 Es + 3 Es^2 + Es^3
    with s = x.y / d and Gaussian moments up to order three."""

    def ek(ma, mb):
        m2a, m2b = np.eye(d) + np.outer(ma, ma), np.eye(d) + np.outer(mb, mb)

        def t3(m):
            eye = np.eye(d)
            return (
                np.einsum("i,j,k->ijk", m, m, m)
                + np.einsum("i,jk->ijk", m, eye)
                + np.einsum("j,ik->ijk", m, eye)
                + np.einsum("k,ij->ijk", m, eye)
            )

        return (
            1
            + 3 * ma @ mb / d
            + 3 * np.trace(m2a @ m2b) / d**2
            + np.einsum("ijk,ijk->", t3(ma), t3(mb)) / d**3
        )

    z = np.zeros(d)
    return ek(z, z) + ek(mu, mu) - 2 * ek(z, mu)


@pytest.mark.parametrize("shift", [0.0, 0.25])
def test_kid_interval_covers_the_population_mmd(shift):
    # Fresh draws with a known population MMD^2 (0 under P = Q; the analytic value under a mean shift).
    # The former interval (subset std / sqrt(n_subsets)) covers 0.63 / 0.57 here. Measured with these seeds:
    # 0.92 (P = Q) and 0.935 (shift); binomial sd ~ 0.011 at 400 replications, band ~ 3 sd around 0.935-0.95.
    d, n, reps = 8, 200, 400
    mu = np.full(d, shift)
    true = _pop_kid(mu, d)
    rng = np.random.default_rng(1)
    hit = 0
    for r in range(reps):
        k = cv.kid(
            rng.standard_normal((n, d)),
            rng.standard_normal((n, d)) + mu,
            n_subsets=2,
            subset_size=100,
            seed=r,
        )
        hit += k.value_ci[0] <= true <= k.value_ci[1]
    assert 0.90 <= hit / reps <= 0.985, hit / reps


def test_pop_kid_matches_monte_carlo():
    # the analytic reference used above, against a direct Monte-Carlo mean of the kernel
    d, mu = 3, np.full(3, 0.4)
    rng = np.random.default_rng(2)
    x, x2, y, y2 = (rng.standard_normal((400_000, d)) + s for s in (0, 0, mu, mu))
    k = lambda u, v: ((u * v).sum(1) / d + 1) ** 3  # noqa: E731
    mc = k(x, x2).mean() + k(y, y2).mean() - 2 * k(x, y).mean()
    assert _pop_kid(mu, d) == pytest.approx(mc, abs=0.02)


# ----------------------------------------------------------------------------------------- moments / KL


def test_moments_shift_and_scale_are_exact(rng):
    b = rng.standard_normal((3000, 6)).astype(np.float64)
    shift = np.array([1.0, -2.0, 0, 0, 0.5, 0])
    r = cv.moments((b + shift).astype(np.float32), b.astype(np.float32), top=6)
    b32 = b.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(r.mean_error, np.linalg.norm(shift), rtol=1e-5)
    assert r.cov_rel_error < 1e-5 and r.spectrum_rel_error < 1e-5 and r.kurtosis_error < 1e-4
    c = b32.mean(0)
    scaled = (2 * (b32 - c) + c).astype(np.float32)
    r2 = cv.moments(scaled, b.astype(np.float32), top=6)
    np.testing.assert_allclose([r2.cov_rel_error, r2.spectrum_rel_error], [3.0, 3.0], rtol=1e-5)
    assert r2.kurtosis_error < 1e-4 and r2.mean_error < 1e-4


def test_moments_kurtosis_matches_scipy_along_directions(rng):
    from scipy.stats import kurtosis

    d = 4
    a = rng.standard_normal((5000, d)).astype(np.float32)
    a[:, 1] = rng.uniform(-1, 1, 5000)  # excess kurtosis -1.2 along e_1
    b = rng.standard_normal((4000, d)).astype(np.float32)
    u = np.array([[0, 1.0, 0, 0], [1.0, 1.0, 0, 0]])
    r = cv.moments(a, b, directions=u, top=2)
    un = u / np.linalg.norm(u, axis=1, keepdims=True)
    np.testing.assert_allclose(r.dir_kurtosis_a, kurtosis(a.astype(np.float64) @ un.T, axis=0), rtol=1e-8)
    np.testing.assert_allclose(r.dir_kurtosis_b, kurtosis(b.astype(np.float64) @ un.T, axis=0), rtol=1e-8)
    assert abs(r.dir_kurtosis_a[0] + 1.2) < 0.1
    np.testing.assert_allclose(r.dir_kurtosis_error, np.abs(r.dir_kurtosis_a - r.dir_kurtosis_b).max())
    with pytest.raises(DiffauditError, match="directions"):
        cv.moments(a, b, directions=np.ones((2, d + 1)))
    with pytest.raises(DiffauditError, match="zero vector"):
        cv.moments(a, b, directions=np.zeros(d))


def test_gaussian_kl_against_monte_carlo(rng):
    from scipy.stats import multivariate_normal as mvn

    d = 3
    a = (rng.standard_normal((2000, d)) @ random_spd(rng, d, 3) + 0.3).astype(np.float32)
    b = (rng.standard_normal((2500, d)) * 1.3).astype(np.float32)
    kl = cv.gaussian_kl(a, b)
    mu_a, s_a = cv.gaussian_stats(a)
    mu_b, s_b = cv.gaussian_stats(b)
    x = np.random.default_rng(1).multivariate_normal(mu_a, s_a, 200_000)
    llr = mvn(mu_a, s_a).logpdf(x) - mvn(mu_b, s_b).logpdf(x)
    se = llr.std() / np.sqrt(len(llr))
    assert abs(kl - llr.mean()) < 4 * se
    assert kl > 0
    assert abs(cv.gaussian_kl(a, a)) < 1e-9


def test_gaussian_kl_singular_needs_ridge(rng):
    a = rng.standard_normal((5, 8)).astype(np.float32)
    b = rng.standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(DiffauditError, match="ridge"):
        cv.gaussian_kl(a, b)
    assert np.isfinite(cv.gaussian_kl(a, b, ridge=1e-3))
    with pytest.raises(DiffauditError, match="ridge"):
        cv.gaussian_kl(b, b, ridge=-1.0)


# ----------------------------------------------------------------------------------------- P/R/D/C


def brute_prdc(real, fake, k_pr=3, k_dc=5):
    """Full float64 distance matrices; ties: <= radius is inside (the documented convention)."""
    real = real.astype(np.float64)
    fake = fake.astype(np.float64)

    def d2(x, y):
        return ((y[None, :, :] - x[:, None, :]) ** 2).sum(-1)

    rr = d2(real, real)
    np.fill_diagonal(rr, np.inf)
    ff = d2(fake, fake)
    np.fill_diagonal(ff, np.inf)
    fr = d2(fake, real)  # (m, n)
    rad_r_pr = np.sort(rr, 1)[:, k_pr - 1]
    rad_r_dc = np.sort(rr, 1)[:, k_dc - 1]
    rad_f = np.sort(ff, 1)[:, k_pr - 1]
    fake_in_real = (fr <= rad_r_pr[None]).any(1)
    real_in_fake = (fr <= rad_f[:, None]).any(0)
    counts = (fr <= rad_r_dc[None]).sum(1)
    covered = (fr <= rad_r_dc[None]).any(0)
    return fake_in_real, real_in_fake, counts, covered


@pytest.fixture
def tiny_blocks(monkeypatch):
    monkeypatch.setattr(cv, "_MIN_ROWS", (7, 5))


def _check_against_brute(real, fake, budget):
    fir, rif, cnt, cov = brute_prdc(real, fake)
    pr = cv.precision_recall(real, fake, budget_mib=budget)
    dc = cv.density_coverage(real, fake, budget_mib=budget)
    np.testing.assert_array_equal(pr.fake_in_real, fir)
    np.testing.assert_array_equal(pr.real_in_fake, rif)
    np.testing.assert_array_equal(dc.fake_count, cnt)
    np.testing.assert_array_equal(dc.real_covered, cov)
    assert pr.precision == fir.mean() and pr.recall == rif.mean()
    assert dc.density == cnt.sum() / (5 * len(fake)) and dc.coverage == cov.mean()
    pr2, dc2 = cv.prdc(real, fake, budget_mib=budget)
    np.testing.assert_array_equal(pr2.fake_in_real, fir)
    np.testing.assert_array_equal(pr2.real_in_fake, rif)
    np.testing.assert_array_equal(dc2.fake_count, cnt)
    np.testing.assert_array_equal(dc2.real_covered, cov)


@pytest.mark.parametrize("budget", [0.001, 512])
def test_prdc_matches_bruteforce_gaussian(rng, tiny_blocks, budget):
    real = rng.standard_normal((230, 6)).astype(np.float32)
    fake = (rng.standard_normal((170, 6)) * 1.2 + 0.2).astype(np.float32)
    _check_against_brute(real, fake, budget)


def test_prdc_matches_bruteforce_with_ties(rng, tiny_blocks):
    # points on a small integer grid: many exact duplicates and points exactly on a ball's boundary
    real = rng.integers(0, 3, (150, 3)).astype(np.float32)
    fake = rng.integers(0, 4, (120, 3)).astype(np.float32)
    fake[:20] = real[:20]
    _check_against_brute(real, fake, 0.001)


def test_prdc_matches_bruteforce_large_offset(rng, tiny_blocks):
    # a large common offset (like Inception features) stresses the float32 screening; decisions stay exact
    real = (rng.standard_normal((120, 40)) + 300).astype(np.float32)
    fake = (rng.standard_normal((110, 40)) * 1.1 + 300).astype(np.float32)
    fake[:10] = real[:10]
    _check_against_brute(real, fake, 0.001)


def test_prdc_identical_and_disjoint_sets(rng):
    x = rng.standard_normal((200, 5)).astype(np.float32)
    pr = cv.precision_recall(x, x)
    dc = cv.density_coverage(x, x)
    assert pr.precision == 1.0 and pr.recall == 1.0 and dc.coverage == 1.0
    far = x + np.float32(100.0)
    pr = cv.precision_recall(x, far)
    dc = cv.density_coverage(x, far)
    assert pr.precision == 0.0 and pr.recall == 0.0 and dc.density == 0.0 and dc.coverage == 0.0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_prdc_permutation_invariance(seed):
    r = np.random.default_rng(seed)
    real = r.standard_normal((60, 3)).astype(np.float32)
    fake = r.standard_normal((50, 3)).astype(np.float32)
    pr, dc = cv.prdc(real, fake)
    pf, pq = r.permutation(50), r.permutation(60)
    pr2, dc2 = cv.prdc(real[pq], fake[pf])
    np.testing.assert_array_equal(pr2.fake_in_real, pr.fake_in_real[pf])
    np.testing.assert_array_equal(pr2.real_in_fake, pr.real_in_fake[pq])
    np.testing.assert_array_equal(dc2.fake_count, dc.fake_count[pf])
    np.testing.assert_array_equal(dc2.real_covered, dc.real_covered[pq])


def test_prdc_k_too_large(rng):
    x = rng.standard_normal((4, 2)).astype(np.float32)
    with pytest.raises(DiffauditError, match="k=5"):
        cv.density_coverage(x, x)


# ----------------------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_1d_matches_scipy():
    from scipy.stats import wasserstein_distance

    r = np.random.default_rng(0)
    a = r.standard_normal((37, 1)).astype(np.float32)
    b = (r.exponential(size=(53, 1)) - 0.5).astype(np.float32)
    # in 1-D every unit direction is +-1 and W_p is sign-free: SW_1 = W_1 exactly
    np.testing.assert_allclose(
        cv.sliced_wasserstein(a, b, n_projections=3, p=1), wasserstein_distance(a[:, 0], b[:, 0]), rtol=1e-10
    )
    # W_2 with unequal sizes against a fine midpoint rule on the quantile functions
    xs, ys = np.sort(a[:, 0].astype(np.float64)), np.sort(b[:, 0].astype(np.float64))
    t = (np.arange(2_000_000) + 0.5) / 2_000_000
    w2 = np.sqrt(np.mean((xs[(t * 37).astype(int)] - ys[(t * 53).astype(int)]) ** 2))
    np.testing.assert_allclose(cv.sliced_wasserstein(a, b, n_projections=2, p=2), w2, rtol=1e-4)


def test_sliced_wasserstein_translation_is_exact(rng):
    a = rng.standard_normal((300, 5)).astype(np.float32)
    v = np.array([1.0, -1.0, 0.5, 0.0, 2.0], np.float32)
    sw = cv.sliced_wasserstein(a + v, a, n_projections=64, seed=3)
    theta = np.random.default_rng(3).standard_normal((5, 64))
    theta /= np.linalg.norm(theta, axis=0)
    np.testing.assert_allclose(sw, np.sqrt(np.mean((v.astype(np.float64) @ theta) ** 2)), rtol=1e-5)
    assert cv.sliced_wasserstein(a, a) == 0.0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 30), m=st.integers(2, 30))
def test_sliced_wasserstein_symmetric_and_permutation_invariant(seed, n, m):
    r = np.random.default_rng(seed)
    a = r.standard_normal((n, 3)).astype(np.float32)
    b = r.standard_normal((m, 3)).astype(np.float32)
    ab = cv.sliced_wasserstein(a, b, n_projections=16, seed=seed)
    np.testing.assert_allclose(cv.sliced_wasserstein(b, a, n_projections=16, seed=seed), ab, rtol=1e-10)
    np.testing.assert_allclose(
        cv.sliced_wasserstein(a[r.permutation(n)], b, n_projections=16, seed=seed), ab, rtol=1e-10
    )


# ----------------------------------------------------------------------------------------- bad inputs

PROBES = {
    "frechet_distance": cv.frechet_distance,
    "fd_infinity": cv.fd_infinity,
    "kid": lambda a, b: cv.kid(a, b, n_subsets=2, subset_size=5),
    "moments": cv.moments,
    "gaussian_kl": cv.gaussian_kl,
    "precision_recall": cv.precision_recall,
    "density_coverage": cv.density_coverage,
    "prdc": cv.prdc,
    "sliced_wasserstein": cv.sliced_wasserstein,
}


def _bad_inputs():
    r = np.random.default_rng(0)
    good = r.standard_normal((40, 4)).astype(np.float32)
    nan = good.copy()
    nan[3, 1] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    return {
        "nan": (nan, good, "NaN"),
        "inf": (good, inf, "NaN or Inf"),
        "one sample": (good[:1], good, "at least 2"),
        "mismatched D": (good, good[:, :3], "feature dimensions"),
        "wrong ndim": (good.reshape(40, 2, 2), good, "2-D"),
        "1-D": (good[:, 0], good, "2-D"),
        "strings": (np.array([["a", "b"], ["c", "d"]]), good, "dtype"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
@pytest.mark.parametrize("probe", list(PROBES))
def test_bad_inputs_raise_diffaudit_error(probe, case):
    a, b, msg = _bad_inputs()[case]
    with pytest.raises(DiffauditError, match=msg):
        PROBES[probe](a, b)


def test_fd_bootstrap_interval_matches_the_sampling_spread_at_small_n():
    # Control with a known answer: the spread of FD between two fresh n-samples of the same Gaussian,
    # obtained by redrawing. With n = 200 and D = 40 the raw resampling bootstrap sits far above the point
    # value (duplicated rows inflate FD's bias); the shifted band must straddle the point value and have
    # about the width of the true sampling distribution. The population FD (0) is out of reach: no BCa.
    n, d = 200, 40
    rng = np.random.default_rng(7)
    fresh = [
        cv.frechet_distance(rng.standard_normal((n, d)), rng.standard_normal((n, d))).value for _ in range(60)
    ]
    lo_true, hi_true = np.quantile(fresh, [0.025, 0.975])
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    r = cv.frechet_distance(a, b, n_boot=60, seed=0)
    lo, hi = r.spread_ci
    assert lo < r.value < hi
    width_true = hi_true - lo_true
    assert 0.4 * width_true < hi - lo < 2.5 * width_true
    # the point value of a real-vs-real FD is a draw from the fresh distribution, and the interval sits
    # where that distribution is (not above all of it, as the uncorrected bootstrap would)
    assert lo < hi_true and hi > lo_true
    assert r.value_ci is None and "bias" in r.ci_note and r.z0 == -np.inf
