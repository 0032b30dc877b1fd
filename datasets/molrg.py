"""Mixture of low-rank Gaussians (Wang, Zhang, Chen, Zou, Lee, Qu & Chen 2024, "Diffusion models learn
low-dimensional distributions via subspace clustering").

x = U_k a + sigma eps,  k ~ Uniform{0..K-1},  a ~ N(0, I_r),  eps ~ N(0, I_d),

where U_0 .. U_{K-1} are disjoint blocks of r columns of a random orthogonal d x d matrix fixed by
the dataset ``seed`` (K r <= d). Factors: ``component`` k (categorical) and a_1 .. a_r.

Oracle ``project``: k_hat = argmax_k ||U_k^T x||^2, a_hat = U_{k_hat}^T x, residual
||x - U_k U_k^T x|| / ||x|| (relative distance to the union of subspaces; ~1e-7 on true float32
samples with sigma = 0; ~sqrt(1 - r/d) for isotropic noise).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

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

_SAMPLE_SALT = 0x10126


@register
class MixtureLowRank(Dataset):
    name = "molrg"
    kind = "vector"
    residual_is_relative = True  # project()'s residual ||x - U_k U_k^T x|| / ||x|| is scale-free

    def __init__(self, d: int = 32, K: int = 4, r: int = 2, sigma: float = 0.0, seed: int = 0):
        d, K, r = (
            int_param(d, "d", self.name, 1),
            int_param(K, "K", self.name, 1),
            int_param(r, "r", self.name, 1),
        )
        if K * r > d:
            raise DiffauditError(
                f"molrg: K={K} components of rank r={r} need K*r <= d={d}; lower K or r, or raise d."
            )
        sigma, seed = float_param(sigma, "sigma", self.name), int_param(seed, "seed", self.name, 0)
        check_memory(
            4 * 8 * d * d, f"drawing the d={d} Haar rotation", self.name
        )  # (d, d) draw, Q, R, QR workspace
        self.d, self.K, self.r, self.sigma, self.seed = d, K, r, sigma, seed
        self._params = {"d": d, "K": K, "r": r, "sigma": self.sigma, "seed": self.seed}
        Q, R = np.linalg.qr(np.random.default_rng(self.seed).standard_normal((d, d)))
        Q = Q * np.sign(np.diag(R))  # Haar-distributed orthogonal matrix
        self.U = Q[:, : K * r].reshape(d, K, r).transpose(1, 0, 2).copy()  # (K, d, r)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.d,)

    @property
    def factors(self) -> tuple[Factor, ...]:
        comp = Factor("component", kind="categorical", categories=tuple(str(k) for k in range(self.K)))
        return (comp,) + tuple(Factor(f"a{i + 1}") for i in range(self.r))

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, d) float32, z (n, 1 + r) float64 = [k, a]); one row-wise stream -> nested prefixes."""
        n = check_n(n, self.name)
        # the (n, 1 + r + d) draw, generate's gathered bases U[k] (n, d, r), x in float64 and float32
        nbytes = 8 * n * (1 + self.r + self.d) + 8 * n * self.d * self.r + 12 * n * self.d
        check_memory(nbytes, f"sampling n={n} rows of d={self.d}", self.name)
        g = np.random.default_rng([_SAMPLE_SALT, int(seed)]).standard_normal((n, 1 + self.r + self.d))
        k = np.minimum((ndtr(g[:, 0]) * self.K).astype(np.int64), self.K - 1)
        z = np.concatenate([k[:, None].astype(np.float64), g[:, 1 : 1 + self.r]], axis=1)
        return self.generate(z, noise=g[:, 1 + self.r :]), z

    def generate(self, z: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """x = U_k a (+ sigma * noise when ``noise`` (n, d) is given) from z = [k, a] (n, 1 + r)."""
        z = np.asarray(z, dtype=np.float64).reshape(-1, 1 + self.r)
        k = np.clip(np.rint(z[:, 0]).astype(np.int64), 0, self.K - 1)
        x = np.einsum("ndr,nr->nd", self.U[k], z[:, 1:])
        if noise is not None and self.sigma > 0:
            x += self.sigma * np.asarray(noise, dtype=np.float64)
        return x.astype(np.float32)

    def project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z_hat (n, 1 + r), residual (n,) = ||x - U_k U_k^T x|| / ||x||)."""
        x = check_samples(x, self.shape, self.name)
        P = np.einsum("nd,kdr->nkr", x, self.U)  # coordinates in every subspace
        energy = (P**2).sum(2)
        k = energy.argmax(1)
        a = P[np.arange(len(x)), k]
        x_par = np.einsum("ndr,nr->nd", self.U[k], a)
        res = np.linalg.norm(x - x_par, axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)
        return np.concatenate([k[:, None].astype(np.float64), a], axis=1), res
