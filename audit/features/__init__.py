"""Feature spaces ("embedders"): one registry mapping samples in the normal form to ``(n, D)`` float32.

``get_embedder(spec)`` builds one; ``Embedder.embed(x)`` runs it in batches; ``embed_cached(x, embedder)``
memoises features on disk, keyed by SHA-256 of the input array bytes + ``Embedder.id`` + every
preprocessing parameter (like clean-fid's reference statistics). A cache hit never builds or loads a
network: networks are constructed lazily on the first ``embed`` call.

Specs and the files they need (nothing is ever downloaded unless ``allow_download=True`` /
``--allow-download`` is given, and only ``clip`` can download at all):

``pixels``
    Flatten each sample (vectors pass through). ``pixels:K`` first area-downsamples images to K x K
    (block mean when the size divides, else ``adaptive_avg_pool2d`` = ``interpolate(mode="area")``).

``inception``
    torchvision Inception-v3 pool features (2048-d, after the global average pool). Weights from a
    local file: ``weights=`` / ``--weights`` or env ``DIFFAUDIT_INCEPTION_WEIGHTS``; a torchvision state
    dict (``.pth``) or ``.safetensors`` with the same keys. Input: resized to 299 x 299 bilinear
    (``align_corners=False``) and fed in [-1, 1], the scaling these (TF-ported) weights expect -- the
    same as torchvision's ``transform_input=True`` and pytorch-fid's ``normalize_input``.
    **Standard FID numbers** need the FID Inception weights ``pt_inception-2015-12-05-6726825d.pth``
    (the TF 2015-12-05 graph ported by pytorch-fid). A state dict whose ``fc`` has 1008 outputs is
    recognised as that file and run through pytorch-fid's FID blocks (average pools that exclude
    padding, max pool in the last block), i.e. the pytorch-fid recipe. torchvision's
    ``IMAGENET1K_V1`` weights (``inception_v3_google-0cc3c7bd.pth``) run the plain torchvision network
    and give *different* numbers: fine for relative comparisons, not comparable to published FIDs.
    ``inception:fid`` / ``inception:torchvision`` force the architecture (e.g. for random init).
    Checked once against pytorch-fid 0.3's ``InceptionV3([3])`` loaded with the same (random) 1008-way
    state dict: pool features agree to 2e-7 relative (float32 round-off).

``clip:ARCH``
    open_clip image embeddings of architecture ARCH (``open_clip.list_models()``), L2-normalised.
    Weights: ``weights=`` / env ``DIFFAUDIT_CLIP_WEIGHTS`` is a local checkpoint file, or a pretrained
    tag (e.g. ``openai``, ``laion2b_s34b_b79k``) looked up in open_clip's local cache only
    (``~/.cache/clip`` or the Hugging Face cache); with ``allow_download=True`` a missing tag is
    fetched. For OpenAI weights from a file use the ``-quickgelu`` architecture name. Preprocessing:
    shortest side resized to the model's image size (bicubic, antialiased, on tensors rather than
    PIL), centre crop, [0, 1], the model's mean/std.

``dinov2`` / ``dinov2:vits14|vitb14|vitl14|vitg14`` (``_reg`` suffix for the register variants)
    DINOv2 CLS token after the final norm (``x_norm_clstoken``; 1024-d for ViT-L/14, the feature used
    by Stein et al. 2023, "Exposing flaws of generative model evaluation metrics"). torch hub is not
    used; a small ViT here reproduces the official architecture and reads the official state dicts
    unchanged: ``dinov2_vitl14_pretrain.pth`` (or ``_reg4_``, other sizes) from the DINOv2 release,
    or a ``.safetensors`` with the same keys (Hugging Face ``transformers`` checkpoints use other
    key names and are NOT supported). Weights: ``weights=`` / env ``DIFFAUDIT_DINOV2_WEIGHTS``; the
    architecture is read from the file (default ``vitl14`` for random init). Input resized to
    224 x 224 bicubic (antialiased), [0, 1], ImageNet mean/std. tests/test_features.py compares the
    forward with a float64 transcription of the official one (position-grid interpolation with the
    +0.1 offset, register tokens, layer scale).

``oracle``
    The synthetic dataset's own factor encoder ``dataset.project(x)[0]`` (needs ``dataset=``).

``random_init=True`` builds the networks with seeded random weights, for plumbing tests only:
``Embedder.random_init`` is then True and the id contains ``random-init`` so reports can say so.
The device (``auto|cpu|cuda``) is not part of the id: CPU and GPU features differ only by float
round-off and share cache entries.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_path, atomic_write_json
from diffaudit.hashing import array_sha256, cache_key, params_sha256
from diffaudit.paths import cache_root

ENV_INCEPTION = "DIFFAUDIT_INCEPTION_WEIGHTS"
ENV_CLIP = "DIFFAUDIT_CLIP_WEIGHTS"
ENV_DINOV2 = "DIFFAUDIT_DINOV2_WEIGHTS"
RANDOM_SEED = 0  # random-init weights are seeded so plumbing tests are reproducible

EMBEDDERS = ("pixels", "inception", "clip", "dinov2", "oracle")

__all__ = [
    "EMBEDDERS",
    "Embedder",
    "available_embedders",
    "default_cache_dir",
    "embed_cached",
    "get_embedder",
]


def available_embedders() -> list[str]:
    return ["pixels", "pixels:K", "inception", "clip:ARCH", "dinov2", "oracle"]


# ------------------------------------------------------------------------------------------ registry


def get_embedder(
    spec: str,
    *,
    device: str = "auto",
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    dataset=None,
    allow_download: bool = False,
) -> Embedder:
    """Build the embedder named by ``spec`` (see the module docstring). Nothing heavy is loaded here."""
    spec = str(spec).strip()
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    arg = arg.strip()
    if name not in EMBEDDERS:
        raise DiffauditError(
            f"unknown feature space {spec!r}; choose one of: {', '.join(available_embedders())}."
        )
    if name in ("pixels", "oracle"):
        if weights is not None or random_init:
            raise DiffauditError(f"feature space {spec!r} has no network weights; drop --weights / --random-init.")
        if name == "pixels":
            return PixelsEmbedder(_parse_size(arg, spec))
        if arg:
            raise DiffauditError(f"feature space {spec!r}: oracle takes no argument; write 'oracle'.")
        if dataset is None:
            raise DiffauditError(
                "feature space 'oracle' needs the synthetic dataset that made the data; pass dataset= (--dataset SPEC)."
            )
        return OracleEmbedder(dataset)
    if random_init and weights is not None:
        raise DiffauditError(f"feature space {spec!r}: pass either weights or random_init, not both.")
    if name == "inception":
        if arg not in ("", "fid", "torchvision"):
            raise DiffauditError(f"feature space {spec!r}: write 'inception', 'inception:fid' or 'inception:torchvision'.")
        return InceptionEmbedder(variant=arg or None, device=device, weights=weights, random_init=random_init)
    if name == "clip":
        if not arg:
            raise DiffauditError(f"feature space {spec!r}: name the open_clip architecture, e.g. 'clip:ViT-B-32'.")
        return ClipEmbedder(arg, device=device, weights=weights, random_init=random_init, allow_download=allow_download)
    return DinoV2Embedder(arg or None, device=device, weights=weights, random_init=random_init)


def _parse_size(arg: str, spec: str) -> int | None:
    if not arg:
        return None
    try:
        k = int(arg)
    except ValueError:
        k = 0
    if k < 1:
        raise DiffauditError(f"feature space {spec!r}: the size must be a positive integer, e.g. 'pixels:16'.")
    return k


# ------------------------------------------------------------------------------------------ base


class Embedder:
    """Maps samples in the normal form to ``(n, D)`` float32 features.

    ``id`` encodes everything that changes the numbers; ``params()`` lists the preprocessing
    parameters (both go into the cache key). ``n_loads`` counts network constructions (0 for a
    cache hit).
    """

    name: str = ""
    random_init: bool = False
    needs_images: bool = False

    def __init__(self) -> None:
        self.n_loads = 0

    @property
    def id(self) -> str:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def embed(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    # shared checks
    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise DiffauditError(f"{self.name} features: input has dtype {x.dtype}; pass samples in the normal form.")
        if x.ndim not in (2, 4):
            raise DiffauditError(
                f"{self.name} features: input has shape {x.shape}; pass vectors (n, d) or images (n, c, h, w) "
                "(load files with diffaudit.datasets.loading.load_samples)."
            )
        if self.needs_images:
            if x.ndim != 4:
                raise DiffauditError(
                    f"{self.name} features need images (n, c, h, w), got vectors {x.shape}; use 'pixels' "
                    "or 'oracle' features for vector data."
                )
            if x.shape[1] not in (1, 3):
                raise DiffauditError(
                    f"{self.name} features need 1- or 3-channel images, got {x.shape[1]} channels; "
                    "convert the images to grayscale or RGB."
                )
        if x.shape[0] == 0:
            raise DiffauditError(f"{self.name} features: input has no samples; pass at least one.")
        return x


def _progress(total: int, enabled: bool, label: str):
    """A rich progress bar on stderr (a no-op context when disabled)."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )

    @contextlib.contextmanager
    def ctx():
        with prog:
            task = prog.add_task(label, total=total)
            yield lambda k: prog.advance(task, k)

    return ctx()


