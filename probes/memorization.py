"""Memorization probes on feature arrays: training-copy detection, the C_T data-copying test, AuthPct.

All distances here are **Euclidean (not squared)**, computed from ``neighbors.search`` (FAISS over the
whole training set, float64 re-ranking). Inputs are (n, D) feature arrays or (n, c, h, w) images,
which are flattened (``image_shape`` is then inferred, for Carlini's tile distance).

- ``find_copies``: per generated sample, the nearest training item and the copy rules
  * ratio rule, d1/d2 < 1/3 (Yoon et al. 2023, "Diffusion probabilistic models generalize when they
    fail to memorize"; Gu et al. 2023, "On memorization in diffusion models");
  * holdout-calibrated rule, d1 < the ``holdout_quantile`` quantile of holdout->train NN distances
    (a copy is closer to a training item than fresh real data ever gets);
  * Carlini et al. 2023 ("Extracting training data from diffusion models", Sec. 5.1) normalised
    distance l = d(x, x_nn) / (alpha * mean_{y in S} d(x, y)), S the n = 50 nearest training items,
    alpha = 0.5, and for images their 4x4-tile max distance (optional).
- ``ct_test``: Meehan, Chaudhuri & Dasgupta 2020 ("A non-parametric test to detect data-copying in
  generative models"), the cell-weighted Mann-Whitney statistic C_T.
- ``authenticity``: Alaa et al. 2022 ("How faithful is your synthetic data?"), AuthPct.

Default copy decision (``rule="auto"``): with a holdout set, ``is_copy = ratio AND holdout``;
without one, ``is_copy = ratio``. Why AND: each rule alone has a known false-positive mode that the
other does not share. The ratio rule flags fresh samples in low intrinsic dimension (for uniform
data in d dims P(d1/d2 < r) = r^d: 11 % at d = 2) and in dense clusters; the holdout rule flags, by
construction, ``holdout_quantile`` of fresh data (1 %) and is blind to scale differences between
regions. A transformed copy (exact, small noise) satisfies both by a wide margin (d1 -> 0), so AND
costs almost no recall on copies while driving the false-positive rate on fresh data well below
either rule alone (validated in tests/test_memorization.py: exact and noise copies >= 0.99 recall,
untouched held-out samples <= 1 % flagged). The holdout rule is also what makes the decision
scale-aware: "closer than 99 % of real held-out data ever gets".

Copies under small edits (``transforms="default"``, images only; issue 12): a 1-px shift of a training image
is as far from it in pixel L2 as an unrelated image (planted 1-px shifts were recalled at 0.0). With transforms,
every distance of the decision is the transform-min distance delta(g, t) = min_T d_T(g, t) / q_kind(T) over
``probes.transforms`` (shifts up to 2 px, horizontal flip, >= 90 % crops): d_T compares the two views of T
(the generated image with a shift / flip undone, or the training image cropped and resized), both standardised
to zero mean and a common RMS, so brightness / contrast changes cost nothing either. q_kind is the median, over
the holdout, of its nearest-neighbour distance under that kind of edit (identity, shift, flip, crop; 1 without a
holdout): it puts the kinds on one scale, so that the 24 shifts, which bring fresh data closest, do not set the
threshold for the rest (without it, +-5 % brightness copies of sprites were recalled at 0.89). d1, d2, the
ratio rule and the holdout quantile all use delta, the holdout's own delta calibrates the quantile, and the
search is exact over the whole training set (one exact k-NN search per transform, merged per training item):
the rules keep their meaning. Measured (tests/probes/test_copies_robust.py, 300 planted copies per edit): exact,
noise, brightness, 1- and 2-px shifts, flips and 90 % crops recalled at 1.000 on sprites (16 px) and smooth
32-px images, fresh samples flagged 0.9 % / 0.0 %. Cost: each training view is built once and both query sets
(holdout, generated) searched against it, one exact k-NN search per transform (benchmarks/README.md). Crops
resized with another kernel than bilinear (bicubic) differ by about fresh-data distances on sharp 16-px sprites
(recalled at 0.15 there, 1.0 on smooth 32-px images).

d2 is the distance to the nearest training item that is not a (near-)duplicate of the first neighbour (items
within ``DUP_FRACTION`` of the holdout threshold of it, exact duplicates without a holdout): a training set that
holds an item twice otherwise gives its copies d1 = d2, ratio 1, and hid them from every rule (measured: noisy
copies of a 2x-repeated training set flagged 0.000 before, 1.000 after).

Known limit (review of issue 12): the transform minimum also shrinks d2, so noisy copies pass the ratio rule
less often with transforms than without: sprites at n_train 8,000 with noise of 5 % of the data's std are
recalled at 0.825 with transforms vs 0.94 plain (1-2 px shift + 2 % noise: 0.95 / 0.945, vs 0.000 plain).
Taking d2 without transforms lifted that recall to 0.90-0.98 but flagged 1.1-1.4 % of fresh sprites, above the
rule's 1 % meaning, so it was not adopted. Constant images keep their raw pixels (standardising maps every
constant image to zero, which made all-grey samples "copies" of an all-black training image).
"""

# ruff: noqa: E741  (D, I follow FAISS naming)
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.probes._checks import as_features, same_width
from diffaudit.probes.neighbors import DEFAULT_BUDGET_MIB, search
from diffaudit.probes.stats import wilson_interval
from diffaudit.probes.transforms import (
    Transform,
    as_images,
    pixel_scale,
    query_view,
    resolve,
    standardise,
    train_view,
)

