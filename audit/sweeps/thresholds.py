"""Fit the two thresholds of a sweep: n1* (distributional convergence) and n2* (latent-factor recovery).

Per curve group -- one (dataset, its parameters incl. d, model) with cells at several n and seeds --
each transition metric y(n) in [0, 1], increasing when the model gets better:

- threshold 1, ``fd_ratio`` = FD_floor / FD (clipped to [0, 1]). FD is the generated-vs-holdout Frechet
  distance (``probes.convergence.fd``); FD_floor the data-vs-data FD at the same sample sizes (a fresh
  true draw vs the same holdout; ``sweep.fd_floor`` in each cell). If the excess FD/FD_floor - 1 decays as
  a power of n, fd_ratio = 1 / (1 + excess) is exactly a logistic in log n, and the level 0.5 is
  FD = 2 x floor (the "within 2x of data-vs-data" convention of the controls). Both FD and the floor
  carry a finite-sample bias that grows with d; with a fixed audit size, n1* is therefore partly a
  property of the audit size (compare with the gaussian control's curve, which has the same bias).
- threshold 2, ``novel_valid`` = the novel-valid rate (``probes.factors.novel_valid_rate``), and
  ``not_copied`` = 1 - copy rate (``probes.memorization.copy_rate``).

Fit: y = sigmoid(a + b log n), by logistic regression with fractional targets (binomial deviance; a
convex problem, solved by Newton's method with a tiny ridge on b so a step-like curve stays finite).
n* is where the fitted curve crosses ``level`` (default 0.5): log n* = (logit(level) - a) / b.
A curve whose mean over seeds is on one side of the level at every n of the grid does not cross inside
it: it is recorded as such (``status`` "above": passed before the smallest n; "below": not reached by
the largest n), not fitted. Intervals: percentile bootstrap over seeds (clusters, when >= 2 seeds)
and over cells (resampled with replacement); all metrics of a group share each resample, so the ratio
n2*/n1* gets a joint interval, which says which transition came first. Across d (>= 2 values with a
fitted n*): log n* = c + b log d by least squares, b's interval from the same bootstrap replicates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from diffaudit.errors import DiffauditError

SCHEMA = "diffaudit.thresholds/1"
METRICS = {
    "fd_ratio": {"threshold": 1, "label": "FD floor / FD (threshold 1)"},
    "novel_valid": {"threshold": 2, "label": "novel-valid rate (threshold 2)"},
    "not_copied": {"threshold": 2, "label": "1 - copy rate (threshold 2)"},
}
RIDGE = 1e-3


# ------------------------------------------------------------------------------------------- reading


def _value(report: dict, *path: str) -> float | None:
    node = report
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    if isinstance(node, dict):
        node = node.get("value")
    if node is None:
        return None
    try:
        v = float(node)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def load_cells(root: str | Path) -> list[dict]:
    """One row per complete cell of ``root/cells`` (a cell is complete iff its report.json exists)."""
    root = Path(root)
    cells_dir = root / "cells"
    if not root.is_dir():
        raise DiffauditError(f"{root} is not a folder; pass the --out folder of a diffaudit sweep.")
    rows = []
    paths = sorted(p for p in cells_dir.iterdir() if not p.name.startswith(".")) if cells_dir.is_dir() else []
    for p in paths:
        rp = p / "report.json"
        if not rp.is_file():
            continue
        try:
            rep = json.loads(rp.read_text(encoding="utf-8"))
            cell = json.loads((p / "cell.json").read_text(encoding="utf-8")) if (p / "cell.json").is_file() else {}
        except (OSError, json.JSONDecodeError):
            continue
        cell = {**cell, **(rep.get("sweep", {}).get("cell") or {})}
        if "n_train" not in cell or "dataset" not in cell:
            continue
        fd = _value(rep, "probes", "convergence", "fd")
        floor = _value(rep, "sweep", "fd_floor")
        copy = _value(rep, "probes", "memorization", "copy_rate")
        params = dict(cell.get("params") or {})
        rows.append({
            "cell_id": p.name,
            "dataset": cell["dataset"],
            "params": params,
            "d": cell.get("d", params.get("d")),
            "n": int(cell["n_train"]),
            "seed": int(cell.get("seed", 0)),
            "model": cell.get("model_label") or "model",
            "steps": (rep.get("sweep", {}).get("train") or {}).get("steps", cell.get("steps")),
            "fd": fd,
            "fd_floor": floor,
            "fd_train_holdout": _value(rep, "probes", "convergence", "fd_train_holdout"),
            "copy_rate": copy,
            "novel_valid_rate": _value(rep, "probes", "factors", "novel_valid_rate"),
            "validity": _value(rep, "probes", "factors", "validity"),
            "fd_ratio": None if (fd is None or floor is None) else (1.0 if fd <= 0 else min(1.0, max(0.0, floor / fd))),
            "novel_valid": _value(rep, "probes", "factors", "novel_valid_rate"),
            "not_copied": None if copy is None else 1.0 - copy,
        })
    if not rows:
        raise DiffauditError(f"{root} holds no complete sweep cells (cells/<id>/report.json); run 'diffaudit sweep' first.")
    return rows


# ------------------------------------------------------------------------------------------- fitting


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> tuple[float, float]:
    """Minimise sum_i [-y_i log p_i - (1 - y_i) log(1 - p_i)] + ridge k b^2, p = sigmoid(a + b x).

    x, y: (k,) float64, y in [0, 1]. Returns (a, b). See ``fit_logistic_batch``.
    """
    a, b = fit_logistic_batch(np.asarray(x, np.float64)[None], np.asarray(y, np.float64)[None], ridge=ridge)
    return float(a[0]), float(b[0])


def fit_logistic_batch(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
                       ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """B independent fits at once: x, y, w (B, k) (w = per-point weights, 0 drops a point).

    Binomial deviance with fractional targets is convex in (a, b); Newton's method with step halving
    per fit, on x standardised per fit (the ridge acts on the standardised slope, so it does not depend
    on the units of n). Returns (a (B,), b (B,)) in the original x units.
    """
    x = np.asarray(x, np.float64)
    y = np.clip(np.asarray(y, np.float64), 0.0, 1.0)
    w = np.ones_like(x) if w is None else np.asarray(w, np.float64)
    sw = np.maximum(w.sum(1), 1e-12)
    xm = (w * x).sum(1) / sw
    xs = np.sqrt(np.maximum((w * (x - xm[:, None]) ** 2).sum(1) / sw, 1e-24))
    u = (x - xm[:, None]) / xs[:, None]
    lam = ridge * sw

    def obj(a, b):
        z = a[:, None] + b[:, None] * u
        return (w * (np.logaddexp(0, z) - y * z)).sum(1) + lam * b**2

    a = np.zeros(len(x))
    b = np.zeros(len(x))
    f = obj(a, b)
    active = np.ones(len(x), bool)
    for _ in range(100):
        if not active.any():
            break
        z = a[:, None] + b[:, None] * u
        p = 1 / (1 + np.exp(-z))
        r = w * (p - y)
        ga, gb = r.sum(1), (r * u).sum(1) + 2 * lam * b
        h = w * p * (1 - p)
        haa = h.sum(1) + 1e-9
        hab = (h * u).sum(1)
        hbb = (h * u * u).sum(1) + 2 * lam
        det = haa * hbb - hab**2
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        t = np.where(active, 1.0, 0.0)
        for _ in range(30):
            f_new = obj(a - t * da, b - t * db)
            bad = active & (f_new > f + 1e-14)
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        a_new, b_new = a - t * da, b - t * db
        f_new = obj(a_new, b_new)
        done = (np.abs(f - f_new) < 1e-12 * np.maximum(1.0, np.abs(f))) | (np.maximum(np.abs(ga), np.abs(gb)) < 1e-10)
        a, b, f = a_new, b_new, f_new
        active &= ~done
    b_out = b / xs
    return a - b_out * xm, b_out


def crossing(a: float, b: float, level: float) -> float | None:
    """log n where sigmoid(a + b log n) = level (None for a flat fit)."""
    if abs(b) < 1e-12:
        return None
    return (_logit(level) - a) / b


@dataclass
class _Curve:
    x: np.ndarray  # log n per cell
    y: np.ndarray  # metric per cell
    seed: np.ndarray  # seed per cell


def _side(x: np.ndarray, y: np.ndarray, level: float) -> str:
    """'cross' | 'above' | 'below' from the per-n mean over seeds."""
    ns = np.unique(x)
    means = np.array([y[x == v].mean() for v in ns])
    if np.all(means >= level):
        return "above"
    if np.all(means < level):
        return "below"
    return "cross"


def _resample(seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cell indices of one bootstrap resample: seeds as clusters (if >= 2), then cells within."""
    uniq = np.unique(seeds)
    chosen = rng.choice(uniq, size=len(uniq), replace=True) if len(uniq) >= 2 else uniq
    idx = []
    for s in chosen:
        cells = np.flatnonzero(seeds == s)
        idx.append(rng.choice(cells, size=len(cells), replace=True))
    return np.concatenate(idx)


