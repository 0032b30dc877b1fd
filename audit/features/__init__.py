"""Feature spaces ("embedders"): samples in the normal form -> ``(n, D)`` float32.

``get_embedder(spec)`` builds one (``registry``); ``Embedder.embed(x)`` runs it in batches (``base``);
``embed_cached(x, embedder)`` memoises features on disk keyed by input bytes + id + preprocessing
parameters (``cache``). One module per feature space, each documenting its spec, weights and
preprocessing: ``pixels`` (``pixels``, ``pixels:K``), ``oracle``, ``inception``, ``clip`` (``clip:ARCH``),
``dinov2``; ``torch_base`` holds what the networks share (weight files, lazy build, batched inference).

Nothing is ever downloaded unless ``allow_download=True`` / ``--allow-download`` is given, and only
``clip`` can download at all. ``random_init=True`` builds the networks with seeded random weights, for
plumbing tests only: ``Embedder.random_init`` is then True and the id contains ``random-init`` so
reports can say so. Importing this package does not import torch; the networks import it when built.
"""

from __future__ import annotations

from diffaudit.features.base import Embedder
from diffaudit.features.cache import default_cache_dir, embed_cached, feature_cache_path
from diffaudit.features.clip import ENV_CLIP, ClipEmbedder
from diffaudit.features.dinov2 import DINOV2_ARCHS, ENV_DINOV2, DinoV2Embedder
from diffaudit.features.inception import ENV_INCEPTION, InceptionEmbedder
from diffaudit.features.oracle import OracleEmbedder
from diffaudit.features.pixels import PixelsEmbedder, area_downsample
from diffaudit.features.registry import EMBEDDERS, available_embedders, get_embedder
from diffaudit.features.torch_base import RANDOM_SEED, TorchEmbedder

__all__ = [
    "DINOV2_ARCHS",
    "EMBEDDERS",
    "ENV_CLIP",
    "ENV_DINOV2",
    "ENV_INCEPTION",
    "RANDOM_SEED",
    "ClipEmbedder",
    "DinoV2Embedder",
    "Embedder",
    "InceptionEmbedder",
    "OracleEmbedder",
    "PixelsEmbedder",
    "TorchEmbedder",
    "area_downsample",
    "available_embedders",
    "default_cache_dir",
    "embed_cached",
    "feature_cache_path",
    "get_embedder",
]
