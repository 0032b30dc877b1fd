"""``pixels`` features: flattening, and area downsampling against a loop reference and torch's area mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffaudit.errors import DiffauditError
from diffaudit.features import get_embedder


def test_pixels_flatten(rng):
    v = rng.normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_array_equal(get_embedder("pixels").embed(v), v)
    x = rng.uniform(-1, 1, size=(3, 2, 4, 5)).astype(np.float32)
    f = get_embedder("pixels").embed(x)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, x.reshape(3, -1))


def test_pixels16_matches_block_mean(rng, block_mean):
    x = rng.uniform(-1, 1, size=(3, 3, 32, 48)).astype(np.float32)
    f = get_embedder("pixels:16").embed(x)
    assert f.shape == (3, 3 * 16 * 16) and f.dtype == np.float32
    np.testing.assert_allclose(f, block_mean(x, 16).reshape(3, -1), rtol=0, atol=1e-7)
    # identity at the native size
    np.testing.assert_array_equal(get_embedder("pixels:32").embed(x[..., :32]), x[..., :32].reshape(3, -1))


def test_pixels_non_divisible_matches_torch_area(rng):
    x = rng.uniform(-1, 1, size=(2, 1, 21, 19)).astype(np.float32)
    f = get_embedder("pixels:8").embed(x)
    ref = F.interpolate(torch.from_numpy(x).double(), size=(8, 8), mode="area").numpy()
    np.testing.assert_allclose(f, ref.reshape(2, -1), rtol=0, atol=1e-7)


def test_pixels_errors(rng):
    with pytest.raises(DiffauditError, match="vectors.*use 'pixels'"):
        get_embedder("pixels:16").embed(rng.normal(size=(4, 10)))
    with pytest.raises(DiffauditError, match="smaller than 16x16"):
        get_embedder("pixels:16").embed(np.zeros((2, 3, 8, 8), np.float32))
    for bad in ["pixels:0", "pixels:abc", "pixels:-3"]:
        with pytest.raises(DiffauditError, match="positive integer"):
            get_embedder(bad)
    with pytest.raises(DiffauditError, match="unknown feature space 'vgg'.*inception"):
        get_embedder("vgg")
    with pytest.raises(DiffauditError, match="no network weights"):
        get_embedder("pixels", random_init=True)
