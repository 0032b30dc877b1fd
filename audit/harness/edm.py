"""The EDM formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models", Table 1, "Ours" column): preconditioning, loss weighting and the training noise distribution.

    D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))
    c_skip = s_d^2 / (s^2 + s_d^2)      c_out = s s_d / sqrt(s^2 + s_d^2)
    c_in   = 1 / sqrt(s^2 + s_d^2)      c_noise = ln(s) / 4
    lambda(s) = (s^2 + s_d^2) / (s s_d)^2   (= 1 / c_out^2)
    ln(s) ~ N(P_mean, P_std^2), P_mean = -1.2, P_std = 1.2

EDM's P_mean/P_std were tuned for image data with s_d = 0.5. We draw s = (s_d / 0.5) exp(P_mean + P_std n),
the same rescaling ``SamplerConfig.for_data`` applies to the sampler's sigma range, so training and
sampling are invariant under a rescaling of the data (x -> a x changes nothing but the units).

The random draws of one training step go through ``draw_sigma_noise`` with a caller-owned
``torch.Generator``; the single-model trainer and the vectorised one call it in the same order, which
is what makes them draw identical numbers per model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

P_MEAN = -1.2
P_STD = 1.2
SIGMA_DATA_REF = 0.5  # the s_d EDM's P_mean/P_std and sampler range were tuned for


def edm_coefficients(sigma: torch.Tensor, sigma_data: float | torch.Tensor):
    """(c_skip, c_out, c_in, c_noise) of Table 1 for noise levels ``sigma`` (any shape, > 0)."""
    s2 = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1.0 / s2.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_weight(sigma: torch.Tensor, sigma_data: float | torch.Tensor) -> torch.Tensor:
    """Loss weight lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2 (Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def precondition(net_fn, x: torch.Tensor, sigma: torch.Tensor, sigma_data) -> torch.Tensor:
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) for a raw network ``net_fn(x_in, c_noise)``.

    x: (B, *shape); sigma: (B,). Shared by ``EDMPrecond`` and the functional (vmap) trainer.
    """
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sig, sigma_data)
    F = net_fn(x * c_in, c_noise.reshape(-1))
    return c_skip * x + c_out * F.to(x.dtype)


class EDMPrecond(nn.Module):
    """Wraps a raw network F(x_in, c_noise) into the denoiser D(x, sigma) (Karras 2022, Sec. 5)."""

    def __init__(self, net: nn.Module, sigma_data: float):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """x: (B, *shape) float; sigma: a float or a (B,) tensor of noise levels."""
        if not torch.is_tensor(sigma):
            sigma = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        elif sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        return precondition(self.net, x, sigma, self.sigma_data)


def draw_normals(generator: torch.Generator, batch: int, shape: tuple[int, ...]):
    """One step's raw random draws, in a fixed order: normals for ln(sigma) (B,), then unit noise
    (B, *shape); float32, on the generator's device."""
    rnd = torch.randn(batch, generator=generator, device=generator.device)
    noise = torch.randn((batch, *shape), generator=generator, device=generator.device)
    return rnd, noise


def sigma_from_normal(rnd: torch.Tensor, sigma_data) -> torch.Tensor:
    """sigma = (s_d / 0.5) exp(P_mean + P_std rnd): EDM's log-normal, rescaled to the data (module doc)."""
    return (rnd * P_STD + P_MEAN).exp() * (sigma_data / SIGMA_DATA_REF)


def draw_sigma_noise(generator: torch.Generator, batch: int, shape: tuple[int, ...], sigma_data: float):
    """One step's sigma (B,) and unit noise (B, *shape), from ``draw_normals``."""
    rnd, noise = draw_normals(generator, batch, shape)
    return sigma_from_normal(rnd, float(sigma_data)), noise


def edm_loss_from_draws(denoise_fn, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, sigma_data):
    """Mean over batch and coordinates of lambda(sigma) |D(x + sigma n, sigma) - x|^2 (Eq. 2 / Table 1).

    A mean (not EDM's sum over coordinates) keeps the loss and the gradient-clipping scale independent
    of the data dimension; for data that D matches, the weighted loss per coordinate is O(1).
    """
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    D = denoise_fn(x + noise * sig, sigma)
    w = edm_weight(sig, sigma_data)
    return (w * (D.float() - x.float()) ** 2).mean()


def edm_loss(precond: EDMPrecond, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The EDM training loss of ``precond`` on a batch ``x`` (B, *shape), with draws from ``generator``."""
    sigma, noise = draw_sigma_noise(generator, x.shape[0], tuple(x.shape[1:]), precond.sigma_data)
    sigma, noise = sigma.to(x.device), noise.to(x.device, x.dtype)
    return edm_loss_from_draws(precond, x, sigma, noise, precond.sigma_data)


def sigma_range(sigma_data: float) -> tuple[float, float]:
    """The central 99.7 % of the training sigma distribution (for documentation/tests)."""
    s = float(sigma_data) / SIGMA_DATA_REF
    return s * math.exp(P_MEAN - 3 * P_STD), s * math.exp(P_MEAN + 3 * P_STD)
