"""Disjoint-split reproducibility in sweeps: sample two models from the same initial noise, then measure.

Orchestration only: the noise comes from ``diffaudit.models.sampler.noise_from_seeds`` (one stream per
sample), each model runs its own deterministic sampler through ``sample_from_noise`` (the model contract
in ``diffaudit.models.contract``), and the probe ``diffaudit.probes.reproducibility.disjoint_reproducibility``
measures the pairs (Zhang et al. 2023; Kadkhodaie et al. 2024).
"""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.models.sampler import noise_from_seeds
from diffaudit.probes.reproducibility import RP_THRESHOLD, RPResult, disjoint_reproducibility


def shared_noise_samples(model_a, model_b, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``(a, b)`` of both models from the same noise (n, *shape) drawn with ``seed``."""
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not callable(getattr(m, "sample_from_noise", None)):
            raise DiffauditError(
                f"{name} cannot be sampled from given noise; it needs sample_from_noise(noise)."
            )
    shape_a, shape_b = tuple(model_a.shape), tuple(model_b.shape)
    if shape_a != shape_b:
        raise DiffauditError(
            f"model_a samples have shape {shape_a} but model_b {shape_b}; compare models of one dataset."
        )
    if int(n) < 1:
        raise DiffauditError(f"n={n} must be at least 1.")
    noise = noise_from_seeds(range(int(n)), shape_a, base_seed=seed)
    try:
        a = np.asarray(model_a.sample_from_noise(noise))
        b = np.asarray(model_b.sample_from_noise(noise))
    except NotImplementedError as e:
        raise DiffauditError(
            f"{e}; reproducibility needs models that can be sampled from given noise."
        ) from None
    return a, b


def shared_noise_reproducibility(
    model_a, model_b, n: int, seed: int = 0, threshold: float = RP_THRESHOLD, *, centre: bool = False
) -> RPResult:
    """RP score of two models (e.g. trained on disjoint halves of a dataset) from ``n`` shared noises."""
    a, b = shared_noise_samples(model_a, model_b, n, seed)
    return disjoint_reproducibility(a, b, threshold, centre=centre)
