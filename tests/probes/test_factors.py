"""Latent-factor probes (probes/factors.py) and activation extraction (audit/activations.py): analytic
cases, brute-force references, and the controls with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from diffaudit.datasets.base import Factor, get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.probes import factors as fp


@pytest.fixture(scope="module")
def hm():
    return get_dataset("hidden-manifold:d=32,D=4")


# ----------------------------------------------------------------------------------- validity


def test_default_tau_separates_trained_model_level_from_gaussian(hm):
    """The calibration of the issue: RMS residual per dimension ~1e-8 (true), ~0.02 (small trained EDM
    MLP), ~0.13 (gaussian control); data std 0.59. The default tau must put them on the right sides."""
    from diffaudit.controls import make_control

    x_true, _ = hm.sample(1000, 3)
    tau, tau_floor, tau_ref, scale = fp.validity_threshold(hm)
    assert scale == pytest.approx(0.59, abs=0.02)
    assert tau == tau_floor == pytest.approx(fp.TAU_FRACTION * scale)  # true residuals ~1e-8 do not set it
    assert tau_ref < 1e-6
    assert 0.02 < tau < 0.13  # the measured trained-model and gaussian levels lie on opposite sides
    # LABELLED PROXY for "a trained model": true samples + isotropic N(0, 0.02^2) error per coordinate
    # (the measured RMS level of a small EDM MLP trained 8k steps); NOT a trained network.
    proxy = x_true + 0.02 * np.random.default_rng(0).standard_normal(x_true.shape).astype(np.float32)
    v_proxy = fp.manifold_validity(hm, proxy)
    assert v_proxy.median * v_proxy.scale == pytest.approx(0.02, rel=0.2)  # off-manifold part of the error
    assert v_proxy.valid_rate >= 0.95
    # the real gaussian control, fitted on 2000 true samples
    g = make_control("gaussian", hm.sample(2000, 1)[0]).sample(1000, 5)
    v_g = fp.manifold_validity(hm, g)
    assert 0.08 < v_g.median * v_g.scale < 0.2  # ~0.13 as measured
    assert v_g.valid_rate <= 0.05
    v_true = fp.manifold_validity(hm, x_true)
    assert v_true.valid_rate == 1.0 and v_true.median < 1e-6


def test_validity_counts_and_interval_match_brute_force(hm):
    x, _ = hm.sample(300, 9)
    x = x + np.linspace(0, 0.2, 300)[:, None].astype(np.float32) * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    tau = 0.05
    v = fp.manifold_validity(hm, x, tau=tau)
    _, res = hm.project(x)
    np.testing.assert_array_equal(v.valid, res <= tau)
    assert v.n_valid == int((res <= tau).sum()) and v.valid_rate == pytest.approx(v.n_valid / 300)
    from diffaudit.probes.stats import wilson_interval

    assert v.valid_rate_ci == pytest.approx(wilson_interval(v.n_valid, 300))
    assert v.valid_rate_ci[0] <= v.valid_rate <= v.valid_rate_ci[1]
    q = list(v.quantiles.values())
    assert q == sorted(q) and v.quantiles[0.5] == pytest.approx(np.median(res) / v.scale)


def test_manifold_error_scale_and_errors(hm):
    x, _ = hm.sample(200, 1)
    e = fp.manifold_error(hm, x, scale=2.0)
    _, res = hm.project(x)
    np.testing.assert_allclose(e.relative, res / 2.0)
    with pytest.raises(DiffauditError, match="NaN"):
        fp.manifold_error(hm, np.full((3, 32), np.nan, np.float32))


def test_reference_residual_sets_tau_when_the_oracle_is_noisy():
    # a dataset whose true samples have residual ~ U(0, 1): tau = slack * q99 (> floor)
    class Noisy:
        residual_scale = 1.0

        def sample(self, n, seed=0):
            r = np.random.default_rng(seed)
            return r.random((n, 2)).astype(np.float32), r.random((n, 1))

        def project(self, x):
            return x[:, :1].astype(np.float64), x[:, 0].astype(np.float64)

    tau, floor, ref, scale = fp.validity_threshold(Noisy(), n_reference=20000)
    assert scale == 1.0 and floor == pytest.approx(0.1)
    assert ref == pytest.approx(2 * 0.99, abs=0.01) and tau == ref


# ----------------------------------------------------------------------------------- fidelity


def test_factor_fidelity_analytic_shift_and_brute_force_ks(rng):
    F = (Factor("a"), Factor("b"))
    z_true = rng.standard_normal((4000, 2))
    z_gen = rng.standard_normal((4000, 2)) + np.array([0.5, 0.0])
    r = fp.factor_fidelity(z_gen, z_true, F)
    assert r.wasserstein["a"] == pytest.approx(0.5, abs=0.06)  # W1(N(0,1), N(d,1)) = d
    assert r.wasserstein["b"] < 0.06
    assert r.ks["a"] == pytest.approx(st.ks_2samp(z_gen[:, 0], z_true[:, 0]).statistic)
    assert r.ks["a"] == pytest.approx(2 * st.norm.cdf(0.25) - 1, abs=0.04)  # sup |Phi(x) - Phi(x - d)|
    assert r.coverage == pytest.approx(r.reference_coverage, abs=0.05)


def test_factor_fidelity_categorical_is_total_variation_and_coverage_detects_collapse(rng):
    F = (Factor("k", kind="categorical", categories=("0", "1", "2")), Factor("a"))
    z_true = np.stack([rng.integers(0, 3, 3000), rng.standard_normal(3000)], 1).astype(np.float64)
    z_gen = np.stack([np.zeros(1000), rng.standard_normal(1000)], 1)  # mode collapse onto category 0
    r = fp.factor_fidelity(z_gen, z_true, F)
    pt = np.bincount(z_true[:, 0].astype(int), minlength=3) / 3000
    assert r.wasserstein["k"] == pytest.approx(0.5 * (abs(pt[0] - 1) + pt[1] + pt[2]))
    assert r.coverage == pytest.approx(1 / 3, abs=0.05) and r.reference_coverage > 0.95
    empty = fp.factor_fidelity(np.zeros((0, 2)), z_true, F)
    assert empty.coverage == 0.0 and np.isnan(empty.wasserstein["a"])


# ----------------------------------------------------------------------------------- novelty


def test_novelty_ratio_rule_matches_brute_force(rng):
    train = rng.standard_normal((200, 5)).astype(np.float32)
    gen = np.concatenate([train[:30] + 0.01, rng.standard_normal((70, 5))]).astype(np.float32)
    valid = np.ones(100, bool)
    valid[::4] = False
    r = fp.novelty(gen, train, valid)
    d = np.sqrt(((gen[:, None].astype(np.float64) - train[None]) ** 2).sum(-1))
    ds = np.sort(d, 1)
    ratio = ds[:, 0] / ds[:, 1]
    np.testing.assert_allclose(r.ratio, ratio, rtol=1e-5)
    copy = ratio < 1 / 3
    assert copy[:30].all()
    np.testing.assert_array_equal(r.is_copy, copy)
    assert r.n_novel_valid == int((valid & ~copy).sum())
    assert r.novel_valid_rate == pytest.approx((valid & ~copy).mean())
    assert r.novel_rate_among_valid == pytest.approx((valid & ~copy).sum() / valid.sum())
    np.testing.assert_array_equal(r.nn_index, d.argmin(1))


def test_novelty_agrees_with_the_memorization_probe(rng):
    from diffaudit.probes.memorization import find_copies

    ds = get_dataset("molrg:d=16,K=2,r=2")  # intrinsic dimension 2: the ratio rule alone flags ~1/9 of fresh data
    train, _ = ds.sample(300, 0)
    holdout, _ = ds.sample(300, 1)
    gen = np.concatenate([train[:40], ds.sample(160, 2)[0]])
    valid = np.ones(200, bool)
    r_ratio = fp.novelty(gen, train, valid)
    r_hold = fp.novelty(gen, train, valid, holdout=holdout)
    cr = find_copies(gen, train, holdout)
    np.testing.assert_array_equal(r_hold.is_copy, cr.is_copy)
    np.testing.assert_allclose(r_ratio.ratio, cr.ratio, atol=1e-6)
    np.testing.assert_array_equal(r_ratio.nn_index, cr.nn_index)
    assert r_hold.is_copy[:40].all() and r_ratio.is_copy[:40].all()
    assert r_hold.is_copy[40:].mean() <= r_ratio.is_copy[40:].mean()


def test_novelty_accepts_is_copy_and_factor_space_copies(rng):
    train = rng.standard_normal((100, 4)).astype(np.float32)
    gen = rng.standard_normal((50, 4)).astype(np.float32)
    given = np.zeros(50, bool)
    given[:10] = True
    r = fp.novelty(gen, train, np.ones(50, bool), is_copy=given)
    np.testing.assert_array_equal(r.is_copy, given)
    assert r.novel_valid_rate == pytest.approx(0.8)
    # factor space: generated factors equal to training factors -> copies even if data differ
    z_train = rng.standard_normal((100, 2))
    z_gen = np.concatenate([z_train[:20], rng.standard_normal((30, 2))])
    r2 = fp.novelty(gen, train, np.ones(50, bool), z_gen=z_gen, z_train=z_train)
    assert r2.factor_is_copy[:20].all()
    assert r2.is_copy[:20].all()
    with pytest.raises(DiffauditError, match="valid_mask"):
        fp.novelty(gen, train, np.ones(3, bool))


def test_novelty_holdout_rate_against_reference(rng):
    gen = rng.standard_normal((400, 3)).astype(np.float32)
    train = rng.standard_normal((100, 3)).astype(np.float32)
    valid = np.ones(400, bool)
    valid[:100] = False
    region = np.zeros(400, bool)
    region[50:150] = True  # 50 invalid + 50 valid samples in the region
    r = fp.novelty(gen, train, valid, holdout_mask=region, reference_holdout_rate=0.25)
    assert r.holdout_rate == pytest.approx(50 / 400)
    assert r.holdout_ratio == pytest.approx(0.5)


def test_novelty_holdout_rate_on_sprites_compositional_split():
    # the held-out region mask comes from the dataset; the probe only counts (no oracle needed):
    ds = get_dataset("sprites:size=16,holdout_region=triangle-topleft,split=all")
    x, z = ds.sample(1200, 0)
    in_region = ds.in_holdout_region(z)
    train, _ = get_dataset("sprites:size=16,holdout_region=triangle-topleft").sample(300, 1)
    r = fp.novelty(x, train, np.ones(len(x), bool), holdout_mask=in_region, reference_holdout_rate=ds.region_rate)
    # true samples of the full prior: held-out share ~ the region's prior mass 1/12 (binomial sd 0.008)
    assert abs(r.holdout_rate - 1 / 12) < 0.03 and 0.6 < r.holdout_ratio < 1.4


# ----------------------------------------------------------------------------------- mcm / molrg


def test_hidden_direction_found_on_mcm_and_not_on_gaussian_data():
    ds = get_dataset("mcm:d=16")
    x, _ = ds.sample(2000, 0)
    r = fp.hidden_direction_overlap(x, ds.v, u=ds.u, target_kurtosis=fp.mcm_target_kurtosis(ds.beta_v))
    assert r.target_kurtosis == pytest.approx(-2 * 16 / 25)
    assert r.overlap > 0.95 and abs(r.kurtosis_v - r.target_kurtosis) < 0.15
    assert abs(r.kurtosis_u) < 0.3  # the spike direction u is Gaussian (lambda ~ N(0, 1))
    assert r.kurtosis_w_hat <= r.kurtosis_v + 1e-9  # the search finds at least as extreme a direction
    assert r.chance_overlap == pytest.approx(np.sqrt(2 / (np.pi * 16)))
    # v mapped to whitened space: for anisotropic covariance C, the direction C^{1/2} v.
    A = np.diag(np.linspace(0.5, 2.0, 16))
    r2 = fp.hidden_direction_overlap(x @ A, np.linalg.solve(A, ds.v), target_kurtosis=r.target_kurtosis)
    assert r2.overlap > 0.95 and abs(r2.kurtosis_v - r.kurtosis_v) < 1e-6
    g = np.random.default_rng(0).multivariate_normal(np.zeros(16), ds.covariance, size=2000)
    rg = fp.hidden_direction_overlap(g, ds.v, target_kurtosis=r.target_kurtosis)
    assert abs(rg.kurtosis_v) < 0.3 and rg.overlap < 0.8


def test_union_of_subspaces_energy_brute_force_and_recovery():
    ds = get_dataset("molrg:d=16,K=3,r=2")
    x, z = ds.sample(600, 0)
    r = fp.union_of_subspaces(x, ds.U)
    assert r.on_union_rate == 1.0 and r.subspace_error < 1e-4
    # labels recover the components up to a permutation
    k = z[:, 0].astype(int)
    agree = max(np.mean(k == np.array(p)[r.labels]) for p in __import__("itertools").permutations(range(3)))
    assert agree > 0.99
    y = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32).astype(np.float64)
    ry = fp.union_of_subspaces(y, ds.U)
    e = np.max([np.linalg.norm(y @ U, axis=1) ** 2 for U in ds.U], 0) / np.linalg.norm(y, axis=1) ** 2
    np.testing.assert_allclose(ry.energy, e, rtol=1e-10)
    assert ry.on_union_rate == pytest.approx((e >= 0.9).mean()) and ry.on_union_rate < 0.05
    assert ry.subspace_error > 0.5


# ----------------------------------------------------------------------------------- representation


def test_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    r = np.random.default_rng(0)
    A = r.standard_normal((200, 6))
    A -= A.mean(0)
    Z = A @ r.standard_normal((6, 2)) + 0.1 * r.standard_normal((200, 2))
    Z -= Z.mean(0)
    ref = Ridge(alpha=3.0, fit_intercept=False).fit(A, Z).coef_.T
    np.testing.assert_allclose(fp.ridge_fit(A, Z, 3.0), ref, rtol=1e-8)


def test_representation_probe_axis_aligned_vs_mixed_vs_noise():
    r = np.random.default_rng(0)
    z = r.standard_normal((2000, 3))
    # each unit encodes one factor (two units per factor) -> R^2 ~ 1, disentanglement ~ 1
    A_axis = np.repeat(np.eye(3), 2, axis=1) * np.array([1, 2, 0.5, 1, 3, 1])
    act = z @ A_axis + 0.05 * r.standard_normal((2000, 6))
    ra = fp.representation_probe(act, z, factor_names=["a", "b", "c"])
    assert min(ra.r2.values()) > 0.99 and ra.disentanglement > 0.9 and ra.completeness > 0.5
    # dense random mixing: still linearly decodable, but not disentangled
    act_mix = z @ r.standard_normal((3, 6)) + 0.05 * r.standard_normal((2000, 6))
    rm = fp.representation_probe(act_mix, z)
    assert min(rm.r2.values()) > 0.99 and rm.disentanglement < ra.disentanglement - 0.3
    # activations independent of the factors: held-out R^2 ~ 0
    rn = fp.representation_probe(r.standard_normal((2000, 6)), z)
    assert max(rn.r2.values()) < 0.02
    with pytest.raises(DiffauditError, match="rows"):
        fp.representation_probe(act[:10], z)


def test_layer_activations_match_a_manual_forward_pass():
    torch = pytest.importorskip("torch")
    from diffaudit.activations import layer_activations

    class TinyDenoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(1, 8)
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 4))

        def forward(self, x, sigma):
            h = self.body[0](x) + self.embed(torch.log(sigma)[:, None] / 4)
            return self.body[2](self.body[1](h))

    torch.manual_seed(0)
    net = TinyDenoiser().train()
    x = np.random.default_rng(0).standard_normal((37, 4)).astype(np.float32)
    got = layer_activations(net, x, 0.5, "body.1", batch_size=10)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        s = torch.full((37,), 0.5)
        ref = torch.nn.functional.silu(net.body[0](xt) + net.embed(torch.log(s)[:, None] / 4)).numpy()
    assert got.shape == (37, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert net.training  # mode restored
    # activations at a different sigma differ (the layer sees the noise-level embedding)
    assert np.abs(layer_activations(net, x, 5.0, "body.1") - got).max() > 1e-3
    # noised inputs are seeded
    a1 = layer_activations(net, x, 0.5, "body.0", add_noise=True, seed=3)
    np.testing.assert_array_equal(a1, layer_activations(net, x, 0.5, "body.0", add_noise=True, seed=3))
    with pytest.raises(DiffauditError, match="body.0"):
        layer_activations(net, x, 0.5, "nope")
    # the probe on them: factors that are linear functions of x are decoded from body.0 (a linear layer)
    z = x[:, :2] @ np.array([[1.0, 0.5], [-0.3, 2.0]])
    acts = layer_activations(net, np.tile(x, (20, 1)) + 0.0, 0.5, "body.0")
    rp = fp.representation_probe(acts, np.tile(z, (20, 1)), alpha=1e-6)
    assert min(rp.r2.values()) > 0.999
