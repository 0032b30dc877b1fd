"""Memorized conditions of a conditional model, from the magnitude of its conditional noise prediction.

Wen, Liu, Chen & Lyu 2024 ("Detecting, Explaining, and Mitigating Memorization in Diffusion Models", ICLR,
Sec. 3.3): a prompt the model has memorized makes the text-conditional noise prediction much larger than a
normal prompt does, from the very first sampling steps, because the condition drags every noise draw toward
one specific training image. Their detection metric, over the first T steps of a generation,

    d = (1/T) sum_{t <= T} || eps(x_t, c) - eps(x_t, null) ||_2,

scores a prompt without generating a full image. In the EDM denoiser form of our model contract,
eps(x, sigma, c) = (x - D(x, sigma, c)) / sigma, so eps_c - eps_null = (D_null - D_c) / sigma: no separate
noise-prediction interface is needed, and the quantity is the same for VP (DDPM/DDIM) and VE models (eps is
invariant under x_VP = x_EDM / sqrt(1 + sigma^2)).

- ``condition_scores``: for each condition, ``n_gen`` generations from per-generation seeded noise (the same
  seeds for every condition: common random numbers, so conditions are compared on the same noise), each
  following the model's own deterministic Heun trajectory (``sampler_config``, Karras et al. 2022 Alg. 1, with
  the conditional denoiser, as the model samples) through the first ``n_steps`` noise levels; at each level
  the magnitude ||D_null - D_c||_2 / (sigma sqrt(P)), P the number of coordinates of the (latent) state.
  Dividing by sqrt(P) makes it a per-coordinate RMS, so scores of one sampler compare across resolutions; the
  absolute value depends on the levels sigma_t (a guided denoiser D_null + w (D_c - D_null) scales it by w),
  so scores compare across the conditions of one model and one sampler, not across models.
- ``detection_auc``: the ROC AUC of the scores against known memorized / other labels, DeLong interval
  (``probes.stats.auc_delong``).
- ``flag_memorized``: a decision that needs no labels (its meaning below).

Default ``n_steps = 1``, ``n_gen = 4``. Wen et al. report that the first step of a single generation already
separates memorized from normal prompts on Stable Diffusion (abstract and Table 1: "high accuracy even at the
first generation step, with a single generation per prompt"; about 0.96 AUC, which more steps and generations
raise toward 0.99); 4 generations is their default per prompt. On our EDM schedules the first levels are far
above the data's scale (sigma_max = 160 sigma_data, EDM's 80 at sigma_data = 0.5): there D_c -> E[x0 | c] and
D_null -> E[x0], so the first-level magnitude is ||E[x0 | c] - E[x0]|| / (sigma_max sqrt(P)) up to terms of
relative size spread / sigma_max: how far the condition's mean sits from the unconditional mean. A condition
tied to one training image has that image as its mean, about the data's full spread away from E[x0]; a
condition that generalizes over diverse images has a mean near E[x0]. That contrast is what the first level
measures (the tests check the formula on an analytic model), for 2 denoiser calls per generation and no
trajectory; each further level costs 3 (two conditional Heun evaluations and one null) and, on such a
schedule, stays in the same high-noise regime for many levels.

Flagging (``flag_memorized``), meaning: a condition is flagged when its score is at least ``MIN_RATIO`` = 1.25
times the median condition's (an effect-size floor) AND its log score lies more than k robust
standard deviations above the median of the audited conditions' log scores (robust z = (log s - median) /
(1.4826 MAD)), with k the threshold that, if the log scores of all m conditions were i.i.d. normal (every
condition generalizing, spread by how their contents differ), an audit would exceed for ANY condition with
probability ``alpha`` (default 0.05): a family-wise false-flag rate, whatever m. The robust z is location- and
scale-free, so its null distribution depends on m alone and k is simulated exactly (seeded Monte Carlo,
``N_NULL`` draws; k = 3.9 at m = 10, 3.5-3.6 at m = 20-100, 3.9 at m = 1000, 4.6 at m = 20,000). Log scale:
magnitudes are positive and spread multiplicatively (a memorized prompt's is several times a normal one's).
Assumptions and limits: (1) most audited conditions are NOT memorized -- the median and the MAD describe the
generalizing bulk only while it is a clear majority, and a large memorized share inflates the MAD and hides
them; (2) the bulk's log scores are roughly normal -- a heavy right tail of ordinary conditions raises the
false-flag rate above alpha; (3) at least ``MIN_CONDITIONS`` = 10 conditions: below that k climbs steeply (5.5
at m = 5) and one memorized condition moves the median itself. Measured on the analytic model of
tests/probes/test_cond_memorization.py (30 conditions in 16 dims, first level, 2 generations): null audits flag some
condition in 3.0 % of 300 audits (below alpha: the log of a norm is left-skewed, so the bulk's right tail is
lighter than normal), i.e. 0.1 % of generalizing conditions; with 3 of 30 conditions memorized, 0.97 of them
are flagged (the misses: memorized points that happen to lie close to the conditions' mean) and none of the
generalizing ones. Where a memorized image lies no farther from the mean than generalizing conditions' means
do (diverse classes, each tight), the first-level magnitude cannot tell them apart and nothing is flagged
(tested). The per-generation spread is no null for this decision: it measures the noise draws, not how much
ordinary conditions differ from each other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from diffaudit.errors import DiffauditError

# the model handle enters through the contract's condition check and the one sampler: two leaf modules of
# diffaudit.models that import nothing but numpy and the error type (the trajectory must be the model's own)
from diffaudit.models.contract import check_cond
from diffaudit.models.sampler import SamplerConfig, karras_sigmas, noise_from_seeds
from diffaudit.probes.stats import auc_delong, t_interval

DEFAULT_N_GEN = 4  # generations per condition (Wen et al.'s default)
DEFAULT_N_STEPS = 1  # noise levels averaged (module docstring: the first one already separates)
DEFAULT_ALPHA = 0.05  # family-wise false-flag rate of flag_memorized on a null audit
# a flagged condition's score is also at least this many times the median condition's (an effect-size floor: the
# robust z alone calls a condition 0.3 % above a tight bulk an outlier); memorized conditions measured 1.3-1.5x
# (single-image digits classes of a trained MLP) to several times (the analytic tests)
MIN_RATIO = 1.25
MIN_CONDITIONS = 10  # flag_memorized needs the bulk's median and MAD from at least this many conditions
N_NULL = 4000  # Monte Carlo draws of the null maximum robust z (the threshold's quantile error ~ 0.003)
MAD_TO_SD = 1.4826  # MAD of a normal sample / its standard deviation


@dataclass
class CondScores:
    """Result of ``condition_scores``.

    ``conds``: the audited conditions as validated (int64 (m,) labels or a list of m prompts). ``score`` (m,):
    each condition's magnitude, the mean over its generations; ``score_sd`` (m,) their standard deviation and
    ``score_ci`` (m, 2) the t interval of the mean over noise draws (NaN with one generation).
    ``per_generation`` (m, n_gen): each generation's magnitude averaged over the levels; ``per_level``
    (m, n_gen, n_steps): the magnitude ||D_null - D_c||_2 / (sigma sqrt(P)) at each level ``sigmas``
    (n_steps,). Generation j of every condition starts from the same noise (seed ``(seed, j)``).
    """

    conds: object
    score: np.ndarray
    score_sd: np.ndarray
    score_ci: np.ndarray
    per_generation: np.ndarray
    per_level: np.ndarray
    sigmas: np.ndarray
    n_gen: int
    n_steps: int
    seed: int
    confidence: float

    def rows(self) -> list[dict]:
        """One JSON-ready row per condition: the condition, its score, spread and interval."""
        conds = self.conds.tolist() if isinstance(self.conds, np.ndarray) else list(self.conds)
        return [
            {
                "condition": c,
                "score": float(self.score[i]),
                "score_sd": float(self.score_sd[i]),
                "score_ci": [float(v) for v in self.score_ci[i]],
            }
            for i, c in enumerate(conds)
        ]


@dataclass
class DetectionAUC:
    """Result of ``detection_auc``: ROC AUC of the scores with memorized conditions as positives, its DeLong
    interval, and the number of conditions on each side."""

    auc: float
    auc_ci: tuple[float, float]
    n_memorized: int
    n_other: int


@dataclass
class FlagResult:
    """Result of ``flag_memorized`` (its meaning: module docstring).

    ``flagged`` (m,) bool; ``robust_z`` (m,) = (log score - ``median_log``) / ``scale_log``, with ``scale_log``
    = 1.4826 MAD of the log scores; ``threshold`` the k a null audit of m conditions exceeds with probability
    ``alpha`` (family-wise); ``n_flagged``.
    """

    flagged: np.ndarray
    robust_z: np.ndarray
    threshold: float
    median_log: float
    scale_log: float
    alpha: float
    n_flagged: int


# --------------------------------------------------------------------------------------------- the score


def _check_model(model) -> str:
    name = getattr(model, "name", type(model).__name__)
    if getattr(model, "conditioning", None) is None:
        raise DiffauditError(
            f"model {name} is unconditional; the conditional-memorization detector needs a model that takes "
            "class labels or prompts (conditioning = 'labels' or 'prompts')."
        )
    fn = getattr(model, "denoise", None)
    if not callable(fn) or getattr(model, "has_denoiser", True) is False:
        raise DiffauditError(
            f"the conditional-memorization detector compares the model's conditional and null denoisers, which "
            f"needs a white-box model with denoise(x, sigma, cond); model {name} is a black box."
        )
    return name


def _distinct(conds) -> tuple[object, np.ndarray]:
    """(the distinct conditions in first-seen order, index (m,) of each given condition among them)."""
    if isinstance(conds, np.ndarray):
        uniq, first, inverse = np.unique(conds, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return uniq[order], rank[inverse.reshape(-1)]
    seen: dict = {}
    index = np.array([seen.setdefault(c, len(seen)) for c in conds], dtype=np.int64)
    return list(seen), index


def _repeat(distinct, n_gen: int):
    """Each distinct condition ``n_gen`` times in a row (rows of condition i: i * n_gen .. (i + 1) * n_gen - 1)."""
    if isinstance(distinct, np.ndarray):
        return np.repeat(distinct, n_gen)
    return [c for c in distinct for _ in range(n_gen)]


def _null(model, name: str, x: np.ndarray, sigma: float) -> np.ndarray:
    """D(x, sigma, None). A model that refuses it (``DiffauditError``, as a checkpoint trained without condition
    dropout does, or ``NotImplementedError``) has no null condition; any other failure is the model's own and
    propagates unchanged (not relabelled as a missing null condition)."""
    try:
        return model.denoise(x, sigma, None)
    except (DiffauditError, NotImplementedError) as e:
        raise DiffauditError(
            f"model {name} has no null condition: denoise(x, sigma, cond=None) failed ({type(e).__name__}: {e}); "
            "the detector compares each condition's prediction with the unconditional one, which needs a model "
            "trained with condition dropout (classifier-free guidance)."
        ) from e


def _as_state(out, like: np.ndarray, name: str, what: str) -> np.ndarray:
    a = np.asarray(out, dtype=np.float64)
    if a.shape != like.shape:
        raise DiffauditError(
            f"model {name}: {what} returned shape {a.shape} for input {like.shape}; denoise must keep the shape."
        )
    return a


def _magnitudes(model, name: str, x: np.ndarray, cond, t: np.ndarray, n_steps: int) -> np.ndarray:
    """||D(x_j, t_j, None) - D(x_j, t_j, cond)||_2 / t_j (n, n_steps) along the Heun trajectory (Karras et al.
    Alg. 1, as ``heun_sample``; conditional denoiser) from x_0 = ``x`` at t_0 through levels t_0 .. t_{T-1}."""
    out = np.empty((len(x), n_steps), np.float64)
    Dc = _as_state(model.denoise(x, float(t[0]), cond), x, name, "denoise")
    for j in range(n_steps):
        t_cur, t_next = float(t[j]), float(t[j + 1])
        diff = (_as_state(_null(model, name, x, t_cur), x, name, "denoise(cond=None)") - Dc).reshape(
            len(x), -1
        )
        out[:, j] = np.sqrt(np.einsum("ij,ij->i", diff, diff)) / t_cur
        if j + 1 == n_steps:
            break
        d = (x - Dc) / t_cur
        x_next = x + (t_next - t_cur) * d
        if t_next > 0:
            d2 = (x_next - _as_state(model.denoise(x_next, t_next, cond), x, name, "denoise")) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
        x = x_next
        Dc = _as_state(model.denoise(x, t_next, cond), x, name, "denoise")
    return out


def condition_scores(
    model,
    conds,
    n_gen: int = DEFAULT_N_GEN,
    n_steps: int = DEFAULT_N_STEPS,
    seed: int = 0,
    confidence: float = 0.95,
) -> CondScores:
    """Wen et al.'s magnitude d of each condition in ``conds`` (module docstring): the mean over ``n_gen``
    generations of (1/T) sum_{t < T} ||D(x_t, sigma_t, None) - D(x_t, sigma_t, c)||_2 / (sigma_t sqrt(P)),
    T = ``n_steps`` levels of the model's Heun trajectory (conditional denoiser) from noise seeded per
    generation (``noise_from_seeds``; generation j uses seed (seed, j) for every condition).

    ``model``: a white-box conditional model with a null condition (``denoise(x, sigma, cond=None)``); the state
    has ``model.latent_shape`` where the model has one (latent text-to-image models), else ``model.shape``.
    ``conds``: m conditions (labels (m,) or a list of m prompts), each distinct one computed once. Rows go
    through the denoiser in batches of ``model.batch_size`` (256 if absent).
    """
    name = _check_model(model)
    n_gen = int(n_gen)
    if n_gen < 1:
        raise DiffauditError(f"n_gen={n_gen} generations per condition; pass n_gen >= 1 (default 4).")
    if conds is None or (not isinstance(conds, str) and np.ndim(conds) == 0):
        raise DiffauditError(f"conds={conds!r}: pass a sequence of conditions (labels or prompts) to score.")
    if not isinstance(conds, str) and len(conds) == 0:
        raise DiffauditError(
            "conds: no conditions to score; pass one label or prompt per condition to audit."
        )
    if isinstance(conds, str):
        conds = [conds]  # one prompt: check_cond names the fix if the model takes labels
    conds = check_cond(model, conds, len(conds), what="conds")
    cfg = getattr(model, "sampler_config", None) or SamplerConfig()
    t = karras_sigmas(cfg)
    n_levels = len(t) - 1
    n_steps = int(n_steps)
    if not 1 <= n_steps <= n_levels:
        raise DiffauditError(
            f"n_steps={n_steps}: the model's sampler has {n_levels} noise levels; pass 1 <= n_steps <= {n_levels}."
        )
    shape = tuple(getattr(model, "latent_shape", None) or model.shape)
    P = int(np.prod(shape))
    distinct, index = _distinct(conds)
    rows_cond = _repeat(distinct, n_gen)
    n_rows = len(distinct) * n_gen
    noise = noise_from_seeds(range(n_gen), shape, base_seed=int(seed))  # (n_gen, *shape), every condition's
    mags = np.empty((n_rows, n_steps), np.float64)
    bs = max(1, int(getattr(model, "batch_size", 256)))
    for i0 in range(0, n_rows, bs):
        rows = np.arange(i0, min(n_rows, i0 + bs))
        cond = rows_cond[i0 : i0 + len(rows)]
        mags[rows] = _magnitudes(model, name, noise[rows % n_gen] * t[0], cond, t, n_steps) / np.sqrt(P)
    per_level_d = mags.reshape(len(distinct), n_gen, n_steps)
    per_level = per_level_d[index]
    per_gen = per_level.mean(2)
    score = per_gen.mean(1)
    if n_gen > 1:
        sd = per_gen.std(1, ddof=1)
        ci = np.array(
            [t_interval(m, s / np.sqrt(n_gen), n_gen - 1, confidence) for m, s in zip(score, sd, strict=True)]
        )
    else:
        sd = np.full(len(score), np.nan)
        ci = np.full((len(score), 2), np.nan)
    return CondScores(
        conds=conds,
        score=score,
        score_sd=sd,
        score_ci=ci.reshape(len(score), 2),
        per_generation=per_gen,
        per_level=per_level,
        sigmas=t[:n_steps].copy(),
        n_gen=n_gen,
        n_steps=n_steps,
        seed=int(seed),
        confidence=float(confidence),
    )


# --------------------------------------------------------------------------------------------- decisions


def _scores(scores) -> np.ndarray:
    s = np.asarray(scores.score if isinstance(scores, CondScores) else scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise DiffauditError(f"scores: expected one score per condition (m,), got shape {s.shape}.")
    if not np.isfinite(s).all() or (s < 0).any():
        raise DiffauditError("scores: magnitudes must be finite and >= 0; pass condition_scores(...).score.")
    return s


def detection_auc(scores, memorized, confidence: float = 0.95) -> DetectionAUC:
    """ROC AUC of ``scores`` (a ``CondScores`` or (m,) magnitudes) against ``memorized`` (m,) bool (the
    conditions known to be memorized, e.g. from copy search of their generations), with DeLong's interval
    (``auc_delong``; the exact bound under perfect separation). 0.5: the score does not tell them apart."""
    s = _scores(scores)
    raw = np.asarray(memorized)
    if raw.ndim != 1 or len(raw) != len(s):
        raise DiffauditError(
            f"memorized: needs one True/False per condition ({len(s)}), got shape {raw.shape}."
        )
    if raw.dtype != bool and not np.isin(raw, (0, 1)).all():
        raise DiffauditError("memorized: pass True/False (or 1/0) per condition.")
    y = raw.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise DiffauditError(
            f"memorized: {n_pos} memorized and {n_neg} other conditions; the AUC needs at least one of each."
        )
    auc, ci, _ = auc_delong(s[y], s[~y], confidence)
    return DetectionAUC(auc=float(auc), auc_ci=(float(ci[0]), float(ci[1])), n_memorized=n_pos, n_other=n_neg)


def _robust_z(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(robust z, median, 1.4826 MAD) of each row of ``v`` (r, m)."""
    med = np.median(v, axis=1, keepdims=True)
    scale = MAD_TO_SD * np.median(np.abs(v - med), axis=1, keepdims=True)
    return (v - med) / scale, med[:, 0], scale[:, 0]


