"""The audit as a list of stages over one shared context.

Every stage is a function ``fn(ctx) -> None`` that reads what earlier stages left in ``ctx`` and fills
schema rows with ``ctx.put(key, value, ci)`` (``put`` refuses a key the schema does not know, so every
produced metric has a row). A stage declares what it ``needs`` ("holdout", "dataset", "white_box"); when a
need is missing the runner records the stage under ``skipped`` with the reason and its rows stay null.

Add a probe: a module in ``probes/``, its rows in ``diffaudit.report.schema``, and one stage here (or a line
in an existing one). ``NOT_IN_AUDIT`` lists the probes that exist and do not run in an audit, with why.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffaudit.datasets.loading import check_magnitude
from diffaudit.datasets.moments import population_moments
from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError, ModelError
from diffaudit.features import embed_cached
from diffaudit.models.contract import DenoiserModel
from diffaudit.models.sampler import noise_from_seeds
from diffaudit.pipeline.config import AuditConfig
from diffaudit.probes import cond_memorization as cm
from diffaudit.probes import convergence as cv
from diffaudit.probes import extraction as ex
from diffaudit.probes import factors as fp
from diffaudit.probes import memorization as mem
from diffaudit.probes import moment_error as me
from diffaudit.probes._checks import cast_precision_note
from diffaudit.probes.basin import basin_of_attraction, calibrate
from diffaudit.probes.membership import membership_inference, roc_points
from diffaudit.probes.partial_copies import GRID as PARTIAL_GRID
from diffaudit.probes.partial_copies import LIMITATION as PARTIAL_LIMITATION
from diffaudit.probes.partial_copies import find_partial_copies, min_holdout
from diffaudit.progress import progress_display
from diffaudit.report import schema

# Probes of probes/ that an audit does not run, and why (shown in the architecture notes and tested).
NOT_IN_AUDIT = {
    "convergence.fd_infinity": "extrapolates FD over many subset sizes, each >= a multiple of D: too costly per "
    "audit; run it from Python or 'diffaudit compare'",
    "convergence.moments / gaussian_kl / sliced_wasserstein": "in 'diffaudit compare'; threshold 1 uses E1",
    "factors.representation_probe": "needs the activations of a layer the user picks "
    "(diffaudit.models.activations.layer_activations); run it from Python",
    "reproducibility.disjoint_reproducibility": "needs two models trained on disjoint halves: a sweep option "
    "(reproducibility = true)",
}


@dataclass
class Context:
    """What the stages share. Arrays in the normal form; features (n, D) float32."""

    model: Any
    cfg: AuditConfig
    train: np.ndarray
    holdout: np.ndarray | None = None
    dataset: Any = None
    train_z: np.ndarray | None = None
    holdout_z: np.ndarray | None = None
    embedder: Any = None
    n_gen: int = 0
    gen: np.ndarray | None = None
    fg: np.ndarray | None = None
    ft: np.ndarray | None = None
    fh: np.ndarray | None = None
    probes: dict[str, dict] = field(default_factory=lambda: {g: {} for g in schema.GROUPS})
    details: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    art: dict[str, Any] = field(default_factory=dict)  # arrays and results for the report writer
    advance: Callable[[int], None] = lambda k=1: None
    conditions: Any = None  # diffaudit.pipeline.conditions.Conditions of a conditional audit, else None
    condition_results: list | None = None  # the per-condition entries (report "conditions")
    # the model's generations 0 .. n_gen - 1 for cfg.seed, drawn before the audit (a sweep group's models
    # are sampled together: ``diffaudit.sweeps.run.run_group``); None: the sample stage draws them
    presampled: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)  # warnings about the inputs, for the report's "warnings"

    def cond_for(self, start: int, n: int):
        """The model's ``cond`` for generations ``start .. start + n - 1`` (None for an unconditional audit)."""
        if self.conditions is None:
            return None
        return self.conditions.cond(self.conditions.index_of_generation(start, n))

    @property
    def white_box(self) -> bool:
        """A denoiser in the samples' own space (a latent model's denoiser acts on its latents instead)."""
        return bool(getattr(self.model, "has_denoiser", False)) and self.latent_shape is None

    @property
    def latent_shape(self):
        return getattr(self.model, "latent_shape", None)

    def put(self, key: str, value, ci=None) -> None:
        """Store metric ``key`` ({"value", "ci"}; None for a missing / non-finite value)."""
        if schema.get(key) is None:
            raise KeyError(f"metric {key!r} has no row in diffaudit.report.schema; add one")
        g, _, k = key.partition(".")
        self.probes[g][k] = metric(value, ci)

    def rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([salt, int(self.cfg.seed)])

    def subsample(self, x: np.ndarray, k: int, salt: int) -> np.ndarray:
        """A seeded subsample of at most ``k`` rows (in original order)."""
        k = min(len(x), int(k))
        return x if k == len(x) else x[self.subsample_rows(len(x), k, salt)]

    def subsample_rows(self, n: int, k: int, salt: int) -> np.ndarray:
        """The row indices ``subsample`` takes from ``n`` rows (all of them when k >= n)."""
        k = min(int(n), int(k))
        return np.arange(n) if k == n else np.sort(self.rng(salt).choice(n, k, replace=False))


