"""Partial copies: a region of a training image reproduced inside an otherwise new image, found tile-wise.

Somepalli et al. 2023 ("Diffusion art or digital forgery? Investigating data replication in diffusion
models") show generations that copy an object or a region of a training image while the rest is new; a
whole-image distance dilutes such a copy among the new pixels. Here the image is cut into a ``grid x grid``
tiling (as in Carlini et al. 2023's tile distance, "Extracting training data from diffusion models", Sec. 5.1),
and every *window* of ``window x window`` adjacent tiles (a quarter of the image area at the defaults) is
searched on its own: per window w and generated sample g, d1_w and d2_w are the distances from g's window to
the nearest and second-nearest training image's window at the same position (exact k-NN, ``neighbors.search``).

Decision, calibrated on held-out real images exactly as the whole-image rule is (``probes.memorization``):

- a window counts for an image only when it holds content there (its pixel std above ``CONTENT`` = 0.25 of the
  image's): windows of near-blank background, which fresh data matches almost exactly, otherwise set the
  threshold (a paste with 0.5 % noise was then never found: 0.000; now 0.94, 2 % noise 0.27);
- a window is *informative* when fresh data does not reproduce it: windows whose median holdout d1 is 0
  (e.g. background that every image shares) are left out;
- score s(g) = min over informative windows of z_w = d1_w / median_holdout(d1_w) (the per-window scale makes
  windows of busy and of flat regions comparable), reached at window w*;
- only windows with d1/d2 < ``ratio_threshold`` count (Yoon et al. 2023's ratio, as in the whole-image rule: the
  region matches one training image, not a pattern many share; d1 = d2 = 0 counts as ratio 1);
- partial copy when s(g) < a threshold from the holdout's own scores: one threshold for the minimum over
  windows, so the many windows do not multiply the false-flag rate. The threshold is the k-th smallest holdout
  score with k chosen so that fresh images are flagged beyond ``holdout_quantile`` with at most 5 % probability
  (the plain quantile flags about 1 %, and more in half the runs: measured 1.35 % on 2,000 fresh 32-px sprites;
  unlike the whole-image rule there is no second rule to AND with). That needs at least ``min_holdout()`` = 299
  holdout images (below it even the smallest holdout score flags about 1 / (n_h + 1) of fresh images: refused).

The per-copy map ``tiles`` (n, grid, grid) marks the tiles of every window that passes both tests for that
sample: where the copied region lies. Only same-position copies are found (a training object pasted at another
place in the new image is not: that would need every window against every position).
"""

# ruff: noqa: E741  (D, I follow FAISS naming)
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from diffaudit.errors import DiffauditError
from diffaudit.probes.neighbors import DEFAULT_BUDGET_MIB, search
from diffaudit.probes.stats import wilson_interval

GRID = 4  # tiles per side of the map
WINDOW = 2  # window side in tiles (2 of 4: a quarter of the image area)
CONTENT = 0.25  # a window counts for an image when its pixel std exceeds this share of the image's std
LIMITATION = (
    "partial copies: same-position pastes only; windows count only where they hold content (pixel std above "
    f"{CONTENT:g} x the image's); a quarter-image paste is found at 1.00 exact, 0.94 with 0.5 % noise and 0.27 "
    "with 2 % noise (of the data std, 16-px sprites); a reported metric, not part of the verdict"
)


@dataclass
class PartialCopyResult:
    """Result of ``find_partial_copies``. Per generated sample (n_gen,): ``is_partial`` (the decision),
    ``score`` (s = min_w z_w; inf when no informative window), ``window`` (w*, an index into ``windows``),
    ``nn_index`` (training image whose window matched at w*), ``ratio`` (d1/d2 at w*), ``tiles``
    (n_gen, grid, grid) bool map of the copied region (all False for a sample that is not a partial copy).
    ``windows``: (n_windows, 4) tile rows/cols (r0, r1, c0, c1) of each window; ``informative``: (n_windows,)
    bool; ``threshold``: the holdout quantile of s; ``holdout_score``: s of each holdout image."""

    is_partial: np.ndarray
    score: np.ndarray
    window: np.ndarray
    nn_index: np.ndarray
    ratio: np.ndarray
    tiles: np.ndarray
    windows: np.ndarray
    informative: np.ndarray
    threshold: float
    holdout_score: np.ndarray
    n_partial: int
    rate: float
    rate_ci: tuple[float, float]
    grid: int
    ratio_threshold: float


