"""The one model contract ("any model" enters here), as in k-diffusion's ``D(x, sigma)``.

A ``Model`` generates samples in the normal form of DESIGN.md. Required:

- ``sample(n, seed) -> np.ndarray``: n samples; deterministic for a given seed;
- ``shape``: the shape of one sample.

Conditional models (class-conditional networks, text-to-image pipelines) declare ``conditioning``:
``"labels"`` (with ``n_classes`` and optionally ``class_names``) or ``"prompts"``; None (the default) is an
unconditional model. They take ``cond`` in every generating call: ``sample(n, seed, cond=None)``,
``denoise(x, sigma, cond=None)``, ``sample_from_noise(noise, cond=None)``, with ``cond`` one condition PER ROW
(an int array (n,) of class indices, or a list of n prompt strings) and ``cond=None`` meaning the
unconditional (null-condition) model where the model has one (classifier-free guidance training), else an
error. ``check_cond`` validates a ``cond`` against a model in one place, so probes never branch on the
model family: they pass ``cond`` through or leave it None.

Optional, for white-box probes and the deterministic sampler:

- ``denoise(x, sigma) -> x_hat``: the denoiser D(x, sigma) on numpy arrays (float64 in/out);
- ``sample_from_noise(noise) -> np.ndarray``: run the deterministic EDM Heun sampler from given
  unit-variance noise (n, *shape), so two models can be compared from the same initial noise;
- ``reverse_from(x, sigma, num_steps) -> np.ndarray``: run the same sampler from a given noisy state x at
  noise level sigma down to 0 (the basin-of-attraction probe); provided here for every model with ``denoise``;
- ``activations(x, sigma, layer) -> np.ndarray``: hidden activations of a named layer (n, F).

Probes never branch on a model's family; adapters translate. ``DenoiserModel`` below turns any
denoiser into a full model through the one sampler.
"""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.models.sampler import SamplerConfig, heun_from, heun_sample, noise_from_seeds

CONDITIONINGS = ("labels", "prompts")  # the kinds of condition a model can take (None: unconditional)


class Model:
    """Base class; subclasses implement ``sample`` (black box) or ``denoise`` (via DenoiserModel)."""

    name: str = "model"
    shape: tuple[int, ...] = ()
    conditioning: str | None = None  # None | "labels" | "prompts" (module docstring)
    n_classes: int | None = None  # number of classes of a "labels" model (labels are 0 .. n_classes - 1)
    class_names: tuple[str, ...] | None = None  # optional names of those classes, for reports

    def sample(self, n: int, seed: int = 0, cond=None) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} cannot sample")

    @property
    def has_denoiser(self) -> bool:
        return type(self).denoise is not Model.denoise

    def denoise(self, x: np.ndarray, sigma: float, cond=None) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no denoiser (black-box model)")

    def sample_from_noise(self, noise: np.ndarray, cond=None) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} cannot be sampled from given noise")

    def reverse_from(self, x: np.ndarray, sigma: float, num_steps: int = 8, cond=None) -> np.ndarray:
        """The deterministic reverse process from state ``x`` (n, *shape) at noise level ``sigma`` down to 0:
        the EDM Heun sampler (``heun_from``) on ``num_steps`` levels from ``sigma`` to the model's
        ``sampler_config.sigma_min`` (EDM's 0.002 for a model without one), in batches of ``batch_size``.
        Float64 in, float64 out; white-box models only."""
        if not self.has_denoiser:
            raise NotImplementedError(f"{type(self).__name__} has no denoiser (black-box model)")
        cfg = getattr(self, "sampler_config", None) or SamplerConfig()
        cfg = SamplerConfig(num_steps=int(num_steps), sigma_min=cfg.sigma_min, rho=cfg.rho)
        x = np.asarray(x, dtype=np.float64)
        bs = int(getattr(self, "batch_size", 1024))
        out = np.empty(x.shape, np.float64)
        cond = check_cond(self, cond, len(x))
        for i in range(0, len(x), bs):
            out[i : i + bs] = heun_from(
                bind_cond(self.denoise, cond, i, bs), x[i : i + bs], float(sigma), cfg
            )
        return out


