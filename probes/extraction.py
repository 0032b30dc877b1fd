"""Active training-data extraction from an unconditional generator (Carlini et al. 2023, "Extracting training
data from diffusion models", Sec. 4 and 5): generate many samples, link near-identical generations, take
dense clusters as candidates, verify each candidate against the training set, count the distinct training
items extracted against the number of generations spent.

``extract(generate, budget, train, holdout)`` streams ``budget`` generations in chunks and keeps only
fixed-size state; it never holds all B generations (nor any (B, .) array):

1. **Verification state, O(n_train).** Each chunk is searched against the whole training set (``neighbors``,
   k = 2, float64 re-ranking) and every generation gets the copy decision of ``find_copies``' default rule:
   ratio d1/d2 < 1/3 (Yoon et al. 2023) AND d1 < ``tau``, the ``holdout_quantile`` (1 %) quantile of
   holdout -> train nearest-neighbour distances (without a holdout: the ratio rule alone, as ``find_copies``),
   d2 being ``find_copies``' own (``memorization.second_distinct``): the nearest training row that is not the
   first neighbour's item (exact duplicates merged, near-duplicates within ``DUP_FRACTION`` x tau skipped at any
   repetition count: a generation whose second neighbour is its first's near-duplicate is searched again; before,
   a raw second neighbour on a repeat made every copy of a repeated item ratio 1).
   Per training item only the first generation that copied it is kept (for ``unique_train_copied``).
2. **Linking state, bounded by ``store_mib``.** Near-identical generations are linked by leader clustering at
   the radius ``r_link``: a generation within ``r_link`` of a stored cluster leader (k-NN engine, k = 1) joins
   the nearest one; the rest are linked among themselves with a FAISS range search
   (``memorization.range_pairs``: float32 candidates at a slightly inflated radius, then every pair re-checked
   in float64) and each unclaimed one, in generation order, becomes a leader claiming its unclaimed neighbours.
   Only leaders (one sample each) and per-cluster counters are stored. When the store is full, clusters are
   evicted oldest first -- clusters that are already candidates first (their training item is already counted,
   a later copy only re-forms a cluster), then open clusters below ``min_cluster``; an evicted open cluster can
   lose a pair, so the result reports ``n_evicted_open`` and ``exact_linking`` (no open cluster evicted: the
   same clusters as an unbounded store up to the choice among overlapping leaders).
3. **Candidates and verification.** A cluster becomes a candidate when it reaches ``min_cluster`` members
   (the generation index at which that happens is its cost); it is verified when its leader is a copy under
   the rule of step 1, and then extracts the leader's nearest training item. ``unique_train_extracted`` counts
   distinct verified training items; the yield curve gives it at every budget b <= B of a grid (the state after
   b generations is that of a run with budget b: the stream is consumed in order).

Why ``r_link = tau`` (the copy rule's own holdout-calibrated distance, not a new constant): two generations
are "near-identical" when they are as close to each other as a copy is to its training item -- closer than
99 % of fresh real data gets to the training set. One calibrated scale serves linking and verification, and it
follows the training set's density (copies of an n-item memorized set sit within ~tau of their source). Its
chance rate is stated: a fresh sample falls within tau of one given training point with probability about
q / n_train (q = ``holdout_quantile``), so B fresh generations form about B^2 q / (2 n_train) chance links
(``expected_chance_links``); each must also pass verification (rate <~ q) to count, so a generator of fresh
data has at most about B^2 q^2 / (2 n_train) false extractions (measured with the oracle on hidden-manifold
d = 32: 0 at n = 200, B = 1,000 (bound 0.25); 2 at n = 100, B = 4,000 (bound 8); 6 at n = 2,000, B = 40,000
(bound 40), where 1,152 chance clusters were formed and rejected by verification). Without a holdout,
``r_link`` is ``ratio_threshold`` x the median training nearest-neighbour distance (``find_copies``' near-
duplicate radius in that case).

Copies under small edits (``transforms="default"``, pixel images; what the audit and ``diffaudit extract`` use):
a model that emits its training images shifted by 1 px was extracted at 1 of 500 items with plain verification
(298 dense clusters left "unverified") while the copies stage flagged every sample. With transforms, each
candidate's leader -- only the leaders, in batches of ``VERIFY_BATCH``: cheap -- is verified by ``find_copies``
with the same transforms, transform-min distance and holdout calibration as the copies stage, and the edit that
matched is recorded (``extracted_transform``). Linking stays in plain distance (copies of one item under one
edit are near-identical to each other). ``unique_train_copied`` then counts plain copies among all generations
plus the verified leaders. The chance bound is unchanged: the transform rule is calibrated to flag ``q`` of the
holdout as well; ``expected_false_extractions`` = min(n_train, B^2 q^2 / (2 n_train)) reports it.

Why ``min_cluster = 2``: Carlini et al. call a Stable Diffusion prompt memorized when >= 10 of its 500
generations form a clique (their Sec. 4), a size tuned for a web-scale training set and a fixed budget per
prompt. Here budgets are of the order of the training set (B ~ n): a memorized item is generated about
Poisson(B / n) times, so requiring 10 would extract nothing below B ~ 10 n. Two linked generations are the
smallest evidence, visible without the training set, that the model reproduces a fixed sample; the
verification against the training set is what keeps chance pairs from counting.

Under uniform sampling of an n-item training set (the memorizer controls) the counts follow the coupon
collector: ``unique_train_copied`` has mean n (1 - (1 - 1/n)^B) ~ n (1 - e^(-B/n)), and
``unique_train_extracted`` (items generated >= 2 times) n (1 - (1 - 1/n)^B - (B/n)(1 - 1/n)^(B-1)) ~
n (1 - e^(-B/n) - (B/n) e^(-B/n)); ``coupon_collector`` gives both exact means and variances.
"""

