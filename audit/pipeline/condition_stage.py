"""The per-condition stage of a conditional audit (``diffaudit.pipeline.conditions``): every condition audited on
its own rows through the audit's own stage functions. ``run_audit`` appends ``CONDITION_STAGE`` to the stages
when the audit has conditions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from diffaudit.datasets.labels import ClassView
from diffaudit.errors import DiffauditError
from diffaudit.pipeline import stages as st
from diffaudit.pipeline.conditions import (
    FixedCondition,
    copies_of_condition,
    copies_significant,
    memorization_verdict,
    recalibrate_copies,
    slice_copies,
)
from diffaudit.pipeline.stages import Context, Stage
from diffaudit.pipeline.verdicts import decide
from diffaudit.report import schema


def condition_context(ctx, j: int):
    """The audit context of condition ``j``: its rows, the model restricted to it, its copy decisions."""
    cs = ctx.conditions
    g = np.flatnonzero(cs.gen == j)
    t = np.flatnonzero(cs.train == j) if cs.train is not None else np.zeros(0, np.int64)
    h = None
    if ctx.holdout is not None and cs.holdout is not None:
        h = np.flatnonzero(cs.holdout == j)

    def take(a, rows):
        return None if a is None or rows is None else a[rows]

    sub = Context(
        model=FixedCondition(ctx.model, cs.values[j], cs.names[j]),
        # no bootstrap of each condition's FD floor: K x n_boot eigen-decompositions for a number that decides
        # nothing (the overall audit has it)
        cfg=replace(ctx.cfg, n_boot=0, progress=False),
        train=ctx.train[t],
        holdout=take(ctx.holdout, h),
        dataset=condition_dataset(ctx, j),
        train_z=take(ctx.train_z, t),
        holdout_z=take(ctx.holdout_z, h),
        embedder=ctx.embedder,
        n_gen=int(len(g)),
        gen=ctx.gen[g],
        fg=ctx.fg[g],
        ft=ctx.ft[t],
        fh=take(ctx.fh, h),
    )
    return sub, g, t, h


def per_condition(ctx) -> None:
    """Audit every condition on its own rows (module docstring); fills ``ctx.condition_results``."""
    cs, cfg = ctx.conditions, ctx.cfg
    c_all = ctx.art.get("copies")
    out = []
    for j in range(len(cs)):
        sub, g, t, h = condition_context(ctx, j)
        entry = {
            "condition": cs.names[j],
            "value": cs.values[j],
            "index": j,
            "n_generated": int(len(g)),
            "n_train": int(len(t)),
            "n_holdout": None if h is None else int(len(h)),
            "skipped": [],
        }
        if len(g) == 0:
            entry.update(verdict=dict.fromkeys(schema.VERDICTS, "n/a"), reasons={}, metrics={})
            entry["skipped"].append({"probe": "all", "reason": "no generated samples of this condition."})
            out.append(entry)
            ctx.advance(1)
            continue
        if c_all is not None:
            cj, thr = recalibrate_copies(slice_copies(c_all, g), holdout_d1_of(ctx, c_all, j))
            copies_of_condition(sub, cj)
            entry["copy_threshold"] = "overall" if thr is None else "own holdout"
        scores, flags = ctx.art.get("cond_scores"), ctx.art.get("cond_flags")
        if scores is not None:  # the detector scored every condition (cond_memorization stage)
            sub.put("memorization.cond_score", scores.score[j], scores.score_ci[j])
            if flags is not None:
                sub.put("memorization.cond_flagged", int(flags.flagged[j]))
                entry["robust_z"] = float(flags.robust_z[j])
        if cs.memorized is not None:
            entry["memorized"] = cs.memorized[j]
        plan = [
            (
                "moments",
                moments_of_condition,
                len(t) >= 2 and (sub.holdout is not None or sub.dataset is not None),
            ),
            ("convergence", st.convergence, sub.holdout is not None and len(t) >= 2),
            ("copy_tests", st.copy_tests, sub.holdout is not None and len(t) >= 2),
            ("membership", st.membership, sub.holdout is not None and len(t) >= 2 and sub.white_box),
            ("factors", st.factors, sub.dataset is not None and c_all is not None),
        ]
        for name, fn, ok in plan:
            if not ok:
                sub.skipped.append({"probe": name, "reason": _why_not(sub, name, len(t))})
                continue
            try:
                fn(sub)
            except DiffauditError as e:
                sub.skipped.append({"probe": name, "reason": str(e)})
        verdict, reasons = decide(sub.probes, cfg, sub.details)
        noisy = too_noisy(sub.probes, cfg)
        if noisy and verdict["convergence"] != "n/a":
            verdict["convergence"], reasons["convergence"] = "n/a", noisy
        verdict["memorization"], reasons["memorization"] = memorization_verdict(
            sub.probes, cfg, len(cs), len(g)
        )
        rec = sub.details.get("factors") or {}
        cr = (sub.probes.get("memorization") or {}).get("copy_rate")
        if verdict["generalization"] == "fail" and rec.get("recovered") and cr is not None:
            # the factors are recovered and the one failing part is the copy rate: judged like memorization,
            # significantly above the tolerance for one of K conditions, not on the raw rate of a few samples
            k = int(round(sub.probes["memorization"]["n_copies"]["value"]))
            if not copies_significant(k, len(g), cfg.max_copy_rate, len(cs))[0]:
                verdict["generalization"] = "pass"
                reasons["generalization"] += (
                    " (not significantly above the tolerance for one of the conditions)"
                )
        metrics = {
            f"{grp}.{k}": v for grp, vals in sub.probes.items() for k, v in vals.items() if v is not None
        }
        entry.update(verdict=verdict, reasons=reasons, metrics=metrics, skipped=sub.skipped)
        out.append(entry)
        ctx.advance(1)
    ctx.condition_results = out


def holdout_d1_of(ctx, c_all, j: int):
    """Distances of condition ``j``'s calibration holdout rows to the nearest training item (None when unknown)."""
    rows, d1 = ctx.art.get("calibration_rows"), getattr(c_all, "holdout_d1", None)
    cs = ctx.conditions
    if rows is None or d1 is None or cs.holdout is None or len(rows) != len(d1):
        return None
    return np.asarray(d1)[cs.holdout[rows] == j]


