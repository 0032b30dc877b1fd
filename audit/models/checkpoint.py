"""``CheckpointModel``: a diffaudit checkpoint (``diffaudit.harness.checkpoint``) as a white-box model for
audits (the ``ckpt:PATH`` adapter).

A class-conditional checkpoint (``conditioning: "labels"`` in its config) is a ``"labels"`` model of the
contract: ``cond`` (one class index per row) selects the class, ``cond=None`` the null-label (unconditional)
denoiser learned by label dropout. With a guidance scale w != 1, classifier-free guidance (Ho & Salimans 2022,
"Classifier-Free Diffusion Guidance", Eq. 6) in the denoiser form:

    D_w(x, sigma, c) = D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null)),

which is their eps_w = (1 + g) eps_c - g eps_null with w = 1 + g, since D = x - sigma eps is affine in eps.
"""

from __future__ import annotations

import math

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.harness.checkpoint import config_n_classes, load_checkpoint
from diffaudit.models.activations import layer_activations
from diffaudit.models.contract import DenoiserModel, check_cond


class CheckpointModel(DenoiserModel):
    """A trained diffaudit network as a ``Model``: numpy float64 in/out, float32 torch inside.

    ``denoise`` runs batched inference under ``no_grad``; ``sample``/``sample_from_noise`` use the
    shared EDM Heun sampler (``DenoiserModel``); ``activations`` reads a named submodule of the
    preconditioned network (names as in ``precond.named_modules()``, e.g. ``net.layers.2``).
    ``guidance``: the classifier-free guidance scale of a class-conditional checkpoint (module docstring;
    1 = the plain conditional denoiser, 0 = the unconditional one); an unconditional checkpoint takes only 1.
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
        guidance: float = 1.0,
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
        self.label_dropout: float | None = None  # a conditional checkpoint's (its config's) label dropout
        self.n_classes = config_n_classes(config)
        if self.n_classes is not None:
            if getattr(self.precond, "n_classes", None) != self.n_classes:
                raise DiffauditError(
                    f"checkpoint {self.name}: the config has {self.n_classes} classes but the network "
                    f"{getattr(self.precond, 'n_classes', None)}; load the network its config was written for."
                )
            self.conditioning = "labels"
            names = config.get("class_names")
            self.class_names = None if names is None else tuple(str(c) for c in names)
            # a checkpoint trained without label dropout never saw the null label: no unconditional mode
            self.label_dropout = float(config.get("label_dropout", 0.0))
        self.guidance = self._check_guidance(guidance)

    def _check_guidance(self, guidance) -> float:
        if isinstance(guidance, bool) or not isinstance(guidance, int | float | np.integer | np.floating):
            raise DiffauditError(f"guidance must be a number (1 = no guidance), got {guidance!r}.")
        w = float(guidance)
        if not (math.isfinite(w) and w >= 0):
            raise DiffauditError(
                f"guidance must be a finite number >= 0 (1 = no guidance), got {guidance!r}."
            )
        if w != 1.0 and self.conditioning is None:
            raise DiffauditError(
                f"model {self.name} is unconditional, so classifier-free guidance {w:g} does not apply; use 1."
            )
        if w != 1.0 and not self.has_null_label:
            raise DiffauditError(
                f"model {self.name} was trained with label_dropout 0 (no unconditional mode), so it cannot "
                f"be guided; use guidance 1 or retrain with --label-dropout > 0."
            )
        return w

    @property
    def has_null_label(self) -> bool:
        """Whether the null label was trained (a conditional checkpoint with label_dropout > 0)."""
        return self.conditioning == "labels" and self.label_dropout > 0

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.shape[1:] != self.shape:
            raise DiffauditError(
                f"input of shape {x.shape} does not match the checkpoint's sample shape {self.shape}."
            )
        return x

    def denoise(self, x: np.ndarray, sigma: float, cond=None) -> np.ndarray:
        """D(x, sigma[, cond]) in float64; ``cond`` (n,) class labels of a conditional checkpoint, guided with
        ``self.guidance``; ``cond=None`` is its null-label (unconditional) denoiser."""
        import torch

        x = self._check(x)
        cond = check_cond(self, cond, len(x))
        if cond is None and self.conditioning == "labels" and not self.has_null_label:
            raise DiffauditError(
                f"model {self.name} was trained with label_dropout 0, so it has no unconditional denoiser; "
                "give a class label per sample (cond)."
            )
        w = self.guidance
        out = np.empty(x.shape, np.float64)
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch_size], dtype=np.float32)).to(
                    self.device
                )
                if cond is None:  # an unconditional network, or a conditional one's null label
                    D = self.precond(xb, float(sigma)).double()
                else:
                    yb = torch.from_numpy(cond[i : i + self.batch_size]).to(self.device)
                    D = self.precond(xb, float(sigma), yb).double()
                    if w != 1.0:
                        D_null = self.precond(xb, float(sigma)).double()
                        D = D_null + w * (D - D_null)
                out[i : i + self.batch_size] = D.cpu().numpy()
        return out

    def activations(self, x: np.ndarray, sigma: float, layer: str) -> np.ndarray:
        """(n, F) float32: the named layer's output during D(x, sigma), flattened per sample (a conditional
        checkpoint's null label).

        Layer names are those of ``self.precond.named_modules()``, e.g. ``net.layers.2`` (MLP).
        """
        x = self._check(x)
        return layer_activations(
            self.precond, x, float(sigma), layer, batch_size=self.batch_size, device=self.device
        )
