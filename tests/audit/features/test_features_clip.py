"""``clip:ARCH`` features: tags resolve from the local cache only, random-init and weight-file round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.errors import DiffauditError
from diffaudit.features import get_embedder


def test_clip_tag_not_cached_needs_explicit_download():
    with pytest.raises(DiffauditError, match="not in open_clip's local cache.*allow_download=True"):
        get_embedder("clip:ViT-B-32", device="cpu", weights="openai")
    with pytest.raises(DiffauditError, match="not a file and not an open_clip tag"):
        get_embedder("clip:ViT-B-32", device="cpu", weights="no-such-tag")
    with pytest.raises(DiffauditError, match="unknown open_clip architecture"):
        get_embedder("clip:NotANet", device="cpu", random_init=True)


def test_clip_random_init_and_weight_file_round_trip(images, tmp_path, check_random):
    x = images[:2]
    e = get_embedder("clip:ViT-S-32", device="cpu", random_init=True)
    f = e.embed(x)
    check_random(e, f, 2, f.shape[1])
    np.testing.assert_allclose(np.linalg.norm(f.astype(np.float64), axis=1), 1.0, atol=1e-5)
    path = tmp_path / "clip_vits32.pt"
    torch.save(e.network.state_dict(), path)
    e2 = get_embedder("clip:ViT-S-32", device="cpu", weights=path)
    np.testing.assert_allclose(e2.embed(x, batch_size=1), f, rtol=0, atol=1e-5)
    assert e2.id != e.id and "sha256=" in e2.id
