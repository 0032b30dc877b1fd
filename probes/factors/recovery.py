"""Threshold 2, latent-factor recovery: one statistic for the audit, the sweep and the thresholds fit.

A model has recovered the latent factors when (DESIGN.md) most of its samples are novel and valid AND the
factors the oracle recovers from those samples are distributed like the true ones, within what TRUE
samples of the same size achieve:

1. validity (scale-free oracle residual, ``validity.py``) and novelty (copy rule, ``novelty.py``) give the
   m novel-valid samples and the novel-valid rate m / n (Wilson interval);
2. their oracle factors z_hat (a seeded subsample of at most ``max_m``, so that the test's resolution
   does not grow with the audit's sample count) are compared with the oracle factors of a large
   reference of valid true samples through statistics S_j, larger = worse:

   - every factor: two-sample Kolmogorov-Smirnov distance (continuous) or total variation (categorical);
   - coverage: 1 - the share of a quantile partition of factor space (about m / 10 cells, so that m true
     samples leave a cell empty with probability ~e^-10) that the samples reach;
   - family statistics where the dataset has its own factor: the mixed cumulant model (``dataset.v``):
     1 - overlap of the whitened direction of extremal kurtosis with v, and |excess kurtosis of v.x -
     its population value -2 beta_v^2 / (1 + beta_v)^2| (Bardone & Goldt 2024: the search needs m >> d^2
     samples to find v, the kurtosis along the known v tests the same structure at any m); the
     mixture of low-rank Gaussians (``dataset.U``): the largest over components of the KS distance of
     the within-subspace radius ||a|| (component frequencies are the categorical factor's TV);
3. the null band: ``n_null`` replicates of m true samples (oracle factors of valid true samples, drawn
   with replacement from a pool of >= 10 m projected true samples, disjoint from the reference; a fixed
   pool of P items offsets the band by ~sqrt(m / P) of its width, <= 0.32 at P >= 10 m) give
   each statistic's null distribution. The decision is the single-step min-P test of Westfall & Young
   (1993): each statistic's Monte Carlo p-value (Besag & Clifford 1989), their minimum compared with the
   replicates' own minima. Its false-fail rate for true samples is ``level`` whatever the number and
   dependence of the statistics; ``null_hi`` of a statistic is the value above which it alone fails.

A FINITE dataset (``dataset.n_population`` set: digits, 1,797 real images) has no fresh draws: its true
samples are its items not in the training set (exact rows; a recovered model's novel samples are not
training items either). The reference is ``x_ref``, else all of them (up to ``n_ref``); the pool is every
remaining one, fewer than 10 m where the population is small (digits, n_train = 500, a 300-image holdout:
P = 997, so ~0.47 of the band's width at m = 220; ``notes`` state P and sqrt(m / P)). When the reference
takes them all, the pool is the reference itself: a reference that is the whole population has no sampling
noise of its own to keep apart from the null's.

``recovered`` = novel-valid rate >= ``min_novel_valid_rate`` AND factors match AND coverage within its
band. ``recovery_score`` = the novel-valid rate when the factors match and cover factor space, else 0: in
[0, 1], and ``recovered`` holds exactly when ``recovery_score >= min_novel_valid_rate``, so the audit's
verdict, the sweep metric and the fitted n2* (where the score crosses 0.5) are one definition. (A share of
matched statistics would not do: matching two of mcm's four statistics -- lambda and nu, not the hidden
direction -- would score 0.5 without any recovery. ``matched_share`` is reported for diagnosis.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as st

from diffaudit.errors import DiffauditError
from diffaudit.probes.factors._common import flat as _flat
from diffaudit.probes.factors.fidelity import _cells, _factor_kind
from diffaudit.probes.factors.hidden_direction import excess_kurtosis, hidden_direction_overlap
from diffaudit.probes.factors.novelty import novelty
from diffaudit.probes.factors.validity import manifold_validity, relative_residual, validity_threshold

# Threshold 2 needs at least half of the samples valid and novel: most of what the model produces is new.
DEFAULT_MIN_NOVEL_VALID = 0.5
# False-fail rate of the factor-match test for a model that samples the true distribution.
DEFAULT_LEVEL = 0.01
# Monte Carlo replicates; a level-a min-P test needs n_null >= 1/a - 1 (here the p-value resolution is 1/201).
DEFAULT_N_NULL = 200
DEFAULT_N_REF = 4000  # valid true samples in the reference (its own noise is ~1/sqrt(4000) in KS units)
DEFAULT_MAX_M = 2000  # novel-valid samples compared: the resolution of 2000 true samples, for every audit
POOL_FACTOR = 10  # the null's pool holds >= 10 m true samples, so draws with replacement barely repeat
DEFAULT_N_POOL = 4000
CELL_OCCUPANCY = 10  # expected true samples per coverage cell at size m
COVERAGE_MARGIN = 0.0  # no allowance beyond the null band: the band already holds true samples' spread
DIRECTION_RESTARTS = (
    2  # random starts of the hidden-direction search (besides FOBI's), same for data and null
)
_REF_SEED = 0x7EF000  # fresh true samples: streams apart from the small seeds used to draw training sets
_POOL_SEED = 0x9001000


@dataclass
class RecoveryResult:
    """Threshold-2 statistic (module docstring).

    ``factor_stats[name] = (value, null_hi)``: the statistic and the value above which it fails (factors:
    KS or TV; family statistics ``hidden_direction`` = 1 - overlap, ``within_subspace`` = max KS of ||a||).
    ``coverage`` / ``coverage_null_lo``: coverage of the compared samples and the lowest value within the
    band (minus ``coverage_margin``). ``p_value``: the min-P test's adjusted p-value (fail: <= level).
    ``failed``: the conditions that failed, among "novel_valid_rate", "factor_match", "coverage".
    ``wasserstein_rel[name]``: W1 / std of the reference factor (categorical: TV), for reports.
    ``z_ref`` (n_ref, F) reference factors, ``z_novel_valid`` (m, F) factors of all novel-valid samples.
    """

    novel_valid_rate: float
    novel_valid_rate_ci: tuple[float, float] | None
    n: int
    m: int
    m_eval: int
    min_novel_valid_rate: float
    factor_match: bool
    coverage_ok: bool
    recovered: bool
    recovery_score: float
    matched_share: float  # share of the statistics inside their own band (diagnosis only)
    factor_stats: dict[str, tuple[float, float]]
    statistic: dict[str, str]
    coverage: float
    coverage_null_lo: float
    coverage_margin: float
    n_cells: int
    p_value: float
    level: float
    n_null: int
    failed: tuple[str, ...]
    mismatch: str | None
    wasserstein_rel: dict[str, float]
    validity: object
    novelty: object
    z_ref: np.ndarray
    z_novel_valid: np.ndarray
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready scalars for report details (no per-sample arrays)."""
        return {
            "recovered": bool(self.recovered),
            "factor_match": bool(self.factor_match),
            "coverage_ok": bool(self.coverage_ok),
            "failed": list(self.failed),
            "mismatch": self.mismatch,
            "novel_valid_rate": self.novel_valid_rate,
            "novel_valid_rate_ci": None
            if self.novel_valid_rate_ci is None
            else list(self.novel_valid_rate_ci),
            "min_novel_valid_rate": self.min_novel_valid_rate,
            "n": self.n,
            "m": self.m,
            "m_eval": self.m_eval,
            "recovery_score": self.recovery_score,
            "matched_share": self.matched_share,
            "factor_stats": {
                k: {"value": _num(v), "null_hi": _num(h), "statistic": self.statistic[k]}
                for k, (v, h) in self.factor_stats.items()
            },
            "coverage": _num(self.coverage),
            "coverage_null_lo": _num(self.coverage_null_lo),
            "coverage_margin": self.coverage_margin,
            "n_cells": self.n_cells,
            "p_value": _num(self.p_value),
            "level": self.level,
            "n_null": self.n_null,
            "tau": self.validity.tau,
            "wasserstein_rel": {k: _num(v) for k, v in self.wasserstein_rel.items()},
            "notes": list(self.notes),
        }


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


