"""Factor fidelity (probes/factors/fidelity.py): analytic W1 / KS shifts, brute-force KS, coverage under collapse."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from diffaudit.datasets.base import Factor
from diffaudit.probes import factors as fp


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