RULES = ("auto", "ratio", "holdout", "ratio_and_holdout", "carlini")
CARLINI_ALPHA = 0.5
CARLINI_N = 50
NEAR_DUP_K = 32  # train->train neighbours examined per copied item (counts are capped at this)
K_D2 = 16  # neighbours searched for d2, so that up to 14 duplicates of the first neighbour can be skipped
DUP_FRACTION = (
    0.1  # d2 skips training items within this share of the holdout threshold of the first neighbour
)


def _flatten(x, name: str, min_n: int = 1):
    """(n, ...) -> ((n, D) float32, sample shape or None)."""
    try:
        a = np.asarray(x)
    except Exception as e:
        raise DiffauditError(
            f"{name}: could not be read as an array ({e}); pass an (n, D) numeric array."
        ) from None
    shape = None
    if a.ndim == 4:
        shape = tuple(a.shape[1:])
        a = a.reshape(len(a), -1)
    elif a.ndim == 3:  # (n, h, w) grey images
        shape = (1, *a.shape[1:])
        a = a.reshape(len(a), -1)
    return as_features(a, name, min_n=min_n), shape


def _normalise_rows(x: np.ndarray, name: str) -> np.ndarray:
    n = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    if (n == 0).any():
        raise DiffauditError(
            f"{name}: {int((n == 0).sum())} row(s) have zero norm; cosine needs non-zero features."
        )
    return (x / n).astype(np.float32)


def _safe_ratio(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    # an exact copy of a duplicated training item (d1 = d2 = 0) is a copy: ratio 0
    return np.where(d1 == 0, 0.0, d1 / np.where(d2 == 0, np.inf, d2))


def _nn_within(train: np.ndarray, rows: np.ndarray, k: int, budget_mib: float, index="auto", device="cpu"):
    """Euclidean distances (len(rows), k) and indices from train[rows] to its k nearest *other* training items."""
    k = int(min(k, len(train) - 1))
    r = search(
        train[rows],
        train,
        k + 1,
        budget_mib=budget_mib,
        index=index,
        name_q="training set",
        name_b="training set",
        device=device,
    )
    is_self = r.I == rows[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), k)
    keep = np.ones_like(r.I, dtype=bool)
    keep[np.arange(len(rows)), drop] = False
    D = np.sqrt(np.maximum(r.D[keep].reshape(len(rows), k), 0.0))
    return D, r.I[keep].reshape(len(rows), k)


def _per_transform_nn(queries, xt, transforms, shape, ref, ks, budget_mib, seed, device="cpu"):
    """For each transform T: the nearest training items under d_T (``probes.transforms``), exactly, for every
    query set of ``queries`` ({name: (n, P) array}) against ONE standardised training view per T.

    Both views of a pair are standardised (``transforms.standardise`` to RMS ``ref``) after the transform, so
    that a brightness / contrast change is no distance either. ``ks``: {name: k} (or an int for every set).
    Returns ({name: [Euclidean D (n, k) per T]}, {name: [I (n, k) per T]}, the identity's standardised training
    view (n_train, P) or None when no T is the identity)."""
    _, h, w = shape
    gt = as_images(xt, shape)
    qs = {nm: as_images(x, shape) for nm, x in queries.items()}
    Ds = {nm: [] for nm in queries}
    Is = {nm: [] for nm in queries}
    ident = None
    for t in transforms:
        b = standardise(train_view(gt, t).reshape(len(gt), -1), ref)  # once per T, for every query set
        if t.kind == "identity":
            ident = b
        sc = pixel_scale(t, h, w)
        for nm, gq in qs.items():
            k = int(min(ks if isinstance(ks, int) else ks[nm], len(xt)))
            q = standardise(query_view(gq, t).reshape(len(gq), -1), ref)
            r = search(
                q,
                b,
                k,
                index="exact",
                budget_mib=budget_mib,
                seed=seed,
                name_q=nm,
                name_b="training set",
                device=device,
            )
            Ds[nm].append(np.sqrt(np.maximum(r.D, 0.0)) * sc)
            Is[nm].append(r.I)
    return Ds, Is, ident


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(first row of every distinct row of ``x``, in order; how many rows each stands for), or (None, None) when
    every row is distinct or fewer than 2 distinct rows are left (then there is no second item to measure)."""
    x = np.ascontiguousarray(x)
    v = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, counts = np.unique(v, return_index=True, return_counts=True)
    if len(first) == len(x) or len(first) < 2:
        return None, None
    order = np.argsort(first)
    return first[order].astype(np.int64), counts[order].astype(np.int64)


def _distinct_second(D, I, nn, rows_dist, radius):
    """d2: per query, the distance (from ``D`` (n, k), ascending, candidates ``I``) to the nearest training item that
    is neither ``nn`` (the first neighbour) nor within ``radius`` of it (a duplicate or near-duplicate: a copy of
    an item the training set holds twice has d1 = d2 otherwise, ratio 1, and was never flagged).
    ``rows_dist(a, b)``: distances between training items a[i] and b[i]. When all k candidates are the first
    neighbour's duplicates, the k-th distance (a lower bound on d2: the ratio can only come out larger)."""
    n, k = D.shape
    d2 = D[:, -1].astype(np.float64).copy()
    found = np.zeros(n, bool)
    for j in range(k):
        cand = I[:, j]
        ok = (~found) & (cand != nn) & (cand >= 0)
        if not ok.any():
            continue
        rows = np.flatnonzero(ok)
        ok[rows] = rows_dist(nn[rows], cand[rows]) > radius
        d2[ok] = D[ok, j]
        found |= ok
        if found.all():
            break
    return d2


