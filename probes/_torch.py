"""The probes' torch paths: which engine runs, on which device (torch is imported only when one is used).

A probe that has a torch path takes ``device`` (a torch device string: ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
or a ``torch.device``) and ``engine``: ``"auto"`` runs torch exactly when ``device`` is a CUDA device (on the
CPU the numpy / FAISS path stays the reference), ``"torch"`` runs torch on ``device`` whatever it is (so the
tests exercise the torch code on the CPU), and the baseline's name (``"numpy"``; ``"faiss"`` for
``neighbors.search``, which also weighs FAISS's own GPU) never runs torch. Choosing the device (``"auto"``) is
the caller's job (``diffaudit.device.resolve_device`` in the audit).
"""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DiffauditError


def is_cuda(device) -> bool:
    """True for ``"cuda"``, ``"cuda:N"`` or a CUDA ``torch.device``; decided without importing torch."""
    return str(device).strip().lower().startswith("cuda")


def use_torch(engine: str, device) -> bool:
    """Whether a probe whose baseline is numpy runs its torch path (module docstring)."""
    if engine == "auto":
        return is_cuda(device)
    if engine == "torch":
        return True
    if engine == "numpy":
        return False
    raise DiffauditError(f"engine={engine!r} is not understood; use 'auto', 'numpy' or 'torch'.")


def torch_device(device):
    """``device`` as a ``torch.device``; a CUDA device that is not there is a user error."""
    import torch  # lazily: importing the probes stays cheap

    try:
        dev = torch.device(str(device).strip().lower())
    except RuntimeError:
        raise DiffauditError(
            f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'."
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise DiffauditError(f"device {device!r}: the probes run on 'cpu' or 'cuda' only.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DiffauditError(f"device {device!r}: no CUDA device is available here; use device='cpu'.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DiffauditError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1}."
            )
    return dev


def to_float64(x, dev):
    """A host array (any float dtype) as a float64 tensor on ``dev`` (uploaded in its own dtype, cast there)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(dev).to(torch.float64)