# ------------------------------------------------------------------------------------------ pixels


class PixelsEmbedder(Embedder):
    """Flattened pixels, optionally area-downsampled to ``size x size`` first (images only)."""

    name = "pixels"

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        self.size = size

    @property
    def id(self) -> str:
        return "pixels" if self.size is None else f"pixels:{self.size}:area"

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "resample": None if self.size is None else "area"}

    def embed(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        x = self._check_input(x)
        if self.size is not None:
            if x.ndim != 4:
                raise DiffauditError(
                    f"feature space 'pixels:{self.size}' downsamples images, but the input is vectors {x.shape}; "
                    "use 'pixels'."
                )
            x = area_downsample(x, self.size)
        return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def area_downsample(x: np.ndarray, size: int) -> np.ndarray:
    """``(n, c, h, w)`` -> ``(n, c, size, size)`` by area averaging (float64 sums, float32 out)."""
    n, c, h, w = x.shape
    if h < size or w < size:
        raise DiffauditError(
            f"feature space 'pixels:{size}': images are {h}x{w}, smaller than {size}x{size}; use 'pixels' "
            "or a smaller size."
        )
    if h % size == 0 and w % size == 0:
        fh, fw = h // size, w // size
        out = x.reshape(n, c, size, fh, size, fw).mean(axis=(3, 5), dtype=np.float64)
        return out.astype(np.float32)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    return F.adaptive_avg_pool2d(t, (size, size)).numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------ oracle


class OracleEmbedder(Embedder):
    """Factor estimates of the synthetic dataset that generated the data: ``dataset.project(x)[0]``."""

    name = "oracle"

    def __init__(self, dataset) -> None:
        super().__init__()
        self.dataset = dataset

    @property
    def id(self) -> str:
        return f"oracle:{self.dataset.spec}"

    def params(self) -> dict[str, Any]:
        return {"dataset": self.dataset.name, "dataset_params": self.dataset.params()}

    def embed(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        x = self._check_input(x)
        if tuple(x.shape[1:]) != tuple(self.dataset.shape):
            raise DiffauditError(
                f"oracle features: samples have shape {tuple(x.shape[1:])} but dataset {self.dataset.spec!r} makes "
                f"{tuple(self.dataset.shape)}; pass the dataset that generated the data."
            )
        out = []
        with _progress(len(x), progress, "oracle") as adv:
            for i in range(0, len(x), batch_size):
                z = np.asarray(self.dataset.project(x[i : i + batch_size])[0], dtype=np.float64)
                out.append(z.reshape(len(z), -1))
                if adv:
                    adv(len(z))
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


# ------------------------------------------------------------------------------------------ networks

_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) within the process."""
    st = path.stat()
    k = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[k] = h.hexdigest()
    return _HASHES[k]


def _resolve_weight_file(weights, env: str, what: str, spec: str) -> Path:
    src = weights if weights is not None else os.environ.get(env) or None
    if src is None:
        raise DiffauditError(
            f"feature space {spec!r} needs a local {what} weight file; pass weights= (--weights PATH) or set "
            f"{env} (random weights for plumbing tests only: random_init=True / --random-init)."
        )
    p = Path(os.fspath(src)).expanduser()
    origin = "weights=" if weights is not None else env
    if not p.is_file():
        raise DiffauditError(f"{what} weights {str(p)!r} (from {origin}) do not exist; fix the path in {origin}.")
    return p


def load_state_dict(path: Path, what: str) -> dict:
    """A state dict from ``.safetensors`` or ``torch.load(weights_only=True)``; strips ``module.``."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DiffauditError(
            f"{what} weights {str(path)!r} cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
            "pass a plain state dict (.pth saved with torch.save(model.state_dict())) or .safetensors."
        ) from None
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DiffauditError(f"{what} weights {str(path)!r} are not a state dict of tensors; save model.state_dict().")
    return {k.removeprefix("module."): v for k, v in sd.items()}


