"""On-disk cache of FAISS indexes over training sets, keyed like the feature caches.

The file name encodes everything that changes the index: the SHA-256 of the training array (dtype,
shape, bytes) and of the build parameters (``index``, ``metric``, ``nlist``, ``seed``, ...). A hit is
read with ``faiss.read_index``; a miss is built with ``diffaudit.probes.neighbors.build_index`` and
written to a temporary name, then renamed (``atomic_path``), so a crash never leaves a half index.
Cache folder: ``$DIFFAUDIT_CACHE_DIR/faiss`` (default ``~/.cache/diffaudit/faiss``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_path
from diffaudit.hashing import array_sha256, cache_key, params_sha256
from diffaudit.paths import cache_root
from diffaudit.probes._checks import as_features
from diffaudit.probes.neighbors import build_index

INDEX_FORMAT = 1  # bump when build_index changes what it builds
_BUILD_KEYS = ("index", "metric", "nlist", "seed", "train_size")


def cache_dir() -> Path:
    return cache_root("faiss")


def index_path(xb: np.ndarray, params: dict[str, Any]) -> Path:
    """Where the index of ``xb`` (nb, D) built with ``params`` lives (exists or not)."""
    full = {"format": INDEX_FORMAT, **_normalise(params)}
    xb32 = np.ascontiguousarray(xb, dtype=np.float32)
    return cache_dir() / f"{full['index']}-{cache_key(array_sha256(xb32), params_sha256(full))}.faiss"


def _normalise(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(_BUILD_KEYS)
    if unknown:
        raise DiffauditError(
            f"index parameters {sorted(unknown)} are not understood; use only {', '.join(_BUILD_KEYS)}."
        )
    out = {"index": "ivf", "metric": "l2", "nlist": None, "seed": 0, "train_size": None}
    out.update(params)
    return out


def cached_index(xb, params: dict[str, Any] | None = None):
    """Return the FAISS index of training set ``xb`` (nb, D) built with ``params`` (see
    ``build_index``), reading it from the cache or building and caching it. Pass the result to
    ``diffaudit.probes.neighbors.search(..., index=...)`` or ``find_copies(..., index=...)``."""
    import faiss

    xb = as_features(xb, "training set", min_n=2)
    p = _normalise(dict(params or {}))
    path = index_path(xb, p)
    if path.exists():
        try:
            idx = faiss.read_index(str(path))
            if idx.ntotal == len(xb) and idx.d == xb.shape[1]:
                return idx
        except RuntimeError:
            pass  # unreadable (e.g. written by another FAISS build): rebuild and overwrite
    idx = build_index(xb, **p)
    with atomic_path(path) as tmp:
        faiss.write_index(idx, str(tmp))
    return idx