# ruff: noqa: E741  (D, I follow FAISS naming)
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as _st

from diffaudit.errors import DiffauditError
from diffaudit.probes._checks import as_features, same_width
from diffaudit.probes.memorization import (
    DUP_FRACTION,
    EXACT_FRACTION,
    CopyDistance,
    distinct_rows,
    range_pairs,
    second_distinct,
    shared_offset,
)
from diffaudit.probes.neighbors import DEFAULT_BUDGET_MIB, IVF_AUTO_MIN, build_index, search

DEFAULT_CHUNK = 1024  # generations requested per call of ``generate``
DEFAULT_STORE_MIB = 64  # cluster leaders kept for linking (float32 rows)
RATIO_THRESHOLD = 1 / 3  # find_copies' default ratio rule
VERIFY_BATCH = 4096  # candidate leaders verified per find_copies call under transforms
HOLDOUT_QUANTILE = 0.01  # find_copies' default holdout quantile


@dataclass
class ExtractionResult:
    """Result of ``extract``. Distances are Euclidean (not squared) in the given feature space.

    Headline: ``unique_train_extracted`` distinct training items in verified clusters of >= ``min_cluster``
    linked generations, ``extraction_yield`` = that / ``budget``, ``cost_per_item`` = ``budget`` / that (inf
    when nothing was extracted). ``unique_train_copied``: distinct training items among ALL generations that
    the copy rule flags (every generation verified, no linking: what an attacker who can check every sample
    against the training set gets; an upper bound of ``unique_train_extracted``). ``n_copies``: generations
    flagged. Curves on ``curve_budgets`` (k,): ``curve_extracted`` and ``curve_copied``.
    ``extracted_index`` (m,) training items extracted and ``extracted_at`` (m,) the number of generations
    after which each was (sorted by it). ``gallery_*``: up to ``gallery_size`` verified candidates (first
    extracted first): the leader sample ``gallery_samples`` (g, *sample_shape; float32, or float64 when wide inputs
    were shifted before the cast: ``extract``), its training match
    ``gallery_train_index``, distance ``gallery_distance`` and final cluster size ``gallery_cluster_size``
    (the size when its cluster left the store, if it was evicted).
    """

    budget: int
    n_train: int
    min_cluster: int
    rule: str  # "ratio_and_holdout" | "ratio"
    link_radius: float
    copy_threshold: float | None  # tau (None without holdout)
    transform_threshold: float | None  # with transforms: tau of the transform-min distance (verification)
    unique_train_extracted: int
    extraction_yield: float
    cost_per_item: float
    unique_train_copied: int
    n_copies: int
    curve_budgets: np.ndarray
    curve_extracted: np.ndarray
    curve_copied: np.ndarray
    extracted_index: np.ndarray
    extracted_at: np.ndarray
    n_clusters: int  # clusters ever created (leaders)
    n_candidates: int  # clusters that reached min_cluster
    n_candidates_verified: int
    n_candidates_unverified: (
        int  # dense clusters that are not training copies (mode collapse, near-duplicates)
    )
    expected_chance_links: float | None  # B^2 q / (2 n_train) for a generator of fresh data (holdout rule)
    # min(n_train, B^2 q^2 / (2 n_train)): the stated bound on chance extractions by a generator of fresh data
    expected_false_extractions: float | None
    gallery_samples: np.ndarray
    gallery_train_index: np.ndarray
    gallery_distance: np.ndarray
    gallery_cluster_size: np.ndarray
    gallery_generation: np.ndarray  # generation index of each gallery leader
    store_capacity: int
    n_evicted_open: int
    exact_linking: bool
    chunk_size: int
    sample_shape: tuple[int, ...] = ()
    transforms: tuple[str, ...] = ("identity",)  # edits tried when verifying candidate leaders
    extracted_transform: np.ndarray | None = None  # (m,) the edit under which each item was verified
    gallery_transform: np.ndarray | None = None  # (g,) the same for the gallery