def fit_group(rows: list[dict], *, level: float = 0.5, n_boot: int = 1000, seed: int = 0,
              metrics: tuple[str, ...] = tuple(METRICS)) -> dict:
    """Fit every metric of one curve group; returns the JSON-ready result (with bootstrap draws)."""
    n_all = np.array([r["n"] for r in rows], np.float64)
    seeds_all = np.array([r["seed"] for r in rows])
    grid = sorted({int(v) for v in n_all})
    lo_x, hi_x = math.log(grid[0]), math.log(grid[-1])
    out: dict = {"n_grid": grid, "seeds": sorted({int(s) for s in seeds_all}), "n_cells": len(rows), "curves": {}}
    curves: dict[str, _Curve] = {}
    for m in metrics:
        ok = np.array([r[m] is not None for r in rows])
        c = _Curve(np.log(n_all[ok]), np.array([r[m] for r in rows if r[m] is not None], np.float64), seeds_all[ok])
        info: dict = {"threshold": METRICS[m]["threshold"], "level": level}
        ns = np.unique(c.x)
        info["points"] = [{"n": int(round(math.exp(v))), "y": float(c.y[c.x == v].mean()),
                           "ys": [float(t) for t in c.y[c.x == v]]} for v in ns]
        if len(ns) < 3:
            info.update(status="insufficient", n_star=None, n_star_ci=None,
                        message=f"{METRICS[m]['label']}: needs values at >= 3 training-set sizes, has {len(ns)}.")
            out["curves"][m] = info
            continue
        side = _side(c.x, c.y, level)
        a, b = fit_logistic(c.x, c.y)
        info.update(a=a, b=b)
        if side != "cross":
            where = (f"already above {level} at the smallest n = {grid[0]}: n* < {grid[0]}" if side == "above"
                     else f"still below {level} at the largest n = {grid[-1]}: n* > {grid[-1]}")
            info.update(status=side, n_star=None, n_star_ci=None,
                        message=f"{METRICS[m]['label']} does not cross {level} inside the grid ({where}).")
        else:
            xs = crossing(a, b, level)
            if xs is None or b <= 0 or not (lo_x <= xs <= hi_x):
                info.update(status="no-fit", n_star=None, n_star_ci=None,
                            message=f"{METRICS[m]['label']}: the curve is not increasing through {level}; no n* fitted.")
            else:
                info.update(status="fit", n_star=math.exp(xs), n_star_ci=None, log_n_star=xs)
        curves[m] = c
        out["curves"][m] = info
    # joint bootstrap over cells (and seeds): every metric on the same resample
    rng = np.random.default_rng(seed)
    idx = np.stack([_resample(seeds_all, rng) for _ in range(n_boot)])  # (B, k)
    boots: dict[str, list[float]] = {}
    for m in curves:
        vals = np.array([np.nan if r[m] is None else r[m] for r in rows], np.float64)
        X = np.log(n_all)[idx]
        Y = vals[idx]
        W = np.isfinite(Y).astype(np.float64)
        Y = np.nan_to_num(Y)
        a, b = fit_logistic_batch(X, Y, W)
        n_distinct = np.array([len(np.unique(X[i][W[i] > 0])) for i in range(len(X))])
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = (_logit(level) - a) / b
        mean_y = (W * Y).sum(1) / np.maximum(W.sum(1), 1)
        # a resample with no increasing crossing puts n* beyond the grid edge it lies on
        flat = ~np.isfinite(xs) | (b <= 0)
        xs = np.where(flat, np.where(mean_y < level, hi_x + 1.0, lo_x - 1.0), xs)
        xs = np.clip(xs, lo_x - 1.0, hi_x + 1.0)
        xs[n_distinct < 2] = np.nan
        boots[m] = [float(v) for v in xs]
    for m, info in out["curves"].items():
        if info["status"] == "fit":
            v = np.array(boots[m])
            v = v[np.isfinite(v)]
            if len(v):
                lo, hi = np.quantile(v, [0.025, 0.975])
                info["n_star_ci"] = [float(math.exp(lo)), float(math.exp(hi))]
                info["ci_censored"] = bool(lo < lo_x or hi > hi_x)
            info["message"] = (f"{METRICS[m]['label']} crosses {level} at n* = {info['n_star']:.0f}"
                               + (f" [{info['n_star_ci'][0]:.0f}, {info['n_star_ci'][1]:.0f}]" if info["n_star_ci"] else ""))
    out["_boot"] = {m: boots[m] for m in curves}
    out["_bounds"] = (lo_x, hi_x)
    return out


