"""Latent-factor probes (threshold 2) for synthetic data with known generating factors, one module per family.

Pure functions on arrays; a dataset enters only by duck typing (``relative_residual(x)`` or ``project(x)``
-> (z_hat, residual), ``sample(n, seed) -> (x, z)``, ``factors``), never through ``diffaudit`` orchestration.

- ``validity``: scale-free oracle residual ||x - x_proj|| / ||x - centre|| and the valid fraction;
- ``fidelity``: per-factor W1 / KS of recovered vs true factors and factor-space coverage;
- ``novelty``: the novel-valid rate (valid AND not a copy) and the held-out-combination rate;
- ``hidden_direction`` (mixed cumulant model), ``subspaces`` (mixture of low-rank Gaussians);
- ``representation``: ridge probes of activations to factors and DCI scores;
- ``recovery``: the threshold-2 statistic (novel-valid rate AND factors within the null band of true samples).
"""

from __future__ import annotations

from diffaudit.probes.factors.fidelity import FidelityResult, factor_fidelity
from diffaudit.probes.factors.hidden_direction import (
    DirectionResult,
    excess_kurtosis,
    hidden_direction_overlap,
    mcm_target_kurtosis,
)
from diffaudit.probes.factors.novelty import COPY_RATIO, NoveltyResult, novelty
from diffaudit.probes.factors.recovery import (
    DEFAULT_LEVEL,
    DEFAULT_MAX_M,
    DEFAULT_MIN_NOVEL_VALID,
    DEFAULT_N_NULL,
    DEFAULT_N_REF,
    RecoveryResult,
    factor_recovery,
    ks_statistic,
)
from diffaudit.probes.factors.representation import ReprResult, representation_probe, ridge_fit
from diffaudit.probes.factors.subspaces import UnionResult, k_subspaces, union_of_subspaces
from diffaudit.probes.factors.validity import (
    QUANTILES,
    TAU_FRACTION,
    TAU_SLACK,
    ManifoldError,
    ValidityResult,
    ValidityThreshold,
    manifold_error,
    manifold_validity,
    relative_residual,
    validity_threshold,
)

__all__ = [
    "COPY_RATIO",
    "DEFAULT_LEVEL",
    "DEFAULT_MAX_M",
    "DEFAULT_MIN_NOVEL_VALID",
    "DEFAULT_N_NULL",
    "DEFAULT_N_REF",
    "QUANTILES",
    "TAU_FRACTION",
    "TAU_SLACK",
    "DirectionResult",
    "FidelityResult",
    "ManifoldError",
    "NoveltyResult",
    "RecoveryResult",
    "ReprResult",
    "UnionResult",
    "ValidityResult",
    "ValidityThreshold",
    "excess_kurtosis",
    "factor_fidelity",
    "factor_recovery",
    "hidden_direction_overlap",
    "k_subspaces",
    "ks_statistic",
    "manifold_error",
    "manifold_validity",
    "mcm_target_kurtosis",
    "novelty",
    "relative_residual",
    "representation_probe",
    "ridge_fit",
    "union_of_subspaces",
    "validity_threshold",
]
