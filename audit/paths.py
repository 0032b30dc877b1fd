"""Where diffaudit keeps its on-disk caches (leaf module: imports nothing of ours).

One root for every cache (feature arrays, FAISS indexes, the sprites oracle, population moments):
``$DIFFAUDIT_CACHE_DIR`` when set, else ``~/.cache/diffaudit``. Each user of it takes a subfolder.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "DIFFAUDIT_CACHE_DIR"


def cache_root(sub: str | None = None) -> Path:
    """The cache root (or its subfolder ``sub``); not created here, writers create what they write."""
    root = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "diffaudit").expanduser()
    return root / sub if sub else root
