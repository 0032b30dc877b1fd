"""Disjoint-split reproducibility: the probe on arrays, its interval, and the sweep's shared-noise sampling
of the analytic controls (a generalising pair reproduces, a memorizing pair does not)."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.errors import DiffauditError
from diffaudit.models.controls import GaussianModel, MemorizerModel
from diffaudit.probes.reproducibility import RP_THRESHOLD, disjoint_reproducibility
from diffaudit.sweeps.reproducibility import shared_noise_reproducibility

D = 16


def data(n, seed):
    """Anisotropic Gaussian vectors (a fixed random rotation, std 0.3 ... 1.5)."""
    A = np.linalg.qr(np.random.default_rng(0).standard_normal((D, D)))[0] * np.linspace(0.3, 1.5, D)
    return (np.random.default_rng(seed).standard_normal((n, D)) @ A.T).astype(np.float32)


def test_rp_cosine_reference(rng):
    a = rng.standard_normal((100, 2, 3, 3))
    b = a + 0.8 * rng.standard_normal(a.shape)
    r = disjoint_reproducibility(a, b)
    A, B = a.reshape(100, -1), b.reshape(100, -1)
    cos = (A * B).sum(1) / np.linalg.norm(A, axis=1) / np.linalg.norm(B, axis=1)
    np.testing.assert_allclose(r.similarity, cos, rtol=1e-12)
    assert r.rp == pytest.approx((cos > 0.6).mean())
    rc = disjoint_reproducibility(a + 5, b + 5, centre=True)
    np.testing.assert_allclose(
        rc.similarity,
        disjoint_reproducibility(
            a - a.mean(axis=(1, 2, 3), keepdims=True), b - b.mean(axis=(1, 2, 3), keepdims=True)
        ).similarity,
    )
    with pytest.raises(DiffauditError, match="same noise"):
        disjoint_reproducibility(a, b[:50])
    with pytest.raises(DiffauditError, match="cosine similarity is undefined"):
        disjoint_reproducibility(np.zeros((3, 4)), np.ones((3, 4)))


def test_rp_interval_coverage():
    """Pairs at an angle theta ~ U(0, pi) in a plane: P(cos theta > 0.6) = arccos(0.6) / pi exactly.
    The Wilson 95 % interval of RP covers it in about 95 % of fresh draws (400 draws of 60 pairs)."""
    p = np.arccos(RP_THRESHOLD) / np.pi
    rng = np.random.default_rng(7)
    hits = 0
    n_draws, n = 400, 60
    for _ in range(n_draws):
        phi = rng.uniform(0, 2 * np.pi, n)
        theta = rng.uniform(0, np.pi, n)
        a = np.column_stack([np.cos(phi), np.sin(phi)])
        b = np.column_stack([np.cos(phi + theta), np.sin(phi + theta)])
        lo, hi = disjoint_reproducibility(a, b).rp_ci
        hits += lo <= p <= hi
    # binomial spread of the coverage over 400 draws is ~0.011; Wilson at n = 60 runs close to nominal
    assert 0.92 <= hits / n_draws <= 0.98


def test_rp_controls_disjoint_splits():
    """Gaussians fitted on disjoint halves generalise: same noise -> same sample (RP ~ 1).
    Memorizers of disjoint halves land on their own training items (RP low)."""
    g = shared_noise_reproducibility(
        GaussianModel(data(2000, 1), num_steps=18), GaussianModel(data(2000, 2), num_steps=18), 200
    )
    m = shared_noise_reproducibility(
        MemorizerModel(data(100, 1), num_steps=18), MemorizerModel(data(100, 2), num_steps=18), 200
    )
    assert g.rp >= 0.95 and g.mean_similarity > 0.95
    assert m.rp <= 0.5 and m.mean_similarity < 0.7
    # same model twice: identical samples from the same noise
    same = shared_noise_reproducibility(
        GaussianModel(data(500, 1), num_steps=8), GaussianModel(data(500, 1), num_steps=8), 20
    )
    np.testing.assert_allclose(same.similarity, 1.0, atol=1e-6)


def test_rp_needs_sample_from_noise():
    class BlackBox:
        shape = (D,)

    with pytest.raises(DiffauditError, match="sample_from_noise"):
        shared_noise_reproducibility(BlackBox(), BlackBox(), 5)