def coupon_collector(n: int, budget: int, min_count: int = 1) -> tuple[float, float]:
    """Exact (mean, variance) of the number of items drawn at least ``min_count`` times when ``budget`` draws
    are made uniformly with replacement from ``n`` items (the occupancy problem; Feller 1968, Ch. IV).

    With p = 1/n and c_i the count of item i: mean = n P(c_i >= m); variance = n P1 + n(n-1) P11 - (n P1)^2 with
    P11 = P(c_i >= m, c_j >= m) = 1 - 2 P(c_i < m) + P(c_i < m, c_j < m), the last term a finite sum of
    trinomial probabilities. For m = 1 the mean is n (1 - (1 - 1/n)^B); for m = 2 it is
    n (1 - (1 - 1/n)^B - (B/n)(1 - 1/n)^(B-1)).
    """
    n, B, m = int(n), int(budget), int(min_count)
    if n < 1 or B < 0 or m < 1:
        raise DiffauditError(
            f"coupon_collector(n={n}, budget={B}, min_count={m}): needs n >= 1, B >= 0, m >= 1."
        )
    p = 1.0 / n
    p1 = float(_st.binom.sf(m - 1, B, p))
    mean = n * p1
    if n == 1:
        return mean, p1 * (1 - p1)
    a = np.arange(m)[:, None]
    b = np.arange(m)[None, :]
    rest = B - a - b
    ok = rest >= 0
    restc = np.where(ok, rest, 0)
    logt = (
        special.gammaln(B + 1)
        - special.gammaln(a + 1)
        - special.gammaln(b + 1)
        - special.gammaln(restc + 1)
        + (a + b) * np.log(p)
        + special.xlog1py(restc, -2.0 * p)
    )
    q = float(np.where(ok, np.exp(logt), 0.0).sum())
    p11 = 1.0 - 2.0 * (1.0 - p1) + q
    var = mean + n * (n - 1) * p11 - mean * mean
    return mean, max(0.0, var)


def budget_grid(budget: int, n_points: int = 24) -> np.ndarray:
    """Budgets of the yield curve: about ``n_points`` geometric steps from max(1, B/1000) to B (B included)."""
    B = int(budget)
    g = np.ceil(np.geomspace(max(1.0, B / 1000.0), B, int(n_points))).astype(np.int64)
    return np.unique(np.concatenate([g, [B]]))


def _raw(x) -> tuple[np.ndarray, tuple[int, ...]]:
    """(n, ...) -> ((n, D) array as given, not yet checked or cast; the sample shape)."""
    a = np.asarray(x) if not isinstance(x, np.ndarray) else x
    shape = tuple(a.shape[1:]) if a.ndim >= 2 else ()
    if a.ndim > 2:
        a = a.reshape(len(a), -1)
    return a, shape


def _flat(x, name: str, min_n: int, offset=None) -> tuple[np.ndarray, tuple[int, ...]]:
    """Checked float32 features (n, D), less ``offset`` (float64, before the cast; skipped for another width, so
    that ``same_width`` names the mismatch), and the sample shape."""
    a, shape = _raw(x)
    if offset is not None and not (a.ndim == 2 and a.shape[1] == len(offset)):
        offset = None
    return as_features(a, name, min_n=min_n, offset=offset), shape


