"""White-box membership probes through the one denoiser contract ``denoise(x, sigma) -> x_hat``.

- ``membership_inference``: the loss-threshold attack on the denoising loss (Carlini et al. 2023,
  Sec. 6; Matsumoto et al. 2023; Hu & Pang 2023): a model that fits its training items better than
  fresh real data leaks membership, even when its samples look novel.
- ``disjoint_reproducibility``: cosine similarity of samples of two models generated from the same
  initial noise (Zhang et al. 2023, "The emergence of reproducibility and generalizability in
  diffusion models"; Kadkhodaie et al. 2024, "Generalization in diffusion models arises from
  geometry-adaptive harmonic representations"). Two models trained on disjoint halves of a dataset
  that *generalise* map the same noise to nearly the same sample (RP -> 1); two memorizers map it to
  their own, different, training items (RP -> 0). The sampling itself (same noise, deterministic
  sampler) is done by ``diffaudit.reproducibility``; this module only measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes._checks import as_samples

RP_THRESHOLD = 0.6  # Zhang et al. 2023: a pair is "reproduced" when its similarity exceeds 0.6


def _samples(x, name: str, min_n: int = 2) -> np.ndarray:
    return as_samples(x, name, min_n=min_n)


def _denoiser(model):
    if callable(model) and not hasattr(model, "denoise"):
        return model
    fn = getattr(model, "denoise", None)
    if fn is None or not callable(fn) or getattr(model, "has_denoiser", True) is False:
        raise DiffauditError(
            "membership inference needs a white-box model with denoise(x, sigma); this model is a black box."
        )
    return fn


def auc_lower_is_member(loss_members: np.ndarray, loss_nonmembers: np.ndarray) -> float:
    """ROC AUC of the score -loss with members as positives (ties count 1/2): P(loss_m < loss_n)."""
    from scipy.stats import rankdata

    m, n = len(loss_members), len(loss_nonmembers)
    r = rankdata(np.concatenate([-loss_members, -loss_nonmembers]))
    return float((r[:m].sum() - m * (m + 1) / 2.0) / (m * n))


def tpr_at_fpr(loss_members: np.ndarray, loss_nonmembers: np.ndarray, fpr: float) -> float:
    """Share of members with loss strictly below the threshold that flags at most ``fpr`` of non-members.

    The threshold is the (floor(fpr n)+1)-th smallest non-member loss, so at most floor(fpr n)
    non-members fall strictly below it (with fewer than 1/fpr non-members: below the smallest one).
    """
    h = np.sort(loss_nonmembers)
    j = int(np.floor(fpr * len(h)))
    thr = h[min(j, len(h) - 1)]
    return float((loss_members < thr).mean())


@dataclass
class MIAResult:
    """Result of ``membership_inference``. Per sigma (n_sigma,): ``auc``, ``tpr_at_1pct``,
    ``tpr_at_01pct``, ``loss_gap`` = mean holdout loss - mean train loss (> 0: the model fits its
    training items better). ``loss_train`` (n_train, n_sigma), ``loss_holdout`` (n_holdout, n_sigma):
    per-sample denoising loss (mean squared error per value, averaged over ``n_draws`` noise draws).
    ``auc_ci``: Hanley & McNeil (1982) 95 % interval at the best sigma."""

    sigmas: np.ndarray
    auc: np.ndarray
    tpr_at_1pct: np.ndarray
    tpr_at_01pct: np.ndarray
    loss_gap: np.ndarray
    best_sigma: float
    best_auc: float
    auc_ci: tuple[float, float] | None
    best_tpr_at_1pct: float
    best_tpr_at_01pct: float
    loss_train: np.ndarray
    loss_holdout: np.ndarray
    n_draws: int


def _hanley_mcneil(auc: float, m: int, n: int) -> tuple[float, float]:
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (m - 1) * (q1 - auc * auc) + (n - 1) * (q2 - auc * auc)) / (m * n)
    se = float(np.sqrt(max(var, 0.0)))
    return (max(0.0, auc - 1.96 * se), min(1.0, auc + 1.96 * se))


def denoising_loss(denoise, x: np.ndarray, sigma: float, n_draws: int, rng, batch_size: int) -> np.ndarray:
    """Per-sample mean over ``n_draws`` of mean((D(x + sigma eps, sigma) - x)^2), eps ~ N(0, I)."""
    out = np.zeros(len(x))
    for _ in range(n_draws):
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            eps = rng.standard_normal(xb.shape)
            xhat = np.asarray(denoise(xb + sigma * eps, float(sigma)), dtype=np.float64)
            if xhat.shape != xb.shape:
                raise DiffauditError(
                    f"denoise returned shape {xhat.shape} for input {xb.shape}; it must return x_hat of the input's shape."
                )
            out[i : i + batch_size] += ((xhat - xb) ** 2).reshape(len(xb), -1).mean(1)
    return out / n_draws


def membership_inference(
    denoise,
    train,
    holdout,
    sigmas,
    n_draws: int = 4,
    seed: int = 0,
    *,
    batch_size: int = 1024,
) -> MIAResult:
    """Loss-threshold membership inference on the denoising loss.

    ``denoise``: a callable ``denoise(x, sigma)`` on float64 arrays, or any object with ``.denoise``.
    ``train`` (n_train, ...) members, ``holdout`` (n_holdout, ...) non-members from the same
    distribution, ``sigmas``: noise levels. For each sigma the loss
    ||D(x + sigma eps, sigma) - x||^2 / P is averaged over ``n_draws`` draws of eps; members are
    predicted by low loss. Returns AUC and TPR at 1 % / 0.1 % FPR per sigma, the best sigma (max AUC)
    and the train-holdout loss-gap curve. Train and holdout see independent noise draws from ``seed``.
    """
    fn = _denoiser(denoise)
    xt = _samples(train, "training set")
    xh = _samples(holdout, "holdout")
    if xt.shape[1:] != xh.shape[1:]:
        raise DiffauditError(
            f"training samples have shape {xt.shape[1:]} but holdout samples {xh.shape[1:]}; pass the same kind of samples."
        )
    s = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
    if s.size == 0 or not np.isfinite(s).all() or (s <= 0).any():
        raise DiffauditError(
            "sigmas must be a non-empty list of positive noise levels, e.g. [0.1, 0.5, 1.0]."
        )
    if int(n_draws) < 1:
        raise DiffauditError(f"n_draws={n_draws} must be at least 1.")
    rng = np.random.default_rng(seed)
    Lt = np.empty((len(xt), len(s)))
    Lh = np.empty((len(xh), len(s)))
    auc = np.empty(len(s))
    t1 = np.empty(len(s))
    t01 = np.empty(len(s))
    for j, sg in enumerate(s):
        Lt[:, j] = denoising_loss(fn, xt, sg, int(n_draws), rng, batch_size)
        Lh[:, j] = denoising_loss(fn, xh, sg, int(n_draws), rng, batch_size)
        auc[j] = auc_lower_is_member(Lt[:, j], Lh[:, j])
        t1[j] = tpr_at_fpr(Lt[:, j], Lh[:, j], 0.01)
        t01[j] = tpr_at_fpr(Lt[:, j], Lh[:, j], 0.001)
    b = int(np.argmax(auc))
    return MIAResult(
        sigmas=s,
        auc=auc,
        tpr_at_1pct=t1,
        tpr_at_01pct=t01,
        loss_gap=Lh.mean(0) - Lt.mean(0),
        best_sigma=float(s[b]),
        best_auc=float(auc[b]),
        auc_ci=_hanley_mcneil(float(auc[b]), len(xt), len(xh)),
        best_tpr_at_1pct=float(t1[b]),
        best_tpr_at_01pct=float(t01[b]),
        loss_train=Lt,
        loss_holdout=Lh,
        n_draws=int(n_draws),
    )


@dataclass
class RPResult:
    """Result of ``disjoint_reproducibility``: ``similarity`` (n,) cosine similarity of each pair,
    ``rp`` = share of pairs above ``threshold`` with its Wilson 95 % interval, ``mean_similarity``."""

    rp: float
    rp_ci: tuple[float, float] | None
    mean_similarity: float
    similarity: np.ndarray
    threshold: float
    centred: bool
    n: int


def disjoint_reproducibility(
    samples_a, samples_b, threshold: float = RP_THRESHOLD, *, centre: bool = False
) -> RPResult:
    """Reproducibility score RP = P(cos(a_i, b_i) > threshold) over pairs generated from the same noise.

    ``samples_a``, ``samples_b``: (n, ...) samples (or features) of two models, row i of both from the
    same initial noise. Cosine similarity of the flattened pairs. Zhang et al. 2023 compute it on
    SSCD copy-detection embeddings (pass those as features to follow them exactly); on raw pixels we
    follow Kadkhodaie et al. 2024 (uncentred cosine of the images). ``centre=True`` subtracts each
    sample's own mean first (a Pearson correlation, insensitive to a shared background level).
    """
    from diffaudit.probes.stats import wilson_interval

    a = _samples(samples_a, "samples_a", min_n=1)
    b = _samples(samples_b, "samples_b", min_n=1)
    if a.shape != b.shape:
        raise DiffauditError(
            f"samples_a has shape {a.shape} but samples_b {b.shape}; generate both from the same noise array."
        )
    A = a.reshape(len(a), -1)
    B = b.reshape(len(b), -1)
    if centre:
        A = A - A.mean(1, keepdims=True)
        B = B - B.mean(1, keepdims=True)
    na = np.linalg.norm(A, axis=1)
    nb = np.linalg.norm(B, axis=1)
    if (na == 0).any() or (nb == 0).any():
        raise DiffauditError(
            "some samples are all zero (or constant with centre=True); cosine similarity is undefined."
        )
    sim = (A * B).sum(1) / (na * nb)
    k = int((sim > threshold).sum())
    return RPResult(
        rp=k / len(sim),
        rp_ci=wilson_interval(k, len(sim)),
        mean_similarity=float(sim.mean()),
        similarity=sim,
        threshold=float(threshold),
        centred=bool(centre),
        n=len(sim),
    )
