"""Fixtures shared by the feature-space tests: no weight env variables, two small images, reference helpers."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.features import ENV_CLIP, ENV_DINOV2, ENV_INCEPTION


@pytest.fixture(autouse=True)
def _no_weight_env(monkeypatch):
    for env in (ENV_INCEPTION, ENV_CLIP, ENV_DINOV2):
        monkeypatch.delenv(env, raising=False)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 20, 24)).astype(np.float32)


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Reference area downsampling by explicit loops over blocks, in float64."""
    n, c, h, w = x.shape
    fh, fw = h // k, w // k
    out = np.zeros((n, c, k, k), np.float64)
    for i in range(k):
        for j in range(k):
            out[:, :, i, j] = (
                x[:, :, i * fh : (i + 1) * fh, j * fw : (j + 1) * fw].astype(np.float64).mean(axis=(2, 3))
            )
    return out


@pytest.fixture
def block_mean():
    return _block_mean


def _check_random(e, f, n, dim):
    assert e.random_init and "random-init" in e.id
    assert f.shape == (n, dim) and f.dtype == np.float32 and np.isfinite(f).all()
    assert np.abs(f[0] - f[1]).max() > 0  # different images, different features


@pytest.fixture
def check_random():
    """Checks for features of a random-init network: labelled as such, right shape, finite, not constant."""
    return _check_random
