"""The vector datasets (hidden-manifold, mcm, molrg), digits, and the registry / spec parsing."""

import numpy as np
import pytest

import diffaudit
from diffaudit.datasets.base import get_dataset
from diffaudit.datasets.moments import population_moments
from diffaudit.errors import DiffauditError
from diffaudit.pipeline.setup import dataset_split

SPECS = [
    "hidden-manifold:d=16,D=3",
    "mcm:d=8",
    "mcm:d=8,correlated=true",
    "molrg:d=16,K=3,r=2,sigma=0.1",
    "sprites",
    "digits",
]


@pytest.mark.parametrize("spec", SPECS)
def test_determinism_and_nested_prefixes(spec):
    ds = get_dataset(spec)
    x1, z1 = ds.sample(50, seed=3)
    x2, z2 = ds.sample(50, seed=3)
    x3, z3 = ds.sample(137, seed=3)
    x4, _ = ds.sample(50, seed=4)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(x1, x3[:50])
    np.testing.assert_array_equal(z1, z3[:50])
    assert not np.array_equal(x1, x4)
    assert x1.dtype == np.float32 and z1.dtype == np.float64
    assert x1.shape == (50, *ds.shape) and z1.shape == (50, len(ds.factors))
    # same dataset seed => same structure; rebuilt from its own spec => same samples
    np.testing.assert_array_equal(get_dataset(ds.spec).sample(10, 3)[0], x1[:10])
    if ds.kind == "image":
        assert x1.min() >= -1 and x1.max() <= 1


def test_structure_depends_on_dataset_seed():
    a = get_dataset("hidden-manifold", seed=0).sample(5, 0)[0]
    b = get_dataset("hidden-manifold", seed=1).sample(5, 0)[0]
    assert not np.allclose(a, b)


def test_spec_parsing_and_errors():
    ds = get_dataset("mcm:d=8,beta_v=2")
    assert ds.d == 8 and ds.beta_v == 2.0 and ds.sample(3, 0)[0].shape == (3, 8)
    with pytest.raises(DiffauditError, match="valid parameters: d, beta_u, beta_v, correlated, seed"):
        get_dataset("mcm:dim=8")
    with pytest.raises(DiffauditError, match="choose one of"):
        get_dataset("nope")
    with pytest.raises(DiffauditError, match="K\\*r <= d"):
        get_dataset("molrg:d=4,K=3,r=2")
    with pytest.raises(DiffauditError, match="shape"):
        get_dataset("mcm:d=8").project(np.zeros((3, 9)))
    with pytest.raises(DiffauditError, match="NaN"):
        get_dataset("hidden-manifold").project(np.full((2, 32), np.nan))
    with pytest.raises(DiffauditError, match="holdout_region"):
        get_dataset("sprites:holdout_region=star-left")
    with pytest.raises(DiffauditError, match="non-negative integer"):
        get_dataset("molrg").sample(-1)


# ----------------------------------------------------------------------------- hidden manifold
def test_hidden_manifold_projection_recovers_c():
    ds = get_dataset("hidden-manifold")  # d=32, D=4
    x, c = ds.sample(2000, seed=1)
    c_hat, res = ds.project(x)
    assert res.max() < 1e-6  # float32 rounding only
    assert np.abs(c_hat - c).max() < 1e-4  # F fixed => c identifiable (tanh is injective, F full rank)


def test_hidden_manifold_off_manifold_gaussian_has_large_residual():
    ds = get_dataset("hidden-manifold")
    x, _ = ds.sample(4000, seed=2)
    mu, cov = x.mean(0), np.cov(x.T.astype(np.float64))
    g = np.random.default_rng(0).multivariate_normal(mu, cov, size=1000)  # matched first two moments
    _, res = ds.project(g)
    # data std per dimension ~0.59; the gaussian sits ~0.1-0.2 away from the 4-dim manifold
    assert np.quantile(res, 0.05) > 0.05
    assert np.median(res) > 1e4 * 1e-6


