"""``oracle`` features: the dataset's own factor encoder recovers the factors of a known linear toy."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.datasets.base import Dataset, Factor
from diffaudit.errors import DiffauditError
from diffaudit.features import get_embedder


class _LinearToy(Dataset):
    """x = z A (d = 6 from 2 factors); the oracle projection is least squares."""

    name = "toy"
    kind = "vector"

    def __init__(self, seed: int = 0) -> None:
        self._params = {"seed": seed}
        self.A = np.random.default_rng(seed).normal(size=(2, 6))

    @property
    def shape(self):
        return (6,)

    @property
    def factors(self):
        return (Factor("a"), Factor("b"))

    def sample(self, n, seed=0):
        z = np.random.default_rng(seed).normal(size=(n, 2))
        return self.generate(z), z

    def generate(self, z):
        return (z @ self.A).astype(np.float32)

    def project(self, x):
        z, *_ = np.linalg.lstsq(self.A.T, np.asarray(x, np.float64).T, rcond=None)
        return z.T, np.linalg.norm(x - z.T @ self.A, axis=1)


def test_oracle_returns_factors():
    ds = _LinearToy(seed=3)
    x, z = ds.sample(10, seed=1)
    e = get_embedder("oracle", dataset=ds)
    f = e.embed(x, batch_size=3)
    assert f.dtype == np.float32 and f.shape == (10, 2)
    np.testing.assert_allclose(f, z, rtol=0, atol=1e-5)
    assert e.id == "oracle:toy:seed=3"
    assert get_embedder("oracle", dataset=_LinearToy(seed=4)).id != e.id
    with pytest.raises(DiffauditError, match="needs the synthetic dataset"):
        get_embedder("oracle")
    with pytest.raises(DiffauditError, match=r"shape \(5,\).*makes \(6,\)"):
        e.embed(np.zeros((3, 5), np.float32))
