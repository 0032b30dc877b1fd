"""White-box membership probes through the one denoiser contract ``denoise(x, sigma) -> x_hat``.

- ``membership_inference``: the loss-threshold attack on the denoising loss (Carlini et al. 2023,
  Sec. 6; Matsumoto et al. 2023; Hu & Pang 2023): a model that fits its training items better than
  fresh real data leaks membership, even when its samples look novel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes._checks import as_samples
from diffaudit.probes.stats import auc_delong


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
    non-members fall strictly below it (with fewer than 1/fpr non-members: below the smallest one, i.e.
    TPR at FPR 0 -- ``membership_inference`` reports it only with >= ``MIN_NONMEMBERS_PER_FPR`` / fpr).
    """
    h = np.sort(loss_nonmembers)
    j = int(np.floor(fpr * len(h)))
    thr = h[min(j, len(h) - 1)]
    return float((loss_members < thr).mean())


@dataclass
class MIAResult:
    """Result of ``membership_inference``.

    Per sigma (n_sigma,), descriptive, on ALL the data: ``auc``, ``loss_gap`` = mean holdout loss - mean train
    loss (> 0: the model fits its training items better). ``auc_select`` (n_sigma,): AUC on the selection
    split, from which ``best_sigma`` is the argmax (``auc_select`` at it is biased upward: it won a
    maximum). Reported on the evaluation split, at ``best_sigma`` only: ``auc_eval`` with its DeLong interval
    ``auc_eval_ci`` (aliases ``best_auc``, ``auc_ci``), ``tpr_at_1pct`` / ``tpr_at_01pct`` (aliases
    ``best_tpr_*``): TPR at 1 % / 0.1 % FPR, None when the evaluation split has fewer than
    ``MIN_NONMEMBERS_PER_FPR`` / FPR non-members (then the "TPR at 1 % FPR" would be a TPR at FPR 0; the
    reason is in ``tpr_note``). ``n_eval`` = (members, non-members) in the evaluation split;
    ``eval_train`` (n_train,) / ``eval_holdout`` (n_holdout,) boolean masks of it. ``loss_train``
    (n_train, n_sigma), ``loss_holdout`` (n_holdout, n_sigma): per-sample denoising loss (mean squared error
    per value, averaged over ``n_draws`` noise draws).
    """

    sigmas: np.ndarray
    auc: np.ndarray
    auc_select: np.ndarray
    loss_gap: np.ndarray
    best_sigma: float
    auc_eval: float
    auc_eval_ci: tuple[float, float] | None
    tpr_at_1pct: float | None
    tpr_at_01pct: float | None
    tpr_note: str | None
    n_eval: tuple[int, int]
    eval_train: np.ndarray
    eval_holdout: np.ndarray
    loss_train: np.ndarray
    loss_holdout: np.ndarray
    n_draws: int

    @property
    def best_auc(self) -> float:
        return self.auc_eval

    @property
    def auc_ci(self) -> tuple[float, float] | None:
        return self.auc_eval_ci

    @property
    def best_tpr_at_1pct(self) -> float | None:
        return self.tpr_at_1pct

    @property
    def best_tpr_at_01pct(self) -> float | None:
        return self.tpr_at_01pct


# TPR at FPR f needs >= 10 / f non-members: the threshold then rests on >= 10 of them
MIN_NONMEMBERS_PER_FPR = 10


def roc_points(result: MIAResult, max_points: int = 101) -> dict[str, list[float]]:
    """ROC curve (score -loss, members positive) on the evaluation split at ``best_sigma``, thinned to at
    most ``max_points`` points evenly spaced in FPR: ``{"fpr": [...], "tpr": [...]}``, both from 0 to 1."""
    j = int(np.flatnonzero(result.sigmas == result.best_sigma)[0])
    lm = result.loss_train[result.eval_train, j]
    ln = result.loss_holdout[result.eval_holdout, j]
    thr = np.unique(np.concatenate([lm, ln]))
    # a sample is flagged when its loss is <= the threshold
    fpr = np.r_[0.0, np.searchsorted(np.sort(ln), thr, side="right") / len(ln)]
    tpr = np.r_[0.0, np.searchsorted(np.sort(lm), thr, side="right") / len(lm)]
    if len(fpr) > max_points:
        keep = np.unique(
            np.searchsorted(fpr, np.linspace(0, 1, max_points), side="left").clip(0, len(fpr) - 1)
        )
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


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