def _bound(info: dict, lo_x: float, hi_x: float) -> tuple[float, float] | None:
    """An interval for log n* usable for ordering, also for curves that do not cross in the grid."""
    if info["status"] == "fit":
        return (math.log(info["n_star_ci"][0]), math.log(info["n_star_ci"][1])) if info.get("n_star_ci") else (
            info["log_n_star"], info["log_n_star"])
    if info["status"] == "above":
        return (-math.inf, lo_x)
    if info["status"] == "below":
        return (hi_x, math.inf)
    return None


def which_first(group: dict) -> dict:
    """Compare n1* (fd_ratio) with n2* (novel_valid, else not_copied): ratio n2*/n1* and its interval."""
    curves = group["curves"]
    lo_x, hi_x = group["_bounds"]
    c1 = curves.get("fd_ratio")
    m2 = "novel_valid" if curves.get("novel_valid", {}).get("status") not in (None, "insufficient", "no-fit") else "not_copied"
    c2 = curves.get(m2)
    res: dict = {"threshold_2_metric": m2}
    if not c1 or not c2:
        res.update(first=None, statement="not enough metrics to compare the two thresholds.")
        return res
    b1, b2 = _bound(c1, lo_x, hi_x), _bound(c2, lo_x, hi_x)
    if b1 is None or b2 is None:
        res.update(first=None, statement="one of the transitions could not be located; no order stated.")
        return res
    if c1["status"] == "fit" and c2["status"] == "fit":
        d = np.array(group["_boot"][m2]) - np.array(group["_boot"]["fd_ratio"])
        d = d[np.isfinite(d)]
        r = math.exp(c2["log_n_star"] - c1["log_n_star"])
        ci = [float(math.exp(q)) for q in np.quantile(d, [0.025, 0.975])] if len(d) else None
        res.update(ratio_n2_over_n1=r, ratio_ci=ci)
        if ci and ci[1] < 1:
            first = "threshold 2"
        elif ci and ci[0] > 1:
            first = "threshold 1"
        else:
            first = "indistinguishable"
        ci_txt = f" [{ci[0]:.2g}, {ci[1]:.2g}]" if ci else ""
        res["first"] = first
        res["statement"] = (f"{first} first: n2*/n1* = {r:.2g}{ci_txt} (n1* = {c1['n_star']:.0f}, "
                            f"n2* = {c2['n_star']:.0f} from {m2})" if first != "indistinguishable" else
                            f"the order is not resolved: n2*/n1* = {r:.2g}{ci_txt} includes 1.")
        return res
    if b1[1] < b2[0]:
        first = "threshold 1"
    elif b2[1] < b1[0]:
        first = "threshold 2"
    else:
        first = "indistinguishable"
    res["first"] = first
    desc = {k: (c["message"]) for k, c in (("1", c1), ("2", c2))}
    res["statement"] = (f"{first} first (from the intervals: {desc['1']}; {desc['2']})" if first != "indistinguishable"
                        else f"the order is not resolved ({desc['1']}; {desc['2']}).")
    return res


