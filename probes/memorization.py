"""Memorization probes on feature arrays: training-copy detection, the C_T data-copying test, AuthPct.

All distances here are **Euclidean (not squared)**, computed from ``neighbors.search`` (FAISS over the
whole training set, float64 re-ranking). Inputs are (n, D) feature arrays or (n, c, h, w) images,
which are flattened (``image_shape`` is then inferred, for Carlini's tile distance). Inputs wider than float32
are shifted, all sets by ONE offset (``shared_offset``: the training rows' median; a constant one for images
under transforms), in float64 before the float32 cast: L2 distances do not change, and the cast keeps float32's
precision relative to the data's spread (cast as given, features at 1e4 with copies 1e-4 x the spread away
became exact copies and fresh samples looked like copies). ``metric="cosine"`` normalises rows in float64
instead (``_unit_rows``).

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

One item (d2). d2 is the distance to the nearest training row that is not *the same item* as the first
neighbour a, and "the same item" is stated once, in the decision's own distance: training row c is a's item when
delta(a -> c) <= r_same = ``DUP_FRACTION`` x s. delta is the distance the search uses, with a as the query (plain
L2; with transforms the weighted transform-min over the searched edits and the identity); s is the copy scale
``dup_radius``: the holdout threshold, or without a holdout ``ratio_threshold`` x the median training
nearest-neighbour distance (identity view), the distance at which the ratio rule would call one training row a
copy of another at the typical d2. An item's exact duplicates, its near-duplicates (re-encodes, a little noise)
and, under transforms, the mirror image or shifted twin an augmented training set stores next to it are one item.

- Why this relation: for a copy g of a, delta(g -> c) and delta(a -> c) differ by at most about d1 (per
  transform, the triangle inequality), so a row c close to a under some searched edit is as close to g as a is:
  d2 ~ d1, ratio ~ 1, the copy hidden. A row at distance eps hides every copy with d1 > eps r / (1 - r) (eps / 2
  at r = 1/3). Measured before (tests/probes/test_copies_twins.py): noisy copies of items stored next to their
  mirror image or 1-px shift were recalled at 0.000 with transforms, copies of an item held 20-200 times with
  noise of 1e-4 x std at 0.000 with and without transforms; after, 1.000 (exact copies were always caught:
  d1 = 0). The relation is directed, as the hiding is: a stored crop C of a hides copies of C behind a
  (delta(C -> a) = 0 under the crop) but not copies of a (delta(a -> C) stays large).
- Why a tenth of s: s is where the rule itself starts calling two rows copies of each other, so rows within s/10
  are copies by a wide margin; merging them judges a sample near them as if the item were held once, the case
  the rules are calibrated for. Distinct items fall that close by chance rarely: train -> train nearest-neighbour
  distances follow the holdout -> train law, whose 1 % quantile is thr (measured: 1.1 % of 5,000 sprite rows
  within thr of another, none within thr / 10; under transforms none of 1,000 sampled sprite or smooth-image rows
  has another within r_same), while a cluster within s/10 hides copies from d1 = s/20 on: nearly all that the
  holdout rule accepts.
- Search: the ``K_D2`` candidates are checked pair by pair (one delta per pair: about 6 % of the transform search
  at 32 px, benchmarks/bench_copies_transforms.py). A query whose candidates are all its first neighbour's item (an
  item held >= K_D2 times) is searched again with that item's whole same-item set {c : delta(a -> c) <= r_same}
  (a blocked range search from a) collapsed to one row, as ``distinct_rows`` collapses exact duplicates
  beforehand: the repetition count no longer matters. In that search the rows of other collapsed items are
  represented by their leader (within r_same of it). Every step is blocked by ``budget_mib``: no n x m matrix.
  Worst case, every item held >= K_D2 times (500 sprites x 20 near-duplicates, 1,200 queries, all re-searched):
  6.5 s against 3.5 s for the search that missed every copy.
- Without a holdout there is no distance that fresh data is known not to reach: merging near-duplicate families
  made fresh draws from a family look like copies (review: families of noise 1e-2 x std holding 20 % of the mass,
  d = 16: 19 % of fresh draws flagged, a copy-free model failing memorization; 0 % before). So without a holdout
  only rows within ``EXACT_FRACTION`` (1e-3) of the copy scale are one item: exact duplicates, exact twins and
  re-encodings (noise 1e-4 x std still merges); farther near-duplicate repeats can then hide copies, as before
  this rule: audit with a holdout.
- Memory: the stuck items' range searches come in rounds sized from ``budget_mib`` (an item held R times gives
  R pairs per row searched from it; the first round searches one row to learn R), and a row already led is not
  searched again; ``extract`` keeps the leaders across its chunks.
- Limits: a training set that stores mirror images or shifts is denser under the searched edits than its items
  stored once (a stored mirror image shifted by 1 px is a flip + shift of its item, an edit the search does not
  otherwise try), so a noisy copy's d2 can come out a little smaller: 16-px sprites with 5 % noise are recalled at
  0.963 / 0.967 with mirror / shifted twins vs 0.977 without (no holdout: 0.763 / 0.850 vs 0.867); smooth images
  at 1.000 either way; fresh samples flagged <= 1 % throughout. Without a holdout, s comes from the median
  training NN distance, which holds while fewer than half of the sampled rows have a near-duplicate.

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
from diffaudit.probes._checks import as_features, l2_offset, same_width
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
K_D2 = (
    16  # d2's candidates; an item held more often is searched again collapsed (module docstring, "one item")
)
DUP_FRACTION = 0.1  # rows within this share of the copy scale dup_radius of each other are one item for d2
# without a holdout: only rows this close (the same item re-encoded, an exact twin) are one item (module docstring)
EXACT_FRACTION = 1e-3


def _read_flat(x, name: str) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(n, ...) -> ((n, D) array as given, not yet checked or cast; sample shape (c, h, w) or None)."""
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
    return a, shape


