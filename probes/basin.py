"""The basin-of-attraction probe (white box): do training items attract the model's reverse process?

A diffusion model that memorizes its training set turns each training item into an attractor of its
probability-flow ODE: noise a training item to level sigma, run the reverse process back to 0, and it lands
on that same item again; a held-out item, noised alike, lands elsewhere (on a training item, for the exact
memorizer). A model that generalizes treats the two sets alike. This is the associative-memory view of
diffusion models -- training items as the stored patterns of a dense associative memory whose energy is the
model's log density (Hoover et al. 2023, "Memory in plain sight: surveying the uncanny resemblances of
associative memories and diffusion models"; Pham et al. 2024, "Memorization to generalization: emergence of
diffusion models from associative memory"; Ambrogioni 2023, "In search of dispersed memories"), whose basins
shrink and vanish as the training set grows. The threat model is Carlini et al. 2023 ("Extracting training
data from diffusion models"): a white-box attacker asks whether an item was trained on. Noising to an
intermediate sigma and denoising is SDEdit's partial reverse process (Meng et al. 2022).

``basin_of_attraction(model, train, holdout, sigmas, radius)``: for each sigma and each item x (train and
holdout, independent seeded noise eps ~ N(0, I)), x_hat = reverse(x + sigma eps, sigma) and the return
distance r = ||x_hat - x|| (Euclidean over the flattened sample, float64). Per sigma: the return rate
(r <= ``radius``) of each set with its Wilson interval, the median return distance, and the ROC AUC of the
score -r with training items as positives (DeLong interval). Choosing sigma by the largest AUC and reporting
that AUC on the same items is biased upward, so -- as in ``probes.membership`` -- training and holdout items
are each cut into two seeded halves: sigma is chosen on one (``auc_select``) and the AUC and return rates are
reported on the other.

``calibrate(train, holdout, quantile)``: from the Euclidean distances of held-out items to their nearest
training item, the return radius is their ``quantile`` (default 0.01): a return counts when the reverse
process ends closer to its starting item than all but 1 % of fresh real data ever get to any training item
(the calibration of the holdout rule of ``probes.memorization.find_copies``). It makes the return rate
scale-free, and bounds the exact memorizer's holdout return rate: a held-out item lands on a training item,
at least its nearest-neighbour distance away, so at most ``quantile`` of them return. The AUC does not
depend on the radius. Their median, the neighbour ``spacing``, is the natural unit of sigma: the exact
memorizer's basin around a training item is about as wide as the distance to its nearest other item
(noised to sigma, the item outweighs a neighbour at distance delta by log-odds delta^2 / (2 sigma^2) +- delta
/ sigma, whatever the dimension), and the spacing shrinks with n and with a low intrinsic dimension, so a
grid in units of the data std can miss the basins (hidden-manifold d = 8, D = 2, n = 2,000: the spacing is
0.066 x the std; noised to 0.05 ... 1 x the std, the exact memorizer came back for only 59 ... 2 % of its
training items, at 0.02 ... 0.5 x the spacing for 100 ... 73 %).

The reverse process is the model's own (``Model.reverse_from``: the deterministic EDM Heun sampler started
at sigma); this module integrates nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError, ModelError
from diffaudit.probes._checks import as_samples
from diffaudit.probes.membership import _half
from diffaudit.probes.neighbors import DEFAULT_BUDGET_MIB, knn
from diffaudit.probes.stats import auc_delong, wilson_interval

MIN_EVAL = 10  # items of each set in the evaluation half, at least

DEFAULT_QUANTILE = 0.01


@dataclass
class BasinResult:
    """Result of ``basin_of_attraction``.

    Per sigma (n_sigma,), on ALL the items (descriptive): ``return_train`` / ``return_holdout`` return rates
    with Wilson intervals ``return_train_ci`` / ``return_holdout_ci`` (n_sigma, 2); ``median_train`` /
    ``median_holdout`` median return distances; ``auc`` with DeLong intervals ``auc_ci`` (n_sigma, 2).
    ``auc_select`` (n_sigma,): AUC on the selection halves; ``best_sigma`` its argmax. At ``best_sigma``, on
    the evaluation halves (``eval_train`` / ``eval_holdout`` masks, sizes ``n_eval``): ``auc_eval`` with
    ``auc_eval_ci``, ``return_train_eval`` / ``return_holdout_eval`` with Wilson intervals. ``dist_train``
    (n_train, n_sigma) and ``dist_holdout`` (n_holdout, n_sigma): the return distances. ``radius``: the
    return radius (same units as the samples).
    """

    sigmas: np.ndarray
    radius: float
    dist_train: np.ndarray
    dist_holdout: np.ndarray
    return_train: np.ndarray
    return_train_ci: np.ndarray
    return_holdout: np.ndarray
    return_holdout_ci: np.ndarray
    median_train: np.ndarray
    median_holdout: np.ndarray
    auc: np.ndarray
    auc_ci: np.ndarray
    auc_select: np.ndarray
    best_sigma: float
    auc_eval: float
    auc_eval_ci: tuple[float, float]
    return_train_eval: float
    return_train_eval_ci: tuple[float, float]
    return_holdout_eval: float
    return_holdout_eval_ci: tuple[float, float]
    n_eval: tuple[int, int]
    eval_train: np.ndarray
    eval_holdout: np.ndarray

    def per_sigma(self) -> list[dict]:
        """One JSON-ready row per sigma: return rates (with intervals), median distances, AUC (interval)."""
        return [
            {
                "sigma": float(s),
                "return_train": float(self.return_train[j]),
                "return_train_ci": [float(v) for v in self.return_train_ci[j]],
                "return_holdout": float(self.return_holdout[j]),
                "return_holdout_ci": [float(v) for v in self.return_holdout_ci[j]],
                "median_distance_train": float(self.median_train[j]),
                "median_distance_holdout": float(self.median_holdout[j]),
                "auc": float(self.auc[j]),
                "auc_ci": [float(v) for v in self.auc_ci[j]],
                "auc_select": float(self.auc_select[j]),
            }
            for j, s in enumerate(self.sigmas)
        ]


def _reverse(model, num_steps: int) -> Callable[[np.ndarray, float], np.ndarray]:
    """``reverse(x, sigma)`` of a white-box model (its ``reverse_from``), or ``model`` itself if a callable."""
    fn = getattr(model, "reverse_from", None)
    if callable(fn) and getattr(model, "has_denoiser", False):
        return lambda x, s: fn(x, s, num_steps=num_steps)
    if callable(model) and fn is None:
        return model
    raise DiffauditError(
        "the basin-of-attraction probe runs the model's reverse process, which needs a white-box model with "
        "denoise(x, sigma); this model is a black box."
    )


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


@dataclass
class Calibration:
    """Result of ``calibrate``: the return ``radius`` (the ``quantile`` of holdout -> nearest-training-item
    Euclidean distances) and ``spacing`` (their median: the data's neighbour spacing, the natural unit of
    sigma -- an exact memorizer's basins are about that wide), from ``n_holdout`` held-out items."""

    radius: float
    spacing: float
    quantile: float
    n_holdout: int


def _sample_pair(train, holdout, *, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated training and holdout samples (float64) of one sample shape."""
    xt = as_samples(train, "training set", min_n=min_n)
    xh = as_samples(holdout, "holdout", min_n=min_n)
    if xt.shape[1:] != xh.shape[1:]:
        raise DiffauditError(
            f"training samples have shape {xt.shape[1:]} but holdout samples {xh.shape[1:]}; "
            "pass the same kind of samples."
        )
    return xt, xh


def calibrate(
    train,
    holdout,
    quantile: float = DEFAULT_QUANTILE,
    *,
    budget_mib: float = DEFAULT_BUDGET_MIB,
    device: str = "cpu",
) -> Calibration:
    """Return radius and neighbour spacing from the distances of each held-out item to its nearest
    training item (``train`` (n_train, ...), ``holdout`` (n_holdout, ...) of one shape, flattened; exact
    blocked search with float64 re-ranking, ``probes.neighbors.knn``). Raises when the radius is 0
    (that share of held-out items duplicates a training item, so a return could not be told from it).
    ``device``: the caller's torch device, for the k-NN engine (``neighbors.search``).
    """
    xt, xh = _sample_pair(train, holdout, min_n=1)
    q = float(quantile)
    if not 0.0 < q < 1.0:
        raise DiffauditError(f"quantile={quantile!r} must lie strictly between 0 and 1, e.g. 0.01.")
    D, _ = knn(
        _flat(xh), _flat(xt), 1, budget_mib=budget_mib, name_q="holdout", name_b="training set", device=device
    )
    d = np.sqrt(np.maximum(D[:, 0], 0.0))
    r = float(np.quantile(d, q))
    if not r > 0.0:
        raise DiffauditError(
            f"the return radius is 0: at least {100 * q:g} % of the holdout items duplicate a training item; "
            "deduplicate the holdout against the training set."
        )
    return Calibration(radius=r, spacing=float(np.median(d)), quantile=q, n_holdout=len(d))


def return_distances(reverse, x: np.ndarray, sigma: float, rng, batch_size: int) -> np.ndarray:
    """||reverse(x + sigma eps, sigma) - x|| per item (n,), eps ~ N(0, I) drawn from ``rng`` in row order."""
    out = np.empty(len(x))
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        start = xb + sigma * rng.standard_normal(xb.shape)
        xhat = np.asarray(reverse(start, float(sigma)), dtype=np.float64)
        if xhat.shape != xb.shape:
            raise DiffauditError(
                f"the reverse process returned shape {xhat.shape} for input {xb.shape}; it must return "
                "samples of the input's shape."
            )
        if not np.isfinite(xhat).all():
            raise ModelError(
                f"the model's reverse process returned NaN or Inf at sigma={sigma:g}; check its denoiser there."
            )
        out[i : i + len(xb)] = np.sqrt(((xhat - xb) ** 2).reshape(len(xb), -1).sum(1))
    return out


def basin_of_attraction(
    model,
    train,
    holdout,
    sigmas,
    radius: float,
    *,
    num_steps: int = 8,
    seed: int = 0,
    batch_size: int = 1024,
    confidence: float = 0.95,
) -> BasinResult:
    """Basin-of-attraction membership probe (module docstring).

    ``model``: a white-box model (its ``reverse_from(x, sigma, num_steps)`` runs the EDM Heun sampler from
    sigma down to 0 on ``num_steps`` levels) or a callable ``reverse(x, sigma) -> x0`` (``num_steps`` unused).
    ``train`` (n_train, ...) members and ``holdout`` (n_holdout, ...) non-members: the evaluation halves (all
    items with one sigma) need ``MIN_EVAL`` = 10 of each, so at least 20 each (10 with one sigma);
    ``sigmas``: positive noise levels (absolute, in the samples' units); ``radius`` > 0: the return radius
    (``calibrate``). Noise is seeded per (``seed``, set, sigma), so train and holdout see independent
    draws. Cost: (n_train + n_holdout) x n_sigma reverse runs, each 2 ``num_steps`` - 1 denoiser calls.
    """
    rev = _reverse(model, int(num_steps))
    if int(num_steps) < 1:
        raise DiffauditError(f"num_steps={num_steps!r} must be at least 1 Heun level.")
    xt, xh = _sample_pair(train, holdout, min_n=4)
    s = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all() or (s <= 0).any():
        raise DiffauditError(
            f"sigmas={[float(v) for v in np.ravel(s)]} must be a non-empty list of positive noise levels, "
            "e.g. [0.1, 0.5]."
        )
    if not (np.isfinite(radius) and radius > 0):
        raise DiffauditError(f"radius={radius!r} must be a positive distance; see calibrate.")
    # the evaluation halves (all items with one sigma): below MIN_EVAL each, the AUC and its interval say little
    ev_t, ev_h = (len(xt), len(xh)) if len(s) == 1 else (len(xt) // 2, len(xh) // 2)
    if min(ev_t, ev_h) < MIN_EVAL:
        need = MIN_EVAL if len(s) == 1 else 2 * MIN_EVAL
        raise DiffauditError(
            f"the basin AUC would be evaluated on {ev_t} training and {ev_h} holdout items; it needs at least "
            f"{MIN_EVAL} of each, so pass at least {need} training and holdout items (basin_n >= {need})."
        )
    radius = float(radius)
    bs = max(1, int(batch_size))
    Dt = np.empty((len(xt), len(s)))
    Dh = np.empty((len(xh), len(s)))
    for j, sg in enumerate(s):
        Dt[:, j] = return_distances(rev, xt, sg, np.random.default_rng([int(seed), 0, j]), bs)
        Dh[:, j] = return_distances(rev, xh, sg, np.random.default_rng([int(seed), 1, j]), bs)
    Rt, Rh = Dt <= radius, Dh <= radius

    def rates(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = R.sum(0)
        return k / len(R), np.array([wilson_interval(int(v), len(R), confidence) for v in k])

    rt, rt_ci = rates(Rt)
    rh, rh_ci = rates(Rh)
    per = [auc_delong(-Dt[:, j], -Dh[:, j], confidence) for j in range(len(s))]
    auc = np.array([a for a, _, _ in per])
    auc_ci = np.array([ci for _, ci, _ in per])
    if len(s) == 1:
        et, eh = np.ones(len(xt), bool), np.ones(len(xh), bool)
        auc_sel = auc.copy()
    else:
        split = np.random.default_rng([int(seed), 0xBA5])
        et, eh = _half(len(xt), split), _half(len(xh), split)
        auc_sel = np.array([auc_delong(-Dt[~et, j], -Dh[~eh, j])[0] for j in range(len(s))])
    b = int(np.argmax(auc_sel))
    auc_eval, auc_eval_ci, _ = auc_delong(-Dt[et, b], -Dh[eh, b], confidence)
    kt, kh = int(Rt[et, b].sum()), int(Rh[eh, b].sum())
    nt, nh = int(et.sum()), int(eh.sum())
    return BasinResult(
        sigmas=s,
        radius=radius,
        dist_train=Dt,
        dist_holdout=Dh,
        return_train=rt,
        return_train_ci=rt_ci,
        return_holdout=rh,
        return_holdout_ci=rh_ci,
        median_train=np.median(Dt, 0),
        median_holdout=np.median(Dh, 0),
        auc=auc,
        auc_ci=auc_ci,
        auc_select=auc_sel,
        best_sigma=float(s[b]),
        auc_eval=float(auc_eval),
        auc_eval_ci=auc_eval_ci,
        return_train_eval=kt / nt,
        return_train_eval_ci=wilson_interval(kt, nt, confidence),
        return_holdout_eval=kh / nh,
        return_holdout_eval_ci=wilson_interval(kh, nh, confidence),
        n_eval=(nt, nh),
        eval_train=et,
        eval_holdout=eh,
    )
