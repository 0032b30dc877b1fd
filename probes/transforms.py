"""Small geometric edits of images, and the two views under which a copy under each edit is exact.

A generated image g is a *transformed copy* of a training image t when g = T(t) for a small edit T:
a translation by up to ``max_shift`` pixels, a horizontal flip, or a crop of at least ``crop`` of each side
resized back to full size (the edits Carlini et al. 2023, "Extracting training data from diffusion models",
and Somepalli et al. 2023, "Diffusion art or digital forgery?", find in generated images next to exact
copies). For each ``Transform``, ``query_view(g)`` and ``train_view(t)`` are equal when g = T(t):

- shift (content moved dx right, dy down) and flip are undone on the generated side: ``query_view`` is g
  shifted back (only the window of t's frame that g determines) or flipped back; ``train_view`` is t's window;
- a crop is done on the training side: ``train_view`` is t's window of ``(ceil(crop h), ceil(crop w))`` pixels
  at an integer offset, resized to ``(h, w)`` with torch ``F.interpolate`` (bilinear, ``align_corners=False``,
  anti-aliased: deterministic on CPU; torchvision's ``RandomResizedCrop`` convention, PIL's bilinear resize
  agrees); ``query_view`` is g. Undoing a crop instead (resizing g down) loses the detail the upsampling
  blurred: on 16-px sprites that error was 1.4-1.8 (L2), about fresh-data distances, against 0 this way.

The copy distance under T is d_T(g, t) = sqrt(P / P_w) * || query_view(g) - train_view(t) ||_2 with P the
pixel count of the image and P_w that of the compared window: a per-pixel scale that does not favour a shift for
comparing fewer pixels. ``standardise`` (zero mean, common RMS per view) is applied to both views by the caller.

Padding: none. A shift moves content out of the frame and leaves pixels the copy does not determine (in a
generated image they hold new content, or whatever a test's ``np.roll`` wrapped in): those pixels are left out
of the distance instead of being padded, so the result does not depend on a padding convention.

Crop offsets: every offset up to 4 per axis (all of them at 16 and 32 px); larger images get 4 evenly spaced
offsets per axis (a crop in between is then up to ``(h - hc) / 6`` px off).

Not covered (stated, not hidden): a flip combined with a shift or crop, rotations, crops between ``crop`` and
the full image, shifts beyond ``max_shift``, and crops resized with another kernel (bicubic crops of sharp 16-px
sprites are about fresh-data distances away); each would multiply the transform count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffaudit.errors import DiffauditError

MAX_SHIFT = 2  # translations of up to this many pixels per axis (both axes, all combinations)
CROP = 0.9  # crops keep at least this share of each side
MAX_CROP_OFFSETS = 4  # crop offsets per axis (all offsets when there are at most this many)
FLAT = 1e-3  # rows with a standard deviation below FLAT x the reference are compared raw (standardise)
CROP_PCT = int(round(100 * CROP))  # the crop's name: "crop90(+1,+0)" = a >= 90 % crop at offset (1, 0)


@dataclass(frozen=True)
class Transform:
    """One edit T (g = T(t)); ``query_view`` / ``train_view`` give the two views that agree on a copy.

    ``kind``: "identity" | "shift" | "flip" | "crop". ``dx``, ``dy``: for a shift, the content moves ``dx``
    pixels right and ``dy`` down; for a crop, the window's offset (left, top). ``hc``, ``wc``: crop window size.
    """

    kind: str
    dx: int = 0
    dy: int = 0
    hc: int = 0
    wc: int = 0

    @property
    def name(self) -> str:
        if self.kind == "shift":
            return f"shift({self.dx:+d},{self.dy:+d})"
        if self.kind == "crop":
            return f"crop{CROP_PCT}({self.dx:+d},{self.dy:+d})"
        return self.kind


def default_transforms(
    h: int, w: int, max_shift: int = MAX_SHIFT, crop: float = CROP
) -> tuple[Transform, ...]:
    """identity, every shift (dx, dy) in [-max_shift, max_shift]^2 but (0, 0), flip, crops at every offset.

    At 16 x 16: 1 + 24 + 1 + 4 = 30 transforms; at 32 x 32: 1 + 24 + 1 + 16 = 42."""
    out = [Transform("identity")]
    out += [
        Transform("shift", dx, dy)
        for dy in range(-max_shift, max_shift + 1)
        for dx in range(-max_shift, max_shift + 1)
        if (dx, dy) != (0, 0) and abs(dx) < w and abs(dy) < h
    ]
    out.append(Transform("flip"))
    hc, wc = math.ceil(crop * h), math.ceil(crop * w)
    if (hc, wc) != (h, w):
        oy = np.unique(np.round(np.linspace(0, h - hc, min(h - hc + 1, MAX_CROP_OFFSETS))).astype(int))
        ox = np.unique(np.round(np.linspace(0, w - wc, min(w - wc + 1, MAX_CROP_OFFSETS))).astype(int))
        out += [Transform("crop", int(x), int(y), hc, wc) for y in oy for x in ox]
    return tuple(out)


def resolve(spec, image_shape: tuple[int, ...] | None, name: str = "transforms") -> tuple[Transform, ...]:
    """``spec``: "default" or a sequence of ``Transform`` / names of ``default_transforms`` -> transforms.

    ``image_shape`` (c, h, w) of the images; None (vectors) is refused: transforms act on images."""
    if image_shape is None or len(image_shape) != 3:
        raise DiffauditError(
            f"{name}: transforms act on images, but the inputs are vectors; pass (n, c, h, w) images "
            "(or image_shape=(c, h, w)), or leave transforms=None."
        )
    _, h, w = image_shape
    known = default_transforms(h, w)
    if isinstance(spec, str):
        if spec != "default":
            raise DiffauditError(f"{name}={spec!r} is not known; use 'default' or a list of transform names.")
        return known
    by_name = {t.name: t for t in known}
    out = []
    for t in spec:
        if isinstance(t, Transform):
            out.append(t)
        elif t in by_name:
            out.append(by_name[t])
        else:
            raise DiffauditError(
                f"{name}: {t!r} is not a transform of {h}x{w} images; use names like "
                f"{', '.join(list(by_name)[:3])}, 'flip' or {known[-1].name!r}."
            )
    if not out:
        raise DiffauditError(f"{name}: the list is empty; pass 'default' or leave transforms=None.")
    return tuple(dict.fromkeys(out))


def window(t: Transform, h: int, w: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the part of the training image's frame that a shift's undone query covers."""
    if t.kind == "shift":
        return max(0, -t.dy), min(h, h - t.dy), max(0, -t.dx), min(w, w - t.dx)
    return 0, h, 0, w