def _group_key(r: dict) -> tuple:
    return (r["dataset"], json.dumps(r["params"], sort_keys=True), r["model"])


def fit_exponents(groups: list[dict], level_metrics=tuple(METRICS)) -> list[dict]:
    """Across d: log n* = c + b log d per (dataset, other params, model, metric), with bootstrap CI on b."""
    fam: dict[tuple, list[dict]] = {}
    for g in groups:
        if g.get("d") is None:
            continue
        other = {k: v for k, v in g["params"].items() if k != "d"}
        fam.setdefault((g["dataset"], json.dumps(other, sort_keys=True), g["model"]), []).append(g)
    out = []
    for (ds, other, model), gs in fam.items():
        for m in level_metrics:
            pts = [(g["d"], g["curves"][m]) for g in gs if m in g["curves"] and g["curves"][m]["status"] == "fit"]
            ds_all = sorted({g["d"] for g in gs})
            entry = {"dataset": ds, "params": json.loads(other), "model": model, "metric": m,
                     "threshold": METRICS[m]["threshold"], "d": [p[0] for p in pts],
                     "n_star": [p[1]["n_star"] for p in pts]}
            if len(pts) < 2:
                if len(ds_all) >= 2:
                    entry.update(b=None, b_ci=None, status="insufficient",
                                 message=f"{METRICS[m]['label']}: n* fitted at {len(pts)} of {len(ds_all)} values of d; "
                                         "an exponent needs >= 2.")
                    out.append(entry)
                continue
            ld = np.log([p[0] for p in pts])
            ln = np.array([p[1]["log_n_star"] for p in pts])
            b, c = np.polyfit(ld, ln, 1)
            boots = [np.array(g["_boot"][m]) for g in gs if m in g["curves"] and g["curves"][m]["status"] == "fit"]
            k = min(len(v) for v in boots)
            bb = []
            for i in range(k):
                yy = np.array([v[i] for v in boots])
                if np.all(np.isfinite(yy)):
                    bb.append(np.polyfit(ld, yy, 1)[0])
            ci = [float(q) for q in np.quantile(bb, [0.025, 0.975])] if bb else None
            entry.update(b=float(b), c=float(c), b_ci=ci, status="fit",
                         message=f"{METRICS[m]['label']}: n* ~ d^{b:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
            out.append(entry)
    return out


def compute_thresholds(root: str | Path, *, level: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict:
    """Read a sweep folder and fit everything; returns the thresholds.json document."""
    if not 0 < level < 1:
        raise DiffauditError(f"--level must be strictly between 0 and 1, got {level}.")
    if n_boot < 10:
        raise DiffauditError(f"--n-boot must be >= 10, got {n_boot}.")
    rows = load_cells(root)
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault(_group_key(r), []).append(r)
    groups = []
    for (ds, params, model), rs in sorted(by.items()):
        g = fit_group(rs, level=level, n_boot=n_boot, seed=seed)
        p = json.loads(params)
        steps = sorted({(r["n"], r["steps"]) for r in rs if r["steps"] is not None})
        g.update(dataset=ds, params=p, d=rs[0]["d"], model=model,
                 budget=[{"n": n, "steps": s} for n, s in steps])
        g["order"] = which_first(g)
        n1 = g["curves"].get("fd_ratio")
        g["n1_star"] = None if n1 is None else {k: n1.get(k) for k in ("status", "n_star", "n_star_ci", "message")}
        m2 = g["order"].get("threshold_2_metric")
        c2 = g["curves"].get(m2) if m2 else None
        g["n2_star"] = None if c2 is None else {"metric": m2, **{k: c2.get(k) for k in ("status", "n_star", "n_star_ci", "message")}}
        groups.append(g)
    exps = fit_exponents(groups)
    for g in groups:
        g.pop("_boot", None)
        g.pop("_bounds", None)
    return {
        "schema": SCHEMA,
        "sweep": str(Path(root)),
        "level": level,
        "n_boot": n_boot,
        "metrics": {m: {**v, "definition": _DEFS[m]} for m, v in METRICS.items()},
        "n_cells": len(rows),
        "groups": groups,
        "exponents": exps,
    }


_DEFS = {
    "fd_ratio": "min(1, FD_floor / FD); FD = probes.convergence.fd (generated vs holdout), FD_floor = data-vs-data "
                "FD at the same sample sizes (sweep.fd_floor); 0.5 <=> FD = 2 x floor",
    "novel_valid": "probes.factors.novel_valid_rate",
    "not_copied": "1 - probes.memorization.copy_rate",
}


# ----------------------------------------------------------------------------------------------- HTML


def _group_title(g: dict) -> str:
    ps = ", ".join(f"{k}={v}" for k, v in sorted(g["params"].items()))
    return f"{g['dataset']} ({ps}) -- {g['model']}"


def render_html(doc: dict) -> str:
    """A self-contained page (plotly inlined): one panel per group, fitted curves and n* intervals."""
    import plotly.graph_objects as go

    colors = {"fd_ratio": "#1f77b4", "novel_valid": "#2ca02c", "not_copied": "#d62728"}
    parts = []
    first = True
    for g in doc["groups"]:
        fig = go.Figure()
        for m, c in g["curves"].items():
            pts = c["points"]
            ns = [p["n"] for p in pts]
            fig.add_trace(go.Scatter(x=[p["n"] for p in pts for _ in p["ys"]], y=[y for p in pts for y in p["ys"]],
                                     mode="markers", name=METRICS[m]["label"], marker={"color": colors[m]},
                                     legendgroup=m))
            if "a" in c and c["status"] in ("fit", "above", "below"):
                xx = np.linspace(math.log(min(ns)), math.log(max(ns)), 200)
                yy = 1 / (1 + np.exp(-(c["a"] + c["b"] * xx)))
                fig.add_trace(go.Scatter(x=np.exp(xx), y=yy, mode="lines", line={"color": colors[m]},
                                         showlegend=False, legendgroup=m, hoverinfo="skip"))
            if c["status"] == "fit":
                fig.add_vline(x=c["n_star"], line={"color": colors[m], "dash": "dash"})
                if c.get("n_star_ci"):
                    fig.add_vrect(x0=c["n_star_ci"][0], x1=c["n_star_ci"][1], fillcolor=colors[m], opacity=0.12,
                                  line_width=0)
        fig.add_hline(y=doc["level"], line={"color": "grey", "dash": "dot"})
        fig.update_layout(title=_group_title(g), xaxis={"type": "log", "title": "n (training-set size)"},
                          yaxis={"title": "metric (higher = better)", "range": [-0.05, 1.05]}, height=420,
                          margin={"t": 50, "b": 40})
        notes = "".join(f"<li>{_esc(c['message'])}</li>" for c in g["curves"].values())
        notes += f"<li><b>{_esc(g['order']['statement'])}</b></li>"
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if first else False) + f"<ul>{notes}</ul>")
        first = False
    if doc["exponents"]:
        rows = "".join(f"<tr><td>{_esc(e['dataset'])}</td><td>{_esc(e['model'])}</td><td>{_esc(e['metric'])}</td>"
                       f"<td>{_esc(e['message'])}</td></tr>" for e in doc["exponents"])
        parts.append(f"<h2>Exponents n* ~ d^b</h2><table border=1 cellpadding=4><tr><th>dataset</th><th>model</th>"
                     f"<th>metric</th><th>fit</th></tr>{rows}</table>")
    defs = "".join(f"<li><b>{m}</b>: {_esc(v['definition'])}</li>" for m, v in doc["metrics"].items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>diffaudit thresholds</title></head>"
            f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'><h1>Thresholds of {_esc(doc['sweep'])}</h1>"
            f"<p>{doc['n_cells']} cells; level {doc['level']}; {doc['n_boot']} bootstrap resamples over seeds and cells.</p>"
            f"<ul>{defs}</ul>{''.join(parts)}</body></html>")