class TorchEmbedder(Embedder):
    """Shared machinery: lazy network, batched inference, float32 output."""

    needs_images = True
    env_var = ""
    what = ""

    def __init__(self, *, device="auto", weights=None, random_init=False, spec="") -> None:
        super().__init__()
        from diffaudit.device import resolve_device

        self.spec = spec
        self.device = resolve_device(device)
        self.random_init = bool(random_init)
        self.weights_path: Path | None = None
        if not self.random_init:
            self.weights_path = _resolve_weight_file(weights, self.env_var, self.what, spec)
        self._net = None

    def _weights_tag(self) -> str:
        if self.random_init:
            return f"random-init(seed={RANDOM_SEED})"
        return "sha256=" + file_sha256(self.weights_path)[:16]

    @property
    def network(self):
        """The network, built (and weights loaded) on first use."""
        if self._net is None:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                net = self._build()
            self._net = net.eval().requires_grad_(False).to(self.device)
            self.n_loads += 1
        return self._net

    def _build(self):
        raise NotImplementedError

    def _preprocess(self, xb):
        raise NotImplementedError

    def _forward(self, net, xb):
        return net(xb)

    def embed(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        import torch

        x = self._check_input(x)
        if batch_size < 1:
            raise DiffauditError(f"batch_size must be at least 1, got {batch_size}.")
        net = self.network
        out = np.empty((len(x), 0), np.float32)
        chunks = []
        with _progress(len(x), progress, self.name) as adv, torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(self.device)
                if xb.shape[1] == 1:
                    xb = xb.expand(-1, 3, -1, -1)
                f = self._forward(net, self._preprocess(xb))
                chunks.append(f.float().reshape(len(xb), -1).cpu().numpy())
                if adv:
                    adv(len(xb))
        out = np.concatenate(chunks) if chunks else out
        return np.ascontiguousarray(out, dtype=np.float32)


def _resize(xb, size: int, mode: str):
    import torch.nn.functional as F

    if tuple(xb.shape[-2:]) == (size, size):
        return xb
    if mode == "bilinear":
        return F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
    return F.interpolate(xb, size=(size, size), mode=mode, align_corners=False, antialias=True)


# ------------------------------------------------------------------------------------------ inception


class InceptionEmbedder(TorchEmbedder):
    """Inception-v3 2048-d pool features (torchvision network; FID blocks for the FID weights)."""

    name = "inception"
    env_var = ENV_INCEPTION
    what = "Inception-v3"
    size = 299  # input resolution of the FID recipe; tests lower it (>= 75) to stay fast

    def __init__(self, variant: str | None = None, **kw) -> None:
        super().__init__(spec="inception" + (f":{variant}" if variant else ""), **kw)
        self.variant = variant

    @property
    def id(self) -> str:
        arch = self.variant or ("torchvision" if self.random_init else "auto")
        return f"inception-v3:{arch}:{self._weights_tag()}:pool2048:resize{self.size}-bilinear:input[-1,1]"

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "resize": "bilinear", "align_corners": False, "input_range": [-1, 1]}

    def _build(self):
        import torch

        sd = None
        if self.weights_path is not None:
            sd = load_state_dict(self.weights_path, self.what)
            sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
            if "fc.weight" not in sd:
                raise DiffauditError(
                    f"Inception-v3 weights {str(self.weights_path)!r} have no fc.weight; pass a torchvision "
                    "inception_v3 or pytorch-fid pt_inception state dict."
                )
        num_classes = int(sd["fc.weight"].shape[0]) if sd is not None else 1000
        variant = self.variant or ("fid" if num_classes == 1008 else "torchvision")
        net = _fid_inception(num_classes) if variant == "fid" else _tv_inception(num_classes)
        if sd is not None:
            try:
                net.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise DiffauditError(
                    f"Inception-v3 weights {str(self.weights_path)!r} do not fit the {variant} Inception-v3 "
                    f"({str(e).splitlines()[0][:120]}); pass a torchvision or pytorch-fid Inception state dict."
                ) from None
        net.fc = torch.nn.Identity()
        self.resolved_variant = variant
        return net

    def _preprocess(self, xb):
        return _resize(xb.clamp(-1, 1), self.size, "bilinear")


