"""The feature cache: a hit never builds the network, the key covers input/id/params, bad entries recompute."""

from __future__ import annotations

import os

import numpy as np

from diffaudit.features import TorchEmbedder, embed_cached, feature_cache_path, get_embedder


def test_cache_hit_does_not_build_network(images, tmp_path, monkeypatch):
    e = get_embedder("dinov2:vits14", device="cpu", random_init=True)
    e.size = 56
    f1 = embed_cached(images, e, cache_dir=tmp_path)
    assert e.n_loads == 1
    path = feature_cache_path(images, e, tmp_path)
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert not [p for p in os.listdir(path.parent) if ".tmp" in p]  # atomic: no temp files left

    fresh = get_embedder("dinov2:vits14", device="cpu", random_init=True)
    fresh.size = 56

    def boom(self):
        raise AssertionError("network built on a cache hit")

    monkeypatch.setattr(TorchEmbedder, "_build", boom)
    f2 = embed_cached(images.copy(), fresh, cache_dir=tmp_path)
    assert fresh.n_loads == 0
    np.testing.assert_array_equal(f1, f2)


def test_cache_key_covers_input_id_and_params(images, tmp_path, monkeypatch):
    e = get_embedder("pixels:4")
    base = feature_cache_path(images, e, tmp_path)
    assert feature_cache_path(images.copy(), get_embedder("pixels:4"), tmp_path) == base
    assert feature_cache_path(images, get_embedder("pixels:5"), tmp_path) != base
    assert feature_cache_path(images, get_embedder("pixels"), tmp_path) != base
    y = images.copy()
    y[0, 0, 0, 0] += 1e-3
    assert feature_cache_path(y, e, tmp_path) != base
    assert feature_cache_path(images.astype(np.float64), e, tmp_path) != base
    # a preprocessing parameter outside the id still changes the key
    d1 = get_embedder("dinov2:vits14", device="cpu", random_init=True)
    d2 = get_embedder("dinov2:vits14", device="cpu", random_init=True)
    d2.mean = (0.5, 0.5, 0.5)
    assert d1.id == d2.id and feature_cache_path(images, d1, tmp_path) != feature_cache_path(
        images, d2, tmp_path
    )
    # default folder from the environment, argument wins
    monkeypatch.setenv("DIFFAUDIT_CACHE_DIR", str(tmp_path / "env"))
    assert str(feature_cache_path(images, e)).startswith(str(tmp_path / "env"))
    f = embed_cached(images, e)
    assert feature_cache_path(images, e).is_file()
    np.testing.assert_array_equal(f, e.embed(images))


def test_corrupt_cache_entry_is_recomputed(images, tmp_path):
    e = get_embedder("pixels:4")
    path = feature_cache_path(images, e, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    f = embed_cached(images, e, cache_dir=tmp_path)
    np.testing.assert_array_equal(f, e.embed(images))
    np.testing.assert_array_equal(np.load(path), f)
