"""Union-of-subspaces probe on the mixture of low-rank Gaussians (probes/factors/subspaces.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.probes import factors as fp


def test_union_of_subspaces_energy_brute_force_and_recovery():
    ds = get_dataset("molrg:d=16,K=3,r=2")
    x, z = ds.sample(600, 0)
    r = fp.union_of_subspaces(x, ds.U)
    assert r.on_union_rate == 1.0 and r.subspace_error < 1e-4
    # labels recover the components up to a permutation
    k = z[:, 0].astype(int)
    agree = max(np.mean(k == np.array(p)[r.labels]) for p in itertools.permutations(range(3)))
    assert agree > 0.99
    y = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32).astype(np.float64)
    ry = fp.union_of_subspaces(y, ds.U)
    e = np.max([np.linalg.norm(y @ U, axis=1) ** 2 for U in ds.U], 0) / np.linalg.norm(y, axis=1) ** 2
    np.testing.assert_allclose(ry.energy, e, rtol=1e-10)
    assert ry.on_union_rate == pytest.approx((e >= 0.9).mean()) and ry.on_union_rate < 0.05
    assert ry.subspace_error > 0.5
