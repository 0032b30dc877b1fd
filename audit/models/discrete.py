"""DDPM-type discrete noise schedules read as EDM denoisers (k-diffusion ``external.py``: ``DiscreteSchedule``,
``DiscreteEpsDDPMDenoiser``, ``DiscreteVDDPMDenoiser``; Karras et al. 2022, Table 1, VP column).

A network trained on T discrete timesteps with cumulative products abar_t sees x_t = sqrt(abar_t) (x0 + sigma_t n)
with sigma_t = sqrt((1 - abar_t) / abar_t), ascending with t. The EDM state x = x0 + sigma n enters the network as
c_in x with c_in = 1 / sqrt(1 + sigma^2); a continuous sigma maps to a fractional timestep by linear interpolation
in log sigma (clamped to the covered range). The network output becomes the denoiser D(x, sigma):

- epsilon prediction: D = x - sigma eps;
- v prediction: D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v;
- sample prediction: D = the output.

Shared by every diffusers adapter (``DiffusersModel``, ``TextToImageModel``), so they map sigma the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.models.sampler import SamplerConfig

PREDICTIONS = ("epsilon", "v_prediction", "sample")  # the diffusers prediction types a schedule converts


@dataclass(frozen=True)
class DiscreteSchedule:
    """The sigmas of a discrete schedule and how its network's output becomes D(x, sigma)."""

    sigmas: np.ndarray  # (T,) float64, sigma_t = sqrt((1 - abar_t) / abar_t), ascending with t
    prediction_type: str = "epsilon"  # one of PREDICTIONS

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, prediction_type: str = "epsilon") -> DiscreteSchedule:
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        return cls(np.sqrt((1.0 - ac) / ac), str(prediction_type))

    @classmethod
    def from_folder(cls, folder, where: str) -> DiscreteSchedule:
        """The schedule of a diffusers ``scheduler/`` folder (``scheduler_config.json``; the class it names, any
        scheduler with ``alphas_cumprod``). ``where`` names the model in error messages."""
        import diffusers
        import torch

        folder = Path(folder)
        try:
            cfg = diffusers.DDPMScheduler.load_config(str(folder))
            cls_name = cfg.get("_class_name", "DDPMScheduler")
            sched_cls = getattr(diffusers, cls_name, None) or diffusers.DDPMScheduler
            scheduler = sched_cls.from_config(cfg)
        except Exception as e:
            raise DiffauditError(
                f"{where}: cannot read {folder.name}/ ({type(e).__name__}: {str(e)[:160]}); "
                "save the pipeline with pipeline.save_pretrained(PATH)."
            ) from None
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:
            raise DiffauditError(
                f"{where}: scheduler {cls_name} has no alphas_cumprod; only DDPM-type discrete schedulers are supported."
            )
        prediction = str(getattr(scheduler.config, "prediction_type", "epsilon"))
        if prediction not in PREDICTIONS:
            raise DiffauditError(
                f"{where}: prediction_type {prediction!r} is not supported; use one of {', '.join(PREDICTIONS)}."
            )
        return cls.from_alphas_cumprod(torch.as_tensor(ac).double().cpu().numpy(), prediction)

    @property
    def log_sigmas(self) -> np.ndarray:
        return np.log(self.sigmas)

    def sigma_to_t(self, sigma: float) -> float:
        """Fractional timestep of ``sigma`` (interpolated in log sigma; clamped to the schedule)."""
        ls = np.log(np.clip(float(sigma), self.sigmas.min(), self.sigmas.max()))
        return float(np.interp(ls, self.log_sigmas, np.arange(len(self.sigmas), dtype=np.float64)))

    def sampler_config(self, num_steps: int, sigma_data: float) -> SamplerConfig:
        """EDM's schedule for ``sigma_data`` cut to the sigma range the network was trained on."""
        base = SamplerConfig.for_data(sigma_data, num_steps=num_steps)
        return SamplerConfig(
            num_steps=num_steps,
            sigma_min=max(base.sigma_min, float(self.sigmas.min())),
            sigma_max=min(base.sigma_max, float(self.sigmas.max())),
            rho=base.rho,
        )

    @staticmethod
    def c_in(sigma: float) -> float:
        return 1.0 / np.sqrt(1.0 + float(sigma) ** 2)

    def denoised(self, x: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        """D(x, sigma) from the network output ``out`` at input c_in x (module docstring), in float64."""
        sigma = float(sigma)
        out = np.asarray(out, dtype=np.float64)
        if self.prediction_type == "epsilon":
            return x - sigma * out
        if self.prediction_type == "v_prediction":
            return x / (1.0 + sigma**2) - sigma / np.sqrt(1.0 + sigma**2) * out
        return out


def scalar_sigma(sigma) -> float:
    """``sigma`` as a Python float (the sampler passes one; a caller may pass a one-element array)."""
    return float(np.asarray(sigma).reshape(-1)[0]) if np.ndim(sigma) else float(sigma)