def query_view(x: np.ndarray, t: Transform) -> np.ndarray:
    """Generated images ``x`` (n, c, h, w) with a shift or flip undone, in the training frame (float32)."""
    _, _, h, w = x.shape
    if t.kind == "flip":
        return np.ascontiguousarray(x[..., ::-1])
    if t.kind == "shift":  # t[y, x] = g[y + dy, x + dx] where both exist
        y0, y1, x0, x1 = window(t, h, w)
        return np.ascontiguousarray(x[:, :, y0 + t.dy : y1 + t.dy, x0 + t.dx : x1 + t.dx])
    return x


def train_view(x: np.ndarray, t: Transform) -> np.ndarray:
    """Training images ``x`` (n, c, h, w) as ``query_view`` compares them: a shift's window, or the crop done."""
    _, _, h, w = x.shape
    if t.kind == "shift":
        y0, y1, x0, x1 = window(t, h, w)
        return np.ascontiguousarray(x[:, :, y0:y1, x0:x1])
    if t.kind == "crop":
        xt = torch.from_numpy(
            np.ascontiguousarray(x[:, :, t.dy : t.dy + t.hc, t.dx : t.dx + t.wc], np.float32)
        )
        return F.interpolate(xt, size=(h, w), mode="bilinear", align_corners=False, antialias=True).numpy()
    return x


def pixel_scale(t: Transform, h: int, w: int) -> float:
    """sqrt(P / P_w): the factor that puts a windowed distance on the full image's per-pixel scale."""
    y0, y1, x0, x1 = window(t, h, w)
    return math.sqrt((h * w) / ((y1 - y0) * (x1 - x0)))


def standardise(x: np.ndarray, ref: float) -> np.ndarray:
    """Rows of ``x`` (n, P) centred and scaled to RMS ``ref``, float32; near-constant rows are left as they are.

    Brightness and contrast changes (an affine map of the intensities, a x + b with a > 0) then leave an image
    unchanged, so a copy under them is at distance 0; ``ref`` (the training images' median standard
    deviation) keeps distances in pixel units. A row whose standard deviation is below ``FLAT * ref`` has no
    pattern to standardise (centring would map every constant image, all-grey, all-white, all-black, to the
    same zero vector: each a "copy" of any blank training image): it keeps its raw pixels, so two such images
    are compared by their raw values (grey vs black: 1 per pixel), and one of them against a standardised image
    is at least ``ref`` per pixel away from it (the cross term vanishes: standardised rows have zero mean)."""
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=1, keepdims=True)
    sd = x64.std(axis=1, keepdims=True)
    flat = sd < FLAT * ref
    out = np.where(flat, x64, (x64 - mu) * (ref / np.where(flat, 1.0, sd)))
    return out.astype(np.float32)


def as_images(x: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """(n, P) or (n, c, h, w) -> (n, c, h, w) float32 view."""
    return np.asarray(x, dtype=np.float32).reshape(len(x), *image_shape)
