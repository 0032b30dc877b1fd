"""The deterministic EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 1: Heun's 2nd-order method on the probability-flow ODE, rho-schedule).

One sampler for every model: the analytic controls and the trained networks all enter through the
denoiser contract ``D(x, sigma) -> x_hat`` (x of shape (n, ...), sigma a Python float), as in
k-diffusion. The ODE state is kept in float64 (numpy) or the caller's dtype (torch), and the initial
noise is drawn per sample from its own seed, so a sample does not depend on the batch it is in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

Denoiser = Callable[[object, float], object]


@dataclass(frozen=True)
class SamplerConfig:
    num_steps: int = 32  # number of noise levels N (Heun: 2N-1 denoiser calls)
    sigma_min: float = 0.002
    sigma_max: float = 80.0  # EDM default for sigma_data = 0.5; scale with the data (see ``for_data``)
    rho: float = 7.0  # schedule curvature; 7 is EDM's choice

    @classmethod
    def for_data(cls, sigma_data: float, num_steps: int = 32) -> SamplerConfig:
        """Scale EDM's image defaults (sigma_data 0.5: sigma_min 0.002, sigma_max 80) to the data's std."""
        s = float(sigma_data) / 0.5
        return cls(num_steps=num_steps, sigma_min=0.002 * s, sigma_max=80.0 * s)


def karras_sigmas(cfg: SamplerConfig) -> np.ndarray:
    """t_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, i < N, then t_N = 0 (Eq. 5)."""
    n = cfg.num_steps
    if n < 1:
        raise ValueError("num_steps must be >= 1")
    i = np.arange(n, dtype=np.float64)
    inv = 1.0 / cfg.rho
    frac = i / max(n - 1, 1)
    t = (cfg.sigma_max**inv + frac * (cfg.sigma_min**inv - cfg.sigma_max**inv)) ** cfg.rho
    return np.concatenate([t, [0.0]])


def noise_from_seeds(seeds: Sequence[int], shape: Sequence[int], base_seed: int = 0) -> np.ndarray:
    """Standard normal noise, one independent stream per sample: row i comes from seed (base_seed, seeds[i])."""
    shape = tuple(int(s) for s in shape)
    out = np.empty((len(seeds), *shape), np.float64)
    for j, s in enumerate(seeds):
        out[j] = np.random.default_rng([int(base_seed), int(s)]).standard_normal(shape)
    return out


def heun_sample(denoise: Denoiser, noise, cfg: SamplerConfig = SamplerConfig(), callback=None):
    """Run Algorithm 1 (deterministic, S_churn = 0) from unit-variance ``noise`` of shape (n, ...).

    ``noise`` may be a numpy array (state in float64) or a torch tensor (state in its dtype/device);
    ``denoise`` must accept and return the same kind. ``callback(i, sigma, x)`` is called each step.
    """
    t = karras_sigmas(cfg)
    if isinstance(noise, np.ndarray):
        x = noise.astype(np.float64) * t[0]
    else:
        x = noise * float(t[0])
    for i in range(len(t) - 1):
        t_cur, t_next = float(t[i]), float(t[i + 1])
        d = (x - denoise(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d
        if t_next > 0:
            d2 = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
        x = x_next
        if callback is not None:
            callback(i, t_next, x)
    return x


def heun_from(denoise: Denoiser, x, sigma: float, cfg: SamplerConfig = SamplerConfig()):
    """Algorithm 1 started from a given state ``x`` (n, ...) at noise level ``sigma`` instead of from pure
    noise at ``sigma_max``: the same sampler on the rho-schedule from ``sigma`` down to ``cfg.sigma_min``
    (``cfg.num_steps`` levels), then 0 -- the partial reverse process of SDEdit (Meng et al. 2022).

    A ``sigma`` at or below ``cfg.sigma_min`` takes one Euler step to 0 (x0 = D(x, sigma)).
    """
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError("sigma must be > 0")
    if sigma <= cfg.sigma_min:
        cfg = replace(cfg, num_steps=1)
    return heun_sample(denoise, x / sigma, replace(cfg, sigma_max=sigma))
