"""Population mean and covariance of a dataset: the reference of threshold 1's statistic E1.

``population_moments(dataset)`` returns ``(mu (D,), sigma (D, D), n_ref)``, float64, over the flattened
samples (D = prod(dataset.shape)):

- analytic (``n_ref = 0``) where the generator allows it:
  ``mcm``: mu = s sqrt(beta_v) E[nu] v and sigma = I + beta_u u u^T - s^2 beta_v E[nu]^2 v v^T, s = (1 +
  beta_v)^(-1/2) (E[nu] = 0 unless ``correlated``, where nu = sign(|lambda| - 0.6745) has
  E[nu] = 2 erfc(0.6745 / sqrt 2) - 1 ~ -1e-5); ``molrg``: mu = 0, sigma = (1/K) sum_k U_k U_k^T + sigma^2 I;
  ``digits``: the data set IS the population (1,797 images at its size, no generator), so its exact mean and covariance
  (divisor N), ``n_ref`` = 1797.
- otherwise (``hidden-manifold``, ``sprites``) a streamed float64 Monte-Carlo estimate from ``n_ref`` true
  samples drawn from seeds reserved for it (a salted ``SeedSequence`` per block, never an audit's integer data
  seeds 3s+1, 3s+2), cached as ``.npz`` under ``cache_root("moments")`` (``$DIFFAUDIT_CACHE_DIR`` or
  ~/.cache/diffaudit), the file name encoding the dataset name, a hash of its parameters, the seed and n_ref.

Default n_ref = max(100 D^2, 20,000), capped so that the covariance accumulation costs at most
``MAX_WORK`` = 1e11 multiply-adds (n_ref D^2 <= MAX_WORK): D = 32 -> 102,400; sprites 16 px (D = 256) -> 1.5M;
sprites 32 px (D = 1024) -> 95,367. Estimated moments bias E1 like an n_ref-sample learner: an oracle scores
E[E1] ~ (D + kappa) / n_ref (kappa = (E|y|^4 - D(D+1)) / D, 1 for Gaussian data), i.e. <= 0.001 for D <= 32,
~2e-4 (+ kappa / n_ref) at 16 px and ~0.011 (+ kappa / n_ref) at 32 px -- against eps1 = 0.1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diffaudit.datasets.base import Dataset
from diffaudit.datasets.digits import Digits
from diffaudit.datasets.mcm import MixedCumulant
from diffaudit.datasets.molrg import MixtureLowRank
from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_path
from diffaudit.hashing import params_sha256
from diffaudit.paths import cache_root

MOMENTS_VERSION = "population-moments/1"  # bump when the estimator changes (invalidates cached files)
MAX_WORK = 1e11  # cap on n_ref * D^2 (multiply-adds of the covariance accumulation), see module docstring
MIN_N_REF = 20_000
_SALT = 0x5E1F_3017_AB0D  # reserved seed stream of the Monte-Carlo reference
_BLOCK_BUDGET_MIB = 128


def default_n_ref(D: int) -> int:
    """max(100 D^2, 20,000) capped at MAX_WORK / D^2 (never below 20,000)."""
    return int(max(MIN_N_REF, min(100 * D * D, MAX_WORK // (D * D))))


def analytic_moments(dataset: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(mu, sigma) in closed form for the datasets whose generator allows it, else None."""
    if isinstance(dataset, MixedCumulant):
        s = 1.0 / math.sqrt(1.0 + dataset.beta_v)
        e_nu = 2.0 * math.erfc(0.6745 / math.sqrt(2.0)) - 1.0 if dataset.correlated else 0.0
        mu = s * math.sqrt(dataset.beta_v) * e_nu * dataset.v
        sigma = dataset.covariance - s * s * dataset.beta_v * e_nu**2 * np.outer(dataset.v, dataset.v)
        return mu, sigma
    if isinstance(dataset, MixtureLowRank):
        sigma = np.einsum("kdr,ker->de", dataset.U, dataset.U) / dataset.K + dataset.sigma**2 * np.eye(
            dataset.d
        )
        return np.zeros(dataset.d), sigma
    return None


