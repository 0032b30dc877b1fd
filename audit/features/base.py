"""The ``Embedder`` contract: samples in the normal form -> ``(n, D)`` float32 features.

Every feature space (pixels, oracle, the networks) subclasses ``Embedder``; ``id`` and ``params()`` are
what the feature cache keys on, so they must encode everything that changes the numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.progress import progress_bar as progress_bar  # re-exported: the extractors import it from here


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
            raise DiffauditError(
                f"{self.name} features: input has dtype {x.dtype}; pass samples in the normal form."
            )
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
