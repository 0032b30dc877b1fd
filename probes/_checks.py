"""Input checks shared by the probes: one sentence naming the input and the fix.

Features are float32 (house rule 4), but a float64 (or int64) input cast as it is can lose what a probe
measures: 1e4 + 1e-4 noise rounds to the float32 grid at 1e4 (spacing ~1e-3), so near copies become exact
copies. Where a measure is translation invariant (L2 distances, FD, moments), the caller shifts every array
by one per-coordinate offset in float64 before the cast (``l2_offset`` + ``as_features(offset=...)``): the
cast then keeps float32's precision relative to the data's spread, not to its distance from 0. Any other
cast that keeps fewer than ``SPREAD_BITS`` bits of the spread warns (``PrecisionWarning``) instead of
silently destroying it.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from diffaudit.errors import DiffauditError

# A cast to float32 that keeps fewer bits than this of the data's spread (float32 holds 24) warns: at 16 bits a
# distance of 1e-3 x the spread is still known to ~1.5 %; ordinary features (offset ~ spread) keep ~24 bits.
SPREAD_BITS = 16
_OFFSET_ROWS = 4096  # rows (evenly spaced) whose per-coordinate median is the offset; 4096 x D float64
_BLOCK_BYTES = 16 << 20  # float64 working block of the casts and checks


class PrecisionWarning(UserWarning):
    """A cast to float32 kept too few bits of the features' spread (``_checks`` module docstring)."""


def _read(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise DiffauditError(
            f"{name}: could not be read as an array ({e}); pass an (n, D) numeric array."
        ) from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DiffauditError(f"{name}: has dtype {a.dtype}; pass a numeric (n, D) array.")
    if np.issubdtype(a.dtype, np.complexfloating):  # a cast would drop the imaginary part silently
        raise DiffauditError(f"{name}: has complex dtype {a.dtype}; pass real-valued (n, D) features.")
    return a


def _wider(dtype, than) -> bool:
    """True when casting ``dtype`` to ``than`` can round (float64 or int64 to float32, ...)."""
    return not np.can_cast(dtype, than, casting="safe")


def _row_step(dim: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * max(1, dim)))


def l2_offset(ref, *others) -> np.ndarray | None:
    """The per-coordinate offset (D,) float64 to subtract before a translation-invariant (L2) measure casts
    ``ref`` (n, D) and ``others`` to float32: the median of up to 4,096 evenly spaced rows of ``ref`` (a median,
    not the mean: one far-off row cannot pull it away from the bulk), or None when every array is float32 or
    narrower (nothing to round: their values, and so every distance, stay exactly as given) or ``ref`` is not
    a finite (n, D) numeric array (``as_features`` then says what is wrong)."""
    arrays = []
    for x in (ref, *others):
        try:
            arrays.append(np.asarray(x))
        except Exception:
            return None
    a = arrays[0]
    numeric = all(
        np.issubdtype(v.dtype, np.number) and not np.issubdtype(v.dtype, np.complexfloating) for v in arrays
    )
    if not numeric or a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        return None
    if any(v.ndim != 2 or v.shape[1] != a.shape[1] for v in arrays[1:]):
        return None  # mismatched widths: the caller's width check says so, not the offset's
    if not any(_wider(v.dtype, np.float32) for v in arrays):
        return None
    rows = np.unique(np.linspace(0, len(a) - 1, min(len(a), _OFFSET_ROWS)).round().astype(np.int64))
    off = np.median(a[rows].astype(np.float64), axis=0)
    return off if np.isfinite(off).all() else None


def _spread_bits(a: np.ndarray, out: np.ndarray, offset) -> float:
    """Bits of ``a``'s spread that its cast ``out`` keeps: -log2(rms cast error / rms spread), per row over all
    coordinates, in float64 blocks (the spread around the first row, so an offset cancels exactly). inf when
    there is no spread to lose (one row, or all rows equal)."""
    n, dim = a.shape
    if n < 2:
        return float("inf")
    x0 = a[0].astype(np.float64)
    s1 = np.zeros(dim)
    s2 = np.zeros(dim)
    err2 = 0.0
    step = _row_step(dim)
    for i0 in range(0, n, step):
        x = a[i0 : i0 + step].astype(np.float64)
        e = x - offset if offset is not None else x.copy()
        e -= out[i0 : i0 + step]
        err2 += float(np.einsum("ij,ij->", e, e))
        x -= x0
        s1 += x.sum(0)
        s2 += np.einsum("ij,ij->j", x, x)
    spread2 = float(np.maximum(s2 - s1 * s1 / n, 0.0).sum()) / (n - 1)
    if spread2 <= 0.0 or err2 <= 0.0:
        return float("inf")
    return float(-0.5 * np.log2(err2 / n / spread2))