def _merge_transforms(Ds, Is, weights, k):
    """The ``k`` nearest *distinct* training items under delta(g, t) = min_T w_T d_T(g, t), from the per-transform
    lists of ``_per_transform_nn`` (each of length >= k). Exact: the item at rank j of the merged list reaches its
    minimum under some T*, and in T*'s own list only the j - 1 items ranked above it can precede it.
    Returns D (nq, k), I (nq, k) and ``which`` (nq,), the index of the transform that reached D[:, 0]."""
    nq = len(Ds[0])
    D = np.concatenate([d * wt for d, wt in zip(Ds, weights, strict=True)], axis=1)
    I = np.concatenate(Is, axis=1)
    T = np.concatenate([np.full(i.shape, j) for j, i in enumerate(Is)], axis=1)
    rows = np.repeat(np.arange(nq), D.shape[1])
    D, I, T = D.reshape(-1), I.reshape(-1), T.reshape(-1)
    # per query each training item once (its smallest distance; the earlier transform on ties), then by distance
    o = np.lexsort((T, D, I, rows))
    first = np.ones(len(o), bool)
    first[1:] = (rows[o][1:] != rows[o][:-1]) | (I[o][1:] != I[o][:-1])
    o = o[first]
    o = o[np.lexsort((T[o], D[o], rows[o]))]
    r_o = rows[o]
    rank = np.arange(len(o)) - np.searchsorted(r_o, np.arange(nq))[r_o]
    keep = rank < k
    Do, Io = np.full((nq, k), np.inf), np.full((nq, k), -1, np.int64)
    Do[r_o[keep], rank[keep]] = D[o][keep]
    Io[r_o[keep], rank[keep]] = I[o][keep]
    return Do, Io, T[o][rank == 0]


def _tile_distances(xq: np.ndarray, cand: np.ndarray, shape: tuple[int, ...], grid: int = 4) -> np.ndarray:
    """Carlini et al.'s tile distance: max over a grid x grid tiling of the per-tile L2 distance.

    xq (q, P), cand (q, n, P) -> (q, n) float64."""
    c, h, w = shape
    q, n, _ = cand.shape
    diff = (cand.astype(np.float64) - xq.astype(np.float64)[:, None, :]).reshape(q, n, c, h, w)
    hs = np.array_split(np.arange(h), grid)
    ws = np.array_split(np.arange(w), grid)
    out = np.zeros((q, n))
    for hi in hs:
        for wi in ws:
            if len(hi) == 0 or len(wi) == 0:
                continue
            t = diff[:, :, :, hi[0] : hi[-1] + 1, wi[0] : wi[-1] + 1]
            out = np.maximum(out, np.sqrt((t**2).sum(axis=(2, 3, 4))))
    return out


@dataclass
class CopyResult:
    """Result of ``find_copies``. Distances are Euclidean (not squared) in the given feature space.

    Per generated sample (n_gen,): ``nn_index`` (nearest training item), ``d1``, ``d2`` (first and
    second NN distances), ``ratio`` = d1/d2 (0 when d1 = 0), ``is_copy`` (the decision of ``rule``),
    ``is_copy_ratio``, ``is_copy_holdout`` (None without holdout), ``is_copy_carlini`` and
    ``carlini_score`` (None unless ``carlini=True``).
    ``transform``: (n_gen,) name of the edit under which ``d1`` is reached ("identity" without transforms;
    e.g. "shift(+1,+0)", "flip", "crop90(+0,+1)", see ``probes.transforms``); ``transforms``: the names tried.
    ``most_copied``: (m, 2) int64 rows (train_index, count) for every copied training item, most
    copied first; ``near_duplicates``: (m,) number of *other* training items within ``dup_radius``
    of each (capped at ``NEAR_DUP_K``). ``sim95pc``/``nn_similarity``: cosine similarity to the
    nearest training item and its 95th percentile (Somepalli et al. 2023), only for ``metric="cosine"``.
    """

    rule: str
    nn_index: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    ratio: np.ndarray
    is_copy: np.ndarray
    is_copy_ratio: np.ndarray
    is_copy_holdout: np.ndarray | None
    is_copy_carlini: np.ndarray | None
    carlini_score: np.ndarray | None
    n_generated: int
    n_copies: int
    copy_rate: float
    copy_rate_ci: tuple[float, float] | None
    unique_train_copied: int
    most_copied: np.ndarray
    near_duplicates: np.ndarray
    dup_radius: float
    ratio_threshold: float
    holdout_threshold: float | None = None
    holdout_d1: np.ndarray | None = None
    nn_similarity: np.ndarray | None = None
    sim_percentiles: dict[int, float] | None = None
    sim95pc: float | None = None
    recall_at_1: float = 1.0
    index_method: str = "exact"
    rule_rates: dict[str, float] = field(default_factory=dict)
    transform: np.ndarray | None = None
    transforms: tuple[str, ...] = ("identity",)


