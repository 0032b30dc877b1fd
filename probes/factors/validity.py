"""Scale-free manifold validity: the oracle's distance to the data manifold relative to the sample's own norm.

The residual of a sample x is rho(x) = ||x - x_proj|| / ||x - c||, where x_proj is the oracle's nearest
manifold point and c the data centre (hidden-manifold, molrg, mcm: the data mean, 0 by symmetry; images:
mid-grey 0 of the [-1, 1] range, so rho is the RMS pixel error over the RMS pixel magnitude ~ 1). The
dataset supplies it: ``dataset.relative_residual(x) -> (z_hat, rho)`` when defined, else
``dataset.project(x)`` for datasets that declare ``residual_is_relative = True``.

Why relative: an absolute residual (RMS distance in data units) calls every sample near a manifold
that passes through the data centre valid, whatever its structure (hidden-manifold d = 32, D = 4 at
tau = 0.1 x data std: N(0, 0.02^2 I) noise 100 % valid, true samples shrunk by 0.3 93 %, chords between
training points 99 %). Relative to the sample's own norm, a structureless sample costs rho ~ sqrt(1 - D/d)
(0.94 there), whatever its size.

Default tau (``TAU_FRACTION`` = 0.1): a sample is valid when it lies within 10 % of its own norm of the
manifold, i.e. at least 99 % of its energy (about the centre) is on the manifold. Null models: true
samples have rho ~ 1e-8 (the oracle's numerical error) and isotropic noise about the centre
rho ~ sqrt(1 - D/d) >= 0.7 for D <= d/2, so 0.1 sits an order of magnitude below the structureless null.
When the oracle itself errs on true samples (the sprites render-and-compare refinement stuck in a
local minimum), tau is raised to ``TAU_SLACK`` x the 99th percentile of fresh true samples' rho, so the
oracle's own error never makes a true sample invalid more than ~1 % of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes.factors._common import ci as _ci

TAU_FRACTION = 0.1  # valid: residual <= 10 % of the sample's own norm (>= 99 % of its energy on the manifold)
TAU_SLACK = 2.0  # true samples' residuals are the oracle's error: allow 2x their 99th percentile
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class ManifoldError:
    """Scale-free oracle residuals rho (n,) of n samples (module docstring), their median, mean and
    ``quantiles`` at ``QUANTILES``; ``z_hat`` (n, F) the oracle's factors."""

    median: float
    mean: float
    quantiles: dict[float, float]
    residual: np.ndarray
    z_hat: np.ndarray


class ValidityThreshold(NamedTuple):
    """tau = max(tau_floor, tau_reference): floor = frac (stated meaning), reference = slack x q99 of
    fresh true samples' residuals (the oracle's own error)."""

    tau: float
    tau_floor: float
    tau_reference: float


@dataclass
class ValidityResult:
    """Fraction of samples with scale-free residual <= tau (Wilson 95 % interval) and the residuals.

    ``valid`` (n,) bool, ``residual`` (n,) rho, ``z_hat`` (n, F); ``median`` / ``quantiles`` of rho.
    """

    valid_rate: float
    valid_rate_ci: tuple[float, float] | None
    n: int
    n_valid: int
    tau: float
    tau_floor: float
    tau_reference: float
    median: float
    quantiles: dict[float, float]
    valid: np.ndarray
    residual: np.ndarray
    z_hat: np.ndarray


def relative_residual(dataset, x) -> tuple[np.ndarray, np.ndarray]:
    """``(z_hat (n, F), rho (n,))``: the dataset's oracle factors and scale-free residual of ``x`` (n, *shape)."""
    fn = getattr(dataset, "relative_residual", None)
    if fn is None:
        if not getattr(dataset, "residual_is_relative", False):
            raise DiffauditError(
                f"dataset {getattr(dataset, 'name', type(dataset).__name__)!r} has no scale-free residual; define "
                "relative_residual(x) -> (z_hat, ||x - x_proj|| / ||x - centre||), or set residual_is_relative = True "
                "when project() already returns that."
            )
        fn = dataset.project
    z_hat, rho = fn(x)
    return np.asarray(z_hat, dtype=np.float64), np.asarray(rho, dtype=np.float64).reshape(-1)


def manifold_error(dataset, x) -> ManifoldError:
    """Scale-free residual distribution of samples ``x`` (n, *shape) (module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2 or len(x) < 1:
        raise DiffauditError(f"samples: expected an array (n, ...) with n >= 1, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise DiffauditError(
            "samples: contain NaN or Inf; a model that produces them fails validity by definition."
        )
    z_hat, rho = relative_residual(dataset, x)
    qs = np.quantile(rho, QUANTILES)
    return ManifoldError(
        median=float(np.median(rho)),
        mean=float(rho.mean()),
        quantiles={float(q): float(v) for q, v in zip(QUANTILES, qs, strict=True)},
        residual=rho,
        z_hat=z_hat,
    )


def validity_threshold(
    dataset,
    *,
    reference=None,
    n_reference: int = 2000,
    seed: int = 12345,
    frac: float = TAU_FRACTION,
    slack: float = TAU_SLACK,
) -> ValidityThreshold:
    """Default tau and its parts (module docstring).

    ``reference``: true samples (n_ref, *shape) (fresh ones, never the training set of the audited
    model); default ``dataset.sample(n_reference, seed)``, capped at a finite dataset's ``n_population``
    (digits: all 1,797 images, so the 99th percentile is the population's own, not an estimate; a
    generator's q99 from 2,000 draws rests on its top 20 residuals). The training set needs no removal here:
    true samples' residuals measure the oracle's own error, the same for items trained on (digits: 0 for
    every real image).
    """
    if not 0 < float(frac) < 1:
        raise DiffauditError(
            f"frac={frac} is not a fraction of the sample's norm; pass a value in (0, 1), e.g. 0.1."
        )
    if reference is None:
        n_population = getattr(dataset, "n_population", None)
        n = int(n_reference) if n_population is None else min(int(n_reference), int(n_population))
        reference = dataset.sample(n, seed)[0]
    ref = reference
    _, rho = relative_residual(dataset, np.asarray(ref, dtype=np.float32))
    tau_ref = float(slack) * float(np.quantile(rho, 0.99))
    return ValidityThreshold(max(float(frac), tau_ref), float(frac), tau_ref)


def manifold_validity(
    dataset,
    x,
    *,
    tau: float | None = None,
    reference=None,
    n_reference: int = 2000,
    seed: int = 12345,
    frac: float = TAU_FRACTION,
    slack: float = TAU_SLACK,
) -> ValidityResult:
    """Manifold validity: share of samples ``x`` (n, *shape) whose scale-free residual is <= tau, with a
    Wilson interval. Default tau: ``validity_threshold`` (``reference``, ``n_reference``, ``seed``,
    ``frac``, ``slack`` go there)."""
    if tau is None:
        tau, tau_floor, tau_ref = validity_threshold(
            dataset, reference=reference, n_reference=n_reference, seed=seed, frac=frac, slack=slack
        )
    else:
        tau_floor = tau_ref = float("nan")
    err = manifold_error(dataset, x)
    valid = err.residual <= float(tau)
    n, k = len(valid), int(valid.sum())
    return ValidityResult(
        valid_rate=k / n,
        valid_rate_ci=_ci(k, n),
        n=n,
        n_valid=k,
        tau=float(tau),
        tau_floor=tau_floor,
        tau_reference=tau_ref,
        median=err.median,
        quantiles=err.quantiles,
        valid=valid,
        residual=err.residual,
        z_hat=err.z_hat,
    )
