"""``CheckpointModel``: a diffaudit checkpoint (``diffaudit.harness.checkpoint``) as a white-box model for
audits (the ``ckpt:PATH`` adapter)."""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.harness.checkpoint import load_checkpoint
from diffaudit.models.activations import layer_activations
from diffaudit.models.contract import DenoiserModel


class CheckpointModel(DenoiserModel):
    """A trained diffaudit network as a ``Model``: numpy float64 in/out, float32 torch inside.

    ``denoise`` runs batched inference under ``no_grad``; ``sample``/``sample_from_noise`` use the
    shared EDM Heun sampler (``DenoiserModel``); ``activations`` reads a named submodule of the
    preconditioned network (names as in ``precond.named_modules()``, e.g. ``net.layers.2``).
    """

    def __init__(
        self,
        path=None,
        *,
        precond=None,
        config: dict | None = None,
        device: str = "cpu",
        num_steps: int = 32,
        batch_size: int = 1024,
    ):
        import torch

        if precond is None:
            if path is None:
                raise DiffauditError(
                    "CheckpointModel needs a checkpoint folder (or a loaded network and config)."
                )
            precond, config = load_checkpoint(path, device=device)
        config = dict(config or {})
        self.precond = precond.eval()
        self.config = config
        self.device = torch.device(device)
        self.precond.to(self.device)
        self.name = f"ckpt:{path}" if path is not None else f"ckpt:{config.get('model', 'network')}"
        shape = tuple(config.get("shape") or ())
        super().__init__(
            shape,
            float(config.get("sigma_data", getattr(precond, "sigma_data", 1.0))),
            num_steps=num_steps,
            batch_size=batch_size,
        )

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.shape[1:] != self.shape:
            raise DiffauditError(
                f"input of shape {x.shape} does not match the checkpoint's sample shape {self.shape}."
            )
        return x

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        import torch

        x = self._check(x)
        out = np.empty(x.shape, np.float64)
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch_size], dtype=np.float32)).to(
                    self.device
                )
                out[i : i + self.batch_size] = self.precond(xb, float(sigma)).double().cpu().numpy()
        return out

    def activations(self, x: np.ndarray, sigma: float, layer: str) -> np.ndarray:
        """(n, F) float32: the named layer's output during D(x, sigma), flattened per sample.

        Layer names are those of ``self.precond.named_modules()``, e.g. ``net.layers.2`` (MLP).
        """
        x = self._check(x)
        return layer_activations(
            self.precond, x, float(sigma), layer, batch_size=self.batch_size, device=self.device
        )