def _tv_inception(num_classes: int):
    from torchvision.models.inception import Inception3

    return Inception3(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=False)


def _fid_inception(num_classes: int):
    """pytorch-fid's ``fid_inception_v3``: torchvision's graph with the TF pooling of the FID network."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

    class FIDInceptionA(InceptionA):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
            return [b1, b5, b3, bp]

    class FIDInceptionC(InceptionC):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                bd = layer(bd)
            bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
            return [b1, b7, bd, bp]

    class FIDInceptionE(InceptionE):
        max_pool = False  # pytorch-fid: Mixed_7b averages (excluding padding), Mixed_7c max-pools

        def _forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            if self.max_pool:
                bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                bp = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
            return [b1, b3, bd, self.branch_pool(bp)]

    net = Inception3(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE(1280)
    net.Mixed_7c = FIDInceptionE(2048)
    net.Mixed_7c.max_pool = True
    return net


# ------------------------------------------------------------------------------------------ clip


class ClipEmbedder(TorchEmbedder):
    """open_clip image embeddings, L2-normalised."""

    name = "clip"
    env_var = ENV_CLIP
    what = "CLIP"

    def __init__(self, arch: str, *, device="auto", weights=None, random_init=False, allow_download=False) -> None:
        import open_clip

        if arch not in open_clip.list_models():
            raise DiffauditError(
                f"feature space 'clip:{arch}': unknown open_clip architecture; pick one of open_clip.list_models() "
                "(e.g. ViT-B-32, ViT-L-14)."
            )
        self.arch = arch
        self.tag: str | None = None
        self.quick_gelu = False
        src = weights if weights is not None else (None if random_init else os.environ.get(ENV_CLIP) or None)
        if src is not None and not Path(os.fspath(src)).expanduser().is_file():
            tag = str(src)
            if "/" in tag or "\\" in tag or Path(tag).suffix:
                origin = "weights=" if weights is not None else ENV_CLIP
                raise DiffauditError(f"CLIP weights {tag!r} (from {origin}) do not exist; fix the path in {origin}.")
            weights = _clip_cached_file(arch, tag, allow_download)
            self.tag = tag
            self.quick_gelu = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
        elif src is not None:
            weights = src
        super().__init__(device=device, weights=weights, random_init=random_init, spec=f"clip:{arch}")
        cfg = open_clip.get_model_config(arch) or {}
        vision = cfg.get("vision_cfg", {})
        size = vision.get("image_size", 224)
        self.size = int(size if isinstance(size, int) else size[0])
        pp = cfg.get("preprocess_cfg", {})
        self.mean = tuple(float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD))

    @property
    def id(self) -> str:
        tag = f"tag={self.tag}:" if self.tag else ""
        return (
            f"clip:{self.arch}:{tag}{self._weights_tag()}:quickgelu={int(self.quick_gelu)}:"
            f"resize{self.size}-bicubic-aa-centercrop:l2norm"
        )

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "resize": "bicubic-antialias", "crop": "center", "mean": self.mean, "std": self.std}

    def _build(self):
        import open_clip

        try:
            model = open_clip.create_model(
                self.arch,
                pretrained=None if self.weights_path is None else str(self.weights_path),
                force_quick_gelu=self.quick_gelu,
                device="cpu",
            )
        except Exception as e:
            raise DiffauditError(
                f"CLIP weights {str(self.weights_path)!r} do not load into open_clip {self.arch!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); pass the checkpoint made "
                "for this architecture."
            ) from None
        return model

    def _preprocess(self, xb):
        import torch.nn.functional as F

        h, w = xb.shape[-2:]
        s = self.size
        if (h, w) != (s, s):
            nh, nw = (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)
            xb = F.interpolate(xb, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            xb = xb[..., top : top + s, left : left + s]
        x01 = ((xb + 1) / 2).clamp(0, 1)
        mean = x01.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x01.new_tensor(self.std).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def _forward(self, net, xb):
        import torch.nn.functional as F

        return F.normalize(net.encode_image(xb).float(), dim=-1)


def _clip_cached_file(arch: str, tag: str, allow_download: bool) -> str:
    """Local file of open_clip's pretrained ``(arch, tag)``; from the cache only unless downloads are allowed."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise DiffauditError(
            f"CLIP weights {tag!r}: not a file and not an open_clip tag of {arch}; pass a local checkpoint path "
            f"or one of: {', '.join(tags) or '(none)'}."
        )
    if "file" in cfg and os.path.isfile(cfg["file"]):
        return cfg["file"]
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache

            model_id, filename = (hub[:-1], "") if hub.endswith("/") else os.path.split(hub)
            names = [n for n in ("open_clip_model.safetensors", filename, "open_clip_pytorch_model.bin") if n]
            for fn in names:
                hit = try_to_load_from_cache(model_id, fn)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        except ImportError:
            pass
    url = cfg.get("url", "")
    if url:
        local = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(local):
            return local
    if not allow_download:
        raise DiffauditError(
            f"CLIP weights {arch}/{tag} are not in open_clip's local cache; pass a local file with weights= "
            f"(--weights PATH or {ENV_CLIP}) or allow the download with allow_download=True (--allow-download)."
        )
    try:
        return open_clip.pretrained.download_pretrained(cfg)
    except Exception as e:
        raise DiffauditError(
            f"CLIP weights {arch}/{tag}: download failed ({type(e).__name__}); fetch the file yourself and pass it "
            "with --weights."
        ) from None