def _half(n: int, rng) -> np.ndarray:
    """A seeded random boolean mask of floor(n / 2) rows (the evaluation half)."""
    mask = np.zeros(n, bool)
    mask[rng.choice(n, n // 2, replace=False)] = True
    return mask


def membership_inference(
    denoise,
    train,
    holdout,
    sigmas,
    n_draws: int = 4,
    seed: int = 0,
    *,
    batch_size: int = 1024,
    confidence: float = 0.95,
) -> MIAResult:
    """Loss-threshold membership inference on the denoising loss.

    ``denoise``: a callable ``denoise(x, sigma)`` on float64 arrays, or any object with ``.denoise``.
    ``train`` (n_train, ...) members, ``holdout`` (n_holdout, ...) non-members from the same
    distribution, ``sigmas``: noise levels. For each sigma the loss
    ||D(x + sigma eps, sigma) - x||^2 / P is averaged over ``n_draws`` draws of eps; members are
    predicted by low loss. Train and holdout see independent noise draws from ``seed``.

    Choosing sigma by the largest AUC and reporting that AUC on the same data is biased upward (the
    maximum of noisy AUCs). So members and non-members are each split in two seeded halves: sigma is
    chosen on one (``auc_select``) and the AUC (DeLong interval), TPR at 1 % / 0.1 % FPR and the ROC are
    reported on the other. With a single sigma there is nothing to choose and all the data is evaluated.
    """
    fn = _denoiser(denoise)
    xt = _samples(train, "training set", min_n=4)
    xh = _samples(holdout, "holdout", min_n=4)
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
    for j, sg in enumerate(s):
        Lt[:, j] = denoising_loss(fn, xt, sg, int(n_draws), rng, batch_size)
        Lh[:, j] = denoising_loss(fn, xh, sg, int(n_draws), rng, batch_size)
    auc = np.array([auc_lower_is_member(Lt[:, j], Lh[:, j]) for j in range(len(s))])
    if len(s) == 1:
        et, eh = np.ones(len(xt), bool), np.ones(len(xh), bool)
        auc_sel = auc.copy()
    else:
        split = np.random.default_rng([int(seed), 0x5E1])
        et, eh = _half(len(xt), split), _half(len(xh), split)
        auc_sel = np.array([auc_lower_is_member(Lt[~et, j], Lh[~eh, j]) for j in range(len(s))])
    b = int(np.argmax(auc_sel))
    lm, ln = Lt[et, b], Lh[eh, b]
    auc_eval, ci, _ = auc_delong(-lm, -ln, confidence)
    tprs, notes = [], []
    for fpr in (0.01, 0.001):
        need = int(np.ceil(MIN_NONMEMBERS_PER_FPR / fpr))
        if len(ln) >= need:
            tprs.append(tpr_at_fpr(lm, ln, fpr))
        else:
            tprs.append(None)
            notes.append(f"TPR at {100 * fpr:g} % FPR needs >= {need} evaluation non-members (has {len(ln)})")
    return MIAResult(
        sigmas=s,
        auc=auc,
        auc_select=auc_sel,
        loss_gap=Lh.mean(0) - Lt.mean(0),
        best_sigma=float(s[b]),
        auc_eval=auc_eval,
        auc_eval_ci=ci,
        tpr_at_1pct=tprs[0],
        tpr_at_01pct=tprs[1],
        tpr_note="; ".join(notes) + "." if notes else None,
        n_eval=(int(et.sum()), int(eh.sum())),
        eval_train=et,
        eval_holdout=eh,
        loss_train=Lt,
        loss_holdout=Lh,
        n_draws=int(n_draws),
    )
