"""The on-disk feature cache, like clean-fid's reference statistics.

An entry's file name is keyed by SHA-256 of the input array bytes + ``Embedder.id`` + every preprocessing
parameter (``Embedder.params()``), so anything that changes the numbers changes the key. Entries are
written atomically (temp + rename); a hit never builds or loads a network. The device is not part of
the key: CPU and GPU features differ only by float round-off and share entries.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diffaudit.features.base import Embedder
from diffaudit.fileio import atomic_path, atomic_write_json
from diffaudit.hashing import array_sha256, cache_key, params_sha256
from diffaudit.paths import cache_root


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
            {
                "embedder": embedder.id,
                "params": embedder.params(),
                "input_shape": list(x.shape),
                "input_dtype": str(x.dtype),
                "features_shape": list(f.shape),
                "random_init": embedder.random_init,
            },
        )
    except (TypeError, ValueError, OSError):
        pass  # the sidecar is for humans; the .npy is the cache
    return f