def condition_dataset(ctx, j: int):
    """The true generator of condition ``j``: the class's view of a generator dataset (``ClassView``: its population
    moments and factor distribution), else None (finite datasets, prompts: the condition's holdout rows only)."""
    cs = ctx.conditions
    if ctx.dataset is None or cs.kind != "labels" or getattr(ctx.dataset, "n_population", None) is not None:
        return None
    return ClassView(ctx.dataset, int(cs.values[j]))


def moments_of_condition(sub) -> None:
    """Threshold 1 of one condition: against its class population (``ClassView``), else its held-out rows."""
    st.moments(sub if sub.dataset is not None else replace_dataset(sub))


def too_noisy(probes: dict, cfg) -> str | None:
    """A reason when the condition's E1 is too uncertain to decide threshold 1 (95 % interval wider than
    +- eps1 / 2: a condition whose true E1 is 0 would then fail by chance in more than a few % of audits), else
    None. Two-sample E1 against a few hundred held-out rows of one class measured +- 0.13-0.19 on 16 x 16 sprites
    at 1,000 rows a side: a verdict there would be noise."""
    m = (probes.get("convergence") or {}).get("moment_error")
    if m is None or not m.get("ci"):
        return None
    half = (m["ci"][1] - m["ci"][0]) / 2
    if half <= cfg.eps1 / 2:
        return None
    return (
        f"E1 = {m['value']:.3g} is too uncertain to judge against {cfg.eps1:g} (95 % interval half-width "
        f"{half:.3g} > {cfg.eps1 / 2:g}); audit more samples of this condition (and more held-out rows)."
    )


def replace_dataset(sub):
    """``sub`` without its dataset, sharing its metric tables: the second-moment reference of a condition is its
    holdout (the dataset's population moments are the whole mixture's)."""
    view = replace(sub, dataset=None)
    view.probes, view.details, view.skipped, view.art = sub.probes, sub.details, sub.skipped, sub.art
    return view


def _why_not(sub, name: str, n_train: int) -> str:
    if n_train < 2:
        return f"only {n_train} training item(s) of this condition."
    if sub.holdout is None:
        return "no held-out rows of this condition (pass --holdout-labels with --holdout)."
    if name == "membership":
        return "the model is a black box (no denoise(x, sigma))."
    if name == "factors":
        return "no synthetic dataset."
    return "not applicable."


CONDITION_STAGE = Stage(
    "conditions",
    "per-condition audit",
    per_condition,
    (),
    total=lambda ctx: len(ctx.conditions),
)
