"""The hidden-manifold model (Goldt, Mézard, Krzakala & Zdeborová 2020, Phys. Rev. X 10, 041044).

x = tanh(F c / sqrt(D)),  F in R^{d x D} with i.i.d. N(0, 1) entries fixed by the dataset ``seed``,
c ~ N(0, I_D) the latent factors. The data live on a D-dimensional curved manifold in R^d.

Oracle ``project``: the linear least-squares fit of atanh(clip(x)) on A = F / sqrt(D) is only a
starting point (atanh amplifies errors near saturation); Levenberg-Marquardt iterations then minimise
the x-space error ||x - tanh(A c)||^2 per sample, vectorised over samples (batched D x D solves).
``residual`` is the RMS per-dimension distance sqrt(mean_j (x_j - tanh(A c_hat)_j)^2) to the
manifold point found: ~1e-8 on true float32 samples. ``relative_residual`` gives the scale-free form
||x - tanh(A c_hat)|| / ||x|| (the data mean is 0: tanh is odd and c symmetric), which the validity
probe thresholds.
"""

from __future__ import annotations

import numpy as np

from diffaudit.datasets.base import (
    Dataset,
    Factor,
    check_memory,
    check_n,
    check_samples,
    int_param,
    register,
)
from diffaudit.errors import DiffauditError

_SAMPLE_SALT = 0x5A11  # sample streams are independent of the structure stream of the same seed


@register
class HiddenManifold(Dataset):
    name = "hidden-manifold"
    kind = "vector"

    def __init__(self, d: int = 32, D: int = 4, seed: int = 0):
        d, D = int_param(d, "d", self.name, 1), int_param(D, "D", self.name, 1)
        if D > d:
            raise DiffauditError(
                f"hidden-manifold: need 1 <= D <= d, got d={d}, D={D}; pick a latent dimension D no larger than d."
            )
        # F, A and the pseudo-inverse (D x d) plus the SVD's workspace: about 6 (d x D) float64 arrays
        check_memory(6 * 8 * d * D, f"drawing the d={d}, D={D} mixing matrix", self.name)
        self.d, self.D, self.seed = d, D, int_param(seed, "seed", self.name, 0)
        self._params = {"d": self.d, "D": self.D, "seed": self.seed}
        rng = np.random.default_rng(self.seed)
        self.F = rng.standard_normal((self.d, self.D))
        self.A = self.F / np.sqrt(self.D)  # (d, D)
        self._A_pinv = np.linalg.pinv(self.A)  # (D, d)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.d,)

    @property
    def factors(self) -> tuple[Factor, ...]:
        return tuple(Factor(f"c{i + 1}") for i in range(self.D))

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, d) float32, c (n, D) float64); row i depends only on (seed, i) -> nested prefixes."""
        n = check_n(n, self.name)
        # c, the float64 pre-activation and tanh (n x d each), the float32 result
        check_memory(8 * n * self.D + 20 * n * self.d, f"sampling n={n} rows of d={self.d}", self.name)
        c = np.random.default_rng([_SAMPLE_SALT, int(seed)]).standard_normal((n, self.D))
        return self.generate(c), c

    def generate(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64).reshape(-1, self.D)
        return np.tanh(z @ self.A.T).astype(np.float32)

    def project(self, x: np.ndarray, n_iter: int = 30) -> tuple[np.ndarray, np.ndarray]:
        """(c_hat (n, D) float64, residual (n,) float64 RMS per-dimension distance to the manifold)."""
        x = check_samples(x, self.shape, self.name)
        A = self.A
        y = np.arctanh(np.clip(x, -1 + 1e-6, 1 - 1e-6))
        c = y @ self._A_pinv.T
        t = np.tanh(c @ A.T)
        cost = ((x - t) ** 2).sum(1)
        mu = np.full(len(x), 1e-3)
        eye = np.eye(self.D)
        for _ in range(n_iter):
            r = x - t
            w = 1.0 - t**2  # d tanh / d(Ac)
            J = w[:, :, None] * A[None]  # (n, d, D)
            JtJ = np.einsum("ndi,ndj->nij", J, J)
            g = np.einsum("ndi,nd->ni", J, r)
            scale = np.einsum("nii->ni", JtJ) + 1e-12
            H = JtJ + mu[:, None, None] * scale[:, :, None] * eye  # Marquardt's diagonal damping
            step = np.linalg.solve(H, g[:, :, None])[:, :, 0]
            c_new = c + step
            t_new = np.tanh(c_new @ A.T)
            cost_new = ((x - t_new) ** 2).sum(1)
            ok = cost_new < cost
            c[ok], t[ok], cost[ok] = c_new[ok], t_new[ok], cost_new[ok]
            mu = np.where(ok, mu * 0.3, mu * 10.0).clip(1e-12, 1e8)
        return c, np.sqrt(cost / self.d)

    def relative_residual(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c_hat (n, D), ||x - tanh(A c_hat)|| / ||x||): the distance to the manifold relative to the
        sample's distance from the data mean 0 (scale-free: ~1e-8 on true samples, ~sqrt(1 - D/d) for
        isotropic noise of any size)."""
        c, rms = self.project(x)
        nrm = np.linalg.norm(check_samples(x, self.shape, self.name), axis=1)
        return c, rms * np.sqrt(self.d) / np.maximum(nrm, 1e-12)
