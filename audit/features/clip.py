"""``clip:ARCH``: open_clip image embeddings of architecture ARCH (``open_clip.list_models()``), L2-normalised.

Weights: ``weights=`` / env ``DIFFAUDIT_CLIP_WEIGHTS`` is a local checkpoint file, or a pretrained tag
(e.g. ``openai``, ``laion2b_s34b_b79k``) looked up in open_clip's local cache only (``~/.cache/clip`` or
the Hugging Face cache); with ``allow_download=True`` a missing tag is fetched -- the only feature space
that can download at all. For OpenAI weights from a file use the ``-quickgelu`` architecture name.
Preprocessing: shortest side resized to the model's image size (bicubic, antialiased, on tensors rather
than PIL), centre crop, [0, 1], the model's mean/std. CLIP: Radford et al. 2021, via open_clip.

open_clip, torch and huggingface_hub are imported inside functions: heavy optional dependencies, kept
off ``import diffaudit.features``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffaudit.errors import DiffauditError
from diffaudit.features.torch_base import TorchEmbedder

ENV_CLIP = "DIFFAUDIT_CLIP_WEIGHTS"


class ClipEmbedder(TorchEmbedder):
    """open_clip image embeddings, L2-normalised."""

    name = "clip"
    env_var = ENV_CLIP
    what = "CLIP"

    def __init__(
        self, arch: str, *, device="auto", weights=None, random_init=False, allow_download=False
    ) -> None:
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
                raise DiffauditError(
                    f"CLIP weights {tag!r} (from {origin}) do not exist; fix the path in {origin}."
                )
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
        return {
            "size": self.size,
            "resize": "bicubic-antialias",
            "crop": "center",
            "mean": self.mean,
            "std": self.std,
        }

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