class _Store:
    """Cluster leaders (float32 rows) and per-cluster state, compacted on eviction. Bounded by ``cap`` rows."""

    FIELDS = ("cid", "count", "gen", "done", "nn", "ok", "d1")

    def __init__(self, dim: int, capacity: int):
        self.cap = int(capacity)
        self.x = np.empty((min(self.cap, 1024), dim), np.float32)
        self.size = 0
        self.cid = np.empty(0, np.int64)  # cluster id (creation order)
        self.count = np.empty(0, np.int64)  # members so far
        self.gen = np.empty(0, np.int64)  # generation index of the leader
        self.done = np.empty(0, bool)  # reached min_cluster
        self.nn = np.empty(0, np.int64)  # the leader's nearest training item
        self.ok = np.empty(0, bool)  # the leader is a copy (verified)
        self.d1 = np.empty(0, np.float64)  # its distance

    def add(self, x: np.ndarray, **cols) -> None:
        need = self.size + len(x)
        if need > len(self.x):
            new = np.empty((min(self.cap, max(need, 2 * len(self.x))), self.x.shape[1]), np.float32)
            new[: self.size] = self.x[: self.size]
            self.x = new
        self.x[self.size : need] = x
        self.size = need
        for f in self.FIELDS:
            setattr(self, f, np.concatenate([getattr(self, f), cols[f]]))

    def keep(self, mask: np.ndarray) -> None:
        k = int(mask.sum())
        self.x[:k] = self.x[: self.size][mask]
        self.size = k
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f)[mask])


class _TransformVerifier:
    """The copies stage's own decision under small edits, ``find_copies(..., transforms=...)``, applied to
    candidate leaders: the same transform-min distance, per-kind scales, holdout quantile (of the holdout's own
    transform-min distance) and rule (ratio AND holdout; ratio alone without a holdout). Leaders are verified in
    batches of ``VERIFY_BATCH`` (each call recalibrates on the holdout: a few calls per run)."""

    def __init__(
        self,
        xt,
        xh,
        transforms,
        image_shape,
        ratio_threshold,
        holdout_quantile,
        budget_mib,
        seed,
        device="cpu",
    ):
        from diffaudit.probes.transforms import resolve

        self.xt, self.xh, self.spec, self.shape = xt, xh, transforms, tuple(image_shape)
        self.names = tuple(t.name for t in resolve(transforms, self.shape))
        self.kw = dict(
            ratio_threshold=ratio_threshold,
            holdout_quantile=holdout_quantile,
            budget_mib=budget_mib,
            seed=seed,
            device=device,
        )
        self.tau: float | None = None

    def verify(self, x: np.ndarray):
        """(is_copy, nearest training item, transform-min d1, index of the edit) per row of ``x``."""
        from diffaudit.probes.memorization import find_copies

        c = find_copies(x, self.xt, self.xh, transforms=self.spec, image_shape=self.shape, **self.kw)
        self.tau = c.holdout_threshold
        tf = np.array([self.names.index(str(t)) for t in c.transform], np.int64)
        return c.is_copy, c.nn_index.astype(np.int64), c.d1, tf