def find_copies(
    generated,
    train,
    holdout=None,
    *,
    rule: str = "auto",
    ratio_threshold: float = 1 / 3,
    holdout_quantile: float = 0.01,
    carlini: bool = False,
    carlini_threshold: float = 1 / 3,
    tile: bool = False,
    image_shape: tuple[int, ...] | None = None,
    metric: str = "l2",
    index="auto",
    budget_mib: float = DEFAULT_BUDGET_MIB,
    seed: int = 0,
    transforms=None,
    device="cpu",
) -> CopyResult:
    """Detect training copies among ``generated`` (n_gen, D) w.r.t. ``train`` (n_train, D).

    ``holdout`` (n_h, D): real samples not used in training, for the calibrated rule.
    ``rule``: "auto" (ratio AND holdout with a holdout set, else ratio; see the module docstring),
    "ratio", "holdout", "ratio_and_holdout" or "carlini". ``carlini``: also compute Carlini et al.'s
    normalised distance (alpha = 0.5, n = 50) and flag ``l < carlini_threshold`` (our choice of
    threshold; the paper tunes it by inspection); ``tile``: use their 4x4-tile max distance for it
    (images; ``image_shape`` (c, h, w) when inputs are flat). ``metric="cosine"`` L2-normalises every
    row first (then d^2 = 2 - 2 cos) and reports Sim95pc. ``index``: as in ``neighbors.search``
    ("auto" | "exact" | "ivf" | a prebuilt index over ``train``).
    ``transforms``: None (plain distances), "default" or a list of names (``probes.transforms``): images only;
    every distance of the decision -- d1, d2 of the generated samples and the holdout's d1 that calibrates the
    quantile -- becomes the transform-min distance min_T d_T(g, t), found exactly over the whole training set
    (one exact search per transform; see ``_per_transform_nn``), and ``transform`` records the edit that reached
    d1. d2 skips the first neighbour's (near-)duplicates (module docstring).
    ``device``: the caller's torch device, for the k-NN engine (``neighbors.search``).
    """
    if rule not in RULES:
        raise DiffauditError(f"rule={rule!r} is not known; use one of: {', '.join(RULES)}.")
    if metric not in ("l2", "cosine"):
        raise DiffauditError(f"metric={metric!r} is not supported here; use 'l2' or 'cosine'.")
    if not 0 < ratio_threshold <= 1:
        raise DiffauditError(f"ratio_threshold={ratio_threshold} must be in (0, 1]; the literature uses 1/3.")
    if not 0 < holdout_quantile < 1:
        raise DiffauditError(f"holdout_quantile={holdout_quantile} must be in (0, 1); e.g. 0.01.")
    xg, shape_g = _flatten(generated, "generated", min_n=1)
    xt, shape_t = _flatten(train, "training set", min_n=2)
    same_width(xg, xt, "generated", "training set")
    xh = None
    if holdout is not None:
        xh, _ = _flatten(holdout, "holdout", min_n=2)
        same_width(xh, xt, "holdout", "training set")
    if rule in ("holdout", "ratio_and_holdout") and xh is None:
        raise DiffauditError(f"rule={rule!r} needs holdout samples; pass holdout= or use rule='ratio'.")
    if rule == "carlini":
        carlini = True
    image_shape = tuple(image_shape) if image_shape is not None else (shape_g or shape_t)
    tr = None
    if transforms is not None:
        if image_shape is not None and int(np.prod(image_shape)) != xg.shape[1]:
            raise DiffauditError(
                f"image_shape={image_shape} holds {int(np.prod(image_shape))} values but the samples have "
                f"{xg.shape[1]}; pass the shape of the images."
            )
        tr = resolve(transforms, image_shape)
        if carlini or metric != "l2" or not isinstance(index, str):
            raise DiffauditError(
                "transforms= works with plain L2 copy rules on images; drop carlini/tile, metric='cosine' or the "
                "prebuilt index, or leave transforms=None."
            )
    if tile:
        if image_shape is None or len(image_shape) != 3 or int(np.prod(image_shape)) != xg.shape[1]:
            raise DiffauditError(
                f"tile=True needs images; pass (n, c, h, w) arrays or image_shape=(c, h, w) matching {xg.shape[1]} values."
            )
        carlini = True
    if metric == "cosine":
        xg = _normalise_rows(xg, "generated")
        xt = _normalise_rows(xt, "training set")
        if xh is not None:
            xh = _normalise_rows(xh, "holdout")
    # Exact duplicates of a training item are one item: searched once, so that d2 reaches the nearest OTHER item
    # however often an item is repeated (an item repeated more than K_D2 times left d2 = d1, ratio 1: the exact
    # copies of the most duplicated items -- the ones models memorize first -- were never flagged). Indices are
    # mapped back to each item's first row at the end.
    keep = mult = None
    if isinstance(index, str):
        keep, mult = distinct_rows(xt)
        if keep is not None:
            xt = xt[keep]
    n_gen, n_train = len(xg), len(xt)

    # d2 skips the first neighbour's (near-)duplicates: search K_D2 neighbours (Carlini's 50 when those are needed)
    k = min(CARLINI_N if carlini else K_D2, n_train)
    names = ("identity",) if tr is None else tuple(t.name for t in tr)
    hd1 = None
    if tr is None:
        res = search(
            xg,
            xt,
            k,
            index=index,
            budget_mib=budget_mib,
            seed=seed,
            name_q="generated",
            name_b="training set",
            device=device,
        )
        Dk, Ik = np.sqrt(np.maximum(res.D, 0.0)), res.I
        which = np.zeros(n_gen, np.int64)
        recall, method = res.recall_at_1, res.method
        nn_index, d1 = Ik[:, 0].copy(), Dk[:, 0].copy()
        Dc, Ic = Dk, Ik  # d2's candidates

        def rows_dist(i, j):
            return np.linalg.norm(xt[i].astype(np.float64) - xt[j], axis=1)

        if xh is not None:
            hr = search(
                xh,
                xt,
                1,
                index=index,
                budget_mib=budget_mib,
                seed=seed,
                name_q="holdout",
                name_b="training set",
                device=device,
            )
            hd1 = np.sqrt(np.maximum(hr.D[:, 0], 0.0))
    else:
        # One standardised view of the training set per transform, searched by the holdout (k = 1: its d1
        # calibrates the quantile and the per-kind scales q_G, see the module docstring) and by the generated
        # samples (k = K_D2: d2 skips the first neighbour's near-duplicates); the identity view measures those.
        ref = float(np.median(xt.std(axis=1, dtype=np.float64)))
        ident = Transform("identity")
        tr_s = tr if ident in tr else (*tr, ident)  # near-duplicates are judged by the identity view
        queries = {"generated": xg} if xh is None else {"holdout": xh, "generated": xg}
        ks = {"holdout": 1, "generated": k}
        D_all, I_all, b_id = _per_transform_nn(
            queries, xt, tr_s, image_shape, ref, ks, budget_mib, seed, device
        )
        kinds = {t.kind for t in tr_s}
        scales = dict.fromkeys(kinds, 1.0)
        if xh is not None:
            hD = D_all["holdout"]
            for kind in kinds:
                dmin = np.min([d[:, 0] for d, t in zip(hD, tr_s, strict=True) if t.kind == kind], axis=0)
                scales[kind] = float(np.median(dmin) or 1.0)
        weights = [1.0 / scales[t.kind] for t in tr]
        nt = len(tr)
        gD, gI = D_all["generated"][:nt], I_all["generated"][:nt]
        D1, I1, which = _merge_transforms([d[:, :1] for d in gD], [i[:, :1] for i in gI], weights, 1)
        nn_index, d1 = I1[:, 0].copy(), D1[:, 0].copy()
        if (
            xh is not None
        ):  # the same transform-min distance as the generated samples: the quantile stays calibrated
            hd1 = _merge_transforms(hD[:nt], [np.zeros_like(d, np.int64) for d in hD[:nt]], weights, 1)[0][
                :, 0
            ]
        # d2's candidates: the k nearest distinct items under the transform-min distance. (Tried: d2 under the
        # edit kind that reached d1, or plain: noisy copies recalled 0.90 instead of 0.825 at n_train 8,000, but
        # fresh sprites flagged 1.1-1.4 % instead of 0.8-0.9 %: the ratio rule then no longer filters the fresh
        # samples that pass the holdout rule.)
        Dc, Ic, _ = _merge_transforms(gD, gI, weights, k)
        w_id = 1.0 / scales["identity"]
        del D_all, I_all

        def rows_dist(i, j):
            return np.linalg.norm(b_id[i].astype(np.float64) - b_id[j], axis=1) * w_id

        recall, method = 1.0, "exact"

    is_hold = thr = None
    if hd1 is not None:
        thr = float(np.quantile(hd1, holdout_quantile))
        is_hold = d1 < thr
    # near-duplicates of the first neighbour: within a tenth of the holdout threshold (without one: exact ones)
    d2 = _distinct_second(Dc, Ic, nn_index, rows_dist, DUP_FRACTION * thr if thr is not None else 0.0)
    ratio = _safe_ratio(d1, d2)
    is_ratio = ratio < ratio_threshold

    is_carl = carl = None
    if carlini:
        if tile:
            P = xg.shape[1]
            rows = int(max(1, budget_mib * (1 << 20) / (k * P * 8 * 3)))
            Dt = np.empty_like(Dk)
            for i0 in range(0, n_gen, rows):
                cand = xt[Ik[i0 : i0 + rows]]
                Dt[i0 : i0 + rows] = _tile_distances(xg[i0 : i0 + rows], cand, image_shape)
            # the nearest candidate by tile distance (candidates: the k nearest in L2)
            Dbase = Dt
        else:
            Dbase = Dk
        denom = CARLINI_ALPHA * Dbase.mean(1)
        num = Dbase.min(1)
        carl = np.where(num == 0, 0.0, num / np.where(denom == 0, np.inf, denom))
        is_carl = carl < carlini_threshold

    if rule == "auto":
        rule = "ratio_and_holdout" if xh is not None else "ratio"
    is_copy = {
        "ratio": is_ratio,
        "holdout": is_hold,
        "ratio_and_holdout": None if is_hold is None else (is_ratio & is_hold),
        "carlini": is_carl,
    }[rule]
    n_copies = int(is_copy.sum())

    copied_idx, counts = np.unique(nn_index[is_copy], return_counts=True)
    order = np.lexsort((copied_idx, -counts))
    most_copied = np.stack([copied_idx[order], counts[order]], axis=1).astype(np.int64).reshape(-1, 2)

    # near-duplicate radius: the holdout threshold, else ratio_threshold x median train NN distance
    if thr is not None:
        dup_radius = thr
    else:
        rng = np.random.default_rng(seed)
        s = np.sort(rng.choice(n_train, min(n_train, 2000), replace=False))
        dup_radius = float(
            ratio_threshold * np.median(_nn_within(xt, s, 1, budget_mib, device=device)[0][:, 0])
        )
    near_dup = np.zeros(len(most_copied), np.int64)
    if len(most_copied):
        Dd, Id = _nn_within(xt, most_copied[:, 0], NEAR_DUP_K, budget_mib, device=device)
        w = (
            np.ones(Id.shape, np.int64) if keep is None else mult[np.maximum(Id, 0)]
        )  # rows each item stands for
        near_dup = ((Dd < dup_radius) * w).sum(1).astype(np.int64)

    if keep is not None:  # back to the caller's training rows (each item's first row); its repeats count as
        near_dup = (
            near_dup + (mult[most_copied[:, 0]] - 1) if len(most_copied) else near_dup
        )  # near-duplicates
        nn_index = keep[nn_index]
        most_copied = np.stack([keep[most_copied[:, 0]], most_copied[:, 1]], axis=1).reshape(-1, 2)

    sims = pct = sim95 = None
    if metric == "cosine":
        sims = 1.0 - d1**2 / 2.0
        qs = (5, 50, 95, 99)
        pct = {q: float(v) for q, v in zip(qs, np.percentile(sims, qs), strict=True)}
        sim95 = pct[95]

    rates = {"ratio": float(is_ratio.mean())}
    if is_hold is not None:
        rates["holdout"] = float(is_hold.mean())
        rates["ratio_and_holdout"] = float((is_ratio & is_hold).mean())
    if is_carl is not None:
        rates["carlini"] = float(is_carl.mean())

    return CopyResult(
        rule=rule,
        nn_index=nn_index,
        d1=d1,
        d2=d2,
        ratio=ratio,
        is_copy=is_copy,
        is_copy_ratio=is_ratio,
        is_copy_holdout=is_hold,
        is_copy_carlini=is_carl,
        carlini_score=carl,
        n_generated=n_gen,
        n_copies=n_copies,
        copy_rate=n_copies / n_gen,
        copy_rate_ci=wilson_interval(n_copies, n_gen),
        unique_train_copied=len(most_copied),
        most_copied=most_copied,
        near_duplicates=near_dup,
        dup_radius=float(dup_radius),
        ratio_threshold=float(ratio_threshold),
        holdout_threshold=thr,
        holdout_d1=hd1,
        nn_similarity=sims,
        sim_percentiles=pct,
        sim95pc=sim95,
        recall_at_1=float(recall),
        index_method=method,
        rule_rates=rates,
        transform=np.asarray(names, dtype=object)[which],
        transforms=names,
    )