def shared_offset(ref, *others, scalar: bool = False) -> np.ndarray | None:
    """ONE offset (D,) for every array a translation-invariant measure compares (``_checks.l2_offset``: the median
    of ``ref``'s rows; None when all are float32 or narrower, so their values and every result stay bit-identical).

    ``scalar``: the same value, the median of the per-coordinate medians, in every coordinate. Images under the
    transform search need it: a shift or flip moves pixels, so with a per-pixel offset o, T(x) - o differs from
    T(x - o) by T(o) - o and a shifted copy would no longer be at distance 0; a constant offset commutes with every
    edit of ``probes.transforms`` (and the crops' resize, which preserves constants), and ``standardise`` centres
    each row, so it cancels there except in near-constant rows, which are compared by their raw values: those are
    then measured from the training set's median level rather than from 0 (grey vs black is still 1 per pixel)."""
    arrays = [a for a in (ref, *others) if a is not None]
    off = l2_offset(*arrays)
    if off is not None and scalar:
        off = np.full_like(off, np.median(off))
    return off


def _cast(a: np.ndarray, name: str, min_n: int, offset) -> np.ndarray:
    """``as_features`` shifted by ``offset`` (float64, before the float32 cast); an array of another width is cast
    as given, so that ``same_width`` names the mismatch instead of the offset."""
    if offset is not None and not (a.ndim == 2 and a.shape[1] == len(offset)):
        offset = None
    return as_features(a, name, min_n=min_n, offset=offset)