def _block_seed(seed: int, block: int) -> int:
    """A 128-bit integer seed for ``dataset.sample`` from the reserved stream (never a small audit seed)."""
    w = np.random.SeedSequence([_SALT, int(seed), int(block)]).generate_state(4, np.uint32)
    return int(sum(int(v) << (32 * i) for i, v in enumerate(w)))


def monte_carlo_moments(dataset: Dataset, n_ref: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of ``n_ref`` fresh samples, streamed in float64 blocks (EDM-style).

    Accumulated around the first block's mean (a shift), which avoids the cancellation of E[xx^T] - mu mu^T.
    """
    D = int(np.prod(dataset.shape))
    rows = int(max(256, min(1 << 16, _BLOCK_BUDGET_MIB * (1 << 20) // (8 * D * 2))))
    shift = s1 = S2 = None
    done, block = 0, 0
    while done < n_ref:
        b = min(rows, n_ref - done)
        x, _ = dataset.sample(b, seed=_block_seed(seed, block))
        x = x.reshape(b, D).astype(np.float64)
        if shift is None:
            shift, s1, S2 = x.mean(0), np.zeros(D), np.zeros((D, D))
        x -= shift
        s1 += x.sum(0)
        S2 += x.T @ x
        done, block = done + b, block + 1
    m = s1 / n_ref
    sigma = (S2 - n_ref * np.outer(m, m)) / (n_ref - 1)
    return shift + m, (sigma + sigma.T) / 2


def moments_path(dataset: Dataset, n_ref: int, seed: int, cache_dir: str | Path | None = None) -> Path:
    key = params_sha256(
        {
            "version": MOMENTS_VERSION,
            "dataset": dataset.name,
            "params": dataset.params(),
            "n_ref": int(n_ref),
            "seed": int(seed),
        }
    )[:24]
    root = Path(cache_dir) if cache_dir is not None else cache_root("moments")
    return root / f"{dataset.name}-{key}-n{int(n_ref)}.npz"


def population_moments(
    dataset: Dataset, *, n_ref: int | None = None, seed: int = 0, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu (D,), sigma (D, D), n_ref) of ``dataset``'s flattened samples; n_ref = 0 when analytic.

    ``n_ref``/``seed``/``cache_dir`` only matter for the Monte-Carlo route (module docstring): ``n_ref`` None
    uses ``default_n_ref(D)``; a cached file is loaded, not recomputed (the name encodes everything that
    changes the numbers, so a hit is never stale).
    """
    exact = analytic_moments(dataset)
    if exact is not None:
        return exact[0], exact[1], 0
    if isinstance(dataset, Digits):
        x, _ = dataset.images()
        x = x.reshape(len(x), -1).astype(np.float64)
        mu = x.mean(0)
        xc = x - mu
        return mu, xc.T @ xc / len(x), len(x)
    D = int(np.prod(dataset.shape))
    if n_ref is None:
        n_ref = default_n_ref(D)
    if isinstance(n_ref, bool) or int(n_ref) < 2:
        raise DiffauditError(f"n_ref={n_ref!r} must be an integer >= 2; pass None for the default.")
    n_ref = int(n_ref)
    path = moments_path(dataset, n_ref, seed, cache_dir)
    if path.exists():
        with np.load(path) as f:
            return f["mu"], f["sigma"], int(f["n_ref"])
    mu, sigma = monte_carlo_moments(dataset, n_ref, seed)
    with atomic_path(path) as tmp:
        with open(
            tmp, "wb"
        ) as fh:  # a file object, so np.savez keeps the temporary name (no ".npz" appended)
            np.savez(fh, mu=mu, sigma=sigma, n_ref=np.int64(n_ref), spec=np.str_(dataset.spec))
    return mu, sigma, n_ref