def probe_device(ctx) -> str:
    """The audit's torch device for the probes, ``cfg.device`` resolved ("cpu", "cuda"): on a GPU the k-NN
    search and the float64 statistics run there (``probes._torch``). A context whose config names no device
    (a test's stand-in) gets "auto"."""
    return str(resolve_device(getattr(ctx.cfg, "device", "auto")))


def metric(value, ci=None) -> dict | None:
    """A metric object ``{"value": float, "ci": [lo, hi] | None}``; None for a missing / non-finite value."""
    if value is None:
        return None
    v = float(value)
    if not np.isfinite(v):
        return None
    c = None
    if ci is not None:
        lo, hi = float(ci[0]), float(ci[1])
        if np.isfinite(lo) and np.isfinite(hi):
            c = [lo, hi]
    return {"value": v, "ci": c}


def check_array(x, name: str, notes: list | None = None) -> np.ndarray:
    """``x`` checked (at least 2 finite real rows of sane magnitude) and cast to float32, the audit's normal
    form; ``notes`` receives a sentence when the cast lost the samples' spread (``cast_precision_note``)."""
    x = np.asarray(x)
    if x.ndim < 2 or len(x) < 2:
        raise DiffauditError(f"{name}: needs at least 2 samples of shape (n, ...), got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DiffauditError(f"{name}: has dtype {x.dtype}; pass real-valued numeric samples.")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(1).sum())
        raise DiffauditError(
            f"{name}: {bad} sample(s) contain NaN or Inf; fix the model or remove those samples."
        )
    check_magnitude(x, name)
    out = np.ascontiguousarray(x, dtype=np.float32)
    if notes is not None:
        note = cast_precision_note(x, out, name)
        if note:
            notes.append(note)
    return out


def draw_samples(model, n: int, seed: int, advance=None, chunk: int = 256, cond=None) -> np.ndarray:
    """``model.sample(n, seed)``; for denoiser models in chunks of per-sample seeds (same result, with progress).
    ``cond``: one condition per sample for a conditional model (None: unconditional)."""
    if isinstance(model, DenoiserModel) and type(model).sample is DenoiserModel.sample:
        out = []
        for i in range(0, n, chunk):
            noise = noise_from_seeds(range(i, min(n, i + chunk)), model.shape, base_seed=seed)
            part = None if cond is None else cond[i : i + len(noise)]
            out.append(
                np.asarray(
                    model.sample_from_noise(noise) if part is None else model.sample_from_noise(noise, part)
                )
            )
            if advance:
                advance(len(noise))
        return np.concatenate(out) if out else np.zeros((0, *model.shape), np.float32)
    x = model.sample(n, seed) if cond is None else model.sample(n, seed, cond=cond)
    if advance:
        advance(n)
    return np.asarray(x)


def chunk_seed(seed: int, start: int) -> int:
    """The seed of a black-box model's generations from ``start`` on (``seed`` itself at 0, so a stream starts
    with the audit's own samples; a distinct 31-bit seed per later chunk)."""
    if int(start) == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(start)]).generate_state(1, np.uint32)[0] >> 1)


def sample_stream(model, seed: int, cond_for=None) -> Callable[[int, int], np.ndarray]:
    """``generate(start, n)``: generations ``start .. start + n - 1`` of ``model``'s one stream for ``seed``
    (what ``probes.extraction`` consumes). Denoiser models: noise seeds (seed, i), so generation i is the
    audit's sample i; pre-generated samples: their rows in order; other black boxes: ``sample(n, chunk_seed)``,
    an independent draw per chunk (a black box's ``sample(n, seed)`` is one call: it has no index per sample).
    ``cond_for(start, n)``: the conditions of those generations (conditional audits), else None."""

    def generate(start: int, n: int) -> np.ndarray:
        cond = None if cond_for is None else cond_for(start, n)
        kw = {} if cond is None else {"cond": cond}
        if isinstance(model, DenoiserModel) and type(model).sample is DenoiserModel.sample:
            noise = noise_from_seeds(range(start, start + n), model.shape, base_seed=seed)
            x = np.asarray(model.sample_from_noise(noise, **kw))
        elif getattr(model, "n_available", None) is not None:
            x = np.asarray(model.sample(start + n, seed))[start:]
        else:
            x = np.asarray(model.sample(n, chunk_seed(seed, start), **kw))
        if x.ndim < 2 or len(x) != n:
            raise ModelError(
                f"model {getattr(model, 'name', type(model).__name__)}: sample(n, seed) returned shape "
                f"{x.shape} when asked for {n} samples; it must return n rows."
            )
        return x

    return generate


# --------------------------------------------------------------------------------------------- stages