def _unit_rows(x: np.ndarray, name: str, src_dtype) -> np.ndarray:
    """Rows of the checked float64 features ``x`` (n, D) scaled to unit norm, then cast to float32 (cosine:
    d^2 = 2 - 2 cos); ``src_dtype``: the caller's dtype.

    Cosine is not translation invariant, so no offset: the rows are normalised before the cast, which then
    rounds once what the measure uses, the directions. Inputs wider than float32 keep ``as_features``'
    PrecisionWarning when even their directions are closer than float32 resolves (features far from 0 all point
    the same way: their cosines are ~1 however precisely they are computed; metric="l2" separates them). Float32
    inputs give the rows they gave before, bit for bit."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if (n == 0).any():
        raise DiffauditError(
            f"{name}: {int((n == 0).sum())} row(s) have zero norm; cosine needs non-zero features."
        )
    u = x / n
    if np.can_cast(src_dtype, np.float32, casting="safe"):
        return u.astype(np.float32)
    return as_features(u, name, min_n=1)


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


def range_pairs(
    xq: np.ndarray, xb: np.ndarray, r2: float, budget_mib: float
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) with squared Euclidean distance ||xq[i] - xb[j]||^2 <= ``r2``, as two int64 arrays.

    FAISS's range search (float32, ``|x|^2 + |y|^2 - 2 x.y``) at a slightly inflated radius finds the candidates,
    over blocks of ``xb`` of about ``budget_mib``; each is recomputed in float64 (the float32 expansion blurs
    small distances). Never an n x m matrix: memory is the block and the pairs found."""
    import faiss  # lazily, as in neighbors: loading it costs ~0.3 s

    m, dim = xq.shape
    qn = float(np.einsum("ij,ij->i", xq, xq).max()) if m else 0.0
    bb = int(max(1024, budget_mib * (1 << 20) * 0.25 / (dim * 4)))
    step = max(1, int(budget_mib * (1 << 20) / (dim * 8 * 3)))
    rows, cols = [], []
    for j0 in range(0, len(xb), bb):
        blk = np.ascontiguousarray(xb[j0 : j0 + bb], np.float32)
        norm2 = max(qn, float(np.einsum("ij,ij->i", blk, blk).max()))
        slack = 1e-4 * r2 + 1e-5 * norm2 + 1e-30  # float32 rounding of the BLAS expansion
        idx = faiss.IndexFlatL2(dim)
        idx.add(blk)
        lims, _, I = idx.range_search(np.ascontiguousarray(xq, np.float32), float(r2 + slack))
        i = np.repeat(np.arange(m, dtype=np.int64), np.diff(lims.astype(np.int64)))
        j = I.astype(np.int64)
        keep = np.empty(len(i), bool)
        for i0 in range(0, len(i), step):
            d = xq[i[i0 : i0 + step]].astype(np.float64) - blk[j[i0 : i0 + step]]
            keep[i0 : i0 + step] = np.einsum("ij,ij->i", d, d) <= r2
        rows.append(i[keep])
        cols.append(j[keep] + j0)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