# ----------------------------------------------------------------------------------------------
# C_T data-copying test (Meehan et al. 2020)


@dataclass
class CTResult:
    """Meehan et al. 2020's C_T = sum_{cells with enough generated samples} P_n(cell) Z_U(cell) / sum P_n.

    ``z_cells`` (n_cells,): Mann-Whitney Z of generated->train vs holdout->train NN distances in each
    cell (NaN for cells below the tau threshold or without holdout samples); Z < 0 means generated
    samples sit closer to the training set than held-out real data (data-copying), Z > 0
    under-fitting. ``worst_cells``: valid cells sorted by Z, most copying first (up to 10).
    ``weights``: P_n(cell), the share of holdout samples per cell. ``distances``: "cell" (the paper's
    definition: each sample's NN distance to the training points of ITS OWN cell) or "global" (to the whole
    training set); ``d_generated`` / ``d_holdout`` are those distances; ``cell_train`` (n_train,) the cell of
    each training point, ``n_train_cells`` training points per cell.
    """

    c_t: float
    z_cells: np.ndarray
    weights: np.ndarray
    n_gen_cells: np.ndarray
    n_holdout_cells: np.ndarray
    valid: np.ndarray
    worst_cells: np.ndarray
    n_cells: int
    tau: float
    d_generated: np.ndarray
    d_holdout: np.ndarray
    cell_generated: np.ndarray
    cell_holdout: np.ndarray
    pca_dim: int | None
    distances: str = "cell"
    n_train_cells: np.ndarray | None = None
    cell_train: np.ndarray | None = None