def _images(x, name: str, min_n: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 4 or len(a) < min_n:
        raise DiffauditError(
            f"{name}: partial copies are found in images, got shape {a.shape}; pass at least {min_n} (n, c, h, w) "
            "images."
        )
    if not np.isfinite(a).all():
        raise DiffauditError(f"{name}: contains NaN or infinite values; remove or fix those samples.")
    return np.ascontiguousarray(a, dtype=np.float32)


def min_holdout(holdout_quantile: float = 0.01) -> int:
    """The fewest holdout images for which the threshold's statement holds: P(Binom(m, q) < 1) = (1 - q)^m <= 5 %
    (299 at q = 0.01). Below it the smallest holdout score flags about 1 / (m + 1) of fresh images (10 % at m = 10)."""
    m = int(math.ceil(math.log(0.05) / math.log1p(-holdout_quantile)))
    while binom.ppf(0.05, m, holdout_quantile) < 1:  # rounding at the boundary
        m += 1
    return m


def _window_nn(xq, xt, rows, cols, k, budget_mib, seed, name_q, device="cpu"):
    q = np.ascontiguousarray(xq[:, :, rows[0] : rows[1], cols[0] : cols[1]]).reshape(len(xq), -1)
    b = np.ascontiguousarray(xt[:, :, rows[0] : rows[1], cols[0] : cols[1]]).reshape(len(xt), -1)
    r = search(
        q,
        b,
        k,
        index="exact",
        budget_mib=budget_mib,
        seed=seed,
        name_q=name_q,
        name_b="training set",
        device=device,
    )
    return np.sqrt(np.maximum(r.D, 0.0)), r.I


def find_partial_copies(
    generated,
    train,
    holdout,
    *,
    grid: int = GRID,
    window: int = WINDOW,
    ratio_threshold: float = 1 / 3,
    holdout_quantile: float = 0.01,
    budget_mib: float = DEFAULT_BUDGET_MIB,
    seed: int = 0,
    device: str = "cpu",
) -> PartialCopyResult:
    """Tile-wise partial-copy search (module docstring) of ``generated`` (n, c, h, w) against ``train``,
    calibrated on ``holdout`` (real images never trained on). ``grid``: tiles per side; ``window``: window side
    in tiles (1 <= window <= grid). ``device``: the caller's torch device, for the k-NN engine
    (``neighbors.search``)."""
    xg = _images(generated, "generated", 1)
    xt = _images(train, "training set", 2)
    xh = _images(holdout, "holdout", 2)
    if xg.shape[1:] != xt.shape[1:] or xh.shape[1:] != xt.shape[1:]:
        raise DiffauditError(
            f"generated {xg.shape[1:]}, training {xt.shape[1:]} and holdout {xh.shape[1:]} images differ in "
            "shape; pass images of one size."
        )
    _, _, h, w = xt.shape
    if not (isinstance(grid, int | np.integer) and 1 <= grid <= min(h, w)):
        raise DiffauditError(f"grid={grid!r} must be an integer between 1 and the image side {min(h, w)}.")
    if not (isinstance(window, int | np.integer) and 1 <= window <= grid):
        raise DiffauditError(f"window={window!r} must be an integer between 1 and grid={grid}.")
    if not 0 < ratio_threshold <= 1:
        raise DiffauditError(f"ratio_threshold={ratio_threshold} must be in (0, 1]; the literature uses 1/3.")
    if not 0 < holdout_quantile < 1:
        raise DiffauditError(f"holdout_quantile={holdout_quantile} must be in (0, 1); e.g. 0.01.")
    m_min = min_holdout(holdout_quantile)
    if len(xh) < m_min:
        raise DiffauditError(
            f"holdout: {len(xh)} images are too few to calibrate the partial-copy rule; it needs at least {m_min} "
            f"(below that even the smallest holdout score flags fresh images beyond {holdout_quantile:g} with more "
            "than 5 % probability: about 1 / (n_holdout + 1) of them)."
        )
    ye = [int(a[0]) for a in np.array_split(np.arange(h), grid)] + [h]  # tile edges (rows)
    xe = [int(a[0]) for a in np.array_split(np.arange(w), grid)] + [w]
    wins = np.array(
        [(r, r + window, c, c + window) for r in range(grid - window + 1) for c in range(grid - window + 1)]
    )
    n, nw = len(xg), len(wins)
    d1, d2, nn = np.empty((n, nw)), np.empty((n, nw)), np.empty((n, nw), np.int64)
    h1, h2 = np.empty((len(xh), nw)), np.empty((len(xh), nw))
    cg, ch = np.empty((n, nw), bool), np.empty((len(xh), nw), bool)  # windows with content (see CONTENT)
    sg, sh_ = xg.reshape(n, -1).std(1), xh.reshape(len(xh), -1).std(1)
    for j, (r0, r1, c0, c1) in enumerate(wins):
        rows, cols = (ye[r0], ye[r1]), (xe[c0], xe[c1])
        D, I = _window_nn(xg, xt, rows, cols, 2, budget_mib, seed, "generated", device)
        d1[:, j], d2[:, j], nn[:, j] = D[:, 0], D[:, 1], I[:, 0]
        cg[:, j] = xg[:, :, rows[0] : rows[1], cols[0] : cols[1]].reshape(n, -1).std(1) > CONTENT * sg
        ch[:, j] = xh[:, :, rows[0] : rows[1], cols[0] : cols[1]].reshape(len(xh), -1).std(1) > CONTENT * sh_
        Dh, _ = _window_nn(xh, xt, rows, cols, 2, budget_mib, seed, "holdout", device)
        h1[:, j], h2[:, j] = Dh[:, 0], Dh[:, 1]
    med = np.median(h1, axis=0)
    informative = med > 0

    def ratio_of(a, b):
        # 0 / 0: a window many training images share exactly carries no evidence (ratio 1)
        return np.where(a == 0, np.where(b == 0, 1.0, 0.0), a / np.where(b == 0, np.inf, b))

    def score(a, b, content):
        ok = informative & content & (ratio_of(a, b) < ratio_threshold)
        z = np.where(ok, a / np.where(informative, med, 1.0), np.inf)
        return z, z.min(1), z.argmin(1)

    _, sh, _ = score(h1, h2, ch)
    # the k-th smallest holdout score, k the largest with P(Binom(n_h, q) < k) <= 5 %: then the share of fresh
    # images below it exceeds q with at most 5 % probability (a plain q-quantile flags about q, half the time more)
    k = int(binom.ppf(0.05, len(sh), holdout_quantile))  # >= 1: len(sh) >= min_holdout
    thr = float(np.sort(sh)[k - 1])
    z, s, best = score(d1, d2, cg)
    ratio = ratio_of(d1, d2)
    ar = np.arange(n)
    is_partial = s < thr
    hit = (z < thr) & is_partial[:, None]  # windows that pass, flagged samples only
    tiles = np.zeros((n, grid, grid), bool)
    for j, (r0, r1, c0, c1) in enumerate(wins):
        tiles[hit[:, j], r0:r1, c0:c1] = True
    k = int(is_partial.sum())
    return PartialCopyResult(
        is_partial=is_partial,
        score=s,
        window=best,
        nn_index=nn[ar, best],
        ratio=ratio[ar, best],
        tiles=tiles,
        windows=wins,
        informative=informative,
        threshold=thr,
        holdout_score=sh,
        n_partial=k,
        rate=k / n,
        rate_ci=wilson_interval(k, n),
        grid=int(grid),
        ratio_threshold=float(ratio_threshold),
    )
