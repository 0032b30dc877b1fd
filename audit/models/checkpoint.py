"""diffaudit checkpoints: ``model.safetensors`` (the EMA weights of the raw network F) + ``config.json``
(format ``diffaudit.checkpoint/1``: model spec, sample shape, sigma_data, dataset spec, n_train, train
config, diffaudit version). This is what ``diffaudit train`` writes and the ``ckpt:PATH`` adapter loads.

Weights are read with ``safetensors`` only (no pickle). ``config.json`` is written last, each file
atomically, so a folder with a ``config.json`` holds a complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.models.contract import DenoiserModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(dir, net, config: dict) -> Path:
    """Write ``net``'s raw-network weights (an ``EDMPrecond`` or the bare F) and ``config`` to ``dir``."""
    from safetensors.torch import save_file

    from diffaudit.fileio import atomic_path, atomic_write_json

    inner = getattr(net, "net", net)
    state = {k: v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": str(config.get("format", ""))})
    atomic_write_json(dir / CONFIG, config)
    return dir


def read_config(dir) -> dict:
    dir = Path(dir)
    if not dir.is_dir():
        raise DiffauditError(f"checkpoint {dir} is not a folder; give the --out folder of 'diffaudit train'.")
    path = dir / CONFIG
    if not path.is_file():
        raise DiffauditError(f"checkpoint {dir} has no {CONFIG}; it is not a (complete) diffaudit checkpoint.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffauditError(f"checkpoint config {path} cannot be read ({e}); re-run training to rewrite it.") from None
    missing = [k for k in ("model", "shape", "sigma_data") if k not in config] if isinstance(config, dict) else ["all"]
    if missing:
        raise DiffauditError(f"checkpoint config {path} lacks {', '.join(missing)}; it was not written by diffaudit train.")
    return config


def load_checkpoint(dir, device: str = "cpu"):
    """-> (EDMPrecond in eval mode on ``device``, config dict). Bad or missing files -> DiffauditError."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from diffaudit.harness.edm import EDMPrecond
    from diffaudit.harness.networks import build_network, parse_model_spec

    dir = Path(dir)
    config = read_config(dir)
    wpath = dir / WEIGHTS
    if not wpath.is_file():
        raise DiffauditError(f"checkpoint {dir} has no {WEIGHTS}; it is not a complete diffaudit checkpoint.")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise DiffauditError(f"checkpoint weights {wpath} cannot be read ({e}); the file is corrupt.") from None
    net = build_network(parse_model_spec(config["model"]), tuple(config["shape"]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise DiffauditError(f"checkpoint weights {wpath} do not match model {config['model']!r} ({first}).") from None
    precond = EDMPrecond(net, float(config["sigma_data"])).to(torch.device(device)).eval()
    for p in precond.parameters():
        p.requires_grad_(False)
    return precond, config


def _local_layer_activations(module, x, sigma, layer_name: str, batch_size: int, device):
    """Fallback for ``diffaudit.activations.layer_activations``: a forward hook on ``layer_name``."""
    import torch

    names = dict(module.named_modules())
    if not layer_name or layer_name not in names:
        raise DiffauditError(f"layer {layer_name!r} is not in the network; choose one of: {', '.join(n for n in names if n)}.")
    captured: list = []
    handle = names[layer_name].register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    chunks = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(device)
                captured.clear()
                module(xb, float(sigma))
                chunks.append(captured[0].reshape(len(xb), -1).float().cpu().numpy())
    finally:
        handle.remove()
    return np.concatenate(chunks).astype(np.float32)


class CheckpointModel(DenoiserModel):
    """A trained diffaudit network as a ``Model``: numpy float64 in/out, float32 torch inside.

    ``denoise`` runs batched inference under ``no_grad``; ``sample``/``sample_from_noise`` use the
    shared EDM Heun sampler (``DenoiserModel``); ``activations`` reads a named submodule of the
    preconditioned network (names as in ``precond.named_modules()``, e.g. ``net.layers.2``).
    """

    def __init__(self, path=None, *, precond=None, config: dict | None = None, device: str = "cpu",
                 num_steps: int = 32, batch_size: int = 1024):
        import torch

        if precond is None:
            if path is None:
                raise DiffauditError("CheckpointModel needs a checkpoint folder (or a loaded network and config).")
            precond, config = load_checkpoint(path, device=device)
        config = dict(config or {})
        self.precond = precond.eval()
        self.config = config
        self.device = torch.device(device)
        self.precond.to(self.device)
        self.name = f"ckpt:{path}" if path is not None else f"ckpt:{config.get('model', 'network')}"
        shape = tuple(config.get("shape") or ())
        super().__init__(shape, float(config.get("sigma_data", getattr(precond, "sigma_data", 1.0))),
                         num_steps=num_steps, batch_size=batch_size)

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.shape[1:] != self.shape:
            raise DiffauditError(f"input of shape {x.shape} does not match the checkpoint's sample shape {self.shape}.")
        return x

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        import torch

        x = self._check(x)
        out = np.empty(x.shape, np.float64)
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch_size], dtype=np.float32)).to(self.device)
                out[i : i + self.batch_size] = self.precond(xb, float(sigma)).double().cpu().numpy()
        return out

    def activations(self, x: np.ndarray, sigma: float, layer: str) -> np.ndarray:
        """(n, F) float32: the named layer's output during D(x, sigma), flattened per sample.

        Layer names are those of ``self.precond.named_modules()``, e.g. ``net.layers.2`` (MLP).
        """
        x = self._check(x)
        try:
            from diffaudit.models.activations import layer_activations
        except ImportError:  # the team's module is optional; the local hook does the same
            return _local_layer_activations(self.precond, x, sigma, layer, self.batch_size, self.device)
        return layer_activations(self.precond, x, float(sigma), layer, batch_size=self.batch_size, device=self.device)
