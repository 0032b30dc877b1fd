"""Denoiser networks F(x_in, c_noise) for the EDM preconditioning (``diffaudit.harness.edm``).

- ``MLPDenoiser``: vectors (n, d). Hidden layers h <- SiLU(W h + b + e(c_noise)), where e is a
  sinusoidal embedding of c_noise at geometric frequencies followed by a 2-layer MLP.
- ``UNet``: small images (n, c, h, w), 16 or 32 px: residual blocks (GroupNorm, SiLU, 3x3 conv, noise
  embedding added per block), `levels` resolutions, optional self-attention at the lowest one
  (after the DDPM/NCSN++ UNets of Ho et al. 2020 and Song et al. 2021, shrunk to CPU size).

A model is named by a spec string, ``"mlp:width=256,depth=4"`` or ``"unet:channels=32,levels=3"``;
``parse_model_spec`` validates it and ``build_network`` builds the module for a sample shape.

Class-conditional networks (``build_network(..., n_classes=K)``) take a third argument, ``F(x_in, c_noise,
class_labels)``: a learned embedding of the label (``nn.Embedding(K + 1, ...)``) is summed with the noise
embedding, as EDM's, ADM's (Dhariwal & Nichol 2021) and DiT's networks do. Row K of the table is the NULL
label: ``class_labels=None`` (or a label K) is the unconditional model of classifier-free guidance (Ho &
Salimans 2022), learned through label dropout (``diffaudit.harness.edm.drop_labels``). The embedding is
created after every other parameter and an unconditional network has none, so unconditional networks, their
initial weights and their state-dict keys are exactly those of before conditioning existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffaudit.errors import DiffauditError

# kind -> {key: (type, default, help)}
MODEL_KEYS: dict[str, dict[str, tuple[type, object, str]]] = {
    "mlp": {
        "width": (int, 256, "hidden width"),
        "depth": (int, 4, "number of hidden layers"),
        "emb_dim": (int, 64, "size of the sinusoidal noise embedding"),
    },
    "unet": {
        "channels": (int, 32, "channels at full resolution (multiple of 8)"),
        "levels": (int, 3, "number of resolutions (each halves the size)"),
        "blocks": (int, 1, "residual blocks per level"),
        "attention": (bool, False, "self-attention at the lowest resolution"),
        "emb_dim": (int, 64, "size of the sinusoidal noise embedding"),
    },
}


@dataclass(frozen=True)
class ModelConfig:
    kind: str  # "mlp" | "unet"
    params: dict = field(default_factory=dict)  # every key of MODEL_KEYS[kind], defaults filled in

    @property
    def spec(self) -> str:
        """The canonical spec string (all keys, fixed order): round-trips through ``parse_model_spec``."""
        vals = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.params.items())
        return f"{self.kind}:{vals}"


def _cast(kind: str, key: str, typ: type, raw: str, spec: str):
    try:
        if typ is bool:
            low = str(raw).lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError
            return low in ("true", "1")
        v = typ(raw)
    except (TypeError, ValueError):
        raise DiffauditError(f"model spec {spec!r}: {key}={raw!r} is not a valid {typ.__name__}.") from None
    if isinstance(v, int) and v < 1:
        raise DiffauditError(f"model spec {spec!r}: {key} must be >= 1, got {v}.")
    return v


def parse_model_spec(spec: str | ModelConfig) -> ModelConfig:
    """``"mlp:width=256,depth=4"`` -> ``ModelConfig("mlp", {...})``; unknown kind/key -> DiffauditError."""
    if isinstance(spec, ModelConfig):
        return spec
    kind, _, rest = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    if kind not in MODEL_KEYS:
        raise DiffauditError(
            f"unknown model {kind!r} in {spec!r}; choose one of: {', '.join(MODEL_KEYS)} "
            f"(e.g. 'mlp:width=256,depth=4')."
        )
    keys = MODEL_KEYS[kind]
    params = {k: d for k, (_, d, _) in keys.items()}
    for part in rest.split(","):
        if not part.strip():
            continue
        key, eq, val = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise DiffauditError(
                f"model spec {spec!r}: {part!r} is not key=value; write e.g. 'mlp:width=256,depth=4'."
            )
        if key not in keys:
            raise DiffauditError(
                f"model {kind!r} has no parameter {key!r}; valid parameters: {', '.join(keys)}."
            )
        params[key] = _cast(kind, key, keys[key][0], val.strip(), spec)
    return ModelConfig(kind, params)


def check_n_classes(n_classes) -> int | None:
    """None (an unconditional network) or a whole number of classes >= 2."""
    if n_classes is None:
        return None
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer) or n_classes < 2:
        raise DiffauditError(
            f"a class-conditional network needs n_classes, a whole number >= 2, got {n_classes!r}."
        )
    return int(n_classes)


def build_network(cfg: ModelConfig | str, shape: tuple[int, ...], n_classes: int | None = None):
    """The raw network F for samples of ``shape`` ((d,) for mlp, (c, h, w) for unet); with ``n_classes``
    a class-conditional one (module docstring), else unconditional."""
    cfg = parse_model_spec(cfg)
    shape = tuple(int(s) for s in shape)
    n_classes = check_n_classes(n_classes)
    p = cfg.params
    if cfg.kind == "mlp":
        if len(shape) != 1:
            raise DiffauditError(
                f"model 'mlp' needs vector data (n, d), got samples of shape {shape}; use 'unet' for images."
            )
        return MLPDenoiser(
            shape[0], width=p["width"], depth=p["depth"], emb_dim=p["emb_dim"], n_classes=n_classes
        )
    if len(shape) != 3 or shape[1] != shape[2]:
        raise DiffauditError(
            f"model 'unet' needs square images (n, c, h, h), got samples of shape {shape}; use 'mlp' for vectors."
        )
    if p["channels"] % 8:
        raise DiffauditError(
            f"model spec {cfg.spec!r}: channels must be a multiple of 8 (GroupNorm), got {p['channels']}."
        )
    size, levels = shape[1], p["levels"]
    if size % 2 ** (levels - 1) or size // 2 ** (levels - 1) < 4:
        raise DiffauditError(
            f"model spec {cfg.spec!r}: {levels} levels do not fit {size} px images; "
            f"use levels <= {max(1, int(math.log2(max(size // 4, 1))) + 1)}."
        )
    return UNet(
        shape[0],
        size,
        channels=p["channels"],
        levels=levels,
        blocks=p["blocks"],
        attention=p["attention"],
        emb_dim=p["emb_dim"],
        n_classes=n_classes,
    )


# --- modules -----------------------------------------------------------------------------------


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise at frequencies 2^0 .. 2^(emb_dim/2 - 1)/8 (c_noise = ln(s)/4 is
    O(1), so low frequencies carry the level and higher ones resolve it), then Linear-SiLU-Linear."""

    def __init__(self, emb_dim: int, out_dim: int):
        super().__init__()
        half = max(emb_dim // 2, 1)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(64.0), half)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = c_noise.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return self.mlp(torch.cat([a.cos(), a.sin()], dim=1))


def _embed(net, x: torch.Tensor, c_noise: torch.Tensor, class_labels) -> torch.Tensor:
    """The conditioning vector of ``net`` (an MLP or UNet): the noise embedding, plus the label embedding on a
    conditional network (``class_labels`` None = the null label); an unconditional one refuses labels."""
    e = net.emb(c_noise)
    if net.n_classes is not None:
        return e + net.label_emb(class_labels, x.shape[0], x.device).to(e.dtype)
    _unconditional(net, class_labels)
    return e


class LabelEmbedding(nn.Module):
    """Class label -> a learned vector, ``n_classes + 1`` rows: row ``n_classes`` is the NULL label (the
    unconditional model of classifier-free guidance). ``nn.Embedding``'s N(0, 1) initialisation, as ADM's
    ``label_emb``: summed with the noise embedding, it starts at that embedding's scale."""

    def __init__(self, n_classes: int, out_dim: int):
        super().__init__()
        self.n_classes = int(n_classes)
        self.table = nn.Embedding(self.n_classes + 1, out_dim)

    def forward(self, class_labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if class_labels is None:  # the null label for every row
            class_labels = torch.full((batch,), self.n_classes, dtype=torch.long, device=device)
        return self.table(class_labels.to(device=device, dtype=torch.long).reshape(-1))


def _unconditional(net: nn.Module, class_labels) -> None:
    if class_labels is not None:
        raise DiffauditError(
            f"{type(net).__name__} was built without classes and cannot take class labels; "
            "build it with n_classes to train a class-conditional network."
        )


class MLPDenoiser(nn.Module):
    """F(x_in, c_noise[, class_labels]) for vectors: ``depth`` hidden layers of ``width``, the noise embedding
    (plus the label embedding of a conditional network) added to each."""

    def __init__(
        self, d: int, width: int = 256, depth: int = 4, emb_dim: int = 64, n_classes: int | None = None
    ):
        super().__init__()
        self.d, self.width, self.depth = int(d), int(width), int(depth)
        self.n_classes = None if n_classes is None else int(n_classes)
        self.emb = NoiseEmbedding(emb_dim, width)
        self.layers = nn.ModuleList([nn.Linear(d if i == 0 else width, width) for i in range(depth)])
        self.act = nn.SiLU()
        self.out = nn.Linear(width, d)
        if self.n_classes is not None:  # created last: the other parameters draw what they drew before
            self.label_emb = LabelEmbedding(self.n_classes, width)

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        e = _embed(self, x, c_noise, class_labels)
        h = x
        for layer in self.layers:
            h = self.act(layer(h) + e)
        return self.out(h)


def _groups(ch: int) -> int:
    g = min(8, ch)
    while ch % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_ch: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_ch, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) + h) / math.sqrt(2)


