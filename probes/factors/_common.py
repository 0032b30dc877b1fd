"""Input helpers shared by the factor probes (flattening samples, Wilson intervals)."""

from __future__ import annotations

import numpy as np

from diffaudit.probes._checks import as_features
from diffaudit.probes.stats import wilson_interval


def flat(x, name: str, min_n: int = 1) -> np.ndarray:
    """Samples (n, *shape) -> validated float32 features (n, prod(shape))."""
    a = np.asarray(x)
    if a.ndim >= 2:
        a = a.reshape(len(a), -1)
    return as_features(a, name, min_n=min_n)


def ci(k: int, n: int) -> tuple[float, float] | None:
    """Wilson 95 % interval of k / n; None when n = 0."""
    return wilson_interval(int(k), int(n)) if n > 0 else None
