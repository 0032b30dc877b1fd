"""What the network feature spaces share: device choice, weight-file resolution, input checks before building."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError
from diffaudit.features import ENV_CLIP, ENV_DINOV2, ENV_INCEPTION, get_embedder


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DiffauditError, match="unknown; use one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DiffauditError, match="no CUDA device.*--device cpu"):
            resolve_device("cuda")


@pytest.mark.parametrize("spec", ["inception", "clip:ViT-S-32", "dinov2:vits14"])
def test_embedders_resolve_the_device_through_diffaudit_device(spec):
    assert get_embedder(spec, device="cpu", random_init=True).device == torch.device("cpu")
    assert get_embedder(spec, device="auto", random_init=True).device == resolve_device("auto")
    with pytest.raises(DiffauditError, match="device 'tpu': unknown; use one of auto, cpu, cuda"):
        get_embedder(spec, device="tpu", random_init=True)


@pytest.mark.parametrize(
    "spec, env", [("inception", ENV_INCEPTION), ("clip:ViT-S-32", ENV_CLIP), ("dinov2", ENV_DINOV2)]
)
def test_missing_weights_name_the_option(spec, env, tmp_path, monkeypatch):
    with pytest.raises(DiffauditError, match=rf"--weights PATH.*{env}.*random_init=True"):
        get_embedder(spec, device="cpu")
    gone = tmp_path / "gone.pth"
    with pytest.raises(DiffauditError, match=r"gone\.pth.*do not exist.*weights="):
        get_embedder(spec, device="cpu", weights=gone)
    monkeypatch.setenv(env, str(gone))
    with pytest.raises(DiffauditError, match=rf"gone\.pth.*from {env}"):
        get_embedder(spec, device="cpu")
    with pytest.raises(DiffauditError, match="either weights or random_init"):
        get_embedder(spec, device="cpu", weights=gone, random_init=True)


def test_image_embedders_refuse_vectors():
    e = get_embedder("dinov2:vits14", device="cpu", random_init=True)
    with pytest.raises(DiffauditError, match="need images.*'pixels' or 'oracle'"):
        e.embed(np.zeros((3, 10), np.float32))
    with pytest.raises(DiffauditError, match="1- or 3-channel"):
        e.embed(np.zeros((3, 2, 8, 8), np.float32))
    assert e.n_loads == 0  # input checks come before the network is built
