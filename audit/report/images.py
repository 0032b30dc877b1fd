"""Image mosaics: the ONE grid of sample thumbnails used by ``report.html``, the report folder's PNGs and
the app's Audit page.

Samples arrive in the normal form (``(n, c, h, w)`` float in [-1, 1], see DESIGN.md) and are quantised
once by ``to_uint8``; the app reads the uint8 thumbnails the audit stored in ``thumbs.npz`` and calls
``mosaic`` on them directly, so both show the same pixels laid out the same way.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from diffaudit.errors import DiffauditError

# Small images are enlarged (nearest neighbour, whole factors) until a tile is about this many pixels wide:
# a 16 x 16 sprite shown at 16 px is unreadable, and a fractional factor would blur single pixels.
TILE_PX = 64
PAD_GREY = 128  # mid grey between tiles: visible against both black and white samples


def to_uint8(x: np.ndarray) -> np.ndarray:
    """``(n, c, h, w)`` in [-1, 1] -> ``(n, h, w, c)`` uint8 (round half up; out-of-range values clipped)."""
    a = np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return a.transpose(0, 2, 3, 1)


def upscale_for(h: int, w: int, tile_px: int = TILE_PX) -> int:
    """The whole-number enlargement that brings an ``h x w`` image closest to ``tile_px`` without passing it."""
    return max(1, tile_px // max(h, w))


def mosaic(
    imgs: np.ndarray, cols: int = 8, upscale: int | None = None, pad: int = 2, fill: int = PAD_GREY
) -> np.ndarray:
    """``(n, h, w, c)`` uint8 -> one ``(H, W)`` (c = 1) or ``(H, W, 3)`` uint8 grid, row-major, ``pad`` px apart.

    ``upscale``: whole-number nearest-neighbour enlargement (default ``upscale_for(h, w)``); an alpha
    channel (c = 4) is dropped.
    """
    imgs = np.asarray(imgs)
    if imgs.ndim != 4 or imgs.shape[0] < 1 or imgs.shape[3] not in (1, 3, 4) or imgs.dtype != np.uint8:
        raise DiffauditError(
            f"images of shape {imgs.shape} and dtype {imgs.dtype} cannot be tiled; pass uint8 "
            "(n, h, w, c) with n >= 1 and c in 1, 3, 4 (to_uint8 converts samples)."
        )
    n, h, w, c = imgs.shape
    up = int(upscale) if upscale is not None else upscale_for(h, w)
    cols = max(1, min(int(cols), n))
    rows = -(-n // cols)
    H, W = h * up, w * up
    canvas = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (H + pad), pad + q * (W + pad)
        canvas[y : y + H, x : x + W] = imgs[i].repeat(up, 0).repeat(up, 1)
    return canvas[..., 0] if c == 1 else canvas[..., :3]


def png_bytes(img: np.ndarray) -> bytes:
    """PNG of an ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 array (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")  # uint8 2-D -> "L", (H, W, 3) -> "RGB"
    return buf.getvalue()


def grid_png(x: np.ndarray, cols: int = 8, upscale: int | None = None, pad: int = 2) -> bytes:
    """PNG bytes of the mosaic of samples ``(n, c, h, w)`` in [-1, 1]."""
    return png_bytes(mosaic(to_uint8(x), cols=cols, upscale=upscale, pad=pad))


def data_uri(png: bytes) -> str:
    """A ``data:`` URI, so report.html carries its images inside the one file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