def _range_pairs(xq: np.ndarray, r2: float, budget_mib: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), i != j, of rows of ``xq`` with squared Euclidean distance <= ``r2`` (float64 check):
    ``memorization.range_pairs`` of the rows against themselves."""
    i, j = range_pairs(xq, xq, r2, budget_mib)
    off = i != j
    return i[off], j[off]


def extract(
    generate: Callable[[int, int], np.ndarray],
    budget: int,
    train,
    holdout=None,
    *,
    min_cluster: int = 2,
    ratio_threshold: float = RATIO_THRESHOLD,
    holdout_quantile: float = HOLDOUT_QUANTILE,
    chunk_size: int = DEFAULT_CHUNK,
    store_mib: float = DEFAULT_STORE_MIB,
    budget_mib: float = DEFAULT_BUDGET_MIB,
    gallery_size: int = 16,
    grid: np.ndarray | None = None,
    index="auto",
    seed: int = 0,
    transforms=None,
    image_shape: tuple[int, ...] | None = None,
    device="cpu",
) -> ExtractionResult:
    """Carlini et al. 2023's extraction attack on ``budget`` generations, verified against ``train``.

    ``generate(start, n)`` returns generations ``start .. start + n - 1`` of the attacker's stream, (n, D) or
    (n, *sample_shape) like ``train``; it is called with consecutive ranges of at most ``chunk_size`` rows
    (each generation an independent draw: the caller decides the seeds). ``train`` (n_train, ...) and
    ``holdout`` (n_h, ...; real samples never trained on, which calibrate tau): arrays in one feature space.
    ``min_cluster`` >= 2 linked generations make a candidate. ``store_mib`` bounds the stored cluster leaders,
    ``budget_mib`` each k-NN step. ``grid``: budgets of the yield curve (default ``budget_grid``).
    ``transforms``: None (plain distances) or "default" / a list of names (``probes.transforms``; images in
    pixel space, ``image_shape`` (c, h, w) when the rows are flat): candidate leaders are verified with
    ``find_copies(transforms=...)``'s transform-min distance and holdout calibration, so a model that emits
    shifted / flipped / cropped training images is caught as the copies stage catches it. ``device``: the
    caller's torch device, for the k-NN engine (``neighbors.search``; linking's range search stays FAISS CPU).
    Algorithm, calibration and defaults: see the module docstring.
    """
    B = int(budget)
    if B < 1:
        raise DiffauditError(f"budget={budget}: the number of generations must be at least 1.")
    if int(min_cluster) < 2:
        raise DiffauditError(
            f"min_cluster={min_cluster}: a candidate needs at least 2 linked generations "
            "(every generation checked alone is unique_train_copied)."
        )
    if not 0 < ratio_threshold <= 1:
        raise DiffauditError(f"ratio_threshold={ratio_threshold} must be in (0, 1]; the literature uses 1/3.")
    if not 0 < holdout_quantile < 1:
        raise DiffauditError(f"holdout_quantile={holdout_quantile} must be in (0, 1); e.g. 0.01.")
    if int(chunk_size) < 1 or store_mib <= 0:
        raise DiffauditError(f"chunk_size={chunk_size} and store_mib={store_mib} must be positive.")
    min_cluster = int(min_cluster)
    at, shape_t = _raw(train)
    ah = None if holdout is None else _raw(holdout)[0]
    # Linking and verification use L2 distances only (plain, or between standardised transform views): wide inputs
    # are shifted by ONE offset from the training and holdout rows (``shared_offset``; constant under transforms,
    # where a per-pixel one would not commute with the edits) before the float32 cast, and so is every chunk of
    # generations. Not with a prebuilt index (it holds the caller's unshifted rows). The generations are not seen
    # yet: when only they are wide, they are cast as given (``as_features`` warns if that loses their spread).
    off = shared_offset(at, ah, scalar=transforms is not None) if isinstance(index, str) else None
    xt, _ = _flat(at, "training set", 2, off)
    n_rows = len(xt)
    # exact duplicates are one item (as in find_copies): a raw second neighbour on a repeat made every copy of a
    # twice-held item ratio 1, so nothing was extracted; indices map back to each item's first row at the end
    keep = distinct_rows(xt)[0] if isinstance(index, str) else None
    if keep is not None:
        xt = xt[keep]
    n_train, dim = xt.shape
    if transforms is not None:
        image_shape = tuple(image_shape) if image_shape is not None else tuple(shape_t)
        if len(image_shape) != 3 or int(np.prod(image_shape)) != dim:
            raise DiffauditError(
                f"transforms= needs images: pass (n, c, h, w) arrays or image_shape=(c, h, w) matching {dim} values."
            )
    # one chunk's features with their float64 copies, and its pair list (at most m^2 pairs of ~40 bytes while
    # they are built and checked: all generations identical), stay inside the k-NN budget
    budget_b = budget_mib * (1 << 20)
    chunk = int(min(int(chunk_size), max(16, budget_b / (dim * 4 * 8)), max(16, np.sqrt(budget_b / 40))))

    train_index = index
    if isinstance(index, str) and (index == "ivf" or (index == "auto" and n_train >= IVF_AUTO_MIN)):
        train_index = build_index(xt, index="ivf", seed=seed)  # once, not per chunk

    if holdout is not None:
        xh, _ = _flat(ah, "holdout", 2, off)
        same_width(xh, xt, "holdout", "training set")
        hr = search(
            xh,
            xt,
            1,
            index=train_index,
            budget_mib=budget_mib,
            seed=seed,
            name_q="holdout",
            name_b="training set",
            device=device,
        )
        tau = float(np.quantile(np.sqrt(np.maximum(hr.D[:, 0], 0.0)), holdout_quantile))
        r_link, rule = tau, "ratio_and_holdout"
        chance = B * (B - 1) * holdout_quantile / (2.0 * n_train)
        false_x = min(float(n_train), chance * holdout_quantile)
    else:
        tau, rule, chance, false_x = None, "ratio", None, None
        rng = np.random.default_rng(seed)
        s = np.sort(rng.choice(n_train, min(n_train, 2000), replace=False))
        rw = search(
            xt[s],
            xt,
            1,
            exclude_self=True,
            budget_mib=budget_mib,
            name_q="training set",
            name_b="training set",
            device=device,
        )
        r_link = float(ratio_threshold * np.median(np.sqrt(np.maximum(rw.D[:, 0], 0.0))))
    r2 = r_link * r_link
    # d2 is find_copies' (its module docstring, "one item"): the nearest training row that is not the first
    # neighbour's own item (near-duplicates within DUP_FRACTION of the copy scale -- tau, else r_link, which is
    # find_copies' dup_radius then -- however often the item is repeated)
    same_dist = CopyDistance(xt, budget_mib=budget_mib, seed=seed, device=device)
    # without a holdout only rows a thousandth of the copy scale apart are one item (find_copies' rule)
    r_same = (DUP_FRACTION if tau is not None else EXACT_FRACTION) * r_link
    # the leaders of stuck items, kept across chunks (second_distinct)
    item_lead = np.full(same_dist.n, -1, np.int64)
    verifier = None
    tf_names: tuple[str, ...] = ("identity",)
    # linking stays in plain distance; the verification of candidate leaders is transform-robust
    if transforms is not None:
        verifier = _TransformVerifier(
            xt,
            None if holdout is None else xh,
            transforms,
            image_shape,
            ratio_threshold,
            holdout_quantile,
            budget_mib,
            seed,
            device,
        )
        tf_names = verifier.names

    store = _Store(dim, max(2 * chunk, int(store_mib * (1 << 20) / (dim * 4))))
    first_copy = np.full(n_train, -1, np.int64)  # generation index of each item's first copy
    extracted_at = np.full(n_train, -1, np.int64)  # generation index at which each item was extracted
    n_copies = n_clusters = n_cand = n_cand_ok = n_evicted_open = 0
    gal_x, gal_t, gal_d, gal_cid, gal_gen, gal_tf = [], [], [], [], [], []
    extracted_tf = np.zeros(n_train, np.int64)  # the edit under which each extracted item was verified
    pending: list[tuple] = []  # new candidates (leader row copied, completion g, cid, gen, nn, ok, d1, tf)

    def settle() -> None:
        """Count the pending candidates in stream order (verifying their leaders under transforms first)."""
        nonlocal n_cand_ok
        if not pending:
            return
        if verifier is not None:
            ok_t, nn_t, d_t, tf_t = verifier.verify(np.stack([p[0] for p in pending]))
            for i, p in enumerate(pending):
                pending[i] = (*p[:4], int(nn_t[i]), bool(ok_t[i]), float(d_t[i]), int(tf_t[i]))
                # a verified leader is a copy found by checking: unique_train_copied stays >= extracted
                if ok_t[i] and (first_copy[nn_t[i]] < 0 or p[3] < first_copy[nn_t[i]]):
                    first_copy[nn_t[i]] = p[3]
        for x, g, cid, gen, t, ok, d, tf in pending:
            if not ok:
                continue
            n_cand_ok += 1
            if extracted_at[t] < 0:  # the stream is in order: the first completion is the earliest
                extracted_at[t] = g
                extracted_tf[t] = tf
            if len(gal_cid) < gallery_size:
                gal_x.append(x)
                gal_t.append(t)
                gal_d.append(d)
                gal_cid.append(cid)
                gal_gen.append(gen)
                gal_tf.append(tf)
        pending.clear()

    final_size: dict[int, int] = {}  # gallery cluster id -> its size when it left the store

    for start in range(0, B, chunk):
        m = min(chunk, B - start)
        xg, shape_g = _flat(generate(start, m), f"generations {start}..{start + m - 1}", 1, off)
        if len(xg) != m:
            raise DiffauditError(
                f"generate({start}, {m}) returned {len(xg)} samples; it must return exactly the {m} requested."
            )
        same_width(xg, xt, "generated samples", "training set")
        if shape_g and shape_t and len(shape_g) > 1 and shape_g != shape_t:
            raise DiffauditError(
                f"generated samples have shape {shape_g} but the training set has shape {shape_t}; "
                "extract from a model of the training data's kind."
            )
        gidx = np.arange(start, start + m, dtype=np.int64)

        # 1. every generation verified against the whole training set (find_copies' default rule)
        r = search(
            xg,
            xt,
            2,
            index=train_index,
            budget_mib=budget_mib,
            seed=seed,
            name_q="generated",
            name_b="training set",
            device=device,
        )
        Dk = np.sqrt(np.maximum(r.D, 0.0))
        nn, d1 = r.I[:, 0], Dk[:, 0]
        d2 = second_distinct(xg, Dk, r.I, nn, same_dist, r_same, lead=item_lead)
        is_copy = np.where(d1 == 0, 0.0, d1 / np.where(d2 == 0, np.inf, d2)) < ratio_threshold
        if tau is not None:
            is_copy &= d1 < tau
        n_copies += int(is_copy.sum())
        items, first = np.unique(nn[is_copy], return_index=True)
        fresh = first_copy[items] < 0
        first_copy[items[fresh]] = gidx[is_copy][first[fresh]]

        # room for up to m new leaders: evict candidates first (already counted), then the oldest open ones
        over = store.size + m - store.cap
        if over > 0:
            rank = np.lexsort((store.gen, ~store.done))
            ev = np.zeros(store.size, bool)
            ev[rank[: min(store.size, over + store.cap // 4)]] = (
                True  # in batches: compaction copies the store
            )
            n_evicted_open += int((ev & ~store.done).sum())
            for c, k in zip(store.cid[ev], store.count[ev], strict=True):
                if int(c) in gal_cid:
                    final_size[int(c)] = int(k)
            store.keep(~ev)

        # 2. linking: the nearest stored leader within r_link, else leader clustering inside the chunk
        assigned = np.full(m, -1, np.int64)  # store row of each generation's cluster
        if store.size:
            s = search(
                xg,
                store.x[: store.size],
                1,
                budget_mib=budget_mib,
                name_q="generated",
                name_b="cluster leaders",
                device=device,
            )
            hit = s.D[:, 0] <= r2
            assigned[hit] = s.I[hit, 0]
        U = np.flatnonzero(assigned < 0)
        if len(U):
            pr, pc = _range_pairs(xg[U], r2, budget_mib)
            order = np.argsort(pr, kind="stable")
            pr, pc = pr[order], pc[order]
            lims = np.searchsorted(pr, np.arange(len(U) + 1))
            claim = np.full(len(U), -1, np.int64)  # position in U of each row's leader
            for a in range(len(U)):  # generation order: a leader claims its still unclaimed neighbours
                if claim[a] < 0:
                    claim[a] = a
                    nb = pc[lims[a] : lims[a + 1]]
                    claim[nb[claim[nb] < 0]] = a
            lead = np.flatnonzero(claim == np.arange(len(U)))
            j = U[lead]
            pos = np.full(len(U), -1, np.int64)
            pos[lead] = store.size + np.arange(len(lead))
            store.add(
                xg[j],
                cid=np.arange(n_clusters, n_clusters + len(j), dtype=np.int64),
                count=np.zeros(len(j), np.int64),
                gen=gidx[j],
                done=np.zeros(len(j), bool),
                nn=nn[j].astype(np.int64),
                ok=is_copy[j],
                d1=d1[j],
            )
            n_clusters += len(j)
            assigned[U] = pos[claim]

        # 3. counts in generation order: the member that brings a cluster to min_cluster fixes its cost
        rows = assigned  # every generation now has a cluster
        order = np.lexsort((gidx, rows))
        rs, gs = rows[order], gidx[order]
        starts = np.r_[0, np.flatnonzero(np.diff(rs)) + 1]
        rank = np.arange(m) - np.repeat(starts, np.diff(np.r_[starts, m]))
        completes = (store.count[rs] + rank + 1 == min_cluster) & ~store.done[rs]
        np.add.at(store.count, rows, 1)
        for row, g in zip(rs[completes], gs[completes], strict=True):
            store.done[row] = True
            n_cand += 1
            if verifier is None and not store.ok[row]:
                continue
            pending.append(
                (
                    store.x[row].copy(),
                    int(g),
                    int(store.cid[row]),
                    int(store.gen[row]),
                    int(store.nn[row]),
                    bool(store.ok[row]),
                    float(store.d1[row]),
                    0,
                )
            )
        if verifier is None or len(pending) >= VERIFY_BATCH or start + m >= B:
            settle()

    live = dict(zip(store.cid.tolist(), store.count.tolist(), strict=True))
    gal_size = np.array([live.get(c, final_size.get(c, 0)) for c in gal_cid], np.int64)

    grid = budget_grid(B) if grid is None else np.unique(np.clip(np.asarray(grid, np.int64), 1, B))
    got = np.flatnonzero(extracted_at >= 0)
    at = extracted_at[got] + 1  # generations spent (1-based)
    order = np.argsort(at, kind="stable")
    ext_idx, ext_at = got[order], at[order]
    copied_at = np.sort(first_copy[first_copy >= 0] + 1)
    unique = len(ext_idx)
    ext_tf = extracted_tf[
        ext_idx
    ]  # indexed by the searched items: before the indices go back to the caller's rows
    if keep is not None:
        ext_idx, gal_t = keep[ext_idx], [int(keep[t]) if t >= 0 else int(t) for t in gal_t]
    return ExtractionResult(
        budget=B,
        n_train=n_rows,
        min_cluster=min_cluster,
        rule=rule,
        link_radius=float(r_link),
        copy_threshold=tau,
        transform_threshold=None if verifier is None else verifier.tau,
        unique_train_extracted=int(unique),
        extraction_yield=unique / B,
        cost_per_item=B / unique if unique else float("inf"),
        unique_train_copied=int(len(copied_at)),
        n_copies=int(n_copies),
        curve_budgets=grid,
        curve_extracted=np.searchsorted(ext_at, grid, side="right").astype(np.int64),
        curve_copied=np.searchsorted(copied_at, grid, side="right").astype(np.int64),
        extracted_index=ext_idx.astype(np.int64),
        extracted_at=ext_at.astype(np.int64),
        n_clusters=int(n_clusters),
        n_candidates=int(n_cand),
        n_candidates_verified=int(n_cand_ok),
        n_candidates_unverified=int(n_cand - n_cand_ok),
        expected_chance_links=chance,
        expected_false_extractions=false_x,
        gallery_samples=_unshift(gal_x, dim, off).reshape((len(gal_x), *(sample_shape_of(shape_t, dim)))),
        gallery_train_index=np.asarray(gal_t, np.int64),
        gallery_distance=np.asarray(gal_d, np.float64),
        gallery_cluster_size=gal_size,
        gallery_generation=np.asarray(gal_gen, np.int64),
        store_capacity=int(store.cap),
        n_evicted_open=int(n_evicted_open),
        exact_linking=n_evicted_open == 0,
        chunk_size=chunk,
        sample_shape=sample_shape_of(shape_t, dim),
        transforms=tf_names,
        extracted_transform=np.asarray(tf_names, dtype=object)[ext_tf],
        gallery_transform=np.asarray(tf_names, dtype=object)[np.asarray(gal_tf, np.int64)],
    )


def _unshift(rows: list, dim: int, offset) -> np.ndarray:
    """Stored leaders (float32, shifted) back in the caller's coordinates: float64 when they were shifted (adding
    the offset back in float32 would round them to the grid at the offset), else the float32 rows as stored."""
    x = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    return x if offset is None else x.astype(np.float64) + offset


def sample_shape_of(shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
    """The shape of one sample: the training set's (c, h, w) for images, else (D,)."""
    return tuple(shape) if shape and int(np.prod(shape)) == dim else (dim,)