@functools.lru_cache(maxsize=64)
def null_threshold(m: int, alpha: float = DEFAULT_ALPHA, n_null: int = N_NULL, seed: int = 0) -> float:
    """The (1 - alpha) quantile of max_i robust z_i over m i.i.d. normal values (seeded Monte Carlo, ``n_null``
    draws, in blocks of about 8 MiB): ``flag_memorized``'s threshold for m conditions."""
    rng = np.random.default_rng([0xF1A6, int(m), int(seed)])
    block = max(1, (1 << 20) // max(1, int(m)))
    maxima = np.empty(int(n_null))
    for i in range(0, int(n_null), block):
        k = min(block, int(n_null) - i)
        maxima[i : i + k] = _robust_z(rng.standard_normal((k, int(m))))[0].max(1)
    return float(np.quantile(maxima, 1.0 - float(alpha)))


def flag_memorized(
    scores, alpha: float = DEFAULT_ALPHA, n_null: int = N_NULL, seed: int = 0, min_ratio: float = MIN_RATIO
) -> FlagResult:
    """Flag the conditions whose log score is a robust outlier above the bulk of the audited conditions:
    robust z = (log s - median) / (1.4826 MAD) above ``null_threshold(m, alpha)``, the level an audit of m
    generalizing conditions (log scores i.i.d. normal) exceeds anywhere with probability ``alpha``. Meaning,
    assumptions (most conditions not memorized; at least ``MIN_CONDITIONS``) and measured rates: module
    docstring. Pass distinct conditions: a repeated one counts twice in the median and the MAD."""
    s = _scores(scores)
    m = len(s)
    if m < MIN_CONDITIONS:
        raise DiffauditError(
            f"scores: {m} conditions; flagging outliers needs at least {MIN_CONDITIONS} (the bulk's median and "
            "spread come from the conditions themselves), so audit more conditions."
        )
    if not 0.0 < float(alpha) < 1.0:
        raise DiffauditError(f"alpha={alpha!r}: pass a false-flag rate in (0, 1), e.g. 0.05.")
    with np.errstate(divide="ignore"):
        v = np.log(s)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        z, med, scale = _robust_z(v)
    if not (np.isfinite(scale[0]) and scale[0] > 0):
        raise DiffauditError(
            "scores: most conditions have the same score (MAD 0), so there is no bulk spread to measure "
            "outliers against; score more varied conditions or use detection_auc with known labels."
        )
    k = null_threshold(m, float(alpha), int(n_null), int(seed))
    if not float(min_ratio) >= 1.0:
        raise DiffauditError(f"min_ratio={min_ratio!r}: pass a ratio >= 1 (1 = no effect-size floor).")
    # an outlier must also be a large effect: a bulk of near-identical scores (a tiny MAD) made conditions 0.3 %
    # above the median robust outliers (flagged in 52-72 % of null audits of equidistant class means)
    flagged = (z[0] > k) & (s >= float(min_ratio) * np.exp(med[0]))
    return FlagResult(
        flagged=flagged,
        robust_z=z[0],
        threshold=k,
        median_log=float(med[0]),
        scale_log=float(scale[0]),
        alpha=float(alpha),
        n_flagged=int(flagged.sum()),
    )
