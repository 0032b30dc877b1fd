"""The shared numeric helpers of ``diffaudit.probes.stats`` that have no other test home: excess kurtosis."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from diffaudit.probes import convergence
from diffaudit.probes.factors import hidden_direction
from diffaudit.probes.stats import excess_kurtosis


def test_excess_kurtosis_matches_scipy(rng):
    """Reference implementation: scipy's plug-in (biased) Fisher kurtosis, per column and for a vector."""
    x = rng.standard_exponential((500, 3)) ** np.array([1.0, 0.5, 2.0])
    np.testing.assert_allclose(excess_kurtosis(x), st.kurtosis(x, axis=0, fisher=True, bias=True), rtol=1e-12)
    k1 = excess_kurtosis(x[:, 0])
    assert isinstance(k1, float)
    assert k1 == pytest.approx(st.kurtosis(x[:, 0], fisher=True, bias=True), rel=1e-12)


def test_excess_kurtosis_analytic():
    # balanced +-1 (Rademacher): m4 = m2^2 = 1, so exactly -2
    assert excess_kurtosis(np.tile([-1.0, 1.0], 50)) == pytest.approx(-2.0, abs=1e-12)
    # n equally spaced points (discrete uniform): -6 (n^2 + 1) / (5 (n^2 - 1)), -> -1.2 as n grows
    n = 101
    assert excess_kurtosis(np.linspace(0, 1, n)) == pytest.approx(
        -6 * (n * n + 1) / (5 * (n * n - 1)), rel=1e-12
    )
    # a constant column has no kurtosis; the others are unaffected
    k = excess_kurtosis(np.column_stack([np.full(10, 3.0), np.tile([-1.0, 1.0], 5)]))
    assert np.isnan(k[0]) and k[1] == pytest.approx(-2.0, abs=1e-12)
    assert np.isnan(excess_kurtosis(np.zeros(5)))


def test_kurtosis_has_one_home(rng):
    """Both former copies now call the helper: the threshold-1 moments and the hidden-direction probe."""
    assert hidden_direction.excess_kurtosis is excess_kurtosis
    a = rng.standard_normal((400, 4)).astype(np.float32)
    b = rng.uniform(-1, 1, (300, 4)).astype(np.float32)
    res = convergence.moments(a, b, directions=np.eye(4)[:2], top=4)
    np.testing.assert_allclose(res.dir_kurtosis_a, excess_kurtosis(a[:, :2].astype(np.float64)), rtol=1e-9)
    np.testing.assert_allclose(res.dir_kurtosis_b, excess_kurtosis(b[:, :2].astype(np.float64)), rtol=1e-9)
