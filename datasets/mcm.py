"""The mixed cumulant model (Bardone & Goldt 2024, ICML; Bardone, Merger & Goldt 2026).

x = sqrt(beta_u) lambda u + S (sqrt(beta_v) nu v + z),  S = I - (1 - (1 + beta_v)^{-1/2}) v v^T,

with u ⟂ v unit vectors fixed by the dataset ``seed``, lambda ~ N(0, 1), nu Rademacher (+-1) and
z ~ N(0, I_d) isotropic noise. The covariance is I + beta_u u u^T (the whitening S makes the spike
along v invisible to second-order statistics); v·x = (sqrt(beta_v) nu + v·z) / sqrt(1 + beta_v) has
unit variance and excess kurtosis -2 beta_v^2 / (1 + beta_v)^2. ``correlated=True`` couples the two
spikes: nu = sign(|lambda| - 0.6745) (0.6745 is the median of |lambda|, so nu stays balanced).

Factors: ``lambda`` (continuous) and ``nu`` (categorical, coded 0 for -1 and 1 for +1). z is noise,
not a factor.

Oracle ``project``: lambda_hat = u·x / sqrt(beta_u) (= lambda + u·z / sqrt(beta_u), unbiased),
nu_hat = [v·x > 0] (Bayes-optimal for the symmetric two-point mixture). ``residual`` is identically
zero: the model has a density on all of R^d, so every x is "on the manifold" and no per-sample
distance can separate valid from invalid samples. Validity on mcm is measured through the
hidden-direction statistics instead (kurtosis along v, overlap of the extremal-kurtosis direction
with v: ``hidden_direction_overlap``). A probe thresholding these residuals declares every sample
valid; that is the honest per-sample answer, not a test of threshold 2.
"""

from __future__ import annotations

import numpy as np

from diffaudit.datasets.base import (
    Dataset,
    Factor,
    check_memory,
    check_n,
    check_samples,
    float_param,
    int_param,
    register,
)
from diffaudit.errors import DiffauditError

_SAMPLE_SALT = 0x3C3


@register
class MixedCumulant(Dataset):
    name = "mcm"
    kind = "vector"
    residual_is_relative = True  # project()'s residual is 0 (full-dimensional density): trivially scale-free

    def __init__(
        self, d: int = 16, beta_u: float = 4.0, beta_v: float = 4.0, correlated: bool = False, seed: int = 0
    ):
        d = int_param(d, "d", self.name, 1)
        if d < 2:
            raise DiffauditError(f"mcm: d={d} is too small; the two orthogonal spikes need d >= 2.")
        beta_u, beta_v = float_param(beta_u, "beta_u", self.name), float_param(beta_v, "beta_v", self.name)
        seed = int_param(seed, "seed", self.name, 0)
        check_memory(8 * 8 * d, f"drawing the spike directions in d={d}", self.name)  # (d, 2) draw, QR, u, v
        if not isinstance(correlated, (bool, np.bool_)):
            raise DiffauditError(f"mcm: correlated={correlated!r} must be true or false.")
        self.d, self.beta_u, self.beta_v = int(d), float(beta_u), float(beta_v)
        self.correlated, self.seed = bool(correlated), int(seed)
        self._params = {
            "d": self.d,
            "beta_u": self.beta_u,
            "beta_v": self.beta_v,
            "correlated": self.correlated,
            "seed": self.seed,
        }
        Q, _ = np.linalg.qr(np.random.default_rng(self.seed).standard_normal((self.d, 2)))
        self.u, self.v = Q[:, 0].copy(), Q[:, 1].copy()  # orthonormal (d,)
        self._s = 1.0 / np.sqrt(1.0 + self.beta_v)  # S v = s v

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.d,)

    @property
    def factors(self) -> tuple[Factor, ...]:
        return (Factor("lambda"), Factor("nu", kind="categorical", categories=("-1", "+1")))

    @property
    def covariance(self) -> np.ndarray:
        """Population covariance I + beta_u u u^T (d, d)."""
        return np.eye(self.d) + self.beta_u * np.outer(self.u, self.u)

    @property
    def kurtosis_v(self) -> float:
        """Population excess kurtosis of v·x: -2 beta_v^2 / (1 + beta_v)^2."""
        return -2.0 * self.beta_v**2 / (1.0 + self.beta_v) ** 2

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, d) float32, z (n, 2) float64 = [lambda, nu coded 0/1]); nested prefixes in n."""
        n = check_n(n, self.name)
        # the (n, d + 2) draw and about three (n, d) float64 intermediates, the float32 result
        check_memory(8 * n * (self.d + 2) + 28 * n * self.d, f"sampling n={n} rows of d={self.d}", self.name)
        g = np.random.default_rng([_SAMPLE_SALT, int(seed)]).standard_normal(
            (n, self.d + 2)
        )  # row-wise stream
        lam = g[:, 0]
        nu = np.sign(np.abs(lam) - 0.6745) if self.correlated else np.where(g[:, 1] >= 0, 1.0, -1.0)
        nu = np.where(nu == 0, 1.0, nu)
        z = np.stack([lam, (nu > 0).astype(np.float64)], axis=1)
        return self.generate(z, noise=g[:, 2:]), z

    def generate(self, z: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """x from factors [lambda, nu01] (n, 2) and noise (n, d); ``noise=None`` gives E[x | lambda, nu]."""
        z = np.asarray(z, dtype=np.float64).reshape(-1, 2)
        lam, nu = z[:, 0], np.where(z[:, 1] > 0.5, 1.0, -1.0)
        noise = np.zeros((len(z), self.d)) if noise is None else np.asarray(noise, dtype=np.float64)
        vz = noise @ self.v
        # S(sqrt(bv) nu v + z) = z - (1 - s)(v·z) v + s sqrt(bv) nu v
        x = noise + np.outer(np.sqrt(self.beta_u) * lam, self.u)
        x += np.outer(self._s * np.sqrt(self.beta_v) * nu - (1.0 - self._s) * vz, self.v)
        return x.astype(np.float32)

    def project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z_hat (n, 2) = [u·x / sqrt(beta_u), [v·x > 0]], residual (n,) zeros -- see module docstring)."""
        x = check_samples(x, self.shape, self.name)
        lam = x @ self.u / np.sqrt(max(self.beta_u, 1e-12))
        nu = (x @ self.v > 0).astype(np.float64)
        return np.stack([lam, nu], axis=1), np.zeros(len(x))