# ------------------------------------------------------------------------------------------ dinov2

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
        return {"size": self.size, "resize": "bicubic-antialias", "mean": self.mean, "std": self.std, "token": "cls"}

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
            if (cfg["dim"], cfg["depth"]) != want[:2] or (cfg["n_registers"] > 0) != self.arch.endswith("_reg"):
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
        x01 = ((_resize(xb, self.size, "bicubic") + 1) / 2).clamp(0, 1)
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
        def __init__(self, dim: int, depth: int, *, patch: int = 14, ffn: str = "mlp", hidden: int | None = None,
                     n_pos: int = 37 * 37, n_registers: int = 0) -> None:
            super().__init__()
            if hidden is None:  # dinov2: mlp_ratio 4; SwiGLUFFNFused shrinks the hidden width to 2/3, multiple of 8
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
            hidden = int(sd["blocks.0.mlp.w3.weight"].shape[1] if swiglu else sd["blocks.0.mlp.fc1.weight"].shape[0])
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


# ------------------------------------------------------------------------------------------ cache


def default_cache_dir() -> Path:
    """``$DIFFAUDIT_CACHE_DIR`` or ``~/.cache/diffaudit``."""
    return cache_root()


def feature_cache_path(x: np.ndarray, embedder: Embedder, cache_dir=None) -> Path:
    """Where ``embed_cached`` keeps the features of ``x``: the key covers input bytes, id and parameters."""
    root = Path(os.fspath(cache_dir)).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(array_sha256(np.asarray(x)), embedder.id, params_sha256(embedder.params()))
    return root / "features" / f"{embedder.name}-{key}.npy"