def cast_precision_note(x, out: np.ndarray, name: str) -> str | None:
    """A sentence when ``out`` (the float32 cast of ``x``, any shape with rows first) kept fewer than
    ``SPREAD_BITS`` bits of ``x``'s spread (values far from 0 relative to their spread), else None. For callers
    that must hold float32 arrays as given (the audit's inputs): they cannot shift, so they say it."""
    a = np.asarray(x)
    if not _wider(a.dtype, out.dtype) or a.ndim < 2 or len(a) < 2:
        return None
    bits = _spread_bits(a.reshape(len(a), -1), np.asarray(out).reshape(len(a), -1), None)
    if bits >= SPREAD_BITS:
        return None
    return (
        f"{name}: the float32 cast keeps only {max(bits, 0.0):.0f} bits of the samples' spread (their values are "
        "far from 0 relative to how much they differ), so near copies and fresh samples blur together; centre "
        "the data (subtract one mean from every set) before auditing."
    )


def as_features(x, name: str, *, min_n: int = 2, dtype=np.float32, offset=None) -> np.ndarray:
    """Validate a feature array ``(n, D)`` and return it C-contiguous in ``dtype``.

    ``offset`` (D,) (from ``l2_offset``): subtracted in float64 before the cast, for translation-invariant
    measures; the caller shifts every array it compares by the same offset. A cast from a wider dtype
    that keeps fewer than ``SPREAD_BITS`` bits of the rows' spread warns (``PrecisionWarning``, module
    docstring). Raises ``DiffauditError`` for wrong rank, too few rows, zero width, complex or non-finite values.
    """
    a = _read(x, name)
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
    wide = _wider(a.dtype, dtype)
    if offset is not None:
        offset = np.asarray(offset, np.float64)
        if offset.shape != (a.shape[1],) or not np.isfinite(offset).all():
            raise DiffauditError(
                f"{name}: the offset has shape {offset.shape} (or non-finite entries) for {a.shape[1]} feature "
                "dimensions; compute it with l2_offset from finite features of this width."
            )
        out = np.empty(a.shape, dtype)
        step = _row_step(a.shape[1])
        for i0 in range(0, len(a), step):
            out[i0 : i0 + step] = a[i0 : i0 + step].astype(np.float64) - offset
    else:
        out = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(out).all():
        _raise_non_finite(out, name)  # also a float64 value beyond float32's range
    if wide and np.dtype(dtype).itemsize < 8:
        bits = _spread_bits(a, out, offset)
        if bits < SPREAD_BITS:
            warnings.warn(
                f"{name}: the cast of these {a.dtype} features to {np.dtype(dtype)} keeps only {max(bits, 0):.0f} "
                f"bits of their spread (their offset from 0 dwarfs it), so near neighbours may look like exact "
                "copies; subtract a common per-coordinate offset (e.g. the reference set's mean) in float64 "
                "before passing them.",
                PrecisionWarning,
                stacklevel=3,
            )
    return out


def _raise_non_finite(a: np.ndarray, name: str):
    bad = int((~np.isfinite(a)).any(axis=1).sum())
    raise DiffauditError(f"{name}: {bad} sample(s) contain NaN or Inf; remove or fix them before measuring.")


def as_int(value, name: str, *, minimum: int = 1, hint: str = "") -> int:
    """``value`` as a Python int >= ``minimum``, else a ``DiffauditError`` naming ``name`` (``hint``: what it
    counts and an example). A float (even 2.0), a string or a bool is refused: k=True is a slip, not one
    neighbour, though Python counts a bool as an int."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise DiffauditError(f"{name}={value!r} is not a whole number; pass an int >= {minimum}{hint}.")
    v = int(value)
    if v < minimum:
        raise DiffauditError(f"{name}={v} is below {minimum}; pass an int >= {minimum}{hint}.")
    return v


def same_width(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise DiffauditError(
            f"{name_a} has {a.shape[1]} feature dimensions but {name_b} has {b.shape[1]}; "
            "embed both with the same feature space."
        )


def feature_pair(a, b, *, shift_invariant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validated generated features ``a`` (n_a, D) and reference features ``b`` (n_b, D) of one width.

    ``shift_invariant``: the caller's measure does not change when both sets move by one vector (FD, moments,
    L2 distances), so wider-than-float32 inputs are both shifted by ``l2_offset(b, a)`` before the cast."""
    off = l2_offset(b, a) if shift_invariant else None
    a = as_features(a, "generated features", offset=off)
    b = as_features(b, "reference features", offset=off)
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
