"""The one model contract ("any model" enters here), as in k-diffusion's ``D(x, sigma)``.

A ``Model`` generates samples in the normal form of DESIGN.md. Required:

- ``sample(n, seed) -> np.ndarray``: n samples; deterministic for a given seed;
- ``shape``: the shape of one sample.

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

from diffaudit.models.sampler import SamplerConfig, heun_from, heun_sample, noise_from_seeds


class Model:
    """Base class; subclasses implement ``sample`` (black box) or ``denoise`` (via DenoiserModel)."""

    name: str = "model"
    shape: tuple[int, ...] = ()

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} cannot sample")

    @property
    def has_denoiser(self) -> bool:
        return type(self).denoise is not Model.denoise

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no denoiser (black-box model)")

    def sample_from_noise(self, noise: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} cannot be sampled from given noise")

    def reverse_from(self, x: np.ndarray, sigma: float, num_steps: int = 8) -> np.ndarray:
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
        for i in range(0, len(x), bs):
            out[i : i + bs] = heun_from(self.denoise, x[i : i + bs], float(sigma), cfg)
        return out


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

    def sample_from_noise(self, noise: np.ndarray) -> np.ndarray:
        noise = np.asarray(noise, dtype=np.float64)
        out = np.empty(noise.shape, np.float32)
        for i in range(0, len(noise), self.batch_size):
            out[i : i + self.batch_size] = heun_sample(
                self.denoise, noise[i : i + self.batch_size], self.sampler_config
            )
        return out

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        return self.sample_from_noise(noise_from_seeds(range(n), self.shape, base_seed=seed))
