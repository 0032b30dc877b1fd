"""Feature spaces: reference checks for pixels, weight-file plumbing for the networks, the feature cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffaudit import features as feat
from diffaudit.cli import main as cli_main
from diffaudit.datasets.base import Dataset, Factor
from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError
from diffaudit.features import embed_cached, feature_cache_path, get_embedder


@pytest.fixture(autouse=True)
def _no_weight_env(monkeypatch):
    for env in (feat.ENV_INCEPTION, feat.ENV_CLIP, feat.ENV_DINOV2):
        monkeypatch.delenv(env, raising=False)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 20, 24)).astype(np.float32)


# ------------------------------------------------------------------------------------------ pixels


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    n, c, h, w = x.shape
    fh, fw = h // k, w // k
    out = np.zeros((n, c, k, k), np.float64)
    for i in range(k):
        for j in range(k):
            out[:, :, i, j] = x[:, :, i * fh : (i + 1) * fh, j * fw : (j + 1) * fw].astype(np.float64).mean(axis=(2, 3))
    return out


def test_pixels_flatten(rng):
    v = rng.normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_array_equal(get_embedder("pixels").embed(v), v)
    x = rng.uniform(-1, 1, size=(3, 2, 4, 5)).astype(np.float32)
    f = get_embedder("pixels").embed(x)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, x.reshape(3, -1))


def test_pixels16_matches_block_mean(rng):
    x = rng.uniform(-1, 1, size=(3, 3, 32, 48)).astype(np.float32)
    f = get_embedder("pixels:16").embed(x)
    assert f.shape == (3, 3 * 16 * 16) and f.dtype == np.float32
    np.testing.assert_allclose(f, _block_mean(x, 16).reshape(3, -1), rtol=0, atol=1e-7)
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


# ------------------------------------------------------------------------------------------ oracle


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


# ------------------------------------------------------------------------------------------ device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DiffauditError, match="unknown; use one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DiffauditError, match="no CUDA device.*--device cpu"):
            resolve_device("cuda")


# ------------------------------------------------------------------------------------------ missing weights


@pytest.mark.parametrize(
    "spec, env", [("inception", feat.ENV_INCEPTION), ("clip:ViT-S-32", feat.ENV_CLIP), ("dinov2", feat.ENV_DINOV2)]
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


def test_clip_tag_not_cached_needs_explicit_download():
    with pytest.raises(DiffauditError, match="not in open_clip's local cache.*allow_download=True"):
        get_embedder("clip:ViT-B-32", device="cpu", weights="openai")
    with pytest.raises(DiffauditError, match="not a file and not an open_clip tag"):
        get_embedder("clip:ViT-B-32", device="cpu", weights="no-such-tag")
    with pytest.raises(DiffauditError, match="unknown open_clip architecture"):
        get_embedder("clip:NotANet", device="cpu", random_init=True)


def test_image_embedders_refuse_vectors():
    e = get_embedder("dinov2:vits14", device="cpu", random_init=True)
    with pytest.raises(DiffauditError, match="need images.*'pixels' or 'oracle'"):
        e.embed(np.zeros((3, 10), np.float32))
    with pytest.raises(DiffauditError, match="1- or 3-channel"):
        e.embed(np.zeros((3, 2, 8, 8), np.float32))
    assert e.n_loads == 0  # input checks come before the network is built


# ------------------------------------------------------------------------------------------ networks


def _check_random(e, f, n, dim):
    assert e.random_init and "random-init" in e.id
    assert f.shape == (n, dim) and f.dtype == np.float32 and np.isfinite(f).all()
    assert np.abs(f[0] - f[1]).max() > 0  # different images, different features


def test_inception_random_init_and_weight_file_round_trip(images, tmp_path, monkeypatch):
    x = images[:2]
    e = get_embedder("inception", device="cpu", random_init=True)
    e.size = 75  # the smallest input Inception-v3 takes: same code path, 16x less work than 299 on CPU
    assert "resize75" in e.id
    f = e.embed(x)
    _check_random(e, f, 2, 2048)
    # save the random network as a torchvision-style state dict (with AuxLogits and a 1000-way fc)
    sd = dict(e.network.state_dict())
    g = torch.Generator().manual_seed(0)
    sd["fc.weight"] = torch.randn(1000, 2048, generator=g)
    sd["fc.bias"] = torch.zeros(1000)
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    path = tmp_path / "inception_v3_test.pth"
    torch.save(sd, path)
    monkeypatch.setenv(feat.ENV_INCEPTION, str(path))
    e2 = get_embedder("inception", device="cpu")
    e2.size = 75
    assert not e2.random_init and "random-init" not in e2.id and "sha256=" in e2.id
    f2 = e2.embed(x, batch_size=1)
    assert e2.resolved_variant == "torchvision"
    np.testing.assert_allclose(f2, f, rtol=1e-5, atol=1e-6 * np.abs(f).max())


def test_inception_fid_weights_detected(images, tmp_path):
    """A state dict with a 1008-way fc is run through pytorch-fid's FID blocks."""
    x = images[:2]
    e = get_embedder("inception:fid", device="cpu", random_init=True)
    e.size = 75
    f = e.embed(x)
    _check_random(e, f, 2, 2048)
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


