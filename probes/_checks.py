"""Input checks shared by the probes: one sentence naming the input and the fix."""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DiffauditError


def as_features(x, name: str, *, min_n: int = 2, dtype=np.float32) -> np.ndarray:
    """Validate a feature array ``(n, D)`` and return it C-contiguous in ``dtype``.

    Raises ``DiffauditError`` for wrong rank, too few rows, zero width, or non-finite values.
    """
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise DiffauditError(
            f"{name}: could not be read as an array ({e}); pass an (n, D) numeric array."
        ) from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DiffauditError(f"{name}: has dtype {a.dtype}; pass a numeric (n, D) array.")
    if a.ndim != 2:
        raise DiffauditError(
            f"{name}: expected a 2-D feature array (n, D), got shape {a.shape}; flatten samples or embed them first."
        )
    if a.shape[0] < min_n:
        raise DiffauditError(
            f"{name}: has {a.shape[0]} sample(s), needs at least {min_n}; pass more samples."
        )
    if a.shape[1] < 1:
        raise DiffauditError(f"{name}: has zero feature dimensions; pass an (n, D) array with D >= 1.")
    a = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(axis=1).sum())
        raise DiffauditError(
            f"{name}: {bad} sample(s) contain NaN or Inf; remove or fix them before measuring."
        )
    return a


def same_width(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise DiffauditError(
            f"{name_a} has {a.shape[1]} feature dimensions but {name_b} has {b.shape[1]}; "
            "embed both with the same feature space."
        )


def feature_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Validated generated features ``a`` (n_a, D) and reference features ``b`` (n_b, D) of one width."""
    a = as_features(a, "generated features")
    b = as_features(b, "reference features")
    same_width(a, b, "generated features", "reference features")
    return a, b


def as_samples(x, name: str, *, min_n: int = 2) -> np.ndarray:
    """Validate samples of any shape (n, ...) with n >= ``min_n`` and return them as float64.

    For code that works on samples rather than features (controls, white-box probes).
    """
    try:
        a = np.asarray(x)
    except Exception as e:
        raise DiffauditError(
            f"{name}: could not be read as an array ({e}); pass (n, ...) numeric samples."
        ) from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DiffauditError(f"{name}: has dtype {a.dtype}; pass (n, ...) numeric samples.")
    if a.ndim < 2 or a.shape[0] < min_n:
        raise DiffauditError(
            f"{name}: expected at least {min_n} samples of shape (n, d) or (n, c, h, w), got shape {a.shape}."
        )
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise DiffauditError(f"{name}: contains NaN or Inf; remove or fix those samples first.")
    return a
