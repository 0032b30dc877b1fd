"""``inception`` features: random-init plumbing, torchvision/pytorch-fid state dicts round-trip, FID blocks detected."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from diffaudit.features import ENV_INCEPTION, get_embedder


def test_inception_random_init_and_weight_file_round_trip(images, tmp_path, monkeypatch, check_random):
    x = images[:2]
    e = get_embedder("inception", device="cpu", random_init=True)
    e.size = 75  # the smallest input Inception-v3 takes: same code path, 16x less work than 299 on CPU
    assert "resize75" in e.id
    f = e.embed(x)
    check_random(e, f, 2, 2048)
    # save the random network as a torchvision-style state dict (with AuxLogits and a 1000-way fc)
    sd = dict(e.network.state_dict())
    g = torch.Generator().manual_seed(0)
    sd["fc.weight"] = torch.randn(1000, 2048, generator=g)
    sd["fc.bias"] = torch.zeros(1000)
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    path = tmp_path / "inception_v3_test.pth"
    torch.save(sd, path)
    monkeypatch.setenv(ENV_INCEPTION, str(path))
    e2 = get_embedder("inception", device="cpu")
    e2.size = 75
    assert not e2.random_init and "random-init" not in e2.id and "sha256=" in e2.id
    f2 = e2.embed(x, batch_size=1)
    assert e2.resolved_variant == "torchvision"
    np.testing.assert_allclose(f2, f, rtol=1e-5, atol=1e-6 * np.abs(f).max())


def test_inception_fid_weights_detected(images, tmp_path, check_random):
    """A state dict with a 1008-way fc is run through pytorch-fid's FID blocks."""
    x = images[:2]
    e = get_embedder("inception:fid", device="cpu", random_init=True)
    e.size = 75
    f = e.embed(x)
    check_random(e, f, 2, 2048)
    sd = dict(e.network.state_dict())
    sd["fc.weight"] = torch.zeros(1008, 2048)
    sd["fc.bias"] = torch.zeros(1008)
    path = tmp_path / "pt_inception_test.safetensors"
    save_file(sd, str(path))
    e2 = get_embedder("inception", device="cpu", weights=path)
    e2.size = 75
    f2 = e2.embed(x)
    assert e2.resolved_variant == "fid"
    np.testing.assert_allclose(f2, f, rtol=1e-5, atol=1e-6 * np.abs(f).max())
    # control: the same weights through the torchvision pooling give different numbers
    e3 = get_embedder("inception:torchvision", device="cpu", weights=path)
    e3.size = 75
    f3 = e3.embed(x)
    assert np.abs(f3 - f).max() > 1e-3 * np.abs(f).max()