def _esc(s) -> str:
    import html

    return html.escape(str(s))


# ------------------------------------------------------------------------------------------------ CLI


@click.command("thresholds")
@click.argument("sweep_dir", type=click.Path(path_type=Path))
@click.option("--level", type=float, default=0.5, show_default=True, help="Crossing level of each metric.")
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples for the intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
def thresholds_cmd(sweep_dir, level, n_boot, seed):
    """Fit n1* (threshold 1) and n2* (threshold 2) with intervals from a sweep folder.

    Writes DIR/thresholds.json and DIR/thresholds.html. A curve that does not cross inside the
    n grid is reported as such (exit 0); a folder with no complete cells is an error (exit 2).

    \b
    Example:
      diffaudit sweep --preset quick --out runs/quick && diffaudit thresholds runs/quick
    """
    from diffaudit.fileio import atomic_write_json, atomic_write_text

    doc = compute_thresholds(sweep_dir, level=level, n_boot=n_boot, seed=seed)
    atomic_write_json(Path(sweep_dir) / "thresholds.json", doc)
    atomic_write_text(Path(sweep_dir) / "thresholds.html", render_html(doc))
    for g in doc["groups"]:
        click.echo(_group_title(g))
        for c in g["curves"].values():
            click.echo(f"  {c['message']}")
        click.echo(f"  => {g['order']['statement']}")
    for e in doc["exponents"]:
        click.echo(f"{e['dataset']} {e['model']}: {e['message']}")
    click.echo(f"wrote {Path(sweep_dir) / 'thresholds.json'} and thresholds.html")
