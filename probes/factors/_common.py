"""Input helpers shared by the factor probes (flattening samples, Wilson intervals)."""

from __future__ import annotations

import numpy as np

from diffaudit.probes._checks import as_features
from diffaudit.probes.stats import wilson_interval


def flat(x, name: str, min_n: int = 1) -> np.ndarray:
    """Samples (n, *shape) -> validated features (n, prod(shape)): float32, or float64 for wider inputs.

    A wide input (float64 far from 0) is not cast here: this helper sees one array, so it cannot shift it by the
    offset shared with the arrays it is compared with, and a cast on its own loses the spread (features at 1e4 with
    1e-4 noise all became one point). Every caller either computes in float64 (``.astype(np.float64)``: the cast
    only rounded) or hands the arrays to ``neighbors.knn`` / ``memorization.find_copies``, which shift all of them
    by one offset before their float32 cast (``_checks`` module docstring). Float32 or narrower inputs come back
    float32, exactly as before."""
    a = np.asarray(x)
    if a.ndim >= 2:
        a = a.reshape(len(a), -1)
    wide = np.issubdtype(a.dtype, np.number) and not np.can_cast(a.dtype, np.float32, casting="safe")
    return as_features(a, name, min_n=min_n, dtype=np.float64 if wide else np.float32)


def ci(k: int, n: int) -> tuple[float, float] | None:
    """Wilson 95 % interval of k / n; None when n = 0."""
    return wilson_interval(int(k), int(n)) if n > 0 else None