def sample(ctx: Context) -> None:
    if ctx.presampled is not None:
        gen = ctx.presampled
        ctx.advance(len(gen))
    else:
        gen = draw_samples(ctx.model, ctx.n_gen, ctx.cfg.seed, ctx.advance, cond=ctx.cond_for(0, ctx.n_gen))
    gen = check_array(gen, "generated samples", ctx.notes)
    if len(gen) != ctx.n_gen:  # pre-generated files are checked when sampled: this is the model's own code
        raise ModelError(
            f"model {getattr(ctx.model, 'name', type(ctx.model).__name__)}: sample(n, seed) returned "
            f"{len(gen)} samples when asked for {ctx.n_gen}; it must return n rows."
        )
    if gen.shape[1:] != ctx.train.shape[1:]:
        raise DiffauditError(
            f"generated samples have shape {gen.shape[1:]} but the training set has shape "
            f"{ctx.train.shape[1:]}; audit the model against its own kind of data."
        )
    ctx.gen = gen


def embed(ctx: Context) -> None:
    def one(x):
        if x is None:
            return None
        # pixels are identity-like: caching would only copy bytes to disk
        f = ctx.embedder.embed(x) if ctx.embedder.name == "pixels" else embed_cached(x, ctx.embedder)
        ctx.advance(len(x))
        return f

    ctx.fg, ctx.ft, ctx.fh = one(ctx.gen), one(ctx.train), one(ctx.holdout)


def moments(ctx: Context) -> None:
    """Threshold 1: E1 against the population (synthetic data in pixel space) or the holdout (otherwise)."""
    flat = ctx.gen.reshape(len(ctx.gen), -1)
    if ctx.dataset is not None and ctx.embedder.name == "pixels" and ctx.embedder.id == "pixels":
        mu, sigma, n_ref = population_moments(ctx.dataset)
        r = me.whitened_moment_error(flat, mu, sigma, device=probe_device(ctx))
        ref = (
            f"the population of {ctx.dataset.spec} ({n_ref} reference samples)"
            if n_ref
            else f"the population of {ctx.dataset.spec} (analytic)"
        )
    elif ctx.fh is not None:
        try:
            r = me.two_sample_moment_mmd(ctx.fg, ctx.fh, seed=ctx.cfg.seed, device=probe_device(ctx))
        except DiffauditError as e:  # a holdout too small to whiten: the rest of the audit still stands
            ctx.skipped.append({"probe": "convergence.moment_error", "reason": str(e)})
            ctx.details.setdefault("convergence", {})["moment_error_skipped"] = str(e)
            return
        ref = f"the holdout set ({ctx.embedder.id} features, {r.whitening} whitening, rank {r.rank})"
    else:
        ctx.skipped.append(
            {
                "probe": "convergence.moment_error",
                "reason": "no reference for the data's second "
                "moments: pass a synthetic --dataset or a holdout set.",
            }
        )
        return
    ctx.put("convergence.moment_error", r.value, r.ci)
    shift = r.mean_part * r.dim
    ctx.put("convergence.mean_shift", shift)
    # threshold 1's one statistic (verdict and sweep): the interval is E1's while E1 is the larger part
    ctx.put("convergence.bulk_error", max(r.value, shift), r.ci if r.value >= shift else None)
    ctx.details.setdefault("convergence", {})["moment_error_reference"] = ref
    ctx.details["convergence"]["moment_error_dim"] = int(r.dim)
    ctx.details["convergence"]["moment_error_delta"] = float(r.delta)