class CopyDistance:
    """The copy decision's distance from query rows to the training rows ``xt`` (n_train, P): plain Euclidean, or
    with ``transforms`` the transform-min distance delta(g, t) = min_T w_T d_T(g, t) of ``_per_transform_nn``
    (``weights`` w_T per transform, ``w_identity`` for the identity when it is not searched, views standardised
    to RMS ``ref``). What d2 needs from it (module docstring, "one item"): ``pairs`` (delta(a -> c) between
    training rows, over the searched transforms and the identity: c is a's item when it is at most a radius),
    ``ball`` (every row within ``radius`` of some rows) and ``knn`` (the k nearest among a subset of the rows)."""

    def __init__(
        self,
        xt,
        *,
        transforms=None,
        weights=None,
        w_identity=1.0,
        image_shape=None,
        ref=1.0,
        budget_mib=DEFAULT_BUDGET_MIB,
        seed=0,
        index="exact",
        device="cpu",
    ):
        self.xt, self.n = xt, len(xt)
        self.budget_mib, self.seed, self.device = budget_mib, seed, device
        # a prebuilt index covers the whole training set only, not the collapsed one of ``second_distinct``
        self.index = index if isinstance(index, str) else "exact"
        self.tr = None
        if transforms is not None:
            self.tr, self.w = tuple(transforms), tuple(float(v) for v in weights)
            self.shape, self.ref = tuple(image_shape), float(ref)
            self.img = as_images(xt, image_shape)
            ident = Transform("identity")
            # the same item is judged over the searched edits AND the identity (a near-duplicate is always one)
            extra = () if ident in self.tr else ((ident, float(w_identity)),)
            self.tr_same = sorted((*zip(self.tr, self.w, strict=True), *extra), key=lambda tw: tw[0] != ident)

    def pairs(self, a: np.ndarray, c: np.ndarray, stop: float = -1.0) -> np.ndarray:
        """delta(xt[a[i]] -> xt[c[i]]) per pair (a taken as the query), float64; c is a's item when it is at most
        the radius of ``second_distinct``. With transforms, a pair already at most ``stop`` under one edit is not
        measured under the rest (its value is then an upper bound, still <= ``stop``)."""
        a, c = np.asarray(a, np.int64), np.asarray(c, np.int64)
        if self.tr is None:
            return np.linalg.norm(self.xt[a].astype(np.float64) - self.xt[c], axis=1)
        _, h, w = self.shape
        out = np.full(len(a), np.inf)
        step = int(max(1, self.budget_mib * (1 << 20) / (self.xt.shape[1] * 8 * 8)))
        for i0 in range(0, len(a), step):
            o = out[i0 : i0 + step]
            live = np.arange(len(o))
            for t, wt in self.tr_same:  # the identity first: a near-duplicate is settled there
                ga, gc = self.img[a[i0 + live]], self.img[c[i0 + live]]
                q = standardise(query_view(ga, t).reshape(len(ga), -1), self.ref)
                b = standardise(train_view(gc, t).reshape(len(gc), -1), self.ref)
                d = np.linalg.norm(q.astype(np.float64) - b, axis=1) * (pixel_scale(t, h, w) * wt)
                o[live] = np.minimum(o[live], d)
                live = live[o[live] > stop]
                if not len(live):
                    break
        return out

    def ball(self, rows: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (i, c): training row c within ``radius`` of training row ``rows[i]`` (delta(rows[i] -> c), as in
        ``pairs``); a blocked range search, one per transform."""
        if self.tr is None:
            return range_pairs(self.xt[rows], self.xt, radius**2, self.budget_mib)
        _, h, w = self.shape
        qi, ci = [], []
        for t, wt in self.tr_same:
            b = standardise(train_view(self.img, t).reshape(self.n, -1), self.ref)
            q = standardise(query_view(self.img[rows], t).reshape(len(rows), -1), self.ref)
            i, c = range_pairs(q, b, (radius / (pixel_scale(t, h, w) * wt)) ** 2, self.budget_mib)
            qi.append(i)
            ci.append(c)
        pairs = np.unique(np.stack([np.concatenate(qi), np.concatenate(ci)]), axis=1)
        return pairs[0], pairs[1]

    def knn(self, xq: np.ndarray, db: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances (nq, k) and training indices (into ``xt``) of the ``k`` nearest of the rows ``db`` (None:
        all of them, without a copy)."""
        xb = self.xt if db is None else self.xt[db]
        k = int(min(k, len(xb)))
        if self.tr is None:
            r = search(
                xq,
                xb,
                k,
                index=self.index,
                budget_mib=self.budget_mib,
                seed=self.seed,
                name_q="generated",
                name_b="training set",
                device=self.device,
            )
            D, I = np.sqrt(np.maximum(r.D, 0.0)), r.I
        else:
            Ds, Is, _ = _per_transform_nn(
                {"generated": xq},
                xb,
                self.tr,
                self.shape,
                self.ref,
                k,
                self.budget_mib,
                self.seed,
                self.device,
            )
            D, I, _ = _merge_transforms(Ds["generated"], Is["generated"], self.w, k)
        return D, I if db is None else np.where(I >= 0, db[np.maximum(I, 0)], -1)


def _scan_second(D, I, nn, same):
    """Per query, the first candidate (``D`` (n, k) ascending, training indices ``I``) that is neither ``nn`` nor
    ``same(nn, candidate)``: (its distance, found). Not found (every candidate is the first neighbour's item):
    the k-th distance, a lower bound on d2."""
    n, k = D.shape
    d2 = D[:, -1].astype(np.float64).copy()
    found = np.zeros(n, bool)
    for j in range(k):
        cand = I[:, j]
        ok = (~found) & (cand != nn) & (cand >= 0)
        if not ok.any():
            continue
        rows = np.flatnonzero(ok)
        ok[rows] = ~same(nn[rows], cand[rows])
        d2[ok] = D[ok, j]
        found |= ok
        if found.all():
            break
    return d2, found


def _leaders(A: np.ndarray, dist: CopyDistance, radius: float, lead: np.ndarray) -> None:
    """Leader clustering of the stuck first neighbours ``A`` (sorted rows), into ``lead`` (n,) (-1: no leader
    yet; kept across calls by the caller): in row order, a row belongs to the first leader that reaches it
    through the same-item set of one of its item's rows. The same-item sets are range searches from the rows of
    ``A`` not yet led, in rounds sized so that a round's pairs stay within ``dist.budget_mib`` (an item held R
    times gives R pairs per row searched from it: one round of every stuck row of an item held 20,000 times
    would hold |A| x 20,000 pairs); a row of ``A`` already led by an earlier round is not searched again."""
    max_pairs = max(1, int(float(dist.budget_mib) * 2**20 // 32))  # two int64 per pair, plus the sort
    reach = max_pairs  # the largest same-item set seen so far (unknown: the first round searches one row)
    while True:
        pending = A[lead[A] < 0]
        if not len(pending):
            return
        take = pending[: max(1, max_pairs // reach)]
        qi, c = dist.ball(take, radius)
        seen = int(np.bincount(qi, minlength=len(take)).max()) if len(qi) else 1
        reach = seen if reach == max_pairs and len(take) == 1 else max(reach, seen)
        o = np.argsort(qi, kind="stable")
        qi, c = qi[o], c[o]
        lims = np.searchsorted(qi, np.arange(len(take) + 1))
        for i, a in enumerate(take):
            L = lead[a] if lead[a] >= 0 else a
            lead[a] = L
            m = c[lims[i] : lims[i + 1]]
            lead[m[lead[m] < 0]] = L


def second_distinct(
    xq, D, I, nn, dist: CopyDistance, radius: float, k_retry: int = K_D2, lead: np.ndarray | None = None
) -> np.ndarray:
    """d2: per query of ``xq``, the distance to the nearest training row that is not the same item as its first
    neighbour ``nn`` (``CopyDistance.pairs`` at most ``radius``; module docstring, "one item"), from the
    candidates ``D``, ``I`` (n, k) of the search. A query whose k candidates are all that item's is searched again
    with ``k_retry`` candidates (when k is smaller), then, if still all its item's (an item held >= k_retry
    times), with the item's whole same-item set collapsed to one row, so that the repetition count does not
    matter; the rows of other collapsed items are then represented by their leader (within ``radius`` of it)."""

    def same(a, c):  # each distinct pair measured once (copies of one item share their candidates)
        key, inv = np.unique(a * dist.n + c, return_inverse=True)
        return (dist.pairs(key // dist.n, key % dist.n, stop=radius) <= radius)[inv.reshape(-1)]

    d2, found = _scan_second(D, I, nn, same)
    stuck = np.flatnonzero(~found)
    k = D.shape[1]
    if len(stuck) and k < min(k_retry, dist.n):
        k = min(k_retry, dist.n)
        D2, I2 = dist.knn(xq[stuck], None, k)
        d2s, ok = _scan_second(D2, I2, nn[stuck], same)
        d2[stuck] = d2s
        stuck = stuck[~ok]
    if len(stuck) == 0 or k >= dist.n:  # nothing missed, or every training row was a candidate
        return d2
    if lead is None:
        lead = np.full(dist.n, -1, np.int64)
    _leaders(np.unique(nn[stuck]), dist, radius, lead)
    db = np.flatnonzero((lead < 0) | (lead == np.arange(dist.n)))
    D2, I2 = dist.knn(xq[stuck], db, k)

    def same_or_own(a, c):  # the leader that stands for a's own collapsed item is a's item too
        return (c == lead[a]) | same(a, c)

    d2[stuck] = _scan_second(D2, I2, nn[stuck], same_or_own)[0]
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

    Per generated sample (n_gen,): ``nn_index`` (nearest training item), ``d1``, ``d2`` (distances to it and to
    the nearest training row of another item: module docstring, "one item"), ``ratio`` = d1/d2 (0 when d1 = 0),
    ``is_copy`` (the decision of ``rule``),
    ``is_copy_ratio``, ``is_copy_holdout`` (None without holdout), ``is_copy_carlini`` and
    ``carlini_score`` (None unless ``carlini=True``).
    ``transform``: (n_gen,) name of the edit under which ``d1`` is reached ("identity" without transforms;
    e.g. "shift(+1,+0)", "flip", "crop90(+0,+1)", see ``probes.transforms``); ``transforms``: the names tried.
    ``most_copied``: (m, 2) int64 rows (train_index, count) for every copied training item, most
    copied first; ``near_duplicates``: (m,) number of *other* training items within ``dup_radius``
    of each (capped at ``NEAR_DUP_K``; identity distance, with transforms in the decision's units, as
    ``dup_radius``: the holdout threshold, else ``ratio_threshold`` x the median training NN distance).
    ``sim95pc``/``nn_similarity``: cosine similarity to the
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
    d1. d2 skips the first neighbour's own item: duplicates, near-duplicates, stored twins (module docstring).
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
    ag, shape_g = _read_flat(generated, "generated")
    at, shape_t = _read_flat(train, "training set")
    ah = None if holdout is None else _read_flat(holdout, "holdout")[0]
    if metric == "cosine":  # validated in float64 here, normalised before the float32 cast below
        xg = as_features(ag, "generated", min_n=1, dtype=np.float64)
        xt = as_features(at, "training set", min_n=2, dtype=np.float64)
        xh = None if ah is None else as_features(ah, "holdout", min_n=2, dtype=np.float64)
    else:
        # every distance of the decision is L2 (plain, tile, or between standardised transform views): one shift
        # of all three sets changes none of them (``shared_offset``; a constant one under transforms); not with a
        # prebuilt index, whose vectors are the caller's unshifted float32 training rows
        off = shared_offset(at, ag, ah, scalar=transforms is not None) if isinstance(index, str) else None
        xg = _cast(ag, "generated", 1, off)
        xt = _cast(at, "training set", 2, off)
        xh = None if ah is None else _cast(ah, "holdout", 2, off)
    same_width(xg, xt, "generated", "training set")
    if xh is not None:
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
        xg = _unit_rows(xg, "generated", ag.dtype)
        xt = _unit_rows(xt, "training set", at.dtype)
        if xh is not None:
            xh = _unit_rows(xh, "holdout", ah.dtype)
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

    # d2 skips the first neighbour's own item: search K_D2 neighbours (Carlini's 50 when those are needed)
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
        dist = CopyDistance(xt, budget_mib=budget_mib, seed=seed, index=index, device=device)
        base, w_id = xt, 1.0  # the rows and scale of near-duplicate counts and of the no-holdout copy scale
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
        # samples (k = K_D2: d2 skips the first neighbour's own item); the identity view counts near-duplicates.
        ref = float(np.median(xt.std(axis=1, dtype=np.float64)))
        ident = Transform("identity")
        tr_s = tr if ident in tr else (*tr, ident)  # near-duplicates are counted in the identity view
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
        dist = CopyDistance(
            xt,
            transforms=tr,
            weights=weights,
            w_identity=w_id,
            image_shape=image_shape,
            ref=ref,
            budget_mib=budget_mib,
            seed=seed,
            device=device,
        )
        base = b_id
        recall, method = 1.0, "exact"

    is_hold = thr = None
    if hd1 is not None:
        thr = float(np.quantile(hd1, holdout_quantile))
        is_hold = d1 < thr
    # the copy scale (``dup_radius``): the holdout threshold, else ratio_threshold x the median training NN
    # distance (the identity view's under transforms, so that an item's stored twins do not shrink it)
    if thr is not None:
        dup_radius = thr
    else:
        rng = np.random.default_rng(seed)
        s = np.sort(rng.choice(n_train, min(n_train, 2000), replace=False))
        dup_radius = float(
            ratio_threshold * w_id * np.median(_nn_within(base, s, 1, budget_mib, device=device)[0][:, 0])
        )
    # d2: the nearest training row that is not the first neighbour's own item (module docstring, "one item")
    d2 = second_distinct(
        xg, Dc, Ic, nn_index, dist, (DUP_FRACTION if thr is not None else EXACT_FRACTION) * dup_radius
    )
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

    # near-duplicates: other training rows within dup_radius in the decision's identity distance (under
    # transforms the standardised identity view scaled by w_id: dup_radius is then in those units)
    near_dup = np.zeros(len(most_copied), np.int64)
    if len(most_copied):
        Dd, Id = _nn_within(base, most_copied[:, 0], NEAR_DUP_K, budget_mib, device=device)
        Dd = Dd * w_id
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

    ag, at, ah = (
        _read_flat(x, nm)[0]
        for x, nm in ((generated, "generated"), (train, "training set"), (holdout, "holdout"))
    )
    # C_T uses L2 distances, k-means cells and a PCA, all equivariant under one shift of the three sets: wide inputs
    # are shifted by one offset before the float32 cast (``shared_offset``; not with a prebuilt index)
    off = shared_offset(at, ag, ah) if isinstance(index, str) else None
    xg = _cast(ag, "generated", 2, off)
    xt = _cast(at, "training set", 2, off)
    xh = _cast(ah, "holdout", 2, off)
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
    ag, at = _read_flat(generated, "generated")[0], _read_flat(train, "training set")[0]
    ar = None if reference is None else _read_flat(reference, "reference (holdout)")[0]
    # every distance is L2: one shift of the three sets before the float32 cast (``shared_offset``)
    off = shared_offset(at, ag, ar) if isinstance(index, str) else None
    xg = _cast(ag, "generated", 1, off)
    xt = _cast(at, "training set", 2, off)
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
        xr = _cast(ar, "reference (holdout)", 1, off)
        same_width(xr, xt, "reference (holdout)", "training set")
        kr = int(_authentic(xr, xt, "reference (holdout)", index, budget_mib, seed, device)[3].sum())
        res.reference, res.reference_ci, res.n_reference = kr / len(xr), wilson_interval(kr, len(xr)), len(xr)
    return res