def check_cond(model, cond, n: int, what: str = "cond"):
    """``cond`` for ``n`` rows of ``model``, validated and normalised: None, an int64 array (n,) of class
    indices in [0, n_classes) ("labels"), or a list of n strings ("prompts"). A condition given to an
    unconditional model, a wrong kind, length or class -> ``DiffauditError`` naming the fix."""
    kind = getattr(model, "conditioning", None)
    name = getattr(model, "name", type(model).__name__)
    if cond is None:
        return None
    if kind is None:
        raise DiffauditError(
            f"model {name} is unconditional but was given {what}; audit it without --condition / --prompts."
        )
    if kind == "labels":
        raw = np.asarray(cond)
        if raw.ndim != 1 or len(raw) != int(n):
            raise DiffauditError(
                f"{what}: needs one class label per sample ({int(n)}), got shape {raw.shape}."
            )
        if raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)):
            raw = raw.astype(np.int64)
        if raw.dtype.kind not in "iu":
            raise DiffauditError(f"{what}: class labels must be whole numbers, got dtype {raw.dtype}.")
        labels = raw.astype(np.int64)
        k = getattr(model, "n_classes", None)
        hi = np.iinfo(np.int64).max if k is None else int(k)
        bad = labels[(labels < 0) | (labels >= hi)]
        if len(bad):
            classes = "0 or more" if k is None else f"0..{hi - 1}"
            raise DiffauditError(
                f"{what}: label {int(bad[0])} is outside the model's classes ({classes}); "
                "pass labels the model was trained on."
            )
        return labels
    if kind == "prompts":
        if isinstance(cond, str):
            raise DiffauditError(f"{what}: pass a list of {int(n)} prompts (one per sample), not one string.")
        prompts = list(cond)
        if len(prompts) != int(n) or not all(isinstance(p, str) for p in prompts):
            raise DiffauditError(
                f"{what}: needs one prompt string per sample ({int(n)}), got {len(prompts)}."
            )
        return prompts
    raise DiffauditError(f"model {name} declares conditioning={kind!r}; use one of {CONDITIONINGS} or None.")


def bind_cond(denoise, cond, start: int, size: int):
    """``denoise`` as a two-argument ``D(x, sigma)`` for rows ``start .. start + size`` of ``cond`` (for the
    sampler); the function itself when ``cond`` is None, so unconditional models never see a ``cond``."""
    if cond is None:
        return denoise
    part = cond[start : start + size]
    return lambda x, sigma: denoise(x, sigma, part)


class DenoiserModel(Model):
    """A model defined by its denoiser D(x, sigma); sampled with the EDM Heun sampler.

    ``sigma_data`` scales the noise schedule (``SamplerConfig.for_data``); ``batch_size`` bounds
    how many samples go through the denoiser at once.
    """

    def __init__(
        self, shape: tuple[int, ...], sigma_data: float, num_steps: int = 32, batch_size: int = 1024
    ):
        self.shape = tuple(shape)
        self.sigma_data = float(sigma_data)
        self.sampler_config = SamplerConfig.for_data(self.sigma_data, num_steps=num_steps)
        self.batch_size = int(batch_size)

    def sample_from_noise(self, noise: np.ndarray, cond=None) -> np.ndarray:
        noise = np.asarray(noise, dtype=np.float64)
        cond = check_cond(self, cond, len(noise))
        out = np.empty(noise.shape, np.float32)
        bs = self.batch_size
        for i in range(0, len(noise), bs):
            out[i : i + bs] = heun_sample(
                bind_cond(self.denoise, cond, i, bs), noise[i : i + bs], self.sampler_config
            )
        return out

    def sample(self, n: int, seed: int = 0, cond=None) -> np.ndarray:
        noise = noise_from_seeds(range(n), self.shape, base_seed=seed)
        return self.sample_from_noise(noise) if cond is None else self.sample_from_noise(noise, cond)