# ------------------------------------------------------------------------------------------ statistics


def ks_statistic(ref_sorted: np.ndarray, a: np.ndarray) -> float:
    """Two-sample KS distance sup_t |F_a(t) - F_ref(t)| (ties allowed); ``ref_sorted`` sorted ascending.

    Both empirical CDFs are right-continuous steps that jump only at sample points, so the supremum is
    attained at one of them: evaluate both CDFs there (O((m + n) log) instead of scipy's per-call setup).
    """
    a = np.sort(np.asarray(a, dtype=np.float64))
    m, n = len(a), len(ref_sorted)
    if m == 0 or n == 0:
        return float("nan")
    d_a = np.abs(np.searchsorted(a, a, "right") / m - np.searchsorted(ref_sorted, a, "right") / n).max()
    d_r = np.abs(
        np.searchsorted(a, ref_sorted, "right") / m - np.searchsorted(ref_sorted, ref_sorted, "right") / n
    ).max()
    return float(max(d_a, d_r))


class _Statistics:
    """Every statistic of one family against a fixed reference: ``__call__(z, x) -> (k,)`` (larger = worse)."""

    def __init__(self, dataset, z_ref: np.ndarray, m: int, seed: int):
        factors = list(dataset.factors)
        self.names = [getattr(f, "name", str(f)) for f in factors]
        self.kinds = [_factor_kind(f) for f in factors]
        self.n_cats = []
        for j, (f, kind) in enumerate(zip(factors, self.kinds, strict=True)):
            k = (
                max(len(getattr(f, "categories", ()) or ()), int(np.rint(z_ref[:, j]).max()) + 1)
                if kind == "categorical"
                else 0
            )
            self.n_cats.append(k)
        self.ref_sorted = [np.sort(z_ref[:, j]) for j in range(z_ref.shape[1])]
        self.p_ref = [
            np.bincount(self._codes(z_ref, j), minlength=k) / len(z_ref) if k else None
            for j, k in enumerate(self.n_cats)
        ]
        # coverage partition: ~m / CELL_OCCUPANCY cells, continuous factors cut at reference quantiles
        n_cat_cells = int(np.prod([k for k in self.n_cats if k])) if any(self.n_cats) else 1
        n_cont = sum(k == 0 for k in self.n_cats)
        target = max(1.0, m / CELL_OCCUPANCY / n_cat_cells)
        b = max(2, int(np.floor(target ** (1.0 / n_cont) + 1e-9))) if n_cont else 1
        self.edges = [
            k if k else np.quantile(z_ref[:, j], np.arange(1, b) / b) for j, k in enumerate(self.n_cats)
        ]
        self.cells_ref = np.unique(_cells(z_ref, self.edges, self.kinds))
        self.n_cells = len(self.cells_ref)
        self.labels = list(self.names) + ["coverage"]
        self.kind_of = {
            nm: ("total variation" if k else "KS") for nm, k in zip(self.names, self.n_cats, strict=True)
        }
        self.kind_of["coverage"] = "1 - coverage"
        # family statistics (duck-typed on the dataset's own structure)
        self.v = getattr(dataset, "v", None)
        self.target_kurtosis = getattr(dataset, "kurtosis_v", None)
        self.d = int(np.prod(dataset.shape))
        self.seed = seed
        if self.v is not None:
            self.labels += ["hidden_direction", "kurtosis_v"]
            self.kind_of["hidden_direction"] = "1 - overlap with v"
            self.kind_of["kurtosis_v"] = "|excess kurtosis of v.x - target|"
        self.U = getattr(dataset, "U", None)
        if self.U is not None and self.n_cats and self.n_cats[0]:
            self.labels.append("within_subspace")
            self.kind_of["within_subspace"] = "max over components of KS of ||a||"
            k_ref, r_ref = self._codes(z_ref, 0), np.linalg.norm(z_ref[:, 1:], axis=1)
            self.radius_ref = [np.sort(r_ref[k_ref == k]) for k in range(self.n_cats[0])]
        self.needs_x = self.v is not None
        # the hidden-direction search whitens the samples: it needs n > d with room to spare
        self.min_m_direction = max(10, 2 * self.d)

    def _codes(self, z: np.ndarray, j: int) -> np.ndarray:
        return (
            np.clip(np.rint(z[:, j]).astype(np.int64), 0, max(self.n_cats[j], 1) - 1)
            if len(z)
            else np.zeros(0, np.int64)
        )

    def __call__(self, z: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        out = []
        for j, k in enumerate(self.n_cats):
            if len(z) == 0:
                out.append(np.nan)
            elif k:
                q = np.bincount(self._codes(z, j), minlength=k) / len(z)
                out.append(float(0.5 * np.abs(self.p_ref[j] - q).sum()))
            else:
                out.append(ks_statistic(self.ref_sorted[j], z[:, j]))
        out.append(1.0 - np.isin(self.cells_ref, _cells(z, self.edges, self.kinds)).mean() if len(z) else 1.0)
        if self.v is not None:
            if x is None or len(x) < self.min_m_direction:
                out.append(np.nan)
            else:
                r = hidden_direction_overlap(
                    x,
                    self.v,
                    target_kurtosis=self.target_kurtosis,
                    n_restarts=DIRECTION_RESTARTS,
                    seed=self.seed,
                )
                out.append(1.0 - r.overlap)
            out.append(
                abs(excess_kurtosis(x @ self.v) - self.target_kurtosis)
                if x is not None and len(x) >= 4
                else np.nan
            )
        if "within_subspace" in self.labels:
            k_z, r_z = self._codes(z, 0), np.linalg.norm(z[:, 1:], axis=1)
            ks = [
                ks_statistic(self.radius_ref[k], r_z[k_z == k])
                for k in range(self.n_cats[0])
                if (k_z == k).any()
            ]
            out.append(max(ks) if ks else np.nan)
        return np.asarray(out, dtype=np.float64)


def _min_p_test(s_obs: np.ndarray, S_null: np.ndarray, level: float) -> tuple[float, np.ndarray]:
    """Single-step min-P test (Westfall & Young 1993) with Monte Carlo p-values (Besag & Clifford 1989).

    ``s_obs`` (k,), ``S_null`` (B, k), larger = worse; nan = not measurable (observed: worst; null: +inf).
    p_j = (1 + #{b: S_bj >= s_j}) / (B + 1); a replicate's own p-values are its rank among the B replicates
    / B. Fail iff (1 + #{b: min_j p_bj <= min_j p_j}) / (B + 1) <= level. Returns ``(that adjusted p,
    null_hi (k,))`` with statistic j alone failing iff s_obs[j] > null_hi[j].
    """
    B, k = S_null.shape
    S = np.where(np.isnan(S_null), np.inf, S_null)
    cols = np.sort(S, axis=0)
    ge = np.stack([B - np.searchsorted(cols[:, j], S[:, j], "left") for j in range(k)], 1)  # itself included
    q_null = np.sort((ge / B).min(1))
    s = np.where(np.isnan(s_obs), np.inf, s_obs)
    p_obs = (1 + (S >= s[None]).sum(0)) / (B + 1)
    p_adj = (1 + (q_null <= p_obs.min()).sum()) / (B + 1)
    # fail iff #{b: q_b <= min_j p_j} <= A  <=>  min_j p_j < q_null[A]
    A = int(np.floor(level * (B + 1) + 1e-9)) - 1
    null_hi = np.full(k, np.inf)  # A < 0: the level cannot be reached, nothing fails
    if A >= B:
        null_hi[:] = -np.inf
    elif A >= 0:
        # p_j < q_null[A]  <=>  c_j = #{b: S_bj >= s_j} <= K  <=>  s_j > the (K + 1)-th largest S_bj
        K = int(np.ceil(q_null[A] * (B + 1) - 1 - 1e-9)) - 1
        for j in range(k):
            null_hi[j] = np.inf if K < 0 else (cols[::-1, j][K] if K < B else -np.inf)
    return float(p_adj), null_hi


# ------------------------------------------------------------------------------------------ the probe


def _unseen(x: np.ndarray, *others) -> np.ndarray:
    """Rows of ``x`` (n, *shape) that are not exact copies of a row of any of ``others``: the items of a
    finite population are identified by their values (the digits images are pairwise distinct)."""
    seen = set()
    for o in others:
        if o is not None and len(o):
            seen.update(r.tobytes() for r in np.ascontiguousarray(o, dtype=x.dtype).reshape(len(o), -1))
    keep = np.fromiter((r.tobytes() not in seen for r in x.reshape(len(x), -1)), bool, len(x))
    return x[keep]


def _valid_true(dataset, x, tau: float):
    z_hat, rho = relative_residual(dataset, x)
    ok = rho <= tau
    return z_hat[ok], np.asarray(x)[ok]


def factor_recovery(
    dataset,
    generated,
    *,
    train=None,
    is_copy=None,
    holdout=None,
    x_ref=None,
    z_ref=None,
    tau: float | None = None,
    min_novel_valid_rate: float = DEFAULT_MIN_NOVEL_VALID,
    level: float = DEFAULT_LEVEL,
    n_null: int = DEFAULT_N_NULL,
    n_ref: int = DEFAULT_N_REF,
    n_pool: int = DEFAULT_N_POOL,
    max_m: int = DEFAULT_MAX_M,
    coverage_margin: float = COVERAGE_MARGIN,
    seed: int = 0,
    device: str = "cpu",
) -> RecoveryResult:
    """Has the model behind ``generated`` (n, *shape) recovered ``dataset``'s latent factors? (module docstring)

    Copies: ``is_copy`` (n,) bool from the memorization probe, else ``novelty``'s rule against ``train``
    (m_train, *shape) (with ``holdout`` real samples: holdout-calibrated). Reference: the oracle factors of
    valid true samples ``x_ref`` (not used in training), or ``z_ref`` (n_ref, F) given in the ORACLE's
    coordinates (``dataset.project`` of true samples; the true z only where project(generate(z)) = z:
    hidden-manifold, molrg with sigma = 0, sprites; not mcm, whose lambda_hat carries noise), else
    ``n_ref`` fresh samples (a finite dataset: its items outside ``train``, module docstring). ``tau``:
    validity threshold (default ``validity_threshold(dataset)``). ``device``: where ``novelty``'s nearest-neighbour
    searches run ("cuda": torch or FAISS-GPU, ``probes.neighbors``).
    """
    if train is None:
        raise DiffauditError(
            "factor_recovery needs the training set (train=...) to tell novel samples from copies; "
            "pass the samples the model was trained on."
        )
    if not 0 < float(level) < 1:
        raise DiffauditError(f"level={level} is not a probability; pass e.g. 0.01.")
    if int(n_null) < int(np.ceil(1.0 / level)) - 1:
        raise DiffauditError(
            f"n_null={n_null} replicates cannot resolve level={level}; pass n_null >= {int(np.ceil(1 / level)) - 1}."
        )
    if not 0.0 <= float(min_novel_valid_rate) <= 1.0:
        raise DiffauditError(
            f"min_novel_valid_rate={min_novel_valid_rate} is not a rate; pass a value in [0, 1]."
        )
    gen = np.asarray(generated)
    if tau is None:
        tau = validity_threshold(dataset, seed=_REF_SEED + 7 + int(seed)).tau
    val = manifold_validity(dataset, gen, tau=tau)
    # no factor-space copy test: the ratio rule flags ~(1/3)^k of FRESH samples in k factor dimensions
    # (a third on mcm, whose factors are lambda and a sign)
    nov = novelty(gen, train, val.valid, is_copy=is_copy, holdout=holdout, device=device)
    n, nv = len(gen), nov.novel_valid
    m = int(nv.sum())
    z_nv = val.z_hat[nv]
    rng = np.random.default_rng([0xFAC7, int(seed)])
    m_eval = min(m, int(max_m))
    pick = np.sort(rng.choice(m, size=m_eval, replace=False)) if m > m_eval else np.arange(m)
    z_eval = z_nv[pick]

    n_population = getattr(dataset, "n_population", None)
    # a finite dataset's true samples: its items outside the training set, in a seeded order
    x_unseen = (
        None
        if n_population is None
        else _unseen(dataset.sample(int(n_population), _POOL_SEED + int(seed))[0], train)
    )
    xr = None
    if z_ref is not None:
        zr = np.asarray(z_ref, dtype=np.float64).reshape(len(z_ref), -1)
    else:
        if x_ref is not None:
            xr = x_ref
        elif x_unseen is not None:
            xr = x_unseen[: int(n_ref)]
        else:
            xr = dataset.sample(int(n_ref), _REF_SEED + int(seed))[0]
        zr, _ = _valid_true(dataset, xr, tau)
    if len(zr) < 2 or zr.shape[1] != len(dataset.factors):
        raise DiffauditError(
            f"the reference holds {len(zr)} valid true samples of {zr.shape[1]} factors; pass x_ref "
            f"with >= 2 true samples of this dataset (or z_ref with {len(dataset.factors)} columns)."
        )
    stats = _Statistics(dataset, zr, max(m_eval, 1), seed)
    x_eval = _flat(gen, "generated")[nv][pick].astype(np.float64) if stats.needs_x and m_eval else None
    s_obs = stats(z_eval, x_eval)

    notes = []
    if m_eval == 0:
        null_hi = np.full(len(s_obs), np.nan)
        p_adj = 0.0
        fail = np.ones(len(s_obs), bool)
        notes.append("no novel-valid samples: the factors cannot be compared")
    else:
        if x_unseen is None:
            xp = dataset.sample(max(int(n_pool), POOL_FACTOR * m_eval), _POOL_SEED + int(seed))[0]
        else:  # every unseen item outside the reference (all of them when the reference holds them all)
            xp = _unseen(x_unseen, xr)
            xp = xp if len(xp) else x_unseen
        zp, xp = _valid_true(dataset, xp, tau)
        if len(zp) < 2:
            fix = (
                "pass a larger tau."
                if n_population is None
                else f"leave more of the {n_population} items outside the training set and the reference."
            )
            raise DiffauditError(
                f"factor_recovery: only {len(zp)} valid true samples are left for the null band at tau = "
                f"{tau:.3g}; {fix}"
            )
        if x_unseen is not None and len(zp) < POOL_FACTOR * m_eval:
            notes.append(
                f"null band from a finite pool of P = {len(zp)} true samples (< {POOL_FACTOR} m = "
                f"{POOL_FACTOR * m_eval}): its offset is ~sqrt(m / P) = {np.sqrt(m_eval / len(zp)):.2f} "
                f"of its width (vs {np.sqrt(1 / POOL_FACTOR):.2f} at P = {POOL_FACTOR} m)"
            )
        xp = xp.reshape(len(xp), -1).astype(np.float64) if stats.needs_x else None
        S_null = np.empty((int(n_null), len(s_obs)))
        for b in range(int(n_null)):
            idx = rng.integers(0, len(zp), m_eval)
            S_null[b] = stats(zp[idx], None if xp is None else xp[idx])
        p_adj, null_hi = _min_p_test(s_obs, S_null, level)
        fail = ~(s_obs <= null_hi)  # nan (not measurable) fails
        if stats.v is not None and m_eval < stats.min_m_direction:
            notes.append(
                f"{m_eval} novel-valid samples are too few for the hidden-direction search (needs "
                f">= {stats.min_m_direction})"
            )
    labels = stats.labels
    i_cov = labels.index("coverage")
    factor_stats = {lab: (float(s_obs[i]), float(null_hi[i])) for i, lab in enumerate(labels) if i != i_cov}
    coverage = 1.0 - float(s_obs[i_cov])
    coverage_null_lo = 1.0 - float(null_hi[i_cov]) - float(coverage_margin)
    coverage_ok = bool(m_eval > 0 and coverage >= coverage_null_lo - 1e-12)
    factor_match = bool(m_eval > 0 and not any(fail[i] for i in range(len(labels)) if i != i_cov))
    nvr = m / n
    failed = tuple(
        c
        for c, bad in (
            ("novel_valid_rate", nvr < min_novel_valid_rate),
            ("factor_match", not factor_match),
            ("coverage", not coverage_ok),
        )
        if bad
    )
    bad = [
        f"{lab} {stats.kind_of[lab]} {s_obs[i]:.3g} > {null_hi[i]:.3g}"
        for i, lab in enumerate(labels)
        if i != i_cov and fail[i] and m_eval
    ]
    matched = float(np.mean([not f for f in fail])) if m_eval else 0.0

    W = {}
    for j, (nm, k) in enumerate(zip(stats.names, stats.n_cats, strict=True)):
        if not m_eval:
            W[nm] = float("nan")
        elif k:
            W[nm] = float(s_obs[j])
        else:
            sd = float(zr[:, j].std())
            W[nm] = float(st.wasserstein_distance(z_eval[:, j], zr[:, j])) / sd if sd > 0 else float("nan")
    return RecoveryResult(
        novel_valid_rate=nvr,
        novel_valid_rate_ci=nov.novel_valid_rate_ci,
        n=n,
        m=m,
        m_eval=m_eval,
        min_novel_valid_rate=float(min_novel_valid_rate),
        factor_match=factor_match,
        coverage_ok=coverage_ok,
        recovered=not failed,
        recovery_score=float(nvr if (factor_match and coverage_ok) else 0.0),
        matched_share=matched,
        factor_stats=factor_stats,
        statistic={lab: stats.kind_of[lab] for lab in labels if lab != "coverage"},
        coverage=coverage,
        coverage_null_lo=coverage_null_lo,
        coverage_margin=float(coverage_margin),
        n_cells=stats.n_cells,
        p_value=float(p_adj),
        level=float(level),
        n_null=int(n_null),
        failed=failed,
        mismatch="; ".join(bad) or None,
        wasserstein_rel=W,
        validity=val,
        novelty=nov,
        z_ref=zr,
        z_novel_valid=z_nv,
        notes=notes,
    )
