"""Pick the torch device for inference: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``."""

from __future__ import annotations

from diffaudit.errors import DiffauditError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto"):
    """``"auto"|"cpu"|"cuda"|"cuda:N"`` -> ``torch.device``; asking for CUDA without one is a user error."""
    import torch

    d = str(device).strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d == "cuda" or d.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DiffauditError(
                f"device {device!r}: no CUDA device is available here; use --device cpu or auto."
            )
        dev = torch.device(d)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DiffauditError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here; pick cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1}."
            )
        return dev
    raise DiffauditError(f"device {device!r}: unknown; use one of auto, cpu, cuda.")
