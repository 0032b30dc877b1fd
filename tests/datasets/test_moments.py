"""Population moments (the reference of E1): analytic vs Monte Carlo, the reserved seed stream, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.datasets import moments as pm
from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.probes.moment_error import whitened_moment_error


@pytest.mark.parametrize(
    "spec", ["mcm:d=8,beta_u=4,beta_v=4", "mcm:d=8,correlated=true", "molrg:d=12,K=3,r=2,sigma=0.3"]
)
def test_analytic_matches_monte_carlo(spec):
    """Entry-wise within 5 standard errors of an 80,000-sample estimate; and the oracle's E1 against the
    analytic moments is 0 within its interval (the whitened second moment agrees as a whole)."""
    ds = get_dataset(spec)
    mu, sigma, n_ref = pm.population_moments(ds)
    assert n_ref == 0
    n = 80_000
    mu_mc, sigma_mc = pm.monte_carlo_moments(ds, n, seed=3)
    d = len(mu)
    sd_mu = np.sqrt(np.diag(sigma) / n)
    sd_cov = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / n) + 1e-12
    assert np.all(np.abs(mu_mc - mu) < 5 * sd_mu + 1e-12)
    assert np.all(np.abs(sigma_mc - sigma) < 5 * sd_cov)
    x, _ = ds.sample(20_000, seed=11)
    r = whitened_moment_error(x, mu, sigma)
    assert r.ci[0] <= 0.0 <= r.ci[1] and r.dim == d


def test_analytic_is_not_the_wrong_formula():
    """The other side: dropping molrg's noise term is detected by the oracle's E1."""
    ds = get_dataset("molrg:d=12,K=3,r=2,sigma=0.3")
    mu, sigma, _ = pm.population_moments(ds)
    x, _ = ds.sample(20_000, seed=12)
    r = whitened_moment_error(x, mu, sigma - 0.09 * np.eye(12))
    assert r.ci[0] > 0.1


def test_monte_carlo_route_cache_hit_and_seed_stream(tmp_path, monkeypatch):
    ds = get_dataset("hidden-manifold:d=6,D=2")
    mu, sigma, n_ref = pm.population_moments(ds, n_ref=3000, cache_dir=tmp_path)
    assert n_ref == 3000 and mu.shape == (6,) and sigma.shape == (6, 6)
    files = list(tmp_path.iterdir())
    assert (
        len(files) == 1
        and files[0].name.startswith("hidden-manifold-")
        and files[0].name.endswith("-n3000.npz")
    )
    # hit: identical arrays, no sampling at all
    monkeypatch.setattr(type(ds), "sample", lambda *a, **k: pytest.fail("resampled on a cache hit"))
    mu2, sigma2, n2 = pm.population_moments(ds, n_ref=3000, cache_dir=tmp_path)
    assert n2 == 3000 and np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    monkeypatch.undo()
    # same numbers as a fresh computation; another seed or n_ref is another file with other numbers
    mu3, sigma3 = pm.monte_carlo_moments(ds, 3000, seed=0)
    np.testing.assert_array_equal(mu, mu3)
    mu4, _, _ = pm.population_moments(ds, n_ref=3000, seed=1, cache_dir=tmp_path)
    assert not np.array_equal(mu, mu4) and len(list(tmp_path.iterdir())) == 2
    # the reserved stream never hands the dataset an audit's small integer seed
    assert min(pm._block_seed(0, b) for b in range(100)) > 2**40


def test_monte_carlo_moments_match_direct_computation():
    """Streamed, shifted float64 accumulation == mean / np.cov of the same rows."""
    ds = get_dataset("hidden-manifold:d=5,D=3")
    mu, sigma = pm.monte_carlo_moments(ds, 1000, seed=4)
    x, _ = ds.sample(1000, seed=pm._block_seed(4, 0))  # 1000 rows fit in one block at D = 5
    x = x.astype(np.float64)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x.T), rtol=1e-10, atol=1e-14)


def test_digits_population_is_the_set_and_defaults():
    ds = get_dataset("digits")
    mu, sigma, n_ref = pm.population_moments(ds)
    assert n_ref == 1797 and mu.shape == (64,)
    x, _ = ds.sample(1797, seed=0)
    np.testing.assert_allclose(mu, x.reshape(1797, -1).mean(0), atol=1e-6)
    assert pm.default_n_ref(8) == 20_000 and pm.default_n_ref(32) == 102_400
    assert pm.default_n_ref(256) == 1_525_878 and pm.default_n_ref(1024) == 95_367
    with pytest.raises(DiffauditError, match="n_ref"):
        pm.population_moments(get_dataset("hidden-manifold:d=4,D=2"), n_ref=1)
