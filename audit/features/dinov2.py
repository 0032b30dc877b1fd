"""``dinov2`` / ``dinov2:vits14|vitb14|vitl14|vitg14`` (``_reg`` suffix for the register variants).

DINOv2 CLS token after the final norm (``x_norm_clstoken``; 1024-d for ViT-L/14, the feature used by
Stein et al. 2023, "Exposing flaws of generative model evaluation metrics"). torch hub is not used; a
small ViT here reproduces the official architecture (Oquab et al. 2023) and reads the official state
dicts unchanged: ``dinov2_vitl14_pretrain.pth`` (or ``_reg4_``, other sizes) from the DINOv2 release, or
a ``.safetensors`` with the same keys (Hugging Face ``transformers`` checkpoints use other key names and
are NOT supported). Weights: ``weights=`` / env ``DIFFAUDIT_DINOV2_WEIGHTS``; the architecture is read
from the file (default ``vitl14`` for random init). Input resized to 224 x 224 bicubic (antialiased),
[0, 1], ImageNet mean/std. tests/audit/features/test_features_dinov2.py compares the forward with a
float64 transcription of the official one (position-grid interpolation with the +0.1 offset, register
tokens, layer scale).

torch is imported inside functions (and the ViT class is made on first use): a heavy optional
dependency, kept off ``import diffaudit.features``.
"""

from __future__ import annotations

import math
from typing import Any

from diffaudit.errors import DiffauditError
from diffaudit.features.torch_base import TorchEmbedder, load_state_dict, resize

ENV_DINOV2 = "DIFFAUDIT_DINOV2_WEIGHTS"

DINOV2_ARCHS = {  # name: (embed_dim, depth, ffn)  -- heads = embed_dim // 64 in every DINOv2 model
    "vits14": (384, 12, "mlp"),
    "vitb14": (768, 12, "mlp"),
    "vitl14": (1024, 24, "mlp"),
    "vitg14": (1536, 40, "swiglu"),
}


class DinoV2Embedder(TorchEmbedder):
    """DINOv2 CLS token (after the final LayerNorm), from an official state dict."""

    name = "dinov2"
    env_var = ENV_DINOV2
    what = "DINOv2"
    size = 224  # multiple of the patch size 14
    mean = (0.485, 0.456, 0.406)  # ImageNet
    std = (0.229, 0.224, 0.225)

    def __init__(self, arch: str | None = None, **kw) -> None:
        if arch is not None:
            base = arch.removesuffix("_reg")
            if base not in DINOV2_ARCHS:
                raise DiffauditError(
                    f"feature space 'dinov2:{arch}': unknown architecture; pick one of "
                    f"{', '.join(DINOV2_ARCHS)} (append _reg for register models)."
                )
        super().__init__(spec="dinov2" + (f":{arch}" if arch else ""), **kw)
        self.arch = arch

    @property
    def id(self) -> str:
        arch = self.arch or ("vitl14" if self.random_init else "auto")
        return f"dinov2:{arch}:{self._weights_tag()}:cls:resize{self.size}-bicubic-aa:imagenet-norm"

    def params(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "resize": "bicubic-antialias",
            "mean": self.mean,
            "std": self.std,
            "token": "cls",
        }

    def _build(self):
        if self.weights_path is None:
            arch = self.arch or "vitl14"
            dim, depth, ffn = DINOV2_ARCHS[arch.removesuffix("_reg")]
            return DinoViT(dim, depth, ffn=ffn, n_registers=4 if arch.endswith("_reg") else 0)
        sd = load_state_dict(self.weights_path, self.what)
        try:
            cfg = DinoViT.config_from_state_dict(sd)
        except KeyError as e:
            raise DiffauditError(
                f"DINOv2 weights {str(self.weights_path)!r} lack the key {e}; pass an official DINOv2 state dict "
                "(e.g. dinov2_vitl14_pretrain.pth), not a Hugging Face transformers checkpoint."
            ) from None
        if self.arch is not None:
            want = DINOV2_ARCHS[self.arch.removesuffix("_reg")]
            if (cfg["dim"], cfg["depth"]) != want[:2] or (cfg["n_registers"] > 0) != self.arch.endswith(
                "_reg"
            ):
                raise DiffauditError(
                    f"DINOv2 weights {str(self.weights_path)!r} are not {self.arch} (dim {cfg['dim']}, depth "
                    f"{cfg['depth']}, {cfg['n_registers']} registers); use 'dinov2' to take the architecture from the file."
                )
        net = DinoViT(**cfg)
        sd = {k: v for k, v in sd.items() if k != "mask_token"}
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise DiffauditError(
                f"DINOv2 weights {str(self.weights_path)!r} do not match the DINOv2 ViT ({str(e).splitlines()[0][:120]}); "
                "pass an official DINOv2 backbone state dict."
            ) from None
        return net

    def _preprocess(self, xb):
        x01 = ((resize(xb, self.size, "bicubic") + 1) / 2).clamp(0, 1)
        mean = x01.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x01.new_tensor(self.std).view(1, 3, 1, 1)
        return (x01 - mean) / std