def test_clip_random_init_and_weight_file_round_trip(images, tmp_path):
    x = images[:2]
    e = get_embedder("clip:ViT-S-32", device="cpu", random_init=True)
    f = e.embed(x)
    _check_random(e, f, 2, f.shape[1])
    np.testing.assert_allclose(np.linalg.norm(f.astype(np.float64), axis=1), 1.0, atol=1e-5)
    path = tmp_path / "clip_vits32.pt"
    torch.save(e.network.state_dict(), path)
    e2 = get_embedder("clip:ViT-S-32", device="cpu", weights=path)
    np.testing.assert_allclose(e2.embed(x, batch_size=1), f, rtol=0, atol=1e-5)
    assert e2.id != e.id and "sha256=" in e2.id


# official DINOv2 ViT-S/14 backbone keys (facebookresearch/dinov2 hub checkpoints, block_chunks=0)
_DINO_BLOCK_KEYS = [
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias", "ls2.gamma",
]  # fmt: skip


def test_dinov2_official_keys_and_weight_file_round_trip(images, tmp_path):
    x = images[:2]
    e = get_embedder("dinov2:vits14", device="cpu", random_init=True)
    e.size = 112  # 8x8 patches: still interpolates the 37x37 position grid, 4x cheaper than 224
    f = e.embed(x)
    _check_random(e, f, 2, 384)
    sd = dict(e.network.state_dict())
    official = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    official |= {f"blocks.{i}.{k}" for i in range(12) for k in _DINO_BLOCK_KEYS}
    assert set(sd) == official
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384) and sd["patch_embed.proj.weight"].shape == (384, 3, 14, 14)
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
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], 1)
    pos = sd["pos_embed"]
    m, dim = int(round((pos.shape[1] - 1) ** 0.5)), t.shape[-1]
    h0, w0 = h // 14 + 0.1, w // 14 + 0.1
    grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(h0 / m, w0 / m), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, dim)
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
    sd = {k: (torch.randn(v.shape, generator=g) * 0.3 if k.endswith("gamma") else v) for k, v in net.state_dict().items()}
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
    torch.save({"net": object.__new__(_LinearToy)}, pickled)
    with pytest.raises(DiffauditError, match="cannot be read safely"):
        get_embedder("dinov2", device="cpu", weights=pickled).embed(images)


# ------------------------------------------------------------------------------------------ cache


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

    monkeypatch.setattr(feat.TorchEmbedder, "_build", boom)
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
    assert d1.id == d2.id and feature_cache_path(images, d1, tmp_path) != feature_cache_path(images, d2, tmp_path)
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


# ------------------------------------------------------------------------------------------ CLI


def test_embed_command(images, tmp_path, capsys):
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "f.npy"
    cli_main(["embed", str(tmp_path / "x.npy"), "--features", "pixels:4", "--out", str(out), "--quiet"])
    np.testing.assert_array_equal(np.load(out), _block_mean(images, 4).astype(np.float32).reshape(2, -1))
    with pytest.raises(SystemExit) as e:
        cli_main(["embed", str(tmp_path / "x.npy"), "--features", "inception", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "DIFFAUDIT_INCEPTION_WEIGHTS" in err and "Traceback" not in err
