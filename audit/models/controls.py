"""The three analytic control models of DESIGN.md ("the probes' own test bench").

| control     | what it is                                              | threshold 1 | threshold 2 | copies |
| ----------- | ------------------------------------------------------- | ----------- | ----------- | ------ |
| ``oracle``    | the dataset's true generator (black box)                | pass        | pass        | none   |
| ``gaussian``  | N(mu, S) of the training set, exact linear denoiser     | pass        | fail        | none   |
| ``memorizer`` | the exact empirical optimal denoiser of the training set | pass vs train | fail      | ~100 % |

``gaussian`` and ``memorizer`` are ``DenoiserModel``s: they are sampled from pure noise through the
one deterministic EDM Heun sampler (Karras et al. 2022, Alg. 1; rho = 7, ``sigma_max`` scaled to the
data by ``SamplerConfig.for_data(sigma_data = std of the training set)``), exactly like trained
networks. Their denoisers work on flattened samples in float64; images are reshaped at the boundary.

``oracle`` has no denoiser and no ``sample_from_noise``: the true generator of a hidden-factor
dataset draws its latent factors, not Gaussian noise of the data's shape, so "sampling from given
noise" has no meaning for it. It is a black-box model (``has_denoiser`` is False).
"""

from __future__ import annotations

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.models.contract import DenoiserModel, Model
from diffaudit.probes._checks import as_samples

CONTROLS = ("oracle", "gaussian", "memorizer")
DEFAULT_BUDGET_MIB = 256


def _as_train(train, name: str = "train") -> np.ndarray:
    """Validate a training set (n, *shape) with n >= 2 and return it as float64."""
    return as_samples(train, name, min_n=2)


class OracleModel(Model):
    """Samples the dataset's true generator: ``sample(n, seed) = dataset.sample(n, seed)[0]``.

    Black box: no ``denoise`` and no ``sample_from_noise`` (see the module docstring).
    """

    name = "oracle"

    def __init__(self, dataset):
        if not hasattr(dataset, "sample"):
            raise DiffauditError("the oracle control needs a dataset with a true generator; pass dataset=...")
        self.dataset = dataset
        self.shape = tuple(dataset.shape)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        return np.asarray(self.dataset.sample(int(n), seed)[0], dtype=np.float32)


class GaussianModel(DenoiserModel):
    """The Gaussian N(mu, S) with the training mean and covariance, sampled through the Heun sampler.

    Its exact denoiser (the posterior mean E[x0 | x0 + sigma n = x]) is linear:
    D(x, sigma) = mu + S (S + sigma^2 I)^{-1} (x - mu) = mu + Q diag(l / (l + sigma^2)) Q^T (x - mu),
    with S = Q diag(l) Q^T decomposed once in float64 (tiny negative eigenvalues clipped to 0).
    ``train``: (n, d) or (n, c, h, w); ``clip``: optional (low, high) applied to the final samples
    (off by default, even for images: see ``make_control``; the denoiser itself is never clipped).
    """

    name = "gaussian"

    def __init__(self, train, *, num_steps: int = 32, batch_size: int = 1024, clip: tuple[float, float] | None = None):
        a = _as_train(train)
        X = a.reshape(len(a), -1).astype(np.float64)
        self.n_train = len(X)
        self.mu_ = X.mean(0)
        Xc = X - self.mu_
        S = Xc.T @ Xc / max(len(X) - 1, 1)
        lam, Q = np.linalg.eigh(S)
        self.eigvals_ = np.clip(lam, 0.0, None)
        self.eigvecs_ = Q
        self.clip = clip
        super().__init__(a.shape[1:], sigma_data=float(X.std()), num_steps=num_steps, batch_size=batch_size)

    @property
    def cov_(self) -> np.ndarray:
        return (self.eigvecs_ * self.eigvals_) @ self.eigvecs_.T

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(len(x), -1)
        shrink = self.eigvals_ / (self.eigvals_ + float(sigma) ** 2)
        coef = (flat - self.mu_) @ self.eigvecs_
        out = self.mu_ + (coef * shrink) @ self.eigvecs_.T
        return out.reshape(x.shape)

    def sample_from_noise(self, noise: np.ndarray) -> np.ndarray:
        out = super().sample_from_noise(noise)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out