def embed_cached(
    x, embedder: Embedder, cache_dir=None, progress: bool = False, batch_size: int = 256
) -> np.ndarray:
    """``embedder.embed(x)``, memoised on disk (atomic writes). A hit never builds the network."""
    x = np.asarray(x)
    path = feature_cache_path(x, embedder, cache_dir)
    if path.is_file():
        try:
            f = np.load(path, allow_pickle=False)
            if f.ndim == 2 and f.shape[0] == len(x) and f.dtype == np.float32:
                return f
        except (OSError, ValueError, EOFError):
            pass  # unreadable entry: recompute and overwrite it atomically
    f = embedder.embed(x, batch_size=batch_size, progress=progress)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, f, allow_pickle=False)
    try:
        atomic_write_json(
            path.with_suffix(".json"),
            {"embedder": embedder.id, "params": embedder.params(), "input_shape": list(x.shape),
             "input_dtype": str(x.dtype), "features_shape": list(f.shape), "random_init": embedder.random_init},
        )
    except (TypeError, ValueError, OSError):
        pass  # the sidecar is for humans; the .npy is the cache
    return f


# ------------------------------------------------------------------------------------------ CLI


def _embed_command():
    import click

    @click.command(
        "embed",
        epilog="""\b
Examples:
  diffaudit embed samples/ --features pixels:16 --out feats.npy
  diffaudit embed ref.npz --key x --features inception --weights pt_inception-2015-12-05-6726825d.pth --out ref_incep.npy
  DIFFAUDIT_DINOV2_WEIGHTS=dinov2_vitl14_pretrain.pth diffaudit embed gen.npy --features dinov2 --out gen_dino.npy
""",
    )
    @click.argument("input_path", metavar="INPUT", type=click.Path(path_type=str))
    @click.option("--features", "spec", default="pixels", show_default=True,
                  help="Feature space: pixels, pixels:K, inception, clip:ARCH, dinov2[:ARCH], oracle.")
    @click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=str),
                  help="Output .npy (or .npz) file for the (n, D) float32 features.")
    @click.option("--key", default=None, help="Array name inside .npz/.pt/.safetensors inputs.")
    @click.option("--weights", default=None, type=click.Path(path_type=str),
                  help="Local weight file (or an open_clip tag for clip); else the DIFFAUDIT_*_WEIGHTS env var.")
    @click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
    @click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
    @click.option("--dataset", "dataset_spec", default=None, help="Synthetic dataset spec, for --features oracle.")
    @click.option("--cache-dir", default=None, type=click.Path(file_okay=False, path_type=str),
                  help="Feature cache folder [default: $DIFFAUDIT_CACHE_DIR or ~/.cache/diffaudit].")
    @click.option("--no-cache", is_flag=True, help="Compute without reading or writing the feature cache.")
    @click.option("--random-init", is_flag=True, help="Random network weights: plumbing tests only, never for reports.")
    @click.option("--allow-download", is_flag=True, help="Let clip fetch a missing pretrained tag (off by default).")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    def embed_cmd(input_path, spec, out, key, weights, device, batch_size, dataset_spec, cache_dir, no_cache,
                  random_init, allow_download, quiet):
        """Embed samples into a feature space and save the (n, D) float32 features (precompute for compare)."""
        from diffaudit.datasets.loading import load_samples, save_samples

        dataset = None
        if dataset_spec is not None:
            from diffaudit.datasets.base import get_dataset

            dataset = get_dataset(dataset_spec)
        emb = get_embedder(spec, device=device, weights=weights, random_init=random_init, dataset=dataset,
                           allow_download=allow_download)
        x = load_samples(input_path, key=key, name=input_path, min_n=1)
        if no_cache:
            f = emb.embed(x, batch_size=batch_size, progress=not quiet)
        else:
            f = embed_cached(x, emb, cache_dir=cache_dir, progress=not quiet, batch_size=batch_size)
        save_samples(out, f)
        note = " (RANDOM weights: plumbing only)" if emb.random_init else ""
        click.echo(f"{input_path}: {f.shape[0]} samples -> {f.shape[1]}-d {emb.id}{note} -> {out}")

    return embed_cmd


embed_cmd = _embed_command()
