"""The feature-space registry: ``get_embedder(spec)`` parses a spec and builds its embedder.

Specs: ``pixels``, ``pixels:K``, ``inception[:fid|:torchvision]``, ``clip:ARCH``, ``dinov2[:ARCH]``,
``oracle`` (each module documents its own). Nothing heavy is loaded here: the networks are built on the
first ``embed`` call.
"""

from __future__ import annotations

import os

from diffaudit.errors import DiffauditError
from diffaudit.features.base import Embedder
from diffaudit.features.clip import ClipEmbedder
from diffaudit.features.dinov2 import DinoV2Embedder
from diffaudit.features.inception import InceptionEmbedder
from diffaudit.features.oracle import OracleEmbedder
from diffaudit.features.pixels import PixelsEmbedder

EMBEDDERS = ("pixels", "inception", "clip", "dinov2", "oracle")


def available_embedders() -> list[str]:
    """The spec forms a user can write (for help texts and error messages)."""
    return ["pixels", "pixels:K", "inception", "clip:ARCH", "dinov2", "oracle"]


def get_embedder(
    spec: str,
    *,
    device: str = "auto",
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    dataset=None,
    allow_download: bool = False,
) -> Embedder:
    """Build the embedder named by ``spec`` (see ``diffaudit.features``). Nothing heavy is loaded here."""
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
            raise DiffauditError(
                f"feature space {spec!r} has no network weights; drop --weights / --random-init."
            )
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
            raise DiffauditError(
                f"feature space {spec!r}: write 'inception', 'inception:fid' or 'inception:torchvision'."
            )
        return InceptionEmbedder(variant=arg or None, device=device, weights=weights, random_init=random_init)
    if name == "clip":
        if not arg:
            raise DiffauditError(
                f"feature space {spec!r}: name the open_clip architecture, e.g. 'clip:ViT-B-32'."
            )
        return ClipEmbedder(
            arg, device=device, weights=weights, random_init=random_init, allow_download=allow_download
        )
    return DinoV2Embedder(arg or None, device=device, weights=weights, random_init=random_init)


def _parse_size(arg: str, spec: str) -> int | None:
    if not arg:
        return None
    try:
        k = int(arg)
    except ValueError:
        k = 0
    if k < 1:
        raise DiffauditError(
            f"feature space {spec!r}: the size must be a positive integer, e.g. 'pixels:16'."
        )
    return k