class MemorizerModel(DenoiserModel):
    """The exact empirical optimal denoiser of the training set (the score of the empirical measure
    smoothed at level sigma): D(x, sigma) = sum_i w_i x_i, w = softmax_i(-||x - x_i||^2 / (2 sigma^2)).

    Its probability-flow ODE from pure noise ends on a training point (e.g. Kadkhodaie et al. 2024;
    Biroli et al. 2024), so it passes threshold 1 against the training set and copies ~100 %.
    Computed in float64 with a streaming log-sum-exp over blocks of training items (online softmax),
    blocks sized from ``budget_mib``: memory never holds a queries x n_train matrix larger than the budget.
    """

    name = "memorizer"

    def __init__(self, train, *, num_steps: int = 32, batch_size: int = 1024, budget_mib: float = DEFAULT_BUDGET_MIB):
        a = _as_train(train)
        self.train_ = np.ascontiguousarray(a.reshape(len(a), -1), dtype=np.float64)
        self.n_train = len(self.train_)
        self.sq_norms_ = np.einsum("ij,ij->i", self.train_, self.train_)
        self.budget_mib = float(budget_mib)
        super().__init__(a.shape[1:], sigma_data=float(self.train_.std()), num_steps=num_steps, batch_size=batch_size)

    def _block_sizes(self, nq: int) -> tuple[int, int]:
        P = self.train_.shape[1]
        budget = max(0.01, self.budget_mib) * (1 << 20) / 8  # float64 words
        # per query row: the accumulator (P) + ~3 tile rows of tb; keep the training block small enough
        tb = int(min(self.n_train, max(16, budget * 0.25 / (P + 1))))
        qb = int(min(nq, max(1, (budget - tb * P) / (P + 3 * tb + 4))))
        return qb, tb

    def log_weights_block(self, xq: np.ndarray, t0: int, t1: int, sigma: float) -> np.ndarray:
        """-||x - x_i||^2 / (2 sigma^2) for queries ``xq`` (q, P) and training rows t0:t1 (float64)."""
        d2 = (np.einsum("ij,ij->i", xq, xq)[:, None] + self.sq_norms_[None, t0:t1]) - 2.0 * (xq @ self.train_[t0:t1].T)
        np.maximum(d2, 0.0, out=d2)
        return d2 * (-0.5 / float(sigma) ** 2)

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(len(x), -1)
        nq = len(flat)
        qb, tb = self._block_sizes(nq)
        out = np.empty_like(flat)
        for q0 in range(0, nq, qb):
            xq = flat[q0 : q0 + qb]
            m = np.full(len(xq), -np.inf)
            s = np.zeros(len(xq))
            acc = np.zeros_like(xq)
            for t0 in range(0, self.n_train, tb):
                t1 = min(self.n_train, t0 + tb)
                L = self.log_weights_block(xq, t0, t1, sigma)
                m_new = np.maximum(m, L.max(1))
                scale = np.exp(m - m_new)  # exp(-inf) = 0 on the first block
                W = np.exp(L - m_new[:, None])
                s = s * scale + W.sum(1)
                acc = acc * scale[:, None] + W @ self.train_[t0:t1]
                m = m_new
            out[q0 : q0 + qb] = acc / s[:, None]
        return out.reshape(x.shape)


def make_control(name: str, train=None, dataset=None, **kwargs) -> Model:
    """Build an analytic control by name: ``"oracle"`` (needs ``dataset``), ``"gaussian"`` or
    ``"memorizer"`` (need ``train``, (n, d) or (n, c, h, w)). Extra keyword arguments go to the class.

    The gaussian's image samples are NOT clipped to [-1, 1] (pass ``clip=(-1, 1)`` to force it):
    clipping changes the mean and covariance this control exists to match (sprites 16x16, fitted on
    4000 images: FD to holdout 0.81 unclipped, 5.0 clipped; true data vs holdout 0.65).
    """
    key = str(name).strip().lower()
    if key not in CONTROLS:
        raise DiffauditError(f"unknown control model {name!r}; choose one of: {', '.join(CONTROLS)}.")
    if key == "oracle":
        if dataset is None:
            raise DiffauditError("the 'oracle' control samples the true generator; pass dataset= (a synthetic dataset).")
        return OracleModel(dataset, **kwargs)
    if train is None:
        raise DiffauditError(f"the {key!r} control is fitted to a training set; pass train= as an (n, ...) array.")
    if key == "gaussian":
        return GaussianModel(train, **kwargs)
    return MemorizerModel(train, **kwargs)
