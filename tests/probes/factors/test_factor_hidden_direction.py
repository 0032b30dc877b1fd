"""Hidden-direction recovery on the mixed cumulant model (probes/factors/hidden_direction.py)."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.probes import factors as fp


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