def convergence(ctx: Context) -> None:
    """FD (with its real-vs-real floor), KID, precision/recall/density/coverage against the holdout."""
    cfg, fg, ft, fh, dev = ctx.cfg, ctx.fg, ctx.ft, ctx.fh, probe_device(ctx)
    big = fg.shape[1] > cfg.boot_max_dim
    if big:
        ctx.skipped.append(
            {
                "probe": "convergence.fd_gen_train / floor bootstrap",
                "reason": f"{fg.shape[1]} "
                f"feature dimensions > boot_max_dim={cfg.boot_max_dim}: each extra FD costs an eigh of "
                "D x D, so the floor has no bootstrap interval.",
            }
        )
    else:
        ctx.put("convergence.fd_gen_train", cv.frechet_distance(fg, ft, device=dev).value)
    n_eq = min(len(fg), len(ft))
    fd = cv.frechet_distance(fg, fh, device=dev)
    ctx.put("convergence.fd", fd.value)
    fd_eq = fd if n_eq == len(fg) else cv.frechet_distance(ctx.subsample(fg, n_eq, 0xC0), fh, device=dev)
    ctx.put("convergence.fd_equal_n", fd_eq.value)
    floor = cv.frechet_distance(
        ctx.subsample(ft, n_eq, 0xC1), fh, n_boot=0 if big else cfg.n_boot, seed=cfg.seed, device=dev
    )
    # the floor's spread at this sample size (a BCa interval of its population value, ~0, says little here)
    ctx.put("convergence.fd_train_holdout", floor.value, floor.spread_ci)
    ctx.put("convergence.fd_ratio", fd_eq.value / floor.value if floor.value > 0 else None)
    m_kid = int(min(cfg.kid_subset_size, max(2, min(len(fg), len(fh)) // 2)))
    k = cv.kid(fg, fh, n_subsets=cfg.kid_subsets, subset_size=m_kid, seed=cfg.seed, device=dev)
    ctx.put("convergence.kid", k.value, k.value_ci)  # interval from disjoint blocks, centred on their mean
    pr, dc = cv.prdc(fh, fg, device=dev)
    ctx.put("convergence.precision", pr.precision, pr.precision_ci)
    ctx.put("convergence.recall", pr.recall, pr.recall_ci)
    ctx.put("convergence.density", dc.density)
    ctx.put("convergence.coverage", dc.coverage, dc.coverage_ci)
    ctx.details.setdefault("convergence", {}).update(
        {
            "kid_block_value": k.block_value,
            "kid_subset_std": k.std,
            "n_equal": int(n_eq),
            "fd_singular": bool(fd.singular or floor.singular),
            "floor_ci": list(floor.spread_ci) if floor.spread_ci else None,
        }
    )


# Smallest image side on which the copy search undoes small edits: a 2 px shift of an 8 px image still
# compares a 6 px (75 %) window; on smaller images the shifted windows are a few pixels that standardise to
# nothing (measured: 3 px images put the holdout threshold at 0 and exact copies went unflagged).
MIN_TRANSFORM_SIDE = 8


def pixel_image_shape(ctx: Context) -> tuple[int, ...] | None:
    """(c, h, w) of the features when they are the images' own pixels (``pixels`` / ``pixels:K``) and large
    enough for the edits of ``probes.transforms`` (``MIN_TRANSFORM_SIDE``), else None (plain distances)."""
    if ctx.gen is None or ctx.gen.ndim != 4 or getattr(ctx.embedder, "name", None) != "pixels":
        return None
    size = getattr(ctx.embedder, "size", None)
    shape = tuple(ctx.gen.shape[1:]) if size is None else (ctx.gen.shape[1], size, size)
    return shape if min(shape[1:]) >= MIN_TRANSFORM_SIDE else None


def copies(ctx: Context) -> None:
    """Every generated sample against the WHOLE training set (the holdout only calibrates a quantile).

    Images in a pixel feature space: the copy distance is the transform-min distance (shifts of up to 2 px,
    flip, >= 90 % crops; ``probes.transforms``), calibrated on the holdout under the same transforms. Other
    feature spaces (inception, clip, ...) and vectors: plain distances (transforming would mean re-embedding
    every edit). Images with a holdout: partial copies (``probes.partial_copies``) on the raw pixels as well."""
    fh_cal = None if ctx.fh is None else ctx.subsample(ctx.fh, ctx.cfg.max_calibration, 0xC7)
    shape = pixel_image_shape(ctx)
    c = mem.find_copies(
        ctx.fg,
        ctx.ft,
        fh_cal,
        seed=ctx.cfg.seed,
        transforms=None if shape is None else "default",
        image_shape=shape,
        device=probe_device(ctx),
    )
    partial = partial_skipped = None
    if ctx.gen.ndim == 4 and ctx.holdout is not None:
        h_cal = ctx.subsample(ctx.holdout, ctx.cfg.max_calibration, 0xC7)  # the rows of fh_cal
        side = min(ctx.gen.shape[2:])
        if side < PARTIAL_GRID:
            partial_skipped = (
                f"partial copies need images of at least {PARTIAL_GRID} x {PARTIAL_GRID} pixels (a {PARTIAL_GRID} x "
                f"{PARTIAL_GRID} tile grid); these are {ctx.gen.shape[2]} x {ctx.gen.shape[3]}"
            )
        elif len(h_cal) < min_holdout():
            partial_skipped = (
                f"the partial-copy rule needs at least {min_holdout()} holdout images to keep fresh data flagged at "
                f"<= 1 % (with 95 % confidence); there are {len(h_cal)} (it would flag about 1 / {len(h_cal) + 1})"
            )
        else:
            try:  # the whole-image copy rate above stands whatever happens here
                partial = find_partial_copies(
                    ctx.gen, ctx.train, h_cal, seed=ctx.cfg.seed, device=probe_device(ctx)
                )
            except DiffauditError as e:
                partial_skipped = str(e)
        if partial is not None:
            ctx.put("memorization.copy_rate_partial", partial.rate, partial.rate_ci)
        else:
            ctx.skipped.append({"probe": "memorization.copy_rate_partial", "reason": partial_skipped + "."})
    ctx.art["partial_copies"] = partial
    if ctx.fh is not None:  # the holdout rows that calibrated the quantile (per-condition audits recalibrate)
        ctx.art["calibration_rows"] = ctx.subsample_rows(len(ctx.fh), ctx.cfg.max_calibration, 0xC7)
    ctx.put("memorization.copy_rate", c.copy_rate, c.copy_rate_ci)
    ctx.put("memorization.unique_train_copied", c.unique_train_copied)
    ctx.put("memorization.n_copies", c.n_copies)
    for rule, rate in c.rule_rates.items():
        ctx.put(f"memorization.copy_rate_{rule}", rate)
    ctx.details["memorization"] = {
        "rule": c.rule,
        "ratio_threshold": c.ratio_threshold,
        "holdout_threshold": c.holdout_threshold,
        "most_copied": c.most_copied[:20].tolist(),
        "index_method": c.index_method,
        "n_calibration": None if fh_cal is None else int(len(fh_cal)),
        "transforms": list(c.transforms),
        "transform_counts": {
            str(t): int(k)
            for t, k in zip(*np.unique(c.transform[c.is_copy], return_counts=True), strict=True)
        },
        "partial_threshold": None if partial is None else partial.threshold,
        "partial_skipped": partial_skipped,
        "partial_limitation": PARTIAL_LIMITATION,
    }
    ctx.art["copies"] = c


def extraction(ctx: Context) -> None:
    """Carlini et al. 2023's extraction attack at ``cfg.extraction_budget`` generations (``probes.extraction``),
    in the audit's feature space: the audit's own samples first, then more of the model's stream, embedded alike.
    The holdout rows that calibrate it are the copies stage's (same subsample), so tau is the same number."""
    B, n_have = int(ctx.cfg.extraction_budget), len(ctx.fg)
    if B == 0:
        raise DiffauditError(
            "the extraction budget is 0 (--extraction-budget 0 / extraction_budget=0): the attack was not run."
        )
    n_avail = getattr(ctx.model, "n_available", None)
    if B > n_have and n_avail is not None and n_avail < B:
        raise DiffauditError(
            f"the model's sample file holds {n_avail} samples, fewer than the extraction budget {B}; pass "
            f"--extraction-budget {n_avail} or less (extraction_budget from Python), or generate more samples."
        )
    stream = sample_stream(ctx.model, ctx.cfg.seed, ctx.cond_for if ctx.conditions is not None else None)

    def generate(start: int, n: int) -> np.ndarray:
        end, parts = start + n, []
        if start < n_have:
            parts.append(ctx.fg[start : min(end, n_have)])
        if end > n_have:
            lo = max(start, n_have)
            x = stream(lo, end - lo)
            if x.shape[1:] != ctx.train.shape[1:]:
                raise DiffauditError(
                    f"generated samples have shape {x.shape[1:]} but the training set has shape "
                    f"{ctx.train.shape[1:]}; audit the model against its own kind of data."
                )
            parts.append(ctx.embedder.embed(x))
        ctx.advance(n)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    fh_cal = None if ctx.fh is None else ctx.subsample(ctx.fh, ctx.cfg.max_calibration, 0xC7)
    shape = pixel_image_shape(
        ctx
    )  # as the copies stage: candidates verified under small edits on pixel images
    r = ex.extract(
        generate,
        B,
        ctx.ft,
        fh_cal,
        seed=ctx.cfg.seed,
        gallery_size=0,
        transforms=None if shape is None else "default",
        image_shape=shape,
        device=probe_device(ctx),
    )
    ctx.put("memorization.unique_extracted", r.unique_train_extracted)
    ctx.put("memorization.extraction_yield", r.extraction_yield)
    fx = (
        r.expected_false_extractions
    )  # None without a holdout: the ratio rule alone has no stated chance rate
    ctx.put("memorization.extraction_excess", None if fx is None else r.unique_train_extracted - fx)
    ctx.details["extraction"] = {
        "budget": B,
        "reused_samples": int(min(B, n_have)),
        "drawn_samples": int(max(0, B - n_have)),
        "min_cluster": r.min_cluster,
        "rule": r.rule,
        "link_radius": r.link_radius,
        "cost_per_item": r.cost_per_item if r.unique_train_extracted else None,
        "unique_train_copied": r.unique_train_copied,
        "n_candidates": r.n_candidates,
        "n_candidates_unverified": r.n_candidates_unverified,
        "expected_chance_links": r.expected_chance_links,
        "expected_false_extractions": fx,
        "exact_linking": r.exact_linking,
        "curve": {
            "budget": r.curve_budgets.tolist(),
            "extracted": r.curve_extracted.tolist(),
            "copied": r.curve_copied.tolist(),
        },
        "transforms": list(r.transforms),
        "transform_counts": {
            str(t): int(k) for t, k in zip(*np.unique(r.extracted_transform, return_counts=True), strict=True)
        },
        "extracted": [  # [train index, generations spent, edit]
            [int(i), int(a), str(t)]
            for i, a, t in zip(
                r.extracted_index[:20], r.extracted_at[:20], r.extracted_transform[:20], strict=True
            )
        ],
    }


def copy_tests(ctx: Context) -> None:
    """C_T (Meehan et al. 2020) and authenticity (Alaa et al. 2022) with its real-data reference."""
    fg_s, fh_s = (
        ctx.subsample(ctx.fg, ctx.cfg.max_ct_samples, 0xC8),
        ctx.subsample(ctx.fh, ctx.cfg.max_ct_samples, 0xC9),
    )
    dev = probe_device(ctx)
    ct = mem.ct_test(fg_s, ctx.ft, fh_s, seed=ctx.cfg.seed, max_kmeans_fit=20_000, device=dev)
    ctx.put("memorization.ct", ct.c_t)
    au = mem.authenticity(fg_s, ctx.ft, reference=fh_s, device=dev)
    ctx.put("memorization.auth_pct", au.auth_pct, au.auth_pct_ci)
    ctx.put("memorization.auth_pct_reference", au.reference, getattr(au, "reference_ci", None))
    ctx.details.setdefault("memorization", {})["ct_auth_n"] = [int(len(fg_s)), int(len(fh_s))]


def membership(ctx: Context) -> None:
    """Loss-based membership inference (white box): sigma chosen on one split, reported on the other."""
    cfg = ctx.cfg
    m_n = int(min(cfg.mia_n, len(ctx.train), len(ctx.holdout)))
    xt_m, xh_m = ctx.subsample(ctx.train, m_n, 0x31A), ctx.subsample(ctx.holdout, m_n, 0x31B)
    scale = float(np.sqrt(ctx.train.reshape(len(ctx.train), -1).astype(np.float64).var(0).mean()))
    mia = membership_inference(
        ctx.model, xt_m, xh_m, [s * scale for s in cfg.mia_sigmas], n_draws=cfg.mia_draws, seed=cfg.seed
    )
    ctx.put("memorization.mia_auc", mia.auc_eval, mia.auc_eval_ci)
    ctx.put("memorization.mia_tpr_at_1pct", mia.tpr_at_1pct)
    ctx.details["membership"] = {
        "sigmas": mia.sigmas.tolist(),
        "auc": mia.auc.tolist(),
        "loss_gap": mia.loss_gap.tolist(),
        "best_sigma": mia.best_sigma,
        "n": m_n,
        "n_eval": mia.n_eval,
        "tpr_note": mia.tpr_note,
        "roc": {"sigma": float(mia.best_sigma), **roc_points(mia)},
    }


def basin(ctx: Context) -> None:
    """Basin of attraction (white box): noised training items return through the reverse process, held-out
    ones do not; sigma chosen on one split, AUC and return rates reported on the other."""
    cfg = ctx.cfg
    n = int(min(cfg.basin_n, len(ctx.train), len(ctx.holdout)))
    xt, xh = ctx.subsample(ctx.train, n, 0xBA51), ctx.subsample(ctx.holdout, n, 0xBA52)
    # radius and sigma unit from the same holdout rows as the copy rule's calibration (vs the whole training set)
    cal = calibrate(
        ctx.train,
        ctx.subsample(ctx.holdout, cfg.max_calibration, 0xC7),
        cfg.basin_quantile,
        device=probe_device(ctx),
    )
    r = basin_of_attraction(
        ctx.model,
        xt,
        xh,
        [s * cal.spacing for s in cfg.basin_sigmas],
        cal.radius,
        num_steps=cfg.basin_steps,
        seed=cfg.seed,
    )
    ctx.put("memorization.basin_auc", r.auc_eval, r.auc_eval_ci)
    ctx.put("memorization.basin_return_train", r.return_train_eval, r.return_train_eval_ci)
    ctx.put("memorization.basin_return_holdout", r.return_holdout_eval, r.return_holdout_eval_ci)
    ctx.details["basin"] = {
        "sigmas": r.sigmas.tolist(),
        "sigmas_rel": list(cfg.basin_sigmas),  # x the neighbour spacing
        "spacing": cal.spacing,
        "radius": r.radius,
        "radius_quantile": cfg.basin_quantile,
        "n_calibration": cal.n_holdout,
        "best_sigma": r.best_sigma,
        "n": n,
        "n_eval": list(r.n_eval),
        "num_steps": int(cfg.basin_steps),
        "denoiser_calls": int(2 * n * len(r.sigmas) * (2 * cfg.basin_steps - 1)),
        "per_sigma": r.per_sigma(),
    }


def cond_memorization(ctx: Context) -> None:
    """Wen et al. 2024's text-conditional memorization detector (``probes.cond_memorization``) on every condition:
    per-condition guidance magnitudes, the outlier flags (>= 10 conditions) and, with known labels, the AUC."""
    cs, cfg = ctx.conditions, ctx.cfg
    r = cm.condition_scores(
        ctx.model,
        cs.cond(np.arange(len(cs))),
        n_gen=cfg.cond_n_gen,
        n_steps=cfg.cond_n_steps,
        seed=cfg.seed,
    )
    top = int(np.argmax(r.score))
    ctx.put("memorization.cond_score", r.score[top], r.score_ci[top])
    det = {
        "scores": r.score.tolist(),
        "n_gen": r.n_gen,
        "n_steps": r.n_steps,
        "sigmas": r.sigmas.tolist(),
        "most_suspect": cs.names[top],
    }
    ctx.art["cond_scores"] = r
    if len(cs) >= cm.MIN_CONDITIONS:
        try:
            f = cm.flag_memorized(r.score)
        except DiffauditError as e:  # e.g. every condition scores the same: the scores above still stand
            det["flag_skipped"] = str(e)
        else:
            ctx.put("memorization.cond_flagged", f.n_flagged)
            ctx.art["cond_flags"] = f
            det.update(flagged=[cs.names[i] for i in np.flatnonzero(f.flagged)], threshold_z=f.threshold)
            det["robust_z"] = f.robust_z.tolist()
    else:
        det["flag_skipped"] = (
            f"{len(cs)} conditions: flagging outliers needs at least {cm.MIN_CONDITIONS} (the bulk's median and "
            "spread come from the conditions themselves); gate on memorization.cond_score or pass labels."
        )
    known = getattr(cs, "memorized", None)
    if known is not None:
        rows = [i for i, v in enumerate(known) if v is not None]
        labels = [bool(known[i]) for i in rows]
        if rows and 0 < sum(labels) < len(labels):
            a = cm.detection_auc(r.score[rows], labels)
            ctx.put("memorization.cond_auc", a.auc, a.auc_ci)
            det.update(n_memorized=a.n_memorized, n_other=a.n_other)
        else:
            det["auc_skipped"] = "the prompts file labels no condition memorized, or all of them: no AUC."
    ctx.details["cond_memorization"] = det


def factors(ctx: Context) -> None:
    """Threshold 2: scale-free validity, novelty, and latent-factor recovery against the true factors."""
    ds, cfg = ctx.dataset, ctx.cfg
    c = ctx.art["copies"]
    # reference: the held-out true samples (never trained on); fresh draws of the dataset without a holdout
    rec = fp.factor_recovery(
        ds,
        ctx.gen,
        train=ctx.train,
        is_copy=c.is_copy,
        x_ref=ctx.holdout,
        min_novel_valid_rate=cfg.min_novel_valid_rate,
        seed=cfg.seed,
        device=probe_device(ctx),
    )
    ctx.put("factors.validity", rec.validity.valid_rate, rec.validity.valid_rate_ci)
    ctx.put("factors.residual_median", rec.validity.median)
    ctx.put("factors.novel_valid_rate", rec.novel_valid_rate, rec.novel_valid_rate_ci)
    ctx.put(
        "factors.novel_rate_among_valid",
        rec.novelty.novel_rate_among_valid,
        rec.novelty.novel_rate_among_valid_ci,
    )
    ctx.put("factors.factor_coverage", rec.coverage)
    ctx.put("factors.recovery_score", rec.recovery_score)
    for name, w in rec.wasserstein_rel.items():
        ctx.put(f"factors.w1_{name}", w)
    ctx.details["factors"] = rec.summary()
    ctx.art.update(
        validity=rec.validity, novelty=rec.novelty, z_true=rec.z_ref, z_recovered=rec.z_novel_valid
    )


@dataclass(frozen=True)
class Stage:
    name: str
    label: str
    fn: Callable[[Context], None]
    fills: tuple[str, ...]  # schema keys (families with their "*")
    needs: tuple[str, ...] = ()
    total: Callable[[Context], int] = lambda ctx: 1  # progress units
    required: bool = (
        False  # an input problem here aborts the audit; elsewhere the stage is skipped with the reason
    )


WHY_MISSING = {
    "holdout": "no holdout set (pass --holdout, --holdout-fraction, or --dataset)",
    "dataset": "no synthetic dataset: the true generator is needed (pass --dataset SPEC)",
    "white_box": "the model is a black box (no denoise(x, sigma))",
    "conditional": "the model is unconditional",
    "reference": "no reference for the data's second moments (pass --dataset SPEC or a holdout set)",
}

STAGES: tuple[Stage, ...] = (
    Stage("sample", "sampling", sample, (), total=lambda ctx: ctx.n_gen, required=True),
    Stage(
        "embed",
        "embedding",
        embed,
        (),
        total=lambda ctx: ctx.n_gen + len(ctx.train) + (0 if ctx.holdout is None else len(ctx.holdout)),
        required=True,
    ),
    Stage(
        "moments",
        "threshold 1: second moments",
        moments,
        ("convergence.bulk_error", "convergence.moment_error", "convergence.mean_shift"),
        ("reference",),
    ),
    Stage(
        "convergence",
        "FD, KID, precision/recall",
        convergence,
        (
            "convergence.fd",
            "convergence.fd_train_holdout",
            "convergence.fd_ratio",
            "convergence.fd_equal_n",
            "convergence.fd_gen_train",
            "convergence.kid",
            "convergence.precision",
            "convergence.recall",
            "convergence.density",
            "convergence.coverage",
        ),
        ("holdout",),
    ),
    Stage(
        "copies",
        "copy search",
        copies,
        (
            "memorization.copy_rate",
            "memorization.unique_train_copied",
            "memorization.n_copies",
            "memorization.copy_rate_ratio",
            "memorization.copy_rate_holdout",
            "memorization.copy_rate_ratio_and_holdout",
            "memorization.copy_rate_partial",
        ),
        # the memorization verdict and the report's copies table rest on it: an audit without it aborts
        # with the reason instead of writing a report whose memorization part is silently missing
        required=True,
    ),
    Stage(
        "extraction",
        "extraction attack",
        extraction,
        (
            "memorization.unique_extracted",
            "memorization.extraction_yield",
            "memorization.extraction_excess",
        ),
        total=lambda ctx: int(ctx.cfg.extraction_budget),
    ),
    Stage(
        "copy_tests",
        "C_T and authenticity",
        copy_tests,
        ("memorization.ct", "memorization.auth_pct", "memorization.auth_pct_reference"),
        ("holdout",),
    ),
    Stage(
        "membership",
        "membership inference",
        membership,
        ("memorization.mia_auc", "memorization.mia_tpr_at_1pct"),
        ("holdout", "white_box"),
    ),
    Stage(
        "basin",
        "basin of attraction",
        basin,
        (
            "memorization.basin_auc",
            "memorization.basin_return_train",
            "memorization.basin_return_holdout",
        ),
        ("holdout", "white_box"),
    ),
    Stage(
        "cond_memorization",
        "conditional memorization detector",
        cond_memorization,
        ("memorization.cond_score", "memorization.cond_flagged", "memorization.cond_auc"),
        ("conditional", "white_box"),
        total=lambda ctx: len(ctx.conditions),
    ),
    Stage(
        "factors",
        "threshold 2: factor recovery",
        factors,
        (
            "factors.validity",
            "factors.residual_median",
            "factors.novel_valid_rate",
            "factors.novel_rate_among_valid",
            "factors.factor_coverage",
            "factors.recovery_score",
            "factors.w1_*",
        ),
        ("dataset",),
    ),
)


def missing_needs(stage: Stage, ctx: Context) -> list[str]:
    have = {
        "holdout": ctx.holdout is not None,
        "dataset": ctx.dataset is not None,
        "white_box": ctx.white_box,
        "reference": ctx.dataset is not None or ctx.holdout is not None,
        "conditional": ctx.conditions is not None,
    }
    if stage.needs and "white_box" in stage.needs and "conditional" in stage.needs:
        have["white_box"] = bool(getattr(ctx.model, "has_denoiser", False))  # latent denoisers count here
    return [n for n in stage.needs if not have[n]]


def why_missing(need: str, ctx: Context) -> str:
    if need == "white_box" and ctx.latent_shape is not None and getattr(ctx.model, "has_denoiser", False):
        return (
            "the model denoises in its latent space, not in the space of its samples (membership and basin "
            "probes need a denoiser of the samples themselves)"
        )
    return WHY_MISSING[need]


# Needs whose absence means the stage does not apply to this kind of audit at all: not worth a "skipped" line.
SILENT_NEEDS = frozenset({"conditional"})


class Progress:
    """Timings per stage + optional rich progress display on stderr."""

    def __init__(self, enabled: bool):
        self.timings: dict[str, float] = {}
        self._prog = progress_display() if enabled else None

    def __enter__(self):
        if self._prog is not None:
            self._prog.start()
        return self

    def __exit__(self, *exc):
        if self._prog is not None:
            self._prog.stop()

    @contextlib.contextmanager
    def stage(self, name: str, label: str, total: int):
        t0 = time.perf_counter()
        task = self._prog.add_task(label, total=total) if self._prog is not None else None

        def advance(k: int = 1):
            if task is not None:
                self._prog.advance(task, k)

        try:
            yield advance
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            if task is not None:
                self._prog.remove_task(task)


def run_stages(ctx: Context, stages=STAGES) -> dict[str, float]:
    """Run ``stages`` in order over ``ctx``; returns seconds per stage."""
    with Progress(ctx.cfg.progress) as prog:
        for st in stages:
            missing = missing_needs(st, ctx)
            if missing and SILENT_NEEDS & set(missing):
                continue
            if missing:
                ctx.skipped.append(
                    {"probe": st.name, "reason": "; ".join(why_missing(m, ctx) for m in missing) + "."}
                )
                continue
            with prog.stage(st.name, st.label, st.total(ctx)) as adv:
                ctx.advance = adv
                try:
                    st.fn(ctx)
                except DiffauditError as e:
                    if st.required:
                        raise
                    # e.g. too few samples for a k-NN or a whitening: the other measurements still stand
                    ctx.skipped.append({"probe": st.name, "reason": str(e)})
    return {k: round(v, 4) for k, v in prog.timings.items()}
