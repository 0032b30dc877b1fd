"""Content hashing for cache keys (leaf module).

Keys encode everything that changes a number: the array bytes, dtype and shape, plus the caller's
parameters. Same content => same key, whatever the file it came from.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-contiguous bytes (hex)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(repr(tuple(a.shape)).encode())
    # Hash in chunks so a multi-GB array never needs a second copy.
    flat = a.reshape(-1).view(np.uint8) if a.size else np.zeros(0, np.uint8)
    step = 1 << 24
    for i in range(0, flat.size, step):
        h.update(flat[i : i + step].data)
    return h.hexdigest()


def params_sha256(params: dict[str, Any]) -> str:
    """SHA-256 of a JSON-serialisable parameter dict (keys sorted)."""
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_key(*parts: str, length: int = 24) -> str:
    """Combine hex digests / ids into one short file-name-safe key."""
    h = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return h[:length]