def _dino_modules():
    """The DINOv2 ViT (Oquab et al. 2023), parameter names as in facebookresearch/dinov2 (block_chunks=0)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PatchEmbed(nn.Module):
        def __init__(self, patch: int, dim: int) -> None:
            super().__init__()
            self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class Attention(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.heads = dim // 64
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v)
            return self.proj(y.transpose(1, 2).reshape(b, n, d))

    class LayerScale(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

        def forward(self, x):
            return x * self.gamma

    class Mlp(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class SwiGLU(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.w12 = nn.Linear(dim, 2 * hidden)
            self.w3 = nn.Linear(hidden, dim)

        def forward(self, x):
            x1, x2 = self.w12(x).chunk(2, dim=-1)
            return self.w3(F.silu(x1) * x2)

    class Block(nn.Module):
        def __init__(self, dim: int, ffn: str, hidden: int) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention(dim)
            self.ls1 = LayerScale(dim)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, hidden) if ffn == "mlp" else SwiGLU(dim, hidden)
            self.ls2 = LayerScale(dim)

        def forward(self, x):
            x = x + self.ls1(self.attn(self.norm1(x)))
            return x + self.ls2(self.mlp(self.norm2(x)))

    return PatchEmbed, Block


def _make_dino_vit_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    PatchEmbed, Block = _dino_modules()

    class _DinoViT(nn.Module):
        def __init__(
            self,
            dim: int,
            depth: int,
            *,
            patch: int = 14,
            ffn: str = "mlp",
            hidden: int | None = None,
            n_pos: int = 37 * 37,
            n_registers: int = 0,
        ) -> None:
            super().__init__()
            if (
                hidden is None
            ):  # dinov2: mlp_ratio 4; SwiGLUFFNFused shrinks the hidden width to 2/3, multiple of 8
                hidden = 4 * dim if ffn == "mlp" else (int(4 * dim * 2 / 3) + 7) // 8 * 8
            self.patch = patch
            self.patch_embed = PatchEmbed(patch, dim)
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
            self.pos_embed = nn.Parameter(torch.randn(1, 1 + n_pos, dim) * 0.02)
            if n_registers:
                self.register_tokens = nn.Parameter(torch.zeros(1, n_registers, dim))
            self.blocks = nn.ModuleList([Block(dim, ffn, hidden) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)

        @staticmethod
        def config_from_state_dict(sd: dict) -> dict:
            dim = int(sd["cls_token"].shape[-1])
            depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
            swiglu = "blocks.0.mlp.w12.weight" in sd
            hidden = int(
                sd["blocks.0.mlp.w3.weight"].shape[1] if swiglu else sd["blocks.0.mlp.fc1.weight"].shape[0]
            )
            return {
                "dim": dim,
                "depth": depth,
                "patch": int(sd["patch_embed.proj.weight"].shape[-1]),
                "ffn": "swiglu" if swiglu else "mlp",
                "hidden": hidden,
                "n_pos": int(sd["pos_embed"].shape[1]) - 1,
                "n_registers": int(sd["register_tokens"].shape[1]) if "register_tokens" in sd else 0,
            }

        def interpolate_pos_encoding(self, n_h: int, n_w: int):
            # As dinov2: bicubic with scale factor (n + 0.1) / M, no antialias, in float32.
            pos = self.pos_embed.float()
            n = pos.shape[1] - 1
            m = int(math.sqrt(n))
            if n_h == m and n_w == m:
                return pos
            patch_pos = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(
                patch_pos, scale_factor=((n_h + 0.1) / m, (n_w + 0.1) / m), mode="bicubic", antialias=False
            )
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, n_h * n_w, -1)
            return torch.cat([pos[:, :1], patch_pos], dim=1)

        def forward(self, x):
            b, _, h, w = x.shape
            t = self.patch_embed(x)
            t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
            t = t + self.interpolate_pos_encoding(h // self.patch, w // self.patch).to(t.dtype)
            if hasattr(self, "register_tokens"):
                t = torch.cat([t[:, :1], self.register_tokens.expand(b, -1, -1), t[:, 1:]], dim=1)
            for blk in self.blocks:
                t = blk(t)
            return self.norm(t)[:, 0]

    return _DinoViT


class _LazyDinoViT:
    """``DinoViT(...)`` builds the torch module; the class is created on first use to keep imports cheap."""

    _cls = None

    def _get(self):
        if _LazyDinoViT._cls is None:
            _LazyDinoViT._cls = _make_dino_vit_class()
        return _LazyDinoViT._cls

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def config_from_state_dict(self, sd: dict) -> dict:
        return self._get().config_from_state_dict(sd)


DinoViT = _LazyDinoViT()
