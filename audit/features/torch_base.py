"""Shared machinery of the network feature spaces (inception, clip, dinov2).

Weight files are local and explicit (``weights=`` or an env variable; never downloaded here), identified
in ``Embedder.id`` by their SHA-256; state dicts load through ``safetensors`` or
``torch.load(weights_only=True)``. The network is built on the first ``embed`` call, so a feature-cache
hit never loads it. ``random_init=True`` builds seeded random weights for plumbing tests only.

torch (and safetensors' torch loader) is imported inside functions: it is a heavy optional dependency,
and ``import diffaudit.features`` must not pay for it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError
from diffaudit.features.base import Embedder, progress_bar

RANDOM_SEED = 0  # random-init weights are seeded so plumbing tests are reproducible

_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) within the process."""
    st = path.stat()
    k = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[k] = h.hexdigest()
    return _HASHES[k]


def resolve_weight_file(weights, env: str, what: str, spec: str) -> Path:
    """The local weight file from ``weights`` or else ``$env``; a missing one is a user error naming both."""
    src = weights if weights is not None else os.environ.get(env) or None
    if src is None:
        raise DiffauditError(
            f"feature space {spec!r} needs a local {what} weight file; pass weights= (--weights PATH) or set "
            f"{env} (random weights for plumbing tests only: random_init=True / --random-init)."
        )
    p = Path(os.fspath(src)).expanduser()
    origin = "weights=" if weights is not None else env
    if not p.is_file():
        raise DiffauditError(
            f"{what} weights {str(p)!r} (from {origin}) do not exist; fix the path in {origin}."
        )
    return p


def load_state_dict(path: Path, what: str) -> dict:
    """A state dict from ``.safetensors`` or ``torch.load(weights_only=True)``; strips ``module.``."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DiffauditError(
            f"{what} weights {str(path)!r} cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
            "pass a plain state dict (.pth saved with torch.save(model.state_dict())) or .safetensors."
        ) from None
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DiffauditError(
            f"{what} weights {str(path)!r} are not a state dict of tensors; save model.state_dict()."
        )
    return {k.removeprefix("module."): v for k, v in sd.items()}


class TorchEmbedder(Embedder):
    """Shared machinery: lazy network, batched inference, float32 output."""

    needs_images = True
    env_var = ""
    what = ""

    def __init__(self, *, device="auto", weights=None, random_init=False, spec="") -> None:
        super().__init__()
        self.spec = spec
        self.device = resolve_device(device)
        self.random_init = bool(random_init)
        self.weights_path: Path | None = None
        if not self.random_init:
            self.weights_path = resolve_weight_file(weights, self.env_var, self.what, spec)
        self._net = None

    def _weights_tag(self) -> str:
        if self.random_init:
            return f"random-init(seed={RANDOM_SEED})"
        return "sha256=" + file_sha256(self.weights_path)[:16]

    @property
    def network(self):
        """The network, built (and weights loaded) on first use."""
        if self._net is None:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                net = self._build()
            self._net = net.eval().requires_grad_(False).to(self.device)
            self.n_loads += 1
        return self._net

    def _build(self):
        raise NotImplementedError

    def _preprocess(self, xb):
        raise NotImplementedError

    def _forward(self, net, xb):
        return net(xb)

    def embed(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        import torch

        x = self._check_input(x)
        if batch_size < 1:
            raise DiffauditError(f"batch_size must be at least 1, got {batch_size}.")
        net = self.network
        out = np.empty((len(x), 0), np.float32)
        chunks = []
        with progress_bar(len(x), progress, self.name) as adv, torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(
                    self.device
                )
                if xb.shape[1] == 1:
                    xb = xb.expand(-1, 3, -1, -1)
                f = self._forward(net, self._preprocess(xb))
                chunks.append(f.float().reshape(len(xb), -1).cpu().numpy())
                if adv:
                    adv(len(xb))
        out = np.concatenate(chunks) if chunks else out
        return np.ascontiguousarray(out, dtype=np.float32)


def resize(xb, size: int, mode: str):
    """Square resize of a ``(b, c, h, w)`` tensor; antialiased unless bilinear (the FID recipe has none)."""
    import torch.nn.functional as F

    if tuple(xb.shape[-2:]) == (size, size):
        return xb
    if mode == "bilinear":
        return F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
    return F.interpolate(xb, size=(size, size), mode=mode, align_corners=False, antialias=True)
