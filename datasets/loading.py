"""Load user samples from disk into the normal form, once, at the boundary.

Normal form (DESIGN.md): vectors ``(n, d)`` float32; images ``(n, c, h, w)`` float32 in [-1, 1].

Formats (chosen by extension; a directory is a folder of images):

- ``.npy``: one array (``allow_pickle=False``).
- ``.npz``: the array named ``key``, or the only array; several arrays and no key is an error listing them.
- ``.pt`` / ``.pth``: ``torch.load(weights_only=True)`` ONLY: a tensor, or a dict holding one tensor (or
  the one named ``key``). A file that needs pickle for anything else is refused without running it.
- ``.safetensors``: the tensor named ``key``, or the only tensor.
- a folder: every ``*.png``, ``*.jpg``, ``*.jpeg`` below it (recursive, any letter case), in sorted order
  of the relative POSIX path, so the row order is deterministic across machines. Grayscale -> c=1,
  RGB -> c=3, RGBA/LA -> alpha dropped, palette/CMYK -> RGB, 16-bit grayscale scaled from [0, 65535].
  If the folder mixes grayscale and colour images, grayscale ones are replicated to 3 channels.
  Images of different sizes are an error (resize them first).

How an array is read (rank decides vectors vs images):

- 2-D ``(n, d)``: vectors, cast to float32 (no range check: vectors have no natural range).
- 3-D ``(n, h, w)``: grayscale images, given a channel axis ``c = 1``.
- 4-D: images.
  * uint8 (or any integer array whose values lie in [0, 255]): pixel value v maps to the float32
    nearest to v / 127.5 - 1, computed as (2v - 255) / 255: exactly 0 -> -1 and 255 -> +1. If the last axis is 1, 3 or 4 (and axis 1 is not), the array is
    NHWC (the layout PIL/numpy image dumps use) and is transposed to NCHW; 4 channels in NHWC are
    RGBA and the alpha channel is dropped.
  * floating point: assumed already NCHW in [-1, 1]. Values outside [-1, 1] by more than 1e-3 are
    an error that says how to convert (e.g. [0, 255] floats: save as uint8 or use x / 127.5 - 1).
    A float array that is clearly NHWC (axis 1 > 4 channels, last axis 1/3/4) is an error too.
    Values in [0, 1] cannot be told apart from [-1, 1] data and are taken as given.
- 1-D and 5-D or more: an error.

Every bad input raises ``DiffauditError`` with one sentence naming the input and the fix.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_path

ARRAY_EXTENSIONS = (".npy", ".npz", ".pt", ".pth", ".safetensors")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
RANGE_TOL = 1e-3  # float images may overshoot [-1, 1] by this much (sampler round-off) and are clipped

__all__ = ["load_samples", "save_samples", "list_image_files", "to_normal_form", "ARRAY_EXTENSIONS"]


def load_samples(path, key: str | None = None, *, name: str | None = None, min_n: int = 2) -> np.ndarray:
    """Load samples from ``path`` (file or image folder) in the normal form.

    ``key`` picks an array in ``.npz``/``.safetensors``/dict ``.pt`` files; ``name`` is how the input
    is called in error messages (default: the path). Returns ``(n, d)`` or ``(n, c, h, w)`` float32.
    """
    p = Path(os.fspath(path)).expanduser()
    label = name or str(path)
    if not p.exists():
        raise DiffauditError(f"{label}: no such file or folder; check the path.")
    if p.is_dir():
        x = _load_image_folder(p, label)
    else:
        ext = p.suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            x = _load_image_files([p], label)
        elif ext not in ARRAY_EXTENSIONS:
            raise DiffauditError(
                f"{label}: unsupported file type {ext or '(no extension)'!r}; pass a .npy, .npz, .pt, "
                ".safetensors file or a folder of PNG/JPEG images."
            )
        else:
            if p.stat().st_size == 0:
                raise DiffauditError(f"{label}: the file is empty; regenerate or re-save it.")
            if ext == ".npy":
                a = _load_npy(p, label)
            elif ext == ".npz":
                a = _load_npz(p, key, label)
            elif ext in (".pt", ".pth"):
                a = _load_pt(p, key, label)
            else:
                a = _load_safetensors(p, key, label)
            x = to_normal_form(a, label)
    return _finish(x, label, min_n)


def to_normal_form(a, name: str = "samples") -> np.ndarray:
    """Map an in-memory array to the normal form by the rules in the module docstring (no min_n check)."""
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DiffauditError(f"{name}: has dtype {a.dtype}; save a numeric array (float32 or uint8).")
    if np.iscomplexobj(a):
        raise DiffauditError(f"{name}: holds complex numbers; save real-valued samples.")
    if a.ndim == 2:
        out = np.ascontiguousarray(a, dtype=np.float32)
        check_spread(a, out, name)
        return out
    if a.ndim == 3:  # (n, h, w) grayscale images
        a = a[:, None]
    elif a.ndim != 4:
        raise DiffauditError(
            f"{name}: has shape {a.shape} ({a.ndim}-D); pass vectors (n, d), grayscale images (n, h, w) "
            "or images (n, c, h, w)."
        )
    if a.dtype == bool:
        raise DiffauditError(
            f"{name}: is a boolean image array; save uint8 pixels (0..255) or floats in [-1, 1]."
        )
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype != np.uint8 and a.size and (a.min() < 0 or a.max() > 255):
            raise DiffauditError(
                f"{name}: integer images with values in [{a.min()}, {a.max()}]; save uint8 pixels (0..255) "
                "or float32 images in [-1, 1]."
            )
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)
            if a.shape[1] == 4:
                a = a[:, :3]
        return _pixels_to_unit(a)
    # floating point: NCHW in [-1, 1]
    if a.shape[1] > 4 and a.shape[-1] in (1, 3, 4):
        raise DiffauditError(
            f"{name}: float images of shape {a.shape} look channels-last (NHWC); transpose to (n, c, h, w), "
            "e.g. x.transpose(0, 3, 1, 2)."
        )
    a = np.ascontiguousarray(a, dtype=np.float32)
    finite = np.isfinite(a)
    if a.size and finite.all():
        lo, hi = float(a.min()), float(a.max())
        if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
            hint = (
                "they look like [0, 255] pixels: save them as uint8 or use x / 127.5 - 1"
                if lo >= 0 and hi <= 255
                else "rescale them to [-1, 1] (e.g. x / 127.5 - 1 for 0..255 pixels)"
            )
            raise DiffauditError(
                f"{name}: float image values span [{lo:.4g}, {hi:.4g}], outside [-1, 1]; {hint}."
            )
        np.clip(a, -1.0, 1.0, out=a)
    return a


def save_samples(path, x, *, key: str = "x") -> Path:
    """Write ``x`` atomically to ``.npy`` or ``.npz`` (array stored under ``key``); returns the path."""
    p = Path(os.fspath(path)).expanduser()
    ext = p.suffix.lower()
    if ext not in (".npy", ".npz"):
        raise DiffauditError(f"{path}: can only save samples as .npy or .npz; change the file extension.")
    x = np.asarray(x)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        if ext == ".npy":
            np.save(f, x, allow_pickle=False)
        else:
            np.savez(f, **{key: x})
    return p


def list_image_files(folder) -> list[Path]:
    """Every PNG/JPEG file below ``folder`` (recursive), sorted by relative POSIX path."""
    folder = Path(folder)
    files = [
        q
        for q in folder.rglob("*")
        if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file() and not q.name.startswith(".")
    ]
    return sorted(files, key=lambda q: q.relative_to(folder).as_posix())


# --------------------------------------------------------------------------------------------- helpers


def _finish(x: np.ndarray, label: str, min_n: int) -> np.ndarray:
    if x.shape[0] < min_n:
        raise DiffauditError(
            f"{label}: has {x.shape[0]} sample(s), needs at least {min_n}; pass more samples."
        )
    if x.ndim == 2 and x.shape[1] < 1:
        raise DiffauditError(f"{label}: samples have zero dimensions; pass an (n, d) array with d >= 1.")
    if x.ndim == 4 and min(x.shape[1:]) < 1:
        raise DiffauditError(
            f"{label}: images of shape {x.shape[1:]} have an empty axis; pass (n, c, h, w) images."
        )
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
        raise DiffauditError(f"{label}: {bad} sample(s) contain NaN or Inf; remove or fix them first.")
    check_magnitude(x, label)
    return x


# The probes measure distances in float32 (FAISS): squared distances overflow (float32 max 3.4e38) once
# 4 D |x|^2 does, i.e. near |x| ~ 1e16 for D ~ 1e6 features, and underflow to 0 (every sample a "copy")
# once |x|^2 drops below float32's smallest normal 1.2e-38, near |x| ~ 1e-19. The limits leave a margin.
MAX_MAGNITUDE = 1e15
MIN_MAGNITUDE = 1e-15


def check_magnitude(x: np.ndarray, name: str) -> None:
    """Refuse samples whose scale the float32 distance arithmetic cannot represent (all-zero data is fine)."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > MAX_MAGNITUDE or 0.0 < peak < MIN_MAGNITUDE:
        raise DiffauditError(
            f"{name}: values reach {peak:.3g}, outside the {MIN_MAGNITUDE:g}..{MAX_MAGNITUDE:g} range in which "
            "distances between samples are exact enough in float32; divide every set by one common scale "
            "(e.g. the training data's standard deviation) and rerun."
        )