def test_hidden_manifold_gauss_newton_beats_atanh_start_near_saturation():
    ds = get_dataset("hidden-manifold:d=32,D=4")
    x, _ = ds.sample(500, seed=5)
    noisy = np.clip(x + 0.01 * np.random.default_rng(1).standard_normal(x.shape), -1, 1)
    c_hat, res = ds.project(noisy)
    c0 = np.arctanh(np.clip(noisy, -1 + 1e-6, 1 - 1e-6)) @ np.linalg.pinv(ds.A).T
    res0 = np.sqrt(((noisy - np.tanh(c0 @ ds.A.T)) ** 2).mean(1))
    assert np.all(res <= res0 + 1e-12)
    # residual cannot exceed the noise added (the true point is a candidate): RMS 0.01
    assert np.median(res) < 0.0101


# ----------------------------------------------------------------------------- mcm
@pytest.mark.parametrize("correlated", [False, True])
def test_mcm_covariance_and_kurtosis(correlated):
    ds = get_dataset("mcm", d=8, beta_u=4, beta_v=4, correlated=correlated, seed=1)
    assert (
        abs(ds.u @ ds.v) < 1e-12
        and abs(np.linalg.norm(ds.u) - 1) < 1e-12
        and abs(np.linalg.norm(ds.v) - 1) < 1e-12
    )
    x, z = ds.sample(200_000, seed=0)
    x = x.astype(np.float64)
    n = len(x)
    # covariance = I + beta_u u u^T, each entry within 5 standard errors
    prod = x[:, :, None] * x[:, None, :]
    cov = prod.mean(0)
    se = prod.std(0) / np.sqrt(n)
    assert np.all(np.abs(cov - ds.covariance) < 5 * se + 1e-12)
    # excess kurtosis of v.x = -2 beta_v^2 / (1 + beta_v)^2 = -1.28 (vs 0 along a random direction)
    y = x @ ds.v
    kurt = (y**4).mean() / (y**2).mean() ** 2 - 3
    se_k = (y**4).std() / np.sqrt(n)
    assert abs(kurt - ds.kurtosis_v) < 5 * se_k
    assert abs(ds.kurtosis_v + 1.28) < 1e-12
    # balanced nu in both variants; in the correlated one nu = sign(|lambda| - 0.6745)
    assert abs(z[:, 1].mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
    if correlated:
        np.testing.assert_array_equal(z[:, 1] == 1, np.abs(z[:, 0]) > 0.6745)


def test_mcm_projection():
    ds = get_dataset("mcm:d=16")
    x, z = ds.sample(20000, seed=0)
    z_hat, res = ds.project(x)
    err = z_hat[:, 0] - z[:, 0]  # = u.noise / sqrt(beta_u) ~ N(0, 1/4)
    assert abs(err.std() - 0.5) < 0.02 and abs(err.mean()) < 0.02
    # nu_hat = [v.x > 0]: v.x = (2 nu + g)/sqrt(5); error rate P(g > 2) = 0.02275
    acc = (z_hat[:, 1] == z[:, 1]).mean()
    assert abs((1 - acc) - 0.02275) < 5 * np.sqrt(0.0228 * 0.977 / len(x))
    np.testing.assert_array_equal(res, 0.0)  # documented: full-dimensional, no per-sample residual
    # noiseless generate gives the conditional mean
    m = ds.generate(z[:3])
    np.testing.assert_allclose(m @ ds.u, 2 * z[:3, 0], atol=1e-5)
    np.testing.assert_allclose(m @ ds.v, (2 * z[:3, 1] - 1) * 2 / np.sqrt(5), atol=1e-5)


# ----------------------------------------------------------------------------- molrg
def test_molrg_projection_recovers_k_and_a():
    ds = get_dataset("molrg")  # d=32, K=4, r=2, sigma=0
    U = ds.U.transpose(1, 0, 2).reshape(32, -1)
    np.testing.assert_allclose(U.T @ U, np.eye(8), atol=1e-12)
    x, z = ds.sample(3000, seed=0)
    counts = np.bincount(z[:, 0].astype(int), minlength=4)
    assert np.all(np.abs(counts - 750) < 5 * np.sqrt(3000 * 0.25 * 0.75))
    z_hat, res = ds.project(x)
    np.testing.assert_array_equal(z_hat[:, 0], z[:, 0])
    assert np.abs(z_hat[:, 1:] - z[:, 1:]).max() < 1e-5
    assert res.max() < 1e-6
    # isotropic Gaussian: residual ~ sqrt(1 - r/d) (largest of K projections slightly smaller)
    g = np.random.default_rng(0).standard_normal((2000, 32))
    _, rg = ds.project(g)
    assert 0.85 < np.median(rg) < np.sqrt(1 - 2 / 32) + 0.01


def test_molrg_noise_level():
    ds = get_dataset("molrg:sigma=0.1")
    x, z = ds.sample(4000, seed=0)
    _, res = ds.project(x)
    # ||noise off the subspace||^2 ~ 0.01 (d - r), ||x||^2 ~ r + 0.01 d
    expect = np.sqrt(0.01 * 30 / (2 + 0.01 * 32))
    assert abs(np.median(res) - expect) < 0.25 * expect


# ----------------------------------------------------------------------------- digits
def test_digits():
    ds = get_dataset("digits")
    x, z = ds.sample(1797, seed=0)
    assert x.shape == (1797, 1, 8, 8) and x.min() == -1 and x.max() == 1
    assert sorted(np.unique(z[:, 0])) == list(range(10))
    z_hat, res = ds.project(x[:300])
    np.testing.assert_array_equal(z_hat, z[:300])  # every real digit is its own nearest neighbour
    np.testing.assert_array_equal(res, 0.0)
    noisy = x[:300] + 0.05 * np.random.default_rng(0).standard_normal(x[:300].shape)
    z_n, res_n = ds.project(noisy)
    assert (z_n == z[:300]).mean() > 0.95 and np.all(res_n > 0)
    with pytest.raises(DiffauditError, match="1797"):
        ds.sample(1798)
    with pytest.raises(DiffauditError, match="no generator"):
        ds.generate(z)


def test_digits_at_16_and_32_px_are_the_8_px_set_upsampled():
    """``size`` upsamples by pixel repetition: an isometry up to the factor size / 8, so nearest neighbours, the
    oracle's labels and relative residuals, the split and the population moments are those of the 8 px set."""
    d8 = get_dataset("digits")
    x8, z8 = d8.sample(300, seed=2)
    noise = 0.1 * np.random.default_rng(0).standard_normal(x8.shape)
    zn8, rn8 = d8.project(x8 + noise)
    for size in (16, 32):
        ds = get_dataset(f"digits:size={size}")
        f = size // 8
        assert ds.spec == f"digits:size={size}" and ds.shape == (1, size, size) and ds.n_population == 1797
        x, z = ds.sample(300, seed=2)
        np.testing.assert_array_equal(z, z8)
        np.testing.assert_array_equal(x, x8.repeat(f, axis=2).repeat(f, axis=3))  # each pixel an f x f block
        (xt, _), (xh, _) = ds.split(500, 300, seed=7)
        (xt8, _), (xh8, _) = d8.split(500, 300, seed=7)
        np.testing.assert_array_equal(xt[:, :, ::f, ::f], xt8)
        np.testing.assert_array_equal(xh[:, :, ::f, ::f], xh8)
        # the oracle at this size: real digits are their own nearest neighbours (residual 0), and the same
        # perturbation, upsampled, gets the same labels and the same relative residual as at 8 px
        zh, res = ds.project(x)
        np.testing.assert_array_equal(zh, z)
        np.testing.assert_array_equal(res, 0.0)
        zn, rn = ds.project(x + noise.repeat(f, axis=2).repeat(f, axis=3))
        np.testing.assert_array_equal(zn, zn8)
        np.testing.assert_allclose(rn, rn8, rtol=1e-6)
        mu, sigma, n_ref = population_moments(ds)
        mu8, sigma8, _ = population_moments(d8)
        block = np.arange(size * size).reshape(size, size)[::f, ::f].ravel()  # one pixel of each block
        assert n_ref == 1797 and mu.shape == (size * size,)
        np.testing.assert_allclose(mu[block], mu8, atol=1e-12)
        np.testing.assert_allclose(sigma[np.ix_(block, block)], sigma8, atol=1e-12)
    assert get_dataset("digits:size=8").spec == "digits"  # the default keeps the 8 px spec (and cell ids)


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def test_population_size_is_declared():
    assert get_dataset("digits").n_population == 1797 == len(_rows(get_dataset("digits").sample(1797, 0)[0]))
    for spec in SPECS[:-1]:  # generators: unlimited fresh draws
        assert get_dataset(spec).n_population is None, spec


def test_digits_split_is_disjoint_and_nested():
    ds = get_dataset("digits")
    (xt, zt), (xh, zh) = ds.split(500, 300, seed=7)
    assert xt.shape == (500, 1, 8, 8) and xh.shape == (300, 1, 8, 8) and zh.shape == (300, 1)
    assert not _rows(xt) & _rows(xh)  # no identical rows (the 1,797 images are pairwise distinct)
    np.testing.assert_array_equal(xt, ds.sample(500, 7)[0])  # train is sample(n_train, seed)
    np.testing.assert_array_equal(zt, ds.sample(500, 7)[1])
    (xt2, _), (xh2, _) = ds.split(1000, 200, seed=7)
    np.testing.assert_array_equal(xt2[:500], xt)  # train nested in n_train
    np.testing.assert_array_equal(xh2, xh[:200])  # holdout nested in n_holdout, independent of n_train
    # the two sets fill the population exactly at the limit, and differ across seeds
    (xa, _), (xb, _) = ds.split(1297, 500, seed=7)
    assert len(_rows(xa) | _rows(xb)) == 1797
    assert not np.array_equal(ds.split(500, 300, seed=8)[1][0], xh)
    # for contrast: two independent draws overlap by ~ 500 * 300 / 1797 = 83 images (the reported bug)
    assert 50 < len(_rows(ds.sample(500, 1)[0]) & _rows(ds.sample(300, 2)[0])) < 120


def test_digits_too_large_requests_are_refused_in_one_sentence():
    ds = get_dataset("digits")
    with pytest.raises(DiffauditError) as e:
        ds.split(1298, 500)
    msg = str(e.value)
    assert "n_train=1298 + n_holdout=500 exceeds the 1797 real images" in msg and "<= 1797" in msg
    assert msg.endswith(".") and msg.count(". ") == 0  # one sentence
    with pytest.raises(DiffauditError, match="n <= 1797"):
        ds.sample(1798)
    with pytest.raises(DiffauditError, match="non-negative integer"):
        ds.split(-1, 3)


def test_digits_oracle_audits_end_to_end():
    # the reviewer's call: validity_threshold's reference (2,000) and factor_recovery's pool (4,000) used
    # to ask digits for more than its 1,797 images; both are capped by the population now
    r = diffaudit.audit("control:oracle", dataset="digits", n_train=500, n_samples=300, n_holdout=300)
    f = r["probes"]["factors"]
    assert f["validity"]["value"] == 1.0  # every oracle sample is a real digit: residual 0
    assert r["verdict"]["convergence"] == "pass"  # E1 against the exact population moments
    assert any("finite pool" in n for n in r["details"]["factors"]["notes"])


def test_digits_audit_holdout_is_held_out():
    ds = get_dataset("digits")
    xt, _, xh, _ = dataset_split(ds, 500, 300, seed=0)
    assert not _rows(xt) & _rows(xh)
    # a finite set's oracle draws only items outside the training set: fresh real data, no copies (exact
    # copies would be counted exactly: the holdout that calibrates the copy rule holds no training image)
    r = diffaudit.audit("control:oracle", dataset="digits", n_train=500, n_samples=300, n_holdout=300)
    assert r["probes"]["memorization"]["n_copies"]["value"] == 0
    assert r["verdict"] == {"convergence": "pass", "generalization": "pass", "memorization": "pass"}
    # the memorizer of the same training set copies: the copy count is exact
    m = diffaudit.audit(
        "control:memorizer", dataset="digits", n_train=500, n_samples=300, n_holdout=300, num_steps=12
    )
    assert m["probes"]["memorization"]["copy_rate"]["value"] > 0.9 and m["verdict"]["memorization"] == "fail"
    assert any("P = 997 " in n for n in r["details"]["factors"]["notes"])  # 1797 - 500 - 300 left
    with pytest.raises(DiffauditError, match="n_train=500 \\+ n_holdout=1298"):
        diffaudit.audit("control:oracle", dataset="digits", n_train=500, n_samples=300, n_holdout=1298)
