"""Atomic file and directory writes (leaf module).

A crash never leaves a half-written file under its final name: everything is written to a temporary
name in the same directory, flushed, then moved into place with ``os.replace``.

Temporary names carry the writer's host and process id (``.NAME.HOST-PID.XXXXXXXX.tmp``). A process killed
with SIGKILL cannot remove its own; the next write into the same folder removes every such leftover whose
process is gone on this host (``clean_stale``). Leftovers of live processes, and of other hosts sharing
a network filesystem, are never touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffaudit.errors import DiffauditError


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "host")


def _prefix(name: str) -> str:
    return f".{name}.{_host()}-{os.getpid()}."


# mkdtemp/mkstemp put 8 characters of [a-z0-9_] between the prefix and the suffix
_TEMP_NAME = re.compile(
    r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[a-z0-9_]{8}\.(?:tmp|old)(?:\.[^.]+)?$"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's live process; absurd pids are left alone
        return True
    return True


def clean_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove this host's temporary files/folders in ``folder`` whose writing process is gone; returns them."""
    removed = []
    host = _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_NAME.match(e.name)
        if not m or m["host"] != host or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        p = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python values, paths as strings and non-finite floats as None
    (JSON has no NaN), recursively: the one conversion every JSON writer of diffaudit uses."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars, without importing numpy
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success it is renamed to ``path``.

    For writers that want a filename (``np.savez``, ``faiss.write_index``, ``df.to_parquet``).
    Keep the suffix so libraries that look at it behave the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path.stem), suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; rename it to ``path`` only when complete.

    On any exception the temporary directory is removed, so no half-written result is ever left
    under the final name. With ``overwrite`` an existing ``path`` is replaced (moved aside first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = Path(tempfile.mkdtemp(prefix=_prefix(path.name), suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_out_dir(out: str | os.PathLike) -> Path:
    """Fail early (before any work) when the output folder ``out`` exists or cannot be created."""
    out = Path(out)
    if out.exists():
        raise DiffauditError(f"output folder {out} already exists; pass another --out or remove it.")
    p = out.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise DiffauditError(
            f"output folder {out} cannot be created: {p} is a file, not a folder; pass a writable --out."
        )
    if not os.access(p, os.W_OK | os.X_OK):
        raise DiffauditError(
            f"output folder {out} cannot be created: {p} is not writable; pass a writable --out."
        )
    # os.access is not the last word (root ignores modes; /sys, /proc and read-only mounts refuse anyway): create
    # a probe folder where the first missing folder would go (beside the target when its parent exists), remove it
    try:
        probe = Path(tempfile.mkdtemp(prefix=_prefix(out.name), suffix=".tmp", dir=p))
        probe.rmdir()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise DiffauditError(
            f"output folder {out} cannot be created: {why} in {p}; pass a writable --out."
        ) from None
    return out