# float32 keeps 24 bits of a value relative to its size; vectors whose spread is tiny next to their distance from
# 0 (1e4 + noise 1e-4: the float32 grid there is ~1e-3) lose it in the cast, and near copies and fresh samples
# become one point. Below 16 bits of the spread kept (a distance of 1e-3 x the spread still known to ~1.5 %) the
# file is refused with the fix, as check_magnitude refuses what float32 distances cannot represent.
MIN_SPREAD_BITS = 16
_SPREAD_BLOCK = 1 << 20  # values per float64 block of the check


def check_spread(a: np.ndarray, out: np.ndarray, name: str) -> None:
    """Refuse (n, d) samples wider than float32 whose float32 cast ``out`` keeps fewer than ``MIN_SPREAD_BITS``
    bits of their spread (comment above); float32 and narrower inputs are exact and never checked."""
    if np.can_cast(a.dtype, np.float32, casting="safe") or len(a) < 2 or a.size == 0:
        return
    n, d = a.shape
    x0 = a[0].astype(np.float64)
    s1, s2, err2 = np.zeros(d), np.zeros(d), 0.0
    step = max(1, _SPREAD_BLOCK // max(d, 1))
    for i in range(0, n, step):
        x = a[i : i + step].astype(np.float64)
        e = x - out[i : i + step]
        err2 += float(np.einsum("ij,ij->", e, e))
        x -= x0
        s1 += x.sum(0)
        s2 += np.einsum("ij,ij->j", x, x)
    spread2 = float(np.maximum(s2 - s1 * s1 / n, 0.0).sum()) / (n - 1)
    if not (spread2 > 0 and err2 > 0 and np.isfinite(spread2)):
        return
    bits = -0.5 * np.log2(err2 / n / spread2)
    if bits < MIN_SPREAD_BITS:
        raise DiffauditError(
            f"{name}: its values are far from 0 relative to how much they differ (the float32 every probe works "
            f"in keeps only {max(bits, 0.0):.0f} of 24 bits of their spread, so near copies and fresh samples "
            "blur together); subtract one common mean from every set (training, holdout, samples) and rerun."
        )


# v in 0..255 -> (2v - 255) / 255: one correctly rounded float32 division of exact integers, so the
# table holds the float32 nearest to v / 127.5 - 1 (exactly -1 at 0, +1 at 255, symmetric about 127.5).
_PIXEL_LUT = ((2.0 * np.arange(256, dtype=np.float32) - 255.0) / np.float32(255.0)).astype(np.float32)


def _pixels_to_unit(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(_PIXEL_LUT[np.asarray(a).astype(np.uint8, copy=False)])


def _pick(arrays: dict, key: str | None, label: str, what: str):
    if not arrays:
        raise DiffauditError(f"{label}: holds no {what}; save the samples into it.")
    if key is not None:
        if key not in arrays:
            raise DiffauditError(
                f"{label}: has no {what} named {key!r}; choose one of: {', '.join(map(repr, sorted(arrays)))}."
            )
        return arrays[key]
    if len(arrays) > 1:
        raise DiffauditError(
            f"{label}: holds several {what}s ({', '.join(map(repr, sorted(arrays)))}), and which one holds the "
            "samples is not guessed; save the samples alone in a file (e.g. numpy.save) and pass that file."
        )
    return next(iter(arrays.values()))


_NPY_MAGIC, _ZIP_MAGIC, _PICKLE_PROTO = b"\x93NUMPY", b"PK\x03\x04", b"\x80"


def _numpy_error(e: Exception, label: str, kind: str, saver: str, p: Path | None = None) -> DiffauditError:
    """The user error for a ``kind`` (.npy/.npz) file that numpy could not load (``e``).

    numpy treats any file without the .npy or zip header as a pickle ("Cannot load file containing pickled
    data"), so the first bytes decide whether it really is one (pickle protocol >= 2 starts with 0x80) or
    is, e.g., a text file given the wrong name.
    """
    if isinstance(e, ValueError) and "pickle" in str(e).lower():
        head = b""
        if p is not None:
            with contextlib.suppress(OSError), open(p, "rb") as f:
                head = f.read(64)
        if head and not head.startswith((_NPY_MAGIC, _ZIP_MAGIC, _PICKLE_PROTO)):
            try:  # 64 bytes may cut a multi-byte character: drop up to 3 trailing bytes
                head[: len(head) - 3 if len(head) == 64 else len(head)].decode("utf-8")
                what = "a text file" if b"\x00" not in head else "an unknown binary format"
            except UnicodeDecodeError:
                what = "an unknown binary format"
            return DiffauditError(
                f"{label}: is not a {kind} file (no NumPy header; it looks like {what}); "
                f"convert it to a numeric array and save it with {saver}."
            )
        return DiffauditError(
            f"{label}: holds an object (pickled) array, which is not loaded for safety; save numeric arrays."
        )
    if isinstance(e, ValueError):
        return DiffauditError(f"{label}: is not a valid {kind} file ({e}); re-save it with {saver}.")
    return DiffauditError(f"{label}: is corrupt or not a {kind} file ({e}); re-save it with {saver}.")


def _load_npy(p: Path, label: str) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _numpy_error(e, label, ".npy", "numpy.save", p) from None


def _load_npz(p: Path, key: str | None, label: str) -> np.ndarray:
    try:
        with np.load(p, allow_pickle=False) as z:
            names = list(z.files)
            _pick(dict.fromkeys(names, None), key, label, "array")  # validate the key before reading
            k = key if key is not None else names[0]
            return z[k]
    except DiffauditError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise _numpy_error(e, label, ".npz", "numpy.savez", p) from None


def _torch_to_numpy(t, label: str) -> np.ndarray:
    import torch

    if not isinstance(t, torch.Tensor):
        raise DiffauditError(f"{label}: holds a {type(t).__name__}, not a tensor; save a tensor of samples.")
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if t.is_complex():
        raise DiffauditError(f"{label}: holds a complex tensor; save real-valued samples.")
    return t.numpy()


def _load_pt(p: Path, key: str | None, label: str) -> np.ndarray:
    import torch

    try:
        # torch warns on stderr about some pickle protocols before refusing them; the refusal below is
        # the one message the user needs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global it does not allow-list *before* calling it: nothing ran.
        text = str(e)
        if "weights only load failed" not in text.lower():
            raise DiffauditError(
                f"{label}: is corrupt or not a torch file; re-save it with torch.save(tensor)."
            ) from None
        why = next(
            (
                ln.strip()
                for ln in text.splitlines()
                if "global" in ln.lower() or "unsupported operand" in ln.lower()
            ),
            "objects beyond tensors",
        )
        why = (
            why.removeprefix("WeightsUnpickler error:").split(" whose module")[0].split(" was not")[0].strip()
        )
        raise DiffauditError(
            f"{label}: needs full pickle to load ({why[:120]}), which could run arbitrary code and is refused; "
            "re-save the samples as a plain tensor (torch.save(tensor)), .safetensors or .npy."
        ) from None
    except Exception as e:  # zip/format errors of every kind
        raise DiffauditError(
            f"{label}: is corrupt or not a torch file ({type(e).__name__}); re-save it with torch.save(tensor)."
        ) from None
    if isinstance(obj, dict):
        if key is not None:
            obj = _pick({str(k): v for k, v in obj.items()}, key, label, "entry")
        else:
            obj = _pick(
                {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}, None, label, "tensor"
            )
    elif isinstance(obj, (list, tuple)):
        raise DiffauditError(
            f"{label}: holds a {type(obj).__name__} of {len(obj)} items; save one stacked tensor (torch.stack)."
        )
    return _torch_to_numpy(obj, label)


def _load_safetensors(p: Path, key: str | None, label: str) -> np.ndarray:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            names = list(f.keys())
            _pick(dict.fromkeys(names, None), key, label, "tensor")
            t = f.get_tensor(key if key is not None else names[0])
    except DiffauditError:
        raise
    except Exception as e:
        raise DiffauditError(
            f"{label}: is corrupt or not a .safetensors file ({type(e).__name__}: {str(e)[:120]}); "
            "re-save it with safetensors.torch.save_file."
        ) from None
    return _torch_to_numpy(t, label)


def _load_image_folder(folder: Path, label: str) -> np.ndarray:
    files = list_image_files(folder)
    if not files:
        raise DiffauditError(
            f"{label}: folder holds no PNG/JPEG images; point to a folder of .png/.jpg files."
        )
    return _load_image_files(files, label, root=folder)


def _decode(q: Path, label: str) -> np.ndarray:
    """One image file -> (c, h, w) float32 in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(q) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
                return (a[None] / (hi / 2.0) - 1.0).astype(np.float32)
            if mode in ("1", "L", "LA", "La"):
                a = np.asarray(im.convert("L"))[None]
            elif mode == "F":
                raise DiffauditError(f"{label}: {q} is a 32-bit float image; save 8-bit PNG/JPEG images.")
            else:  # RGB, RGBA (alpha dropped), P (palette), CMYK, YCbCr, ...
                a = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    except DiffauditError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DiffauditError(
            f"{label}: cannot decode image {q} ({type(e).__name__}); remove or re-save it."
        ) from None
    return _pixels_to_unit(a)


def load_image_files(files, *, name: str = "images") -> np.ndarray:
    """Image files (PNG/JPEG/...) in the normal form (n, c, h, w) float32 in [-1, 1], all of one size."""
    files = [Path(f) for f in files]
    if not files:
        raise DiffauditError(f"{name}: no image files given.")
    for f in files:
        if not f.is_file():
            raise DiffauditError(f"{name}: image {f} does not exist; fix the path.")
    return _load_image_files(files, name)


def _load_image_files(files: list[Path], label: str, root: Path | None = None) -> np.ndarray:
    imgs = [_decode(q, label) for q in files]
    first = imgs[0].shape[1:]
    for q, im in zip(files, imgs, strict=True):
        if im.shape[1:] != first:
            shown = q.relative_to(root).as_posix() if root is not None else str(q)
            raise DiffauditError(
                f"{label}: images have different sizes ({files[0].name} is {first[1]}x{first[0]}, {shown} is "
                f"{im.shape[2]}x{im.shape[1]}); resize them all to one size first."
            )
    if len({im.shape[0] for im in imgs}) > 1:  # mixed grayscale and colour: promote grayscale to RGB
        imgs = [np.repeat(im, 3, axis=0) if im.shape[0] == 1 else im for im in imgs]
    return np.ascontiguousarray(np.stack(imgs), dtype=np.float32)
