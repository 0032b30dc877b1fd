"""``pixels`` / ``pixels:K``: flattened samples, images optionally area-downsampled to K x K first.

Vectors pass through. Downsampling is a block mean (float64 sums) when K divides the image size, else
``adaptive_avg_pool2d`` (= ``interpolate(mode="area")``). torch is imported only on that second path:
it is a heavy optional dependency and ``pixels`` must stay usable without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.features.base import Embedder


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
