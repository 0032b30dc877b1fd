"""The analytic controls (audit/controls.py): exact denoisers against brute-force formulas, and the
controls table of DESIGN.md on every dataset with factors.

| control   | threshold 1 (FD)                 | threshold 2 (validity / hidden direction) | copies |
| oracle    | pass                             | validity >= 0.95                           | none   |
| gaussian  | FD to holdout <= 2x data-vs-data | validity <= 0.05 (mcm: kurtosis along v)   | none   |
| memorizer | (pass vs train)                  | novel-valid rate <= 0.05                   | ~100 % |

The failure-mode controls (shrunk, collapsed, interpolator, noisy-memorizer, mode-dropper): determinism,
shapes on every dataset, each one's defining property against an analytic value or a brute-force
reference, and their copy rates under ``find_copies``' default rule. Their verdict-level tests go
through ``decide()`` (tests/audit/pipeline).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import kstest

from diffaudit.datasets.base import Factor, get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.models.adapters import load_model
from diffaudit.models.controls import (
    CONTROLS,
    CollapsedModel,
    GaussianModel,
    InterpolatorModel,
    MemorizerModel,
    ModeDropperModel,
    NoisyMemorizerModel,
    OracleModel,
    ShrunkModel,
    control_params,
    make_control,
    parse_control,
)
from diffaudit.probes.factors import (
    factor_fidelity,
    hidden_direction_overlap,
    manifold_validity,
    novelty,
    union_of_subspaces,
    validity_threshold,
)
from diffaudit.probes.memorization import find_copies
from diffaudit.probes.neighbors import knn

try:
    from diffaudit.probes.convergence import frechet_distance as _fd

    def fd(a, b) -> float:
        return float(_fd(a.reshape(len(a), -1), b.reshape(len(b), -1)).value)
except ImportError:  # pragma: no cover - the convergence probe is written by another helper

    def fd(a, b) -> float:
        a = a.reshape(len(a), -1).astype(np.float64)
        b = b.reshape(len(b), -1).astype(np.float64)
        S1, S2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        lam, Q = np.linalg.eigh(S1)
        r = (Q * np.sqrt(np.clip(lam, 0, None))) @ Q.T
        ev = np.linalg.eigvalsh(r @ S2 @ r)
        return float(
            ((a.mean(0) - b.mean(0)) ** 2).sum()
            + np.trace(S1)
            + np.trace(S2)
            - 2 * np.sqrt(np.clip(ev, 0, None)).sum()
        )


# ----------------------------------------------------------------------------------- exact denoisers


def test_gaussian_denoiser_matches_brute_force_formula(rng):
    X = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 2.0
    g = GaussianModel(X)
    mu, S = X.mean(0), np.cov(X, rowvar=False)
    x = rng.standard_normal((40, 6)) * 3
    for sigma in (1e-3, 0.3, 5.0, 100.0):
        ref = mu + (S @ np.linalg.solve(S + sigma**2 * np.eye(6), (x - mu).T)).T
        np.testing.assert_allclose(g.denoise(x, sigma), ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(g.cov_, S, atol=1e-10)


def test_gaussian_denoiser_on_images_and_rank_deficient_covariance(rng):
    # 50 images (1, 4, 4) in a 3-dim affine subspace: S has rank 3, D(x, sigma) must stay exact.
    B = rng.standard_normal((3, 16))
    X = (rng.standard_normal((50, 3)) @ B).reshape(50, 1, 4, 4) * 0.1
    g = GaussianModel(X, clip=None)
    flat = X.reshape(50, -1)
    mu, S = flat.mean(0), np.cov(flat, rowvar=False)
    x = rng.standard_normal((5, 1, 4, 4))
    out = g.denoise(x, 0.05)
    assert out.shape == x.shape
    ref = mu + (S @ np.linalg.solve(S + 0.05**2 * np.eye(16), (x.reshape(5, -1) - mu).T)).T
    np.testing.assert_allclose(out.reshape(5, -1), ref, atol=1e-9)


def test_gaussian_control_follows_the_exact_probability_flow(rng):
    # For N(mu, S) the probability-flow ODE is solved in closed form per eigendirection:
    # c(sigma) = c(sigma_max) sqrt((l + sigma^2) / (l + sigma_max^2)), so from noise n the exact sample is
    # mu + Q diag(sqrt(l / (l + sigma_max^2))) Q^T (sigma_max n - mu). Heun must converge to it; at 32 steps
    # it overshoots the scale by a few per cent (EDM schedule, sigma_max = 160 x data std).
    A = rng.standard_normal((5, 5))
    X = rng.standard_normal((2000, 5)) @ A + np.arange(5)
    noise = rng.standard_normal((500, 5))
    for steps, tol in ((32, 0.08), (256, 0.005)):
        g = GaussianModel(X, num_steps=steps)
        smax, lam, Q = g.sampler_config.sigma_max, g.eigvals_, g.eigvecs_
        exact = g.mu_ + (((smax * noise - g.mu_) @ Q) * np.sqrt(lam / (lam + smax**2))) @ Q.T
        got = g.sample_from_noise(noise).astype(np.float64)
        cg, ce = (got - g.mu_) @ Q, (exact - g.mu_) @ Q
        slope = (cg * ce).sum(0) / (ce * ce).sum(0)  # per-eigendirection scale of the Heun solution
        assert np.abs(slope - 1).max() < tol, (steps, slope)
        assert (
            np.abs(cg - slope * ce).max() < 1e-4 * np.abs(ce).max()
        )  # and nothing but a scale (float32 output)
    S = np.cov(X, rowvar=False)  # and the exact map does produce N(mu, S) (n = 500: ~6 % sampling error)
    assert np.linalg.norm(np.cov(exact, rowvar=False) - S) / np.linalg.norm(S) < 0.2


def brute_memorizer(train, x, sigma):
    d2 = ((x[:, None, :] - train[None]) ** 2).sum(-1)
    return softmax(-d2 / (2 * sigma**2), axis=1) @ train


@pytest.mark.parametrize("budget_mib", [256, 0.02])  # one block / many blocks over queries and training items
def test_memorizer_denoiser_matches_brute_force_softmax(rng, budget_mib):
    train = rng.standard_normal((300, 7))
    m = MemorizerModel(train, budget_mib=budget_mib)
    if budget_mib < 1:
        qb, tb = m._block_sizes(60)
        assert qb < 60 and tb < 300  # the streaming log-sum-exp is really exercised
    x = rng.standard_normal((60, 7)) * 1.5
    for sigma in (0.05, 0.4, 2.0, 50.0):
        np.testing.assert_allclose(
            m.denoise(x, sigma), brute_memorizer(train, x, sigma), rtol=1e-9, atol=1e-10
        )


def test_memorizer_at_tiny_sigma_returns_the_nearest_training_point(rng):
    train = rng.standard_normal((400, 10))
    m = MemorizerModel(train, budget_mib=0.05)
    # queries near training points, and far away (every logit ~ -1e9: log-sum-exp must not underflow)
    x = np.concatenate(
        [train[:50] + 0.05 * rng.standard_normal((50, 10)), 30 + rng.standard_normal((10, 10))]
    )
    out = m.denoise(x, 1e-3)
    assert np.isfinite(out).all()
    nearest = train[((x[:, None] - train[None]) ** 2).sum(-1).argmin(1)]
    np.testing.assert_allclose(out, nearest, atol=1e-12)
    # images: same on (n, c, h, w)
    mi = MemorizerModel(train.reshape(400, 1, 2, 5))
    np.testing.assert_allclose(mi.denoise(x.reshape(-1, 1, 2, 5), 1e-3).reshape(-1, 10), nearest, atol=1e-12)


def test_make_control_names_and_errors(rng):
    X = rng.standard_normal((20, 3))
    assert isinstance(make_control("gaussian", X), GaussianModel)
    assert isinstance(make_control("Memorizer", X), MemorizerModel)
    with pytest.raises(DiffauditError, match="oracle, gaussian, memorizer"):
        make_control("vae", X)
    with pytest.raises(DiffauditError, match="dataset="):
        make_control("oracle", X)
    with pytest.raises(DiffauditError, match="train="):
        make_control("gaussian")
    with pytest.raises(DiffauditError, match="NaN"):
        make_control("memorizer", np.full((4, 3), np.nan))
    with pytest.raises(DiffauditError, match="at least 2"):
        make_control("gaussian", np.zeros(5))


def test_oracle_is_the_true_generator_and_black_box():

    ds = get_dataset("hidden-manifold:d=8,D=2")
    o = make_control("oracle", dataset=ds)
    assert isinstance(o, OracleModel) and not o.has_denoiser and o.shape == (8,)
    np.testing.assert_array_equal(o.sample(10, seed=4), ds.sample(10, 4)[0])
    with pytest.raises(NotImplementedError):
        o.sample_from_noise(np.zeros((2, 8)))
    assert make_control("gaussian", ds.sample(50, 0)[0]).has_denoiser


def test_image_gaussian_is_not_clipped_unless_asked(rng):
    # clipping would change the moments the gaussian control exists to match; it is opt-in
    X = np.clip(rng.standard_normal((64, 1, 4, 4)), -1, 1).astype(np.float32)
    y = make_control("gaussian", X).sample(200, seed=0)
    assert y.shape == (200, 1, 4, 4) and (np.abs(y) > 1).any()
    yc = make_control("gaussian", X, clip=(-1.0, 1.0)).sample(200, seed=0)
    np.testing.assert_array_equal(yc, np.clip(y, -1, 1))


# ----------------------------------------------------------------------------------- the controls table

N_TRAIN, N_GEN = 512, 1000
N_TRAIN_GAUSS = 4000  # the gaussian's fit error must not dominate its FD: fit on 4x the compared n
SPECS = ["hidden-manifold:d=32,D=4", "mcm:d=16", "molrg:d=32,K=4,r=2", "sprites:size=16"]
VALIDITY_SPECS = [s for s in SPECS if not s.startswith("mcm")]  # mcm has no manifold: residual == 0


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    # the sprites oracle (a CNN) is trained once per module, not once per test
    return str(tmp_path_factory.mktemp("controls-cache"))


@pytest.fixture
def table(shared_cache, monkeypatch):
    monkeypatch.setenv("DIFFAUDIT_CACHE_DIR", shared_cache)
    return _table


@functools.cache
def _table(spec: str) -> dict:

    ds = get_dataset(spec)
    train_big, z_big = ds.sample(N_TRAIN_GAUSS, 1)  # nested prefixes: train = train_big[:N_TRAIN]
    train, z_train = train_big[:N_TRAIN], z_big[:N_TRAIN]
    holdout, z_holdout = ds.sample(N_GEN, 2)
    out = {"ds": ds, "train": train, "z_train": z_train, "holdout": holdout, "z_holdout": z_holdout}
    out["oracle"] = make_control("oracle", dataset=ds).sample(N_GEN, 3)
    out["gaussian"] = make_control("gaussian", train_big, dataset=ds).sample(N_GEN, 4)
    out["memorizer"] = make_control("memorizer", train).sample(N_GEN // 2, 5)
    return out


def _slow_sprites(specs):
    return [pytest.param(s, marks=pytest.mark.slow) if s.startswith("sprites") else s for s in specs]


@pytest.mark.parametrize("spec", _slow_sprites(VALIDITY_SPECS))
def test_controls_table_validity_and_novelty(table, spec):
    t = table(spec)
    ds, train = t["ds"], t["train"]
    res = {}
    tau = validity_threshold(ds)[0]  # the default tau, computed once for the three controls
    for name in ("oracle", "gaussian", "memorizer"):
        v = manifold_validity(ds, t[name], tau=tau)
        nov = novelty(t[name], train, v.valid, holdout=t["holdout"])  # the memorization probe's default rule
        res[name] = (v, nov)
    v_o, n_o = res["oracle"]
    v_g, n_g = res["gaussian"]
    v_m, n_m = res["memorizer"]
    assert v_o.valid_rate >= 0.95, (spec, v_o.valid_rate, v_o.tau)
    assert v_g.valid_rate <= 0.05, (spec, v_g.valid_rate, v_g.tau, v_g.quantiles)
    assert n_o.novel_valid_rate >= 0.95  # fresh true samples are valid and (almost) never look like copies
    assert n_m.novel_valid_rate <= 0.05 and n_m.copy_rate >= 0.95, (spec, n_m.novel_valid_rate)
    # the oracle's recovered factors follow the true prior (KS of two n = 1000 samples: ~0.06 at 5 %)
    fid = factor_fidelity(v_o.z_hat[v_o.valid], t["z_holdout"], ds.factors)
    assert max(fid.ks.values()) < 0.08 and fid.coverage >= fid.reference_coverage - 0.05, fid


@pytest.mark.parametrize("spec", _slow_sprites(SPECS))
def test_controls_table_threshold1_and_copies(table, spec):
    t = table(spec)
    train, holdout = t["train"], t["holdout"]
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    # gaussian: FD to holdout within 2x of data-vs-data FD at equal n (threshold 1 passed)
    fd_data = fd(t["oracle"], holdout)
    fd_gauss = fd(t["gaussian"], holdout)
    assert fd_gauss <= 2.0 * fd_data, (spec, fd_gauss, fd_data)
    # memorizer: every sample coincides with a training point (distance << the data's NN spacing)
    D, _ = knn(flat(t["memorizer"]), flat(train), 1)
    D_train, _ = knn(flat(train), flat(train), 1, exclude_self=True)
    assert np.sqrt(D[:, 0]).max() <= 1e-3 * np.sqrt(np.median(D_train[:, 0]))
    # gaussian and oracle do not copy: (almost) no sample closer than 1/100 of the training NN spacing
    for name in ("oracle", "gaussian"):
        Dn, _ = knn(flat(t[name]), flat(train), 1)
        assert (np.sqrt(Dn[:, 0]) < 0.01 * np.sqrt(np.median(D_train[:, 0]))).mean() <= 0.01, name


def test_mcm_gaussian_matches_covariance_not_kurtosis(table):
    t = table("mcm:d=16")
    ds = t["ds"]
    C = ds.covariance
    cov_err = {
        k: np.linalg.norm(np.cov(t[k], rowvar=False) - C) / np.linalg.norm(C) for k in ("oracle", "gaussian")
    }
    # threshold 1: the gaussian's covariance is as close to I + beta_u uu^T as true samples' (n = 1000 vs 512 fit)
    assert cov_err["gaussian"] <= 2.0 * cov_err["oracle"] + 0.02, cov_err
    r_o = hidden_direction_overlap(t["oracle"], ds.v, u=ds.u, target_kurtosis=ds.kurtosis_v)
    r_g = hidden_direction_overlap(t["gaussian"], ds.v, u=ds.u, target_kurtosis=ds.kurtosis_v)
    assert ds.kurtosis_v == pytest.approx(-1.28)
    # true samples: excess kurtosis along v at the target (sd of the estimate ~ 0.05 at n = 1000), v found
    assert abs(r_o.kurtosis_v - ds.kurtosis_v) < 0.2 and r_o.overlap > 0.9
    # gaussian: v invisible (excess kurtosis ~ 0 +- 0.15), so threshold 2 fails
    assert abs(r_g.kurtosis_v) < 0.4 and r_g.overlap < 0.9
    assert abs(r_g.kurtosis_v - ds.kurtosis_v) > 0.8


def test_molrg_union_of_subspaces_controls(table):
    t = table("molrg:d=32,K=4,r=2")
    U = t["ds"].U
    r_o = union_of_subspaces(t["oracle"], U)
    r_g = union_of_subspaces(t["gaussian"], U)
    assert r_o.on_union_rate >= 0.95 and r_o.subspace_error < 0.05
    assert r_g.on_union_rate <= 0.05 and r_g.subspace_error > 0.3


def test_memorizer_is_sampled_through_the_one_sampler():
    # the same noise through heun_sample directly gives the same samples (DenoiserModel contract)
    from diffaudit.models.sampler import heun_sample, noise_from_seeds

    train = np.random.default_rng(1).standard_normal((64, 4))
    m = MemorizerModel(train, num_steps=16)
    noise = noise_from_seeds(range(8), (4,), base_seed=2)
    ref = heun_sample(m.denoise, noise, m.sampler_config).astype(np.float32)
    np.testing.assert_array_equal(m.sample(8, seed=2), ref)
    assert m.sampler_config.sigma_max == pytest.approx(80 * train.std() / 0.5)


# ----------------------------------------------------------------------------- failure-mode controls

FAILURE_MODES = ("shrunk", "collapsed", "interpolator", "noisy-memorizer", "mode-dropper")
ALL_SPECS = ["hidden-manifold:d=32,D=4", "mcm:d=16", "molrg:d=32,K=4,r=2", "sprites:size=16", "digits"]


def rel_cov_tolerance(C: np.ndarray, n: int) -> float:
    """3 x the expected relative Frobenius error of an n-sample covariance of N(0, C):
    E||C_hat - C||_F^2 ~ (tr(C)^2 + ||C||_F^2) / n (Wishart second moments)."""
    return 3.0 * np.sqrt((np.trace(C) ** 2 + (C**2).sum()) / n) / np.linalg.norm(C)


def rel_err(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.linalg.norm(A - B) / np.linalg.norm(B))


def cov(x: np.ndarray) -> np.ndarray:
    return np.cov(x.reshape(len(x), -1).astype(np.float64), rowvar=False)


def test_registry_lists_every_control_and_its_parameters():
    assert set(FAILURE_MODES) < set(CONTROLS) and len(CONTROLS) == 8
    assert control_params("shrunk") == ("factor",) and control_params("oracle") == ()
    assert control_params("mode-dropper") == ("keep",) and "k" in control_params("interpolator")
    assert parse_control("Shrunk:factor=0.5") == ("shrunk", {"factor": 0.5})
    assert parse_control("mode-dropper:keep=0.25,") == ("mode-dropper", {"keep": 0.25})


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_failure_controls_are_deterministic_nested_and_shaped(spec):
    ds = get_dataset(spec)
    train = ds.sample(300, 1)[0]
    for name in FAILURE_MODES:
        m = make_control(name, train=train, dataset=ds)
        assert not m.has_denoiser and m.shape == tuple(ds.shape), name
        x = m.sample(40, seed=3)
        assert x.shape == (40, *ds.shape) and x.dtype == np.float32 and np.isfinite(x).all(), name
        np.testing.assert_array_equal(x, make_control(name, train=train, dataset=ds).sample(40, seed=3))
        np.testing.assert_array_equal(m.sample(15, seed=3), x[:15])  # a seed per row: prefixes nest
        assert not np.array_equal(m.sample(40, seed=4), x), name
        assert m.sample(0, seed=3).shape == (0, *ds.shape)


def test_failure_controls_on_plain_training_data(rng):
    train = rng.standard_normal((100, 3, 4, 4)).astype(np.float32)  # no dataset: images of unknown origin
    for name in ("shrunk", "collapsed", "interpolator", "noisy-memorizer"):
        x = make_control(name, train).sample(30, seed=1)
        assert x.shape == (30, 3, 4, 4) and np.isfinite(x).all()
    with pytest.raises(DiffauditError, match="dataset="):
        make_control("mode-dropper", train)


def test_shrunk_covariance_is_f2_times_the_data_covariance():
    ds = get_dataset("mcm:d=16")
    C = ds.covariance  # analytic: I + beta_u u u^T
    train = ds.sample(512, 1)[0]
    n = 4000
    m = make_control("shrunk:factor=0.3", train=train, dataset=ds)
    x = m.sample(n, seed=5)
    tol = rel_cov_tolerance(C, n)  # 0.08
    assert rel_err(cov(x), 0.09 * C) < tol
    assert rel_err(cov(x), C) > 0.9  # and far from the data's own covariance
    # an affine map of the paired true samples: x = mu + f (x_true - mu), mu the training mean
    x_true = ds.sample(n, 5)[0].astype(np.float64)
    mu = train.astype(np.float64).mean(0)
    np.testing.assert_allclose(x, mu + 0.3 * (x_true - mu), atol=1e-5)
    # f = 1 is the oracle
    np.testing.assert_allclose(
        make_control("shrunk", train, ds, factor=1.0).sample(50, 2), ds.sample(50, 2)[0], atol=1e-6
    )
    # without a dataset: training items, covariance f^2 x the training covariance
    xt = make_control("shrunk", train, factor=0.5).sample(n, seed=6)
    assert rel_err(cov(xt), 0.25 * cov(train)) < rel_cov_tolerance(cov(train), n)


def test_collapsed_covariance_is_s2_times_the_training_covariance():
    ds = get_dataset("hidden-manifold:d=32,D=4")
    train = ds.sample(512, 1)[0]
    S = cov(train)
    n = 4000
    for scale in (0.05, 1.0):  # s = 1: the gaussian control's distribution, N(mu, Sigma_train)
        x = make_control("collapsed", train, scale=scale).sample(n, seed=2)
        assert rel_err(cov(x), scale**2 * S) < rel_cov_tolerance(S, n), scale
        mean_err = np.linalg.norm(x.astype(np.float64).mean(0) - train.astype(np.float64).mean(0))
        assert mean_err < 3 * scale * np.sqrt(np.trace(S) / n) + 1e-6, scale  # E||mean err||^2 = s^2 tr S / n
    # the training covariance is reached without a d x d matrix, in blocks of the budget
    small = CollapsedModel(train, budget_mib=0.05)
    np.testing.assert_allclose(
        small.sample(300, seed=2), make_control("collapsed", train).sample(300, seed=2), atol=1e-6
    )


def brute_knn(X: np.ndarray, k: int) -> np.ndarray:
    d2 = ((X[:, None, :] - X[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def test_interpolator_samples_lie_on_segments_between_neighbours():
    ds = get_dataset("hidden-manifold:d=32,D=4")
    train = ds.sample(200, 1)[0].astype(np.float64)
    m = make_control("interpolator", train)
    nb = brute_knn(train, 5)
    assert all(
        set(a) == set(b) for a, b in zip(m.neighbors_, nb, strict=True)
    )  # the FAISS table = brute force
    x = m.sample(300, seed=4).astype(np.float64)
    # every sample is on a segment [a, b], b one of a's 5 nearest neighbours (searched without the draw)
    A = np.repeat(train, 5, axis=0)
    B = train[nb.reshape(-1)]
    AB = B - A
    t = np.clip(((x[:, None, :] - A[None]) * AB[None]).sum(-1) / (AB**2).sum(-1)[None], 0, 1)  # (300, 1000)
    dist = np.linalg.norm(x[:, None, :] - (A[None] + t[..., None] * AB[None]), axis=-1)
    j = dist.argmin(1)
    assert dist[np.arange(300), j].max() < 1e-5
    assert kstest(t[np.arange(300), j], "uniform").pvalue > 1e-3  # t ~ U(0, 1)
    # and draw() reports those endpoints
    ia, ib, tt = m.draw(300, seed=4)
    np.testing.assert_allclose(x, (1 - tt)[:, None] * train[ia] + tt[:, None] * train[ib], atol=1e-6)
    assert all(b in nb[a] for a, b in zip(ia, ib, strict=True))


def test_interpolator_copy_rate_follows_the_ratio_rule():
    # find_copies' default rule flags x when d1/d2 < 1/3; between two endpoints that is
    # min(t, 1 - t) < 1/4, so at most half the samples are copies (measured 0.41 here).
    ds = get_dataset("hidden-manifold:d=32,D=4")
    train, holdout = ds.sample(512, 1)[0], ds.sample(1000, 2)[0]
    m = make_control("interpolator", train)
    _, _, t = m.draw(2000, seed=3)
    c = find_copies(m.sample(2000, seed=3), train, holdout).is_copy
    u = np.minimum(t, 1 - t)
    assert 0.3 < c.mean() <= 0.5 + 3 * np.sqrt(0.25 / 2000), c.mean()
    assert c[u < 0.1].mean() > 0.9 and c[u > 0.3].mean() < 0.02


@pytest.mark.parametrize("spec", ["hidden-manifold:d=32,D=4", "molrg:d=32,K=4,r=2", "sprites:size=16"])
def test_noisy_memorizer_sits_eps_r_nn_from_its_source(spec):
    ds = get_dataset(spec)
    train = ds.sample(400, 1)[0]
    flat = train.reshape(400, -1).astype(np.float64)
    m = make_control("noisy-memorizer", train)
    d2 = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert m.r_nn_ == pytest.approx(np.median(np.sqrt(d2.min(1))), rel=1e-6)  # brute-force NN spacing
    n, P = 500, flat.shape[1]
    x = m.sample(n, seed=2).reshape(n, -1).astype(np.float64)
    D, _ = knn(x, flat, 1)
    # ||noise||^2 / (noise_std^2 P) is chi^2_P / P: mean 1, sd sqrt(2 / P) per sample
    ratio = D[:, 0] / (m.noise_std_**2 * P)
    assert abs(ratio.mean() - 1) < 3 * np.sqrt(2 / P / n) + 2e-3, ratio.mean()
    assert np.sqrt(D[:, 0]).min() > 0  # never bit-identical
    assert np.sqrt(D[:, 0]).max() < 0.2 * m.r_nn_  # ~ eps r_nn = 0.05 r_nn


@pytest.mark.parametrize("spec", ["hidden-manifold:d=32,D=4", "mcm:d=16", "molrg:d=32,K=4,r=2"])
def test_copy_rates_of_the_failure_controls(spec):
    ds = get_dataset(spec)
    train, holdout = ds.sample(512, 1)[0], ds.sample(1000, 2)[0]
    rate = {
        name: find_copies(
            make_control(name, train=train, dataset=ds).sample(500, 3), train, holdout
        ).copy_rate
        for name in ("noisy-memorizer", "shrunk", "collapsed", "mode-dropper", "oracle")
    }
    assert rate["noisy-memorizer"] >= 0.95, rate  # measured 0.97-1.00
    for name in ("shrunk", "collapsed", "mode-dropper", "oracle"):
        assert rate[name] <= 0.03, rate  # measured <= 0.012


def test_mode_dropper_categorical_keeps_its_categories():
    ds = get_dataset("molrg:d=32,K=4,r=2")
    m = make_control("mode-dropper", dataset=ds)
    assert m.kept_categories_ == (0, 1)  # floor(0.5 x 4 + 1/2) = 2 of 4 components
    x, z = m.sample_with_factors(600, seed=1)
    assert set(np.unique(z[:, 0])) == {0.0, 1.0}
    np.testing.assert_array_equal(x, ds.generate(z))  # true samples of the kept components
    np.testing.assert_array_equal(ds.project(x)[0][:, 0], z[:, 0])
    # the oracle reaches the dropped components (both sides), in the expected share
    z_o = ds.sample(2000, 1)[1]
    assert abs(m.in_kept_part(z_o[:, 0]).mean() - 0.5) < 3 * np.sqrt(0.25 / 2000)
    sprites = make_control("mode-dropper:keep=0.5", dataset=get_dataset("sprites:size=16"))
    assert sprites.kept_categories_ == (0, 1)  # floor(0.5 x 3 + 1/2) = 2 of 3 shapes
    assert set(np.unique(sprites.sample_with_factors(100, seed=0)[1][:, 0])) <= {0.0, 1.0}


def test_mode_dropper_continuous_keeps_below_the_quantile():
    ds = get_dataset("hidden-manifold:d=32,D=4")  # c1 ~ N(0, 1): median 0
    m = make_control("mode-dropper", dataset=ds)
    assert abs(m.threshold_) < 3 * 1.2533 / np.sqrt(4096)  # sd of a sample median: sqrt(pi / 2) / sqrt(n)
    x, z = m.sample_with_factors(500, seed=2)
    assert (z[:, 0] < m.threshold_).all()
    np.testing.assert_allclose(x, ds.generate(z), atol=1e-6)
    m25 = make_control("mode-dropper", dataset=ds, keep=0.25)
    assert abs(m25.threshold_ - (-0.6745)) < 0.08  # the N(0, 1) quartile
    assert (ds.sample(2000, 7)[1][:, 0] < m25.threshold_).mean() == pytest.approx(
        0.25, abs=3 * np.sqrt(0.1875 / 2000)
    )


class _UniformFactor:
    """A minimal dataset whose first factor is bounded: a ~ U(0, 2), x = (a, a^2)."""

    shape = (2,)
    factors = (Factor("a", low=0.0, high=2.0),)

    def __init__(self, low: float = 0.0):
        self.low = low

    def sample(self, n, seed=0):
        a = np.random.default_rng(seed).uniform(self.low, 2.0, n)
        return np.stack([a, a**2], 1).astype(np.float32), a[:, None]


def test_mode_dropper_bounded_support_and_loop_guard():
    m = ModeDropperModel(_UniformFactor(), keep=0.25)
    assert m.threshold_ == pytest.approx(0.5)  # low + keep (high - low)
    assert (m.sample_with_factors(200, seed=0)[1] < 0.5).all()
    # a dataset that never reaches the kept part: an error, not an endless loop
    with pytest.raises(DiffauditError, match="raise keep"):
        ModeDropperModel(_UniformFactor(low=1.0), keep=0.25).sample(10, seed=0)


def test_failure_control_parameter_errors(rng):
    X = rng.standard_normal((30, 4))
    ds = get_dataset("molrg:d=32,K=4,r=2")
    bad = [
        ("shrunk:fator=0.3", "no parameter 'fator'; valid parameters: factor"),
        ("shrunk:factor=1.5", r"factor=1.5 must be a number in \[0, 1\]"),
        ("shrunk:factor=abc", "factor='abc'"),
        ("shrunk:factor", "not key=value"),
        ("collapsed:scale=-1", "scale=-1"),
        ("interpolator:k=0", "k=0"),
        ("interpolator:k=2.5", "whole number"),
        ("interpolator:k=30", "k=30"),  # needs k <= n_train - 1 = 29
        ("noisy-memorizer:eps=-0.1", "eps=-0.1"),
        ("oracle:keep=0.5", "it takes none"),
        ("dropper", "choose one of: oracle, gaussian, memorizer, shrunk"),
    ]
    for spec, msg in bad:
        with pytest.raises(DiffauditError, match=msg):
            make_control(spec, train=X, dataset=ds)
    for keep, msg in ((0, "keep=0"), (1.0, "keeps everything"), (0.1, "keeps 0")):
        with pytest.raises(DiffauditError, match=msg):
            make_control("mode-dropper", dataset=ds, keep=keep)
    with pytest.raises(DiffauditError, match="train="):
        make_control("shrunk", dataset=ds)
    with pytest.raises(DiffauditError, match="shape"):
        make_control("shrunk", X, ds)  # 4-dim training set, 32-dim dataset
    with pytest.raises(DiffauditError, match="seed"):
        make_control("collapsed", X).sample(3, seed=-1)
    with pytest.raises(DiffauditError, match="non-negative integer"):
        make_control("collapsed", X).sample(-1)
    with pytest.raises(DiffauditError, match="deduplicate"):
        make_control("noisy-memorizer", np.zeros((10, 3)))


def test_failure_controls_through_the_model_spec():
    ds = get_dataset("molrg:d=32,K=4,r=2")
    train = ds.sample(100, 1)[0]
    m = load_model(
        "control:Shrunk:factor=0.5", train=train, dataset=ds, num_steps=8
    )  # steps: ignored by black boxes
    assert isinstance(m, ShrunkModel) and m.factor == 0.5 and m.name == "control:shrunk:factor=0.5"
    assert isinstance(load_model("control:interpolator:k=3", train=train), InterpolatorModel)
    assert isinstance(load_model("control:noisy-memorizer", train=train), NoisyMemorizerModel)
    with pytest.raises(DiffauditError, match="needs --dataset"):
        load_model("control:mode-dropper", train=train)
    with pytest.raises(DiffauditError, match="no parameter 'f'"):
        load_model("control:shrunk:f=2", train=train, dataset=ds)