def mann_whitney_z(a: np.ndarray, b: np.ndarray) -> float:
    """Z of the Mann-Whitney U = #{(i, j): a_i > b_j} + ties/2, normal approximation
    Z = (U - m n / 2) / sqrt(m n (m + n + 1) / 12) (no tie correction, as in Meehan et al.)."""
    from scipy.stats import rankdata

    m, n = len(a), len(b)
    r = rankdata(np.concatenate([a, b]))
    U = r[:m].sum() - m * (m + 1) / 2.0
    return float((U - m * n / 2.0) / np.sqrt(m * n * (m + n + 1) / 12.0))


def ct_test(
    generated,
    train,
    holdout,
    n_cells: int | None = None,
    *,
    tau: float | None = None,
    min_gen_per_cell: int = 20,
    pca_dim: int = 64,
    max_kmeans_fit: int = 100_000,
    index="auto",
    budget_mib: float = DEFAULT_BUDGET_MIB,
    seed: int = 0,
    distances: str = "cell",
    device="cpu",
) -> CTResult:
    """C_T test (Meehan et al. 2020, Eq. 3-4) on features (n, D).

    Cells: k-means (FAISS, ``n_cells`` clusters, default min(50, max(2, min(n_gen, n_holdout) // 40), n_train // 4))
    fitted on the training features (PCA to ``pca_dim`` dims when D is larger; at most
    ``max_kmeans_fit`` rows), samples (training points included) assigned to the nearest centroid.
    Distances (Euclidean, original features): with ``distances="cell"`` (default, the paper's Sec. 3 and its
    reference code, ``Zu_cells``), from each generated / holdout sample to the nearest TRAINING POINT OF
    ITS CELL; ``"global"`` uses the nearest training point anywhere (what this function did before;
    it mixes in neighbours from other cells, so a cell's Z no longer compares like with like at cell
    borders). Measured on the memorizer / oracle controls (tests/probes/test_memorization.py, 8-cluster
    mixture, D = 16, 400 training points, 1000 holdout): memorizer (200 samples) C_T -10.6 with either;
    oracle (1000 fresh samples, 20 draws) 0.07 +- 0.21 (cell) vs 0.09 +- 0.20 (global): on these data the
    nearest training point almost always lies in the sample's own cell, so the two agree.
    Cells in which the generated share is below ``tau`` (default ``min_gen_per_cell / n_gen``, i.e. 20
    samples as in the paper's experiments) or that hold no holdout or training sample are left out of C_T
    (the paper's Pi_tau; its code stops on a cell without holdout or training samples). Z is the
    Mann-Whitney normal approximation without the continuity correction of the reference code (a shift of
    0.5 / sqrt(m n (m + n + 1) / 12) per cell). C_T is invariant under a common rescaling of the three sets, so
    inputs of extreme magnitude (float32 squares overflow near 1e19) are scaled by a power of two first and the
    distances scaled back. ``seed``: any non-negative integer; FAISS/sklearn get ``seed % (2**31 - 1)``.
    ``device``: the caller's torch device, for the k-NN engine (``neighbors.search``; k-means stays FAISS).
    """
    from sklearn.decomposition import PCA

    xg, _ = _flatten(generated, "generated", min_n=2)
    xt, _ = _flatten(train, "training set", min_n=2)
    xh, _ = _flatten(holdout, "holdout", min_n=2)
    same_width(xg, xt, "generated", "training set")
    same_width(xh, xt, "holdout", "training set")
    m, n = len(xg), len(xh)
    if n_cells is None:
        # never more cells than a quarter of the training points (tiny training sets in sweeps)
        n_cells = int(max(1, min(50, max(2, min(m, n) // 40), len(xt) // 4)))
    n_cells = int(n_cells)
    if not 1 <= n_cells <= len(xt):
        raise DiffauditError(f"n_cells={n_cells} must be between 1 and the training-set size {len(xt)}.")
    tau = float(min_gen_per_cell / m if tau is None else tau)
    if distances not in ("cell", "global"):
        raise DiffauditError(f"distances={distances!r} is not known; use 'cell' (Meehan et al.) or 'global'.")

    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise DiffauditError(f"seed={seed!r} must be a non-negative integer, e.g. 0.")
    # FAISS and sklearn take 31/32-bit seeds: fold any seed into [0, 2^31 - 2] (identity below that)
    seed31 = int(seed) % (2**31 - 1)
    # C_T is invariant under a common rescaling (k-means cells are scale-equivariant, Z uses ranks), but float32
    # squared distances overflow near |x| ~ 1e19 / sqrt(D) (FAISS then aborts on invalid assignments) and
    # underflow near 1e-19: scale all three sets by one power of two (exact in floating point) to max |x| ~ 1
    # and scale the reported distances back.
    peak = max(float(np.abs(a).max()) for a in (xg, xt, xh))
    scale = 1.0 if peak == 0 else float(2.0 ** np.round(np.log2(peak)))
    if scale > 2.0**20 or scale < 2.0**-20:
        xg, xt, xh = (a * np.float32(1.0 / scale) for a in (xg, xt, xh))
    else:
        scale = 1.0  # ordinary magnitudes: leave the inputs (and every earlier result) bit-identical

    rng = np.random.default_rng(seed)
    fit_rows = (
        xt if len(xt) <= max_kmeans_fit else xt[np.sort(rng.choice(len(xt), max_kmeans_fit, replace=False))]
    )
    used_pca = None
    pca_dim = min(pca_dim, len(fit_rows))
    if xt.shape[1] > pca_dim:
        pca = PCA(n_components=pca_dim, random_state=seed31).fit(fit_rows)

        def proj(a):
            return pca.transform(a).astype(np.float32)

        used_pca = pca_dim
    else:

        def proj(a):
            return a

    # FAISS k-means (Lloyd, k-means++-free random init, best of 3 restarts): sklearn's is ~10x slower here
    import faiss

    # The cells only have to partition the training set. FAISS warns on stderr below 39 points per
    # centroid (a quantizer-quality hint for ANN search), i.e. on every small sweep cell with n_train // 4
    # cells; ``min_points_per_centroid`` (a ClusteringParameters field) sets only that warning, so the
    # centroids are unchanged (tests/probes/test_memorization.py compares them with the default run).
    km = faiss.Kmeans(
        proj(fit_rows).shape[1],
        n_cells,
        niter=25,
        nredo=3,
        seed=seed31 + 1,
        spherical=False,
        min_points_per_centroid=1,
    )
    km.train(np.ascontiguousarray(proj(fit_rows), dtype=np.float32))
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    cg = search(proj(xg), centroids, 1, index="exact", device=device).I[:, 0]
    ch = search(proj(xh), centroids, 1, index="exact", device=device).I[:, 0]
    ct = search(proj(xt), centroids, 1, index="exact", device=device).I[:, 0]
    ng = np.bincount(cg, minlength=n_cells)
    nh = np.bincount(ch, minlength=n_cells)
    nt = np.bincount(ct, minlength=n_cells)

    if distances == "global":
        dg = np.sqrt(
            np.maximum(
                search(xg, xt, 1, index=index, budget_mib=budget_mib, seed=seed31, device=device).D[:, 0], 0
            )
        )
        dh = np.sqrt(
            np.maximum(
                search(xh, xt, 1, index=index, budget_mib=budget_mib, seed=seed31, device=device).D[:, 0], 0
            )
        )
    else:
        dg, dh = np.full(m, np.nan), np.full(n, np.nan)
        for c in np.flatnonzero(nt > 0):
            tc = xt[ct == c]
            for x, cells, out in ((xg, cg, dg), (xh, ch, dh)):
                rows = np.flatnonzero(cells == c)
                if len(rows):
                    r = search(x[rows], tc, 1, index=index, budget_mib=budget_mib, seed=seed31, device=device)
                    out[rows] = np.sqrt(np.maximum(r.D[:, 0], 0))
    if scale != 1.0:
        dg, dh = dg * scale, dh * scale

    valid = (ng / m >= tau) & (nh > 0) & (nt > 0)
    z = np.full(n_cells, np.nan)
    for c in np.flatnonzero(valid):
        z[c] = mann_whitney_z(dg[cg == c], dh[ch == c])
    w = nh / n
    if valid.any():
        c_t = float((w[valid] * z[valid]).sum() / w[valid].sum())
    else:
        c_t = float("nan")
    vc = np.flatnonzero(valid)
    worst = vc[np.argsort(z[vc], kind="stable")][:10]
    return CTResult(
        c_t=c_t,
        z_cells=z,
        weights=w,
        n_gen_cells=ng,
        n_holdout_cells=nh,
        valid=valid,
        worst_cells=worst,
        n_cells=n_cells,
        tau=tau,
        d_generated=dg,
        d_holdout=dh,
        cell_generated=cg,
        cell_holdout=ch,
        pca_dim=used_pca,
        distances=distances,
        n_train_cells=nt,
        cell_train=ct,
    )


# ----------------------------------------------------------------------------------------------
# Authenticity (Alaa et al. 2022)


@dataclass
class AuthResult:
    """AuthPct (Alaa et al. 2022, Sec. 3.3, hard-threshold form): a generated sample is authentic when
    its distance to its nearest training item i* exceeds i*'s own NN distance within the training set.

    Per generated sample (n_gen,): ``nn_index`` (i*), ``d_gen`` (Euclidean distance to i*),
    ``r_train`` (i*'s NN distance within train), ``authentic`` (d_gen > r_train).
    ``reference`` / ``reference_ci`` / ``n_reference``: the same statistic for real held-out data against the
    same training set (None without ``reference=``). Fresh real data is not 100 % "authentic" under this
    rule (in a few dimensions about half of it is), so ``auth_pct`` is read against ``reference``, not
    against 1: a generator as novel as fresh data scores about ``reference``, a copier far below it.
    """

    auth_pct: float
    auth_pct_ci: tuple[float, float] | None
    n_generated: int
    nn_index: np.ndarray
    d_gen: np.ndarray
    r_train: np.ndarray
    authentic: np.ndarray
    reference: float | None = None
    reference_ci: tuple[float, float] | None = None
    n_reference: int = 0


def _authentic(xq: np.ndarray, xt: np.ndarray, name: str, index, budget_mib: float, seed: int, device="cpu"):
    """(nn index, d to it, its NN distance within train, authentic) for each row of ``xq``."""
    r = search(
        xq,
        xt,
        1,
        index=index,
        budget_mib=budget_mib,
        seed=seed,
        name_q=name,
        name_b="training set",
        device=device,
    )
    nn = r.I[:, 0]
    d = np.sqrt(np.maximum(r.D[:, 0], 0.0))
    uniq, inv = np.unique(nn, return_inverse=True)
    Dw, _ = _nn_within(xt, uniq, 1, budget_mib, index=index, device=device)
    r_train = Dw[inv.reshape(-1), 0]
    return nn, d, r_train, d > r_train


def authenticity(
    generated,
    train,
    *,
    reference=None,
    index="auto",
    budget_mib: float = DEFAULT_BUDGET_MIB,
    seed: int = 0,
    device="cpu",
) -> AuthResult:
    """AuthPct of ``generated`` (n_gen, D) against ``train`` (n_train, D); see ``AuthResult``.

    ``reference`` (n_ref, D): real samples not used in training (a holdout); their AuthPct against ``train``
    is the value a generator that samples the data distribution would get (Wilson intervals for both).
    ``device``: the caller's torch device, for the k-NN engine (``neighbors.search``).
    """
    xg, _ = _flatten(generated, "generated", min_n=1)
    xt, _ = _flatten(train, "training set", min_n=2)
    same_width(xg, xt, "generated", "training set")
    nn, d_gen, r_train, auth = _authentic(xg, xt, "generated", index, budget_mib, seed, device)
    k = int(auth.sum())
    res = AuthResult(
        auth_pct=k / len(xg),
        auth_pct_ci=wilson_interval(k, len(xg)),
        n_generated=len(xg),
        nn_index=nn,
        d_gen=d_gen,
        r_train=r_train,
        authentic=auth,
    )
    if reference is not None:
        xr, _ = _flatten(reference, "reference (holdout)", min_n=1)
        same_width(xr, xt, "reference (holdout)", "training set")
        kr = int(_authentic(xr, xt, "reference (holdout)", index, budget_mib, seed, device)[3].sum())
        res.reference, res.reference_ci, res.n_reference = kr / len(xr), wilson_interval(kr, len(xr)), len(xr)
    return res
