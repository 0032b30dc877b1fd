"""Scale-free manifold validity (probes/factors/validity.py): the residual against brute force, its scale
invariance against the analytic null sqrt(1 - D/d), and the default tau on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.models.controls import make_control
from diffaudit.probes import factors as fp
from diffaudit.probes.stats import wilson_interval


@pytest.fixture(scope="module")
def hm():
    return get_dataset("hidden-manifold:d=32,D=4")


def test_relative_residual_matches_brute_force(hm):
    rng = np.random.default_rng(0)
    x, _ = hm.sample(200, 1)
    x = (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    z_hat, rho = fp.relative_residual(hm, x)
    brute = np.linalg.norm(x - hm.generate(z_hat), axis=1) / np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(rho, brute, rtol=1e-4)
    e = fp.manifold_error(hm, x)
    np.testing.assert_array_equal(e.residual, rho)
    assert list(e.quantiles.values()) == sorted(e.quantiles.values()) and e.median == pytest.approx(
        np.median(rho)
    )


def test_residual_is_scale_free_and_matches_the_isotropic_null(hm):
    """Near the origin the manifold is its tangent plane span(A) (D = 4 of d = 32), so isotropic noise
    of ANY small size has rho -> ||P_perp g|| / ||g|| ~ sqrt(1 - D/d) = 0.935: the absolute residual
    called N(0, 0.02^2 I) 100 % valid, the relative one calls it invalid at every scale."""
    g = np.random.default_rng(1).standard_normal((500, 32))
    meds = [np.median(fp.relative_residual(hm, (s * g).astype(np.float32))[1]) for s in (1e-3, 1e-2, 0.02)]
    assert meds == pytest.approx([np.sqrt(1 - 4 / 32)] * 3, abs=0.02)
    assert fp.manifold_validity(hm, (0.02 * g).astype(np.float32)).valid_rate == 0.0


def test_default_tau_on_both_sides(hm):
    """tau = 0.1 of the sample's own norm (stated meaning); true residuals ~1e-8 do not raise it. True samples
    and a LABELLED PROXY for a trained model (true + N(0, 0.02^2) per coordinate, the RMS level a small EDM MLP
    reached) are valid; the gaussian control, shrunk samples and chords between training points are not."""
    t = fp.validity_threshold(hm)
    assert t.tau == t.tau_floor == fp.TAU_FRACTION and t.tau_reference < 1e-6
    x, _ = hm.sample(1000, 3)
    train, _ = hm.sample(500, 4)
    rng = np.random.default_rng(0)
    rate = {
        name: fp.manifold_validity(hm, a.astype(np.float32), tau=t.tau).valid_rate
        for name, a in {
            "true": x,
            "proxy": x + 0.02 * rng.standard_normal(x.shape),
            "gaussian": make_control("gaussian", hm.sample(2000, 1)[0]).sample(1000, 5),
            "shrunk": 0.3 * x,
            "midpoints": 0.5 * (train[rng.integers(0, 500, 1000)] + train[rng.integers(0, 500, 1000)]),
        }.items()
    }
    # measured: 1.00, 0.996, 0.002, 0.20, 0.21 (absolute residual before: 1.00, ~1, 0.0, 0.93, 0.99)
    assert rate["true"] == 1.0 and rate["proxy"] >= 0.95
    assert rate["gaussian"] <= 0.02
    # shrinking and chords keep a point on the manifold only where it is nearly flat (small |c|): a minority
    assert rate["shrunk"] <= 0.3 and rate["midpoints"] <= 0.35


def test_molrg_is_a_cone_so_shrinking_stays_valid():
    """The union of subspaces is invariant under scaling: a scale-free residual keeps shrunk samples valid
    (their factors then fail, see test_factor_recovery), while noise has rho ~ sqrt(1 - r/d)."""
    ds = get_dataset("molrg:d=32,K=4,r=2")
    x, _ = ds.sample(500, 0)
    assert fp.manifold_validity(ds, 0.3 * x).valid_rate == 1.0
    g = np.random.default_rng(0).standard_normal((500, 32)).astype(np.float32)
    v = fp.manifold_validity(ds, 0.02 * g)
    assert v.valid_rate == 0.0 and v.median == pytest.approx(np.sqrt(1 - 2 / 32), abs=0.05)


def test_validity_counts_and_interval_match_brute_force(hm):
    x, _ = hm.sample(300, 9)
    noise = np.linspace(0, 0.2, 300)[:, None] * np.random.default_rng(1).standard_normal(x.shape)
    x = (x + noise).astype(np.float32)
    v = fp.manifold_validity(hm, x, tau=0.05)
    _, rho = fp.relative_residual(hm, x)
    np.testing.assert_array_equal(v.valid, rho <= 0.05)
    assert 0 < v.n_valid < 300 and v.n_valid == int((rho <= 0.05).sum())
    assert v.valid_rate_ci == pytest.approx(wilson_interval(v.n_valid, 300))


class _NoisyOracle:
    """Duck-typed dataset whose true samples have residual ~ U(0, 1): tau must come from them."""

    residual_is_relative = True

    def sample(self, n, seed=0):
        r = np.random.default_rng(seed)
        return r.random((n, 2)).astype(np.float32), r.random((n, 1))

    def project(self, x):
        return x[:, :1].astype(np.float64), x[:, 0].astype(np.float64)


def test_reference_residual_sets_tau_when_the_oracle_is_noisy():
    t = fp.validity_threshold(_NoisyOracle(), n_reference=20000)
    assert t.tau_floor == pytest.approx(0.1)
    assert t.tau_reference == pytest.approx(2 * 0.99, abs=0.01) and t.tau == t.tau_reference


def test_errors_name_the_input(hm):
    class Absolute:
        name = "absolute"

        def project(self, x):
            return x, np.zeros(len(x))

    with pytest.raises(DiffauditError, match="relative_residual"):
        fp.manifold_validity(Absolute(), np.zeros((3, 2), np.float32), tau=0.1)
    with pytest.raises(DiffauditError, match="NaN"):
        fp.manifold_error(hm, np.full((3, 32), np.nan, np.float32))
    with pytest.raises(DiffauditError, match="frac"):
        fp.validity_threshold(hm, frac=2.0)
