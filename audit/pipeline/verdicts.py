"""Verdicts and release gates: the only place that turns measured metrics into pass / fail.

Verdicts ("pass" | "fail" | "n/a"), tolerances in ``AuditConfig`` (each with a stated meaning there):

- ``convergence`` (threshold 1): the whitened second-moment error E1 <= ``eps1`` AND the whitened squared mean
  shift |m|^2 <= ``eps1``: the model's second moments and its mean are each at least as accurate as those of
  an estimate from n1 = (d + kappa) / eps1 true samples (which scores E1 = (d + kappa)/n1 = eps1 and
  |m|^2 = d/n1 ~ eps1). E1 alone is blind to a pure mean shift (a shift m scores |m|^4 / d: one data std along
  one of 32 directions gives 0.03). Both are referenced to the data population (synthetic data) or to held-out
  real data, and both estimates are unbiased whatever the number of generated samples, so the verdict does
  not move with the audit's size. FD and its real-vs-real floor are reported beside them as the familiar
  numbers; they decide nothing.
- ``generalization`` (threshold 2, synthetic data only): latent-factor recovery -- at least
  ``min_novel_valid_rate`` of the samples are valid (scale-free oracle residual) and novel, the factors
  recovered from them match the true factor distribution within what true samples of the same size achieve,
  and they cover factor space -- AND the copy rate is at most ``max_copy_rate``.
- ``memorization``: copy rate <= ``max_copy_rate`` AND, when membership inference ran, its AUC (on a split
  not used to choose sigma) <= ``max_mia_auc``.

Gates: ``GROUP.NAME OP NUMBER`` on any metric of the schema; a gate on a metric that was not measured fails.
"""

from __future__ import annotations

import operator
import re

from diffaudit.errors import DiffauditError
from diffaudit.pipeline.config import AuditConfig
from diffaudit.report import schema

GATE_RE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*"
    r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def value(probes: dict, key: str) -> float | None:
    """The value of metric ``group.name`` in a report's ``probes`` (None when not measured)."""
    g, _, k = key.partition(".")
    m = probes.get(g, {}).get(k)
    return None if m is None else m["value"]


def decide(
    probes: dict, cfg: AuditConfig, details: dict | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Verdicts and one plain-words reason each (rules in the module docstring)."""
    details = details or {}
    verdict, why = {}, {}

    e1 = value(probes, "convergence.moment_error")
    shift = value(probes, "convergence.mean_shift")
    # convergence.bulk_error = max(E1, |m|^2) is the same rule as one number (the sweep's n1 metric)
    if e1 is None:
        verdict["convergence"] = "n/a"
        skipped = (details.get("convergence") or {}).get("moment_error_skipped")
        why["convergence"] = (
            f"the second-moment error could not be measured: {skipped}"
            if skipped
            else "no reference for the data's second moments (needs a synthetic dataset or a holdout set)"
        )
    else:
        ok_e1, ok_shift = e1 <= cfg.eps1, shift is None or shift <= cfg.eps1
        verdict["convergence"] = "pass" if ok_e1 and ok_shift else "fail"
        ref = (details.get("convergence") or {}).get("moment_error_reference", "the data")
        s = (
            f"second-moment error E1 = {e1:.3g} against {ref} is {'within' if ok_e1 else 'above'} the "
            f"tolerance {cfg.eps1:g}"
        )
        if shift is not None:
            s += f"; mean shift |m|^2 = {shift:.3g} is {'within' if ok_shift else 'above'} it"
        why["convergence"] = s

    cr = value(probes, "memorization.copy_rate")
    nv = value(probes, "factors.novel_valid_rate")
    rec = details.get("factors") or {}
    if nv is None or "recovered" not in rec:
        verdict["generalization"] = "n/a"
        why["generalization"] = "no synthetic dataset, so latent-factor recovery cannot be measured"
    elif cr is None:  # novelty is judged against the copy search: without it, no verdict (never a pass)
        verdict["generalization"] = "n/a"
        why["generalization"] = "copy search did not run, so novelty cannot be judged"
    else:
        copies_ok = cr <= cfg.max_copy_rate
        ok = bool(rec["recovered"]) and copies_ok
        verdict["generalization"] = "pass" if ok else "fail"
        parts = [
            f"{100 * nv:.0f} % of samples are valid and novel (needs >= {100 * cfg.min_novel_valid_rate:.0f} %)"
        ]
        if rec.get("factor_match") is not None and nv >= cfg.min_novel_valid_rate:
            parts.append(
                "their factors match the true distribution"
                if rec["factor_match"]
                else f"their factors do not match the true distribution ({rec.get('mismatch') or 'see details'})"
            )
        if rec.get("coverage_ok") is False and nv >= cfg.min_novel_valid_rate:
            parts.append("they miss part of factor space")
        if not copies_ok:
            parts.append(f"copy rate {100 * cr:.1f} % is above {100 * cfg.max_copy_rate:.1f} %")
        why["generalization"] = "; ".join(parts)

    auc = value(probes, "memorization.mia_auc")
    if cr is None:
        verdict["memorization"] = "n/a"
        why["memorization"] = "copy search did not run"
    else:
        ok = cr <= cfg.max_copy_rate and (auc is None or auc <= cfg.max_mia_auc)
        verdict["memorization"] = "pass" if ok else "fail"
        s = f"{100 * cr:.1f} % of samples are training copies (limit {100 * cfg.max_copy_rate:.1f} %)"
        if auc is not None:
            s += f", membership-inference AUC {auc:.2f} (limit {cfg.max_mia_auc:.2f})"
        why["memorization"] = s
    return verdict, why


def parse_gate(expr: str) -> tuple[str, str, float]:
    """``'memorization.copy_rate<=0.001'`` -> ``("memorization.copy_rate", "<=", 0.001)``; checks the key."""
    m = GATE_RE.match(str(expr))
    if not m:
        raise DiffauditError(
            f"gate {expr!r} is malformed; write GROUP.METRIC OP NUMBER with OP one of < <= > >=, "
            "e.g. 'memorization.copy_rate<=0.001'."
        )
    key = f"{m.group(1)}.{m.group(2)}"
    row = schema.get(key)
    if row is None or row.key == key and row.is_family:
        raise DiffauditError(
            f"gate {expr!r} names unknown metric {key!r}; valid keys: {', '.join(schema.gate_keys())}."
        )
    return key, m.group(3), float(m.group(4))


def evaluate_gates(report: dict, gates: list[tuple[str, str, float]]) -> list[dict]:
    """Each gate -> {"gate", "key", "value", "passed"}. A gate on a metric that was not measured fails."""
    out = []
    for key, op, thr in gates:
        v = value(report.get("probes", {}), key)
        ok = v is not None and OPS[op](v, thr)
        out.append({"gate": f"{key}{op}{thr:g}", "key": key, "value": v, "passed": bool(ok)})
    return out
