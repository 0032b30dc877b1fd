"""``dinov2`` features: official state-dict keys, a float64 transcription of the official forward, registers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffaudit.errors import DiffauditError
from diffaudit.features import get_embedder


class _NotATensor:
    """A pickled object that ``torch.load(weights_only=True)`` must refuse."""


# official DINOv2 ViT-S/14 backbone keys (facebookresearch/dinov2 hub checkpoints, block_chunks=0)
_DINO_BLOCK_KEYS = [
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias", "ls2.gamma",
]  # fmt: skip


def test_dinov2_official_keys_and_weight_file_round_trip(images, tmp_path, check_random):
    x = images[:2]
    e = get_embedder("dinov2:vits14", device="cpu", random_init=True)
    e.size = 112  # 8x8 patches: still interpolates the 37x37 position grid, 4x cheaper than 224
    f = e.embed(x)
    check_random(e, f, 2, 384)
    sd = dict(e.network.state_dict())
    official = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    }
    official |= {f"blocks.{i}.{k}" for i in range(12) for k in _DINO_BLOCK_KEYS}
    assert set(sd) == official
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384) and sd["patch_embed.proj.weight"].shape == (
        384,
        3,
        14,
        14,
    )
    sd["mask_token"] = torch.zeros(1, 384)  # present in the official files, unused for inference
    path = tmp_path / "dinov2_vits14_test.safetensors"
    save_file(sd, str(path))
    e2 = get_embedder("dinov2", device="cpu", weights=path)  # architecture read from the file
    e2.size = 112
    np.testing.assert_allclose(e2.embed(x, batch_size=1), f, rtol=0, atol=1e-5)
    with pytest.raises(DiffauditError, match="are not vitb14"):
        get_embedder("dinov2:vitb14", device="cpu", weights=path).embed(x)


def _dinov2_reference(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The official DINOv2 forward (facebookresearch/dinov2 vision_transformer.py, layers/), written out in
    float64 with explicit softmax attention; returns the normed CLS token."""
    sd = {k: v.double() for k, v in sd.items()}

    def ln(t, p):
        return F.layer_norm(t, (t.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)

    x = x.double()
    b, _, h, w = x.shape
    t = (
        F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
        .flatten(2)
        .transpose(1, 2)
    )
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], 1)
    pos = sd["pos_embed"]
    m, dim = int(round((pos.shape[1] - 1) ** 0.5)), t.shape[-1]
    h0, w0 = h // 14 + 0.1, w // 14 + 0.1
    grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = (
        F.interpolate(grid, scale_factor=(h0 / m, w0 / m), mode="bicubic")
        .permute(0, 2, 3, 1)
        .reshape(1, -1, dim)
    )
    t = t + torch.cat([pos[:, :1], grid], 1)
    if "register_tokens" in sd:
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(b, -1, -1), t[:, 1:]], 1)
    heads = dim // 64
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(t, p + "norm1")
        qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, -1, 3, heads, 64)
        q, k, v = (a.transpose(1, 2) for a in torch.unbind(qkv, 2))
        a = (torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ v).transpose(1, 2).reshape(b, -1, dim)
        t = t + (a @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]) * sd[p + "ls1.gamma"]
        y = F.gelu(ln(t, p + "norm2") @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        t = t + (y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]) * sd[p + "ls2.gamma"]
    return ln(t, "norm")[:, 0]


def test_dinov2_matches_explicit_reference_forward():
    e = get_embedder("dinov2:vits14_reg", device="cpu", random_init=True)
    net = e.network
    g = torch.Generator().manual_seed(0)
    sd = {
        k: (torch.randn(v.shape, generator=g) * 0.3 if k.endswith("gamma") else v)
        for k, v in net.state_dict().items()
    }
    net.load_state_dict(sd)  # layer scales of order 1 so every block matters
    x = torch.randn(2, 3, 112, 98, generator=g)  # non-square: 8x7 patches from the 37x37 position grid
    with torch.no_grad():
        ours = net(x).double()
    ref = _dinov2_reference(sd, x)
    assert ours.shape == (2, 384)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_dinov2_registers_and_bad_checkpoint(images, tmp_path):
    e = get_embedder("dinov2:vits14_reg", device="cpu", random_init=True)
    assert e.network.register_tokens.shape == (1, 4, 384)
    bad = tmp_path / "hf.safetensors"
    save_file({"embeddings.cls_token": torch.zeros(1, 1, 384)}, str(bad))
    with pytest.raises(DiffauditError, match="transformers checkpoint"):
        get_embedder("dinov2", device="cpu", weights=bad).embed(images)
    pickled = tmp_path / "pickled.pth"
    torch.save({"net": _NotATensor()}, pickled)
    with pytest.raises(DiffauditError, match="cannot be read safely"):
        get_embedder("dinov2", device="cpu", weights=pickled).embed(images)