class SelfAttention(nn.Module):
    """Single-head self-attention over pixels, residual (as at the 16x16 level of DDPM)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", a, v).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


class UNet(nn.Module):
    """Small UNet F(x_in, c_noise[, class_labels]) for (c, size, size) images; channels double per level up
    to 4x. A conditional UNet sums the label embedding with the noise embedding before the SiLU (ADM)."""

    def __init__(
        self,
        img_channels: int,
        size: int,
        channels: int = 32,
        levels: int = 3,
        blocks: int = 1,
        attention: bool = False,
        emb_dim: int = 64,
        n_classes: int | None = None,
    ):
        super().__init__()
        self.size = int(size)
        self.n_classes = None if n_classes is None else int(n_classes)
        emb_ch = 4 * channels
        self.emb = NoiseEmbedding(emb_dim, emb_ch)
        chs = [channels * min(2**i, 4) for i in range(levels)]
        self.conv_in = nn.Conv2d(img_channels, chs[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = []
        cur = chs[0]
        for i, ch in enumerate(chs):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(cur, ch, emb_ch))
                cur = ch
                skips.append(cur)
            self.down.append(level)
            self.downsample.append(
                nn.Conv2d(cur, cur, 3, stride=2, padding=1) if i < levels - 1 else nn.Identity()
            )
        self.mid1 = ResBlock(cur, cur, emb_ch)
        self.attn = SelfAttention(cur) if attention else nn.Identity()
        self.mid2 = ResBlock(cur, cur, emb_ch)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(levels)):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(cur + skips.pop(), chs[i], emb_ch))
                cur = chs[i]
            self.up.append(level)
            self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1) if i > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.conv_out = nn.Conv2d(cur, img_channels, 3, padding=1)
        if self.n_classes is not None:  # created last: the other parameters draw what they drew before
            self.label_emb = LabelEmbedding(self.n_classes, emb_ch)

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        e = _embed(self, x, c_noise, class_labels)
        e = F.silu(e)
        h = self.conv_in(x)
        hs = []
        for level, down in zip(self.down, self.downsample, strict=True):
            for block in level:
                h = block(h, e)
                hs.append(h)
            h = down(h)
        h = self.mid2(self.attn(self.mid1(h, e)), e)
        for level, up in zip(self.up, self.upsample, strict=True):
            for block in level:
                h = block(torch.cat([h, hs.pop()], dim=1), e)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
