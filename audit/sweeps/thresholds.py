"""Fit the two thresholds of a sweep: n1* (distributional convergence) and n2* (latent-factor recovery).

A curve group is one (dataset, its parameters incl. d, model) with cells at several n and seeds. Its
transition metrics are the schema's sweep rows (``diffaudit.report.schema.sweep_metric``):

- threshold 1 ("n1"): ``convergence.bulk_error`` = max(E1, |m|^2), the larger of the whitened second-moment
  error E1 (``probes.moment_error``) and the whitened squared mean shift, lower is better; the audit passes it
  at <= eps1 (``report["thresholds"]["eps1"]``, default 0.1). For an n-sample learner both parts are
  ~ (d + kappa) / n (E1 exactly, |m|^2 ~ d / n). Below, "E1" stands for this statistic. Fit: E[E1] = exp(a - b log n) by quasi-likelihood (McCullagh & Nelder 1989,
  ch. 9) with Var = c2 mu^2 + s2: a relative part (the seed-to-seed spread of a learner's error scales with
  it; c2 by a moment equation) plus each cell's reported estimation variance s2 (from its CI), which rules
  near E1 = 0. Why not least squares on log E1: E1 is an *unbiased* estimate and is slightly negative near
  0, so log E1 is undefined there and biased (Jensen) elsewhere, and dropping the non-positive cells biases
  the large-n end upwards; the quasi-likelihood uses E1 as it is (its estimating equation
  sum (y - mu) mu x / V = 0 is unbiased whenever the mean model is right; V only sets the weights).
  b (~1 for an n-sample learner) is reported with its interval; n1* = exp((a - log eps1) / b).
- threshold 2 ("n2"): the latent-factor recovery score in [0, 1] (``probes.factors``), higher is better,
  crossing ``level`` (default 0.5); and ``not_copied`` = 1 - copy rate (``probes.memorization``) as a
  secondary curve, fitted the same way. Fit: a logistic in log n with FREE plateaus,
  y = L + (U - L) sigmoid(k (log n - m)), 0 <= L <= U <= 1, k > 0, by least squares: (L, U) enter linearly,
  so they are solved in closed form for every (k, m) of a grid (variable projection, Golub & Pereyra
  1973) that is then refined by zooming; no starting value can strand the fit. n2* is where the fitted
  curve crosses ``level``; a fit whose plateaus do not bracket the level does not cross.

A curve whose per-n mean over seeds is on one side of the level at every n of the grid does not cross
inside it: it gets ``status`` "above" (on the passing side everywhere: n* < smallest n) or "below" (not
passed at the largest n: n* > largest n), and is not fitted.

Intervals (95 %). The replicates are the seeds: cells of one seed are correlated (nested training sets,
a shared holdout), seeds are independent. With >= 2 seeds, whole seed curves are resampled with
replacement and every resample is refitted; all curves of a group share the resamples, so n2*/n1* gets a
joint interval (which transition comes first). A percentile interval over S resampled clusters is too
narrow for small S (its variance is (S-1)/S of the plug-in one, and its quantiles are normal, not t), so
its half-widths are scaled about the estimate by sqrt(S / (S-1)) t_{S-1, 0.975} / z_0.975 (the correction
behind Hesterberg 2015's expanded percentile interval, "What teachers should know about the bootstrap").
With one seed: a parametric bootstrap around the fitted curve from each cell's sampling error (its
reported CI read as a normal sd; a binomial sd for a rate with a known number of samples; the fitted
variance model for E1), inflated by the Pearson dispersion of the fit when the cells scatter more than
that (training noise is not in a cell's CI); with no reported errors at all, the residual scatter.
A resample whose refit does not cross inside the grid is *censored*: ``censored_share`` is reported, the
interval is computed from the crossing resamples only (never imputed at an edge), and it is null, with
the reason, when more than ``MAX_CENSORED`` of the resamples are censored. For a curve that does not
cross, ``censored_share`` is the share of resamples whose per-n means do not cross either.
Across d (>= 2 values with a fitted n*): log n* = c + b log d by least squares, b's interval from the
same replicates (draw i of every group; each group has its own resamples, so they are independent).
Measured coverage on synthetic sweeps with known curves: see tests/audit/sweeps/test_thresholds.py.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy.special import ndtri, stdtrit

from diffaudit.errors import DiffauditError
from diffaudit.fileio import jsonable
from diffaudit.pipeline.config import AuditConfig
from diffaudit.report import schema

SCHEMA = "diffaudit.thresholds/2"
ALPHA = 0.05  # intervals are 1 - ALPHA
MAX_CENSORED = 0.5  # above this share of censored resamples an interval is not reported
DEFAULT_EPS1 = AuditConfig.eps1  # the audit's own threshold-1 tolerance, when a cell does not record it

# per transition ("sweep" field of the schema row): the fit family and where the crossing level comes from
FIT = {
    "n1": {"family": "power", "level": "eps1"},  # E1 <= eps1 of the audit's thresholds
    "n2": {"family": "logistic4", "level": "level"},  # the --level option (default 0.5)
}
# secondary curve of threshold 2: the complement of the copy rate, fitted like n2
NOT_COPIED = "not_copied"
COPY_RATE = schema.get("memorization.copy_rate")
Z = float(ndtri(1 - ALPHA / 2))

# logistic grid (x = log n): slopes from a transition spread over ~3 decades of n to a step within a
# tenth of a factor e; centres up to 1.5 (x4.5 in n) beyond the grid, so an edge transition is still fitted
K_GRID = np.geomspace(0.3, 40.0, 20)
M_PAD = 1.5


@dataclass(frozen=True)
class CurveSpec:
    name: str  # key in the output (the schema key, or NOT_COPIED)
    key: str  # the schema row read from report.json
    complement: bool  # the curve is 1 - metric
    role: str  # "n1" | "n2"
    better: str  # "lower" | "higher" (of the curve)
    label: str
    unit: str


def curve_specs() -> list[CurveSpec]:
    """The curves fitted per group: the schema's n1 and n2 rows, then 1 - copy rate."""
    out = []
    for role in FIT:
        m = schema.sweep_metric(role)
        out.append(CurveSpec(m.key, m.key, False, role, m.better or "higher", m.label, m.unit))
    out.append(
        CurveSpec(NOT_COPIED, COPY_RATE.key, True, "n2", "higher", f"1 - {COPY_RATE.label}", COPY_RATE.unit)
    )
    return out


# ------------------------------------------------------------------------------------------- reading


def _metric(report: dict, key: str) -> tuple[float | None, float | None]:
    """(value, sd from its CI) of metric ``group.name`` in ``report["probes"]``; None where absent."""
    g, _, k = key.partition(".")
    node = ((report.get("probes") or {}).get(g) or {}).get(k)
    if isinstance(node, dict):
        v, ci = node.get("value"), node.get("ci")
    else:
        v, ci = node, None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None, None
    if not math.isfinite(v):
        return None, None
    sd = None
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        try:
            lo, hi = float(ci[0]), float(ci[1])
            if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
                sd = (hi - lo) / (2 * Z)
        except (TypeError, ValueError):
            pass
    return v, sd


def _int_or_none(v: Any, low: int) -> int | None:
    """``v`` as an integer >= ``low`` (integral floats allowed); None if it is not one."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v != int(v):
        return None
    return int(v) if v >= low else None


def _cell_row(p: Path, rep: Any, cell: Any, specs: list[CurveSpec]) -> dict | str:
    """The row of cell folder ``p``, or why it is malformed (a str)."""
    if not isinstance(rep, dict):
        return f"report.json holds a {type(rep).__name__}, not an object"
    if not isinstance(cell, dict):
        return f"cell.json holds a {type(cell).__name__}, not an object"
    sweep = rep.get("sweep") or {}
    if not isinstance(sweep, dict) or not isinstance(sweep.get("cell") or {}, dict):
        return "report.json's sweep is not an object"
    if not isinstance(rep.get("probes") or {}, dict) or not all(
        isinstance(g, dict) or g is None for g in (rep.get("probes") or {}).values()
    ):
        return "report.json's probes are not objects"
    cell = {**cell, **(sweep.get("cell") or {})}
    if "n_train" not in cell or "dataset" not in cell:
        return ""  # not a sweep cell (e.g. a plain audit copied in): skipped silently, as before
    n = _int_or_none(cell["n_train"], 1)
    seed = _int_or_none(cell.get("seed", 0), 0)
    if n is None:
        return f"n_train = {cell['n_train']!r} is not a positive integer"
    if seed is None:
        return f"seed = {cell.get('seed')!r} is not a non-negative integer"
    if not isinstance(cell["dataset"], str) or not isinstance(cell.get("model_label") or "model", str):
        return "dataset or model_label is not a string"
    params = cell.get("params") or {}
    if not isinstance(params, dict):
        return "params is not an object"
    d = cell.get("d", params.get("d"))
    if d is not None and _int_or_none(d, 1) is None:
        return f"d = {d!r} is not a positive integer"
    thr = rep.get("thresholds") or {}
    eps1 = thr.get("eps1") if isinstance(thr, dict) else None
    if eps1 is not None and not (
        isinstance(eps1, int | float) and not isinstance(eps1, bool) and math.isfinite(eps1) and eps1 > 0
    ):
        return f"thresholds.eps1 = {eps1!r} is not a positive number"
    train = sweep.get("train") or {}
    steps = train.get("steps", cell.get("steps")) if isinstance(train, dict) else cell.get("steps")
    if steps is not None and _int_or_none(steps, 0) is None:
        return f"steps = {steps!r} is not a non-negative integer"
    n_samples = cell.get("n_samples")
    if n_samples is not None and _int_or_none(n_samples, 1) is None:
        return f"n_samples = {n_samples!r} is not a positive integer"
    values, sds = {}, {}
    for c in specs:
        v, sd = _metric(rep, c.key)
        values[c.name] = None if v is None else (1.0 - v if c.complement else v)
        sds[c.name] = sd
    return {
        "cell_id": p.name,
        "dataset": cell["dataset"],
        "params": dict(params),
        "d": None if d is None else int(d),
        "n": n,
        "seed": seed,
        "model": cell.get("model_label") or "model",
        "steps": None if steps is None else int(steps),
        "n_samples": None if n_samples is None else int(n_samples),
        "eps1": None if eps1 is None else float(eps1),
        "values": values,
        "sds": sds,
    }


def load_cells(root: str | Path, *, skipped: list[tuple[str, str]] | None = None) -> list[dict]:
    """One row per complete cell of ``root/cells`` (a cell is complete iff its report.json exists).

    ``values`` / ``sds``: per curve name (``curve_specs``), the cell's value and the sd read from its CI
    (None where the cell does not have the metric, e.g. a cell written before the metric existed).

    A malformed cell (unreadable or non-UTF-8 JSON, nesting too deep to parse, a report that is not an
    object, ``n_train`` that is not a positive integer, ...) is skipped, as the app does: one
    ``UserWarning`` gives their count, and ``skipped`` (if given) receives ``(cell_id, why)`` for each.
    """
    root = Path(root)
    cells_dir = root / "cells"
    if not root.is_dir():
        raise DiffauditError(f"{root} is not a folder; pass the --out folder of a diffaudit sweep.")
    specs = curve_specs()
    rows, bad = [], []
    paths = sorted(p for p in cells_dir.iterdir() if not p.name.startswith(".")) if cells_dir.is_dir() else []
    for p in paths:
        rp = p / "report.json"
        if not rp.is_file():
            continue
        try:
            rep = json.loads(rp.read_text(encoding="utf-8"))
            cell = (
                json.loads((p / "cell.json").read_text(encoding="utf-8"))
                if (p / "cell.json").is_file()
                else {}
            )
        except OSError:
            continue  # being written or removed right now: not a complete cell
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            bad.append((p.name, f"not readable JSON ({type(e).__name__})"))
            continue
        row = _cell_row(p, rep, cell, specs)
        if isinstance(row, dict):
            rows.append(row)
        elif row:
            bad.append((p.name, row))
    if bad:
        warnings.warn(
            f"skipped {len(bad)} malformed cell(s) of {root} (e.g. {bad[0][0]}: {bad[0][1]}).",
            UserWarning,
            stacklevel=2,
        )
        if skipped is not None:
            skipped.extend(bad)
    if not rows:
        raise DiffauditError(
            f"{root} holds no complete sweep cells (cells/<id>/report.json); run 'diffaudit sweep' first."
        )
    return rows


# ------------------------------------------------------------------------------------------- fitting


def fit_power_batch(
    x: np.ndarray,
    Y: np.ndarray,
    W: np.ndarray,
    S2: np.ndarray | None = None,
    c2: float = 0.01,
    iters: int = 60,
) -> tuple[np.ndarray, np.ndarray]:
    """B fits of E[y] = exp(a - b x) by quasi-likelihood with Var(y) = (c2 mu^2 + s2) / w; y may be <= 0.

    x: (G,) log n; Y, W: (B, G) values (per-n means) and weights (cells per n; 0 drops a point); S2: (B, G)
    each point's mean squared sampling sd from its cells' CIs (None: 0). The relative part c2 mu^2 is the
    seed-to-seed (training) spread of E1, the additive part s2 the estimation noise that dominates near
    E1 = 0 (without it, relative weights would hand the noisiest, near-zero cells all the leverage).
    Solves the estimating equation sum w (y - mu) mu (1, -x) / V(mu) = 0 by iteratively reweighted
    Gauss-Newton (weights from the current mu, step halved while the weighted SSE grows).
    Returns (a (B,), b (B,)); nan where fewer than 2 distinct x carry weight.
    """
    x = np.asarray(x, np.float64)
    Y = np.asarray(Y, np.float64)
    W = np.where(np.isfinite(Y), np.asarray(W, np.float64), 0.0)
    Y = np.nan_to_num(Y)
    S2 = np.zeros_like(Y) if S2 is None else np.nan_to_num(np.asarray(S2, np.float64))
    c2 = max(float(c2), 1e-8)
    sw = W.sum(1)
    xm = (W * x).sum(1) / np.maximum(sw, 1e-300)
    u = x[None] - xm[:, None]  # centred x: a well-conditioned 2x2 system
    ok = (sw > 0) & ((W * u * u).sum(1) > 1e-12 * np.maximum(sw, 1e-300))
    # start: least squares on log y over the positive points (a rough line, refined below)
    Wp = W * (Y > 0)
    ly = np.log(np.where(Y > 0, Y, 1.0))
    swp = np.maximum(Wp.sum(1), 1e-300)
    xpm = (Wp * x).sum(1) / swp
    up = x[None] - xpm[:, None]
    supp = (Wp * up * up).sum(1)
    s = np.where(supp > 1e-12, (Wp * up * ly).sum(1) / np.maximum(supp, 1e-300), -1.0)
    c = (Wp * ly).sum(1) / swp + s * (xm - xpm)  # eta = c + s u (s = -b)
    c = np.where(
        Wp.sum(1) > 0, c, np.log(np.maximum((W * np.abs(Y)).sum(1) / np.maximum(sw, 1e-300), 1e-300))
    )

    def sse(c, s, om):
        mu = np.exp(np.clip(c[:, None] + s[:, None] * u, -300, 300))
        return (om * (Y - mu) ** 2).sum(1)

    active = ok.copy()
    for _ in range(iters):
        if not active.any():
            break
        mu = np.exp(np.clip(c[:, None] + s[:, None] * u, -300, 300))
        om = W / (c2 * mu * mu + S2)  # fixed within the step: the quasi-likelihood weights
        f = sse(c, s, om)
        r = om * mu * (Y - mu)
        gc, gs = r.sum(1), (r * u).sum(1)
        h = om * mu * mu
        hcc, hcs, hss = h.sum(1), (h * u).sum(1), (h * u * u).sum(1)
        det = np.maximum(hcc * hss - hcs**2, 1e-300)
        dc = (hss * gc - hcs * gs) / det
        ds = (hcc * gs - hcs * gc) / det
        t = np.where(active, 1.0, 0.0)
        for _ in range(40):
            bad = active & ~(sse(c + t * dc, s + t * ds, om) <= f * (1 + 1e-12))
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        c, s = c + t * dc, s + t * ds
        active &= np.maximum(np.abs(t * dc), np.abs(t * ds)) > 1e-10
    b = -s
    a = c - s * xm  # eta = c + s (x - xm) = (c - s xm) - b x
    return np.where(ok, a, np.nan), np.where(ok, b, np.nan)


def relative_scatter(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, s2: np.ndarray, a: float, b: float
) -> float:
    """c2 of Var = (c2 mu^2 + s2) / w by the unweighted moment equation
    sum w r^2 G / (G - 2) = sum (c2 mu^2 + s2). Unweighted on purpose: the relative term is seen where mu
    is large, and a chance outlier near E1 = 0 (where s2 rules) must not inflate it (a Pearson equation
    would need a huge c2 to absorb it)."""
    keep = w > 0
    mu = np.exp(a - b * x[keep])
    G = int(keep.sum())
    excess = float((w[keep] * (y[keep] - mu) ** 2).sum()) * G / max(G - 2, 1) - float(s2[keep].sum())
    return max(excess / max(float((mu * mu).sum()), 1e-300), 1e-8)


def _box_ls(sw, ss, sss, sy, ssy, syy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares of y ~ L + D s over the triangle 0 <= L, 0 <= D, L + D <= 1, from the weighted sums
    (any matching shapes). A convex quadratic: the unconstrained optimum when it is feasible, else the best
    of the three edges' own (clipped, closed-form) optima. Returns (L, D, SSE)."""

    def sse(L, D):
        return syy - 2 * L * sy - 2 * D * ssy + L * L * sw + 2 * L * D * ss + D * D * sss

    det = sw * sss - ss**2
    good = det > 1e-12 * np.maximum(sw * sss, 1e-300)
    D_in = np.where(good, (sw * ssy - ss * sy) / np.where(good, det, 1.0), -1.0)
    L_in = (sy - D_in * ss) / np.maximum(sw, 1e-300)
    feasible = good & (D_in >= 0) & (L_in >= 0) & (L_in + D_in <= 1)
    cands = [
        (np.clip(sy / np.maximum(sw, 1e-300), 0, 1), np.zeros_like(sy)),  # D = 0: flat
        (np.zeros_like(sy), np.clip(ssy / np.maximum(sss, 1e-300), 0, 1)),
    ]  # L = 0
    den = sw - 2 * ss + sss  # U = 1: y ~ 1 - D (1 - s)
    D_u = np.clip((sw - sy - ss + ssy) / np.maximum(den, 1e-300), 0, 1)
    cands.append((1 - D_u, D_u))
    L, D = cands[0]
    best = sse(L, D)
    for Lc, Dc in cands[1:]:
        f = sse(Lc, Dc)
        better = f < best
        L, D, best = np.where(better, Lc, L), np.where(better, Dc, D), np.where(better, f, best)
    L, D = np.where(feasible, L_in, L), np.where(feasible, D_in, D)
    return L, D, np.where(feasible, sse(L_in, D_in), best)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic4_batch(x: np.ndarray, Y: np.ndarray, W: np.ndarray, zooms: int = 3) -> np.ndarray:
    """B least-squares fits of y = L + (U - L) sigmoid(k (x - m)), 0 <= L <= U <= 1, k > 0.

    x: (G,) log n; Y, W: (B, G) (weight 0 drops a point). (L, U) by the constrained closed form for every
    (k, m) of a grid over ``K_GRID`` x [min x - M_PAD, max x + M_PAD], then ``zooms`` finer grids around
    each fit's best node. Returns (B, 4) columns L, U, k, m.
    """
    x = np.asarray(x, np.float64)
    Y = np.asarray(Y, np.float64)
    W = np.where(np.isfinite(Y), np.asarray(W, np.float64), 0.0)
    Y = np.nan_to_num(Y)
    B = len(Y)
    lk = np.log(K_GRID)
    m_grid = np.linspace(x.min() - M_PAD, x.max() + M_PAD, 40)
    KK, MM = np.meshgrid(lk, m_grid, indexing="ij")
    KK, MM = KK.ravel(), MM.ravel()
    S = _sigmoid(np.exp(KK)[:, None] * (x[None] - MM[:, None]))
    sw = W.sum(1)[:, None]
    sy = (W * Y).sum(1)[:, None]
    syy = (W * Y * Y).sum(1)[:, None]
    L, D, sse = _box_ls(sw, W @ S.T, W @ (S * S).T, sy, (W * Y) @ S.T, syy)
    best = np.argmin(sse, 1)
    lk_b, m_b = KK[best], MM[best]
    L_b, D_b = L[np.arange(B), best], D[np.arange(B), best]
    dk, dm = lk[1] - lk[0], m_grid[1] - m_grid[0]
    off = np.linspace(-1, 1, 9)
    ok_, om_ = (g.ravel() for g in np.meshgrid(off, off, indexing="ij"))
    for _ in range(zooms):
        lks = lk_b[:, None] + dk * ok_[None]  # (B, 81) candidate nodes per fit
        ms = m_b[:, None] + dm * om_[None]
        lks = np.clip(lks, lk[0], lk[-1])
        Sb = _sigmoid(np.exp(lks)[:, :, None] * (x[None, None] - ms[:, :, None]))  # (B, 81, G)
        ss = np.einsum("bg,bcg->bc", W, Sb)
        sss = np.einsum("bg,bcg->bc", W, Sb * Sb)
        ssy = np.einsum("bg,bcg->bc", W * Y, Sb)
        Lz, Dz, sse_z = _box_ls(sw, ss, sss, sy, ssy, syy)
        j = np.argmin(sse_z, 1)
        r = np.arange(B)
        lk_b, m_b, L_b, D_b = lks[r, j], ms[r, j], Lz[r, j], Dz[r, j]
        dk, dm = dk / 4, dm / 4
    return np.stack([L_b, L_b + D_b, np.exp(lk_b), m_b], 1)


def logistic4(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The curve of ``fit_logistic4_batch`` parameters ``theta`` (4,) at ``x`` (log n)."""
    L, U, k, m = theta
    return L + (U - L) * _sigmoid(k * (np.asarray(x, np.float64) - m))


def power_curve(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    a, b = theta
    return np.exp(a - b * np.asarray(x, np.float64))


def crossing_power(a: np.ndarray, b: np.ndarray, level: float) -> np.ndarray:
    """log n where exp(a - b log n) = level; nan unless b > 0 (a decreasing curve)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, (a - math.log(level)) / b, np.nan)


def crossing_logistic4(theta: np.ndarray, level: float) -> np.ndarray:
    """log n where the 4-parameter logistic crosses ``level``; nan unless L < level < U."""
    L, U, k, m = (theta[:, i] for i in range(4))
    inside = (L < level) & (level < U)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(inside, (level - L) / np.where(inside, U - L, 1.0), 0.5)
        return np.where(inside, m + np.log(p / (1 - p)) / k, np.nan)


def _fit(
    family: str,
    x: np.ndarray,
    Y: np.ndarray,
    W: np.ndarray,
    level: float,
    S2: np.ndarray | None = None,
    c2: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """(theta (B, p), log n* (B,)) of a batch of curves of one family (S2, c2: the power family's variance)."""
    if family == "power":
        a, b = fit_power_batch(x, Y, W, S2, c2)
        return np.stack([a, b], 1), crossing_power(a, b, level)
    theta = fit_logistic4_batch(x, Y, W)
    return theta, crossing_logistic4(theta, level)


def _curve_at(family: str, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    return power_curve(theta, x) if family == "power" else logistic4(theta, x)


def expansion(S: int | None, dof: int | None = None) -> float:
    """Factor by which a percentile interval over S resampled clusters is widened about the estimate
    (Hesterberg 2015's expanded percentile interval: sqrt(S / (S-1)) t_dof / z, dof = S - 1 by default);
    1 for a parametric bootstrap (S None)."""
    if S is None:
        return 1.0
    dof = S - 1 if dof is None else dof
    return math.sqrt(S / (S - 1)) * float(stdtrit(dof, 1 - ALPHA / 2)) / Z


def interval(
    draws: np.ndarray, estimate: float, lo_x: float, hi_x: float, S: int | None, dof: int | None = None
) -> dict:
    """Expanded percentile interval of log n* from the bootstrap ``draws`` that cross inside
    [lo_x, hi_x]; censored resamples are counted, never imputed. Returns JSON-ready fields."""
    draws = np.asarray(draws, np.float64)
    crossed = np.isfinite(draws) & (draws >= lo_x) & (draws <= hi_x)
    share = float(1 - crossed.mean()) if len(draws) else 1.0
    out: dict = {"censored_share": share, "ci": None, "ci_note": None}
    if share > MAX_CENSORED:
        out["ci_note"] = (
            f"{100 * share:.0f} % of the bootstrap resamples do not cross inside the grid "
            f"(> {100 * MAX_CENSORED:.0f} %): no interval; extend the n grid or add seeds."
        )
        return out
    q_lo, q_hi = np.quantile(draws[crossed], [ALPHA / 2, 1 - ALPHA / 2])
    f = expansion(S, dof)
    lo = estimate - f * max(estimate - q_lo, 0.0)
    hi = estimate + f * max(q_hi - estimate, 0.0)
    out["ci"] = [float(lo), float(hi)]
    if share > 0:
        out["ci_note"] = (
            f"{100 * share:.0f} % of the resamples do not cross inside the grid; the interval is "
            "from the others, so its end towards that grid edge may be too short."
        )
    return out


# ----------------------------------------------------------------------------------------- one group


@dataclass
class _Data:
    """One curve of a group as a seed x n table."""

    spec: CurveSpec
    x: np.ndarray  # (G,) log n of the group's grid
    Y: np.ndarray  # (S, G) values, nan where missing
    SD: np.ndarray  # (S, G) sd from the cells' CIs, nan where unknown
    n_samples: np.ndarray  # (S, G) generated samples per cell (binomial sd of a rate), nan where unknown


def _level(spec: CurveSpec, level: float, eps1: float) -> float:
    return eps1 if FIT[spec.role]["level"] == "eps1" else level


def _passes(spec: CurveSpec, y: np.ndarray, level: float) -> np.ndarray:
    return y <= level if spec.better == "lower" else y >= level


def _cell_sd(d: _Data, yhat: np.ndarray) -> np.ndarray:
    """(G,) sd of each cell's value for the parametric bootstrap (one seed): the reported CI, else a
    binomial sd for a rate, else nan (filled from the residuals by the caller)."""
    sd = d.SD[0].copy()
    if d.spec.unit == "rate":
        n = d.n_samples[0]
        p = np.clip(yhat, 0.5 / np.maximum(n, 1), 1 - 0.5 / np.maximum(n, 1))
        binom = np.sqrt(p * (1 - p) / n)
        sd = np.where(np.isfinite(sd), sd, binom)
    return sd


def _replicates(
    d: _Data,
    family: str,
    theta: np.ndarray,
    level: float,
    idx: np.ndarray | None,
    n_boot: int,
    rng: np.random.Generator,
    c2: float,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bootstrap refits: (theta (B, p), log n* (B,), info). ``idx`` (B, S) resampled seeds, or None for the
    parametric bootstrap of a single seed. ``c2``: the power family's relative scatter (point fit)."""
    S, G = d.Y.shape
    mask = np.isfinite(d.Y)
    s2 = np.where(mask & np.isfinite(d.SD), d.SD**2, 0.0)
    info: dict = {}
    if idx is not None:
        Wb = mask[idx].sum(1).astype(np.float64)  # (B, G) cells per n in the resample
        Yb = np.where(mask, d.Y, 0.0)[idx].sum(1) / np.maximum(Wb, 1)
        S2b = s2[idx].sum(1) / np.maximum(Wb, 1)
        info["bootstrap"] = f"{S} seeds resampled as whole curves"
    else:
        y, w = d.Y[0], mask[0]
        yhat = _curve_at(family, theta, d.x)
        S2b = np.broadcast_to(s2[0], (n_boot, G))
        if (
            family == "power"
        ):  # the variance model of the fit (reported error + relative scatter), over-dispersed
            sd = np.sqrt(c2 * yhat**2 + s2[0])
            dof = max(int(w.sum()) - theta.size, 1)
            phi = max(1.0, float((((y - yhat) / sd) ** 2)[w].sum() / dof))
            sd = math.sqrt(phi) * sd
            info.update(
                bootstrap="parametric, one seed: reported error and the fitted relative scatter",
                dispersion=phi,
            )
        else:
            sd = _cell_sd(d, yhat)
            known = np.isfinite(sd) & (sd > 0) & w
            dof = max(int(w.sum()) - theta.size, 1)
            resid = np.where(w, y - yhat, 0.0)
            if known.sum() == w.sum():  # over-dispersion: training noise is not in a cell's CI
                phi = max(1.0, float(((resid / np.where(known, sd, 1.0)) ** 2)[w].sum() / dof))
                sd = math.sqrt(phi) * sd
                info.update(
                    bootstrap="parametric, one seed: each cell's reported sampling error", dispersion=phi
                )
            else:
                sd = np.where(known, sd, math.sqrt(float((resid**2)[w].sum() / dof)))
                info["bootstrap"] = (
                    "parametric, one seed: the residual scatter about the fit (cells report no error)"
                )
        Yb = yhat[None] + sd[None] * rng.standard_normal((n_boot, G))
        Wb = np.broadcast_to(w.astype(np.float64), (n_boot, G))
    th, xs = _fit(family, d.x, Yb, Wb, level, S2b, c2)
    return th, xs, info


def _stays_share(
    spec: CurveSpec,
    Y: np.ndarray,
    SD: np.ndarray,
    NS: np.ndarray,
    level: float,
    idx: np.ndarray | None,
    n_boot: int,
    rng: np.random.Generator,
) -> float | None:
    """For a curve that does not cross inside the grid: the share of resamples whose per-n means do not
    cross either (seeds resampled; with one seed, each cell redrawn from its reported error; None when a
    cell reports none). Nothing is fitted."""
    mask = np.isfinite(Y)
    if idx is not None:
        Wb = mask[idx].sum(1)
        Mb = np.where(Wb > 0, np.where(mask, Y, 0.0)[idx].sum(1) / np.maximum(Wb, 1), np.nan)
    else:
        y, w = Y[0], mask[0]
        sd = SD[0].copy()
        if spec.unit == "rate":
            n = NS[0]
            p = np.clip(y, 0.5 / np.maximum(n, 1), 1 - 0.5 / np.maximum(n, 1))
            sd = np.where(np.isfinite(sd), sd, np.sqrt(p * (1 - p) / n))
        if not np.all(np.isfinite(sd[w])):
            return None
        Mb = np.where(w, y, np.nan)[None] + np.where(w, sd, 0.0)[None] * rng.standard_normal((n_boot, len(y)))
    have = np.isfinite(Mb)
    ok = _passes(spec, np.where(have, Mb, 0.0), level)
    all_pass = np.all(ok | ~have, 1)
    none_pass = np.all(~ok | ~have, 1)
    return float(np.mean(all_pass | none_pass))


def fit_group(
    rows: list[dict],
    *,
    level: float = 0.5,
    eps1: float = DEFAULT_EPS1,
    n_boot: int = 1000,
    seed: int | tuple[int, ...] = 0,
) -> dict:
    """Fit every curve of one group; returns the JSON-ready result (bootstrap draws under ``_boot``).

    ``seed``: of the bootstrap; give each group its own (``compute_thresholds`` passes (seed, group index)):
    groups at different d are independent, and the exponent's interval counts on their resamples being so.
    """
    grid = sorted({int(r["n"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    x = np.log(np.array(grid, np.float64))
    lo_x, hi_x = float(x[0]), float(x[-1])
    gi = {n: i for i, n in enumerate(grid)}
    si = {s: i for i, s in enumerate(seeds)}
    S, G = len(seeds), len(grid)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, S, size=(n_boot, S)) if S >= 2 else None  # shared by every curve: joint intervals
    out: dict = {"n_grid": grid, "seeds": seeds, "n_cells": len(rows), "curves": {}}
    boot: dict[str, np.ndarray] = {}
    for spec in curve_specs():
        Y, SD, NS = (np.full((S, G), np.nan) for _ in range(3))
        for r in rows:
            v = r["values"].get(spec.name)
            if v is None:
                continue
            i, j = si[int(r["seed"])], gi[int(r["n"])]
            Y[i, j] = v
            sd = r["sds"].get(spec.name)
            SD[i, j] = np.nan if sd is None else sd
            NS[i, j] = np.nan if r.get("n_samples") is None else float(r["n_samples"])
        lev = _level(spec, level, eps1)
        family = FIT[spec.role]["family"]
        info: dict = {
            "threshold": 1 if spec.role == "n1" else 2,
            "role": spec.role,
            "label": spec.label,
            "better": spec.better,
            "level": lev,
            "family": family,
            "n_star": None,
            "n_star_ci": None,
            "censored_share": None,
        }
        out["curves"][spec.name] = info  # filled in below; an early ``continue`` leaves status and message
        have = np.isfinite(Y)
        n_cells = int(have.sum())
        info["n_cells"] = n_cells
        ns_with = [grid[j] for j in range(G) if have[:, j].any()]
        info["points"] = [
            {"n": grid[j], "y": float(np.nanmean(Y[:, j])), "ys": [float(v) for v in Y[have[:, j], j]]}
            for j in range(G)
            if have[:, j].any()
        ]
        if n_cells == 0:
            info.update(
                status="missing",
                message=f"{spec.label}: no cell of this group reports it (cells written "
                "before the metric existed?); not fitted.",
            )
            continue
        if len(ns_with) < 3:
            info.update(
                status="insufficient",
                message=f"{spec.label}: needs values at >= 3 training-set sizes, has {len(ns_with)}.",
            )
            continue
        means = np.array([np.nanmean(Y[:, j]) if have[:, j].any() else np.nan for j in range(G)])
        ok_means = means[np.isfinite(means)]
        passed = _passes(spec, ok_means, lev)
        rel = "<=" if spec.better == "lower" else ">="
        if passed.all() or not passed.any():
            side = "above" if passed.all() else "below"
            where = (
                f"already {rel} {lev:g} at the smallest n = {ns_with[0]}: n* < {ns_with[0]}"
                if side == "above"
                else f"not yet {rel} {lev:g} at the largest n = {ns_with[-1]}: n* > {ns_with[-1]}"
            )
            share = _stays_share(spec, Y, SD, NS, lev, idx, n_boot, rng)
            info.update(
                status=side,
                censored_share=share,
                message=f"{spec.label} does not cross {lev:g} inside the grid ({where})"
                + ("." if share is None else f"; {100 * share:.0f} % of the resamples do not either."),
            )
            continue
        # point fit on the per-n means weighted by their cell counts (= the fit on all cells)
        W0 = have.sum(0).astype(np.float64)
        Y0 = np.where(np.isfinite(means), means, 0.0)
        S2_0 = np.where(have & np.isfinite(SD), SD**2, 0.0).sum(0) / np.maximum(W0, 1)
        c2 = 0.01
        for _ in range(4 if family == "power" else 1):  # alternate the fit and its relative scatter
            theta, xs = _fit(family, x, Y0[None], W0[None], lev, S2_0[None], c2)
            if family == "power" and np.all(np.isfinite(theta)):
                c2 = relative_scatter(x, Y0, W0, S2_0, float(theta[0, 0]), float(theta[0, 1]))
        theta, xs0 = theta[0], float(xs[0])
        info["theta"] = [float(v) for v in theta]
        if family == "power":
            info.update(a=float(theta[0]), b=float(theta[1]), relative_scatter=math.sqrt(c2))
        else:
            info.update(lower=float(theta[0]), upper=float(theta[1]), k=float(theta[2]), m=float(theta[3]))
        if not (math.isfinite(xs0) and lo_x <= xs0 <= hi_x):
            info.update(
                status="no-fit",
                message=f"{spec.label}: the fitted curve does not cross {lev:g} inside the "
                "grid although the per-n means do; no n* fitted.",
            )
            continue
        d = _Data(spec, x, Y, SD, NS)
        th_b, xs_b, binfo = _replicates(d, family, theta, lev, idx, n_boot, rng, c2)
        iv = interval(xs_b, xs0, lo_x, hi_x, S if idx is not None else None)
        info.update(
            status="fit",
            log_n_star=xs0,
            n_star=math.exp(xs0),
            censored_share=iv["censored_share"],
            n_star_ci=None if iv["ci"] is None else [math.exp(v) for v in iv["ci"]],
            ci_note=iv["ci_note"],
            **binfo,
        )
        if family == "power":  # the decay exponent in n, from the same replicates
            b_iv = interval(th_b[:, 1], float(theta[1]), -np.inf, np.inf, S if idx is not None else None)
            info["b_ci"] = b_iv["ci"]
        boot[spec.name] = xs_b
        ci = info["n_star_ci"]
        info["message"] = (
            f"{spec.label} crosses {lev:g} at n* = {info['n_star']:.0f}"
            + (f" [{ci[0]:.0f}, {ci[1]:.0f}]" if ci else f" (no interval: {iv['ci_note']})")
            + (f"; E1 ~ n^-{theta[1]:.2f}" if family == "power" else "")
        )
    out["_boot"] = boot
    out["_bounds"] = (lo_x, hi_x)
    out["_S"] = S if idx is not None else None
    return out


# ------------------------------------------------------------------------------------------ which first


def _bound(info: dict, lo_x: float, hi_x: float) -> tuple[float, float] | None:
    """An interval for log n* usable for ordering, also for curves that do not cross in the grid."""
    if info["status"] == "fit":
        if info.get("n_star_ci"):
            return math.log(info["n_star_ci"][0]), math.log(info["n_star_ci"][1])
        return None
    if info["status"] == "above":
        return -math.inf, lo_x
    if info["status"] == "below":
        return hi_x, math.inf
    return None


def _threshold2_curve(curves: dict) -> str:
    """The n2 curve, or 1 - copy rate when the recovery score is not usable (e.g. an old cell)."""
    n2 = schema.sweep_metric("n2").key
    if curves.get(n2, {}).get("status") in ("fit", "above", "below"):
        return n2
    return NOT_COPIED


def which_first(group: dict) -> dict:
    """Compare n1* with n2*: the ratio n2*/n1* with a joint interval (same resamples), or the order of
    their bounds when one does not cross inside the grid."""
    curves = group["curves"]
    lo_x, hi_x = group["_bounds"]
    m1 = schema.sweep_metric("n1").key
    m2 = _threshold2_curve(curves)
    c1, c2 = curves.get(m1), curves.get(m2)
    res: dict = {"threshold_2_metric": m2, "first": None}
    if not c1 or not c2:
        res["statement"] = "not enough metrics to compare the two thresholds."
        return res
    if c1["status"] == "fit" and c2["status"] == "fit":
        r_hat = c2["log_n_star"] - c1["log_n_star"]
        b1, b2 = group["_boot"][m1], group["_boot"][m2]
        crossed = (
            np.isfinite(b1) & (b1 >= lo_x) & (b1 <= hi_x) & np.isfinite(b2) & (b2 >= lo_x) & (b2 <= hi_x)
        )
        iv = interval(np.where(crossed, b2 - b1, np.nan), r_hat, -np.inf, np.inf, group["_S"])
        ci = None if iv["ci"] is None else [math.exp(v) for v in iv["ci"]]
        r = math.exp(r_hat)
        res.update(ratio_n2_over_n1=r, ratio_ci=ci, censored_share=iv["censored_share"])
        if ci and ci[1] < 1:
            first = "threshold 2"
        elif ci and ci[0] > 1:
            first = "threshold 1"
        else:
            first = "indistinguishable"
        ci_txt = f" [{ci[0]:.2g}, {ci[1]:.2g}]" if ci else " (no interval)"
        res["first"] = first
        res["statement"] = (
            f"{first} first: n2*/n1* = {r:.2g}{ci_txt} (n1* = {c1['n_star']:.0f}, "
            f"n2* = {c2['n_star']:.0f} from {m2})"
            if first != "indistinguishable"
            else f"the order is not resolved: n2*/n1* = {r:.2g}{ci_txt}."
        )
        return res
    bd1, bd2 = _bound(c1, lo_x, hi_x), _bound(c2, lo_x, hi_x)
    if bd1 is None or bd2 is None:
        res["statement"] = "one of the transitions could not be located; no order stated."
        return res
    if bd1[1] < bd2[0]:
        first = "threshold 1"
    elif bd2[1] < bd1[0]:
        first = "threshold 2"
    else:
        first = "indistinguishable"
    res["first"] = first
    res["statement"] = (
        f"{first} first (from the intervals: {c1['message']}; {c2['message']})"
        if first != "indistinguishable"
        else f"the order is not resolved ({c1['message']}; {c2['message']})."
    )
    return res


# ------------------------------------------------------------------------------------------ exponents


def _group_key(r: dict) -> tuple:
    return (r["dataset"], json.dumps(r["params"], sort_keys=True), r["model"])


def fit_exponents(groups: list[dict]) -> list[dict]:
    """Across d: log n* = c + b log d per (dataset, other params, model, curve), b's interval from the same
    bootstrap replicates (draw i of every group), expanded for the groups' numbers of seeds."""
    fam: dict[tuple, list[dict]] = {}
    for g in groups:
        if g.get("d") is None:
            continue
        other = {k: v for k, v in g["params"].items() if k != "d"}
        fam.setdefault((g["dataset"], json.dumps(other, sort_keys=True), g["model"]), []).append(g)
    out = []
    for (ds, other, model), gs in fam.items():
        ds_all = sorted({g["d"] for g in gs})
        if len(ds_all) < 2:
            continue
        for spec in curve_specs():
            fitted = sorted(
                (g for g in gs if g["curves"].get(spec.name, {}).get("status") == "fit"), key=lambda g: g["d"]
            )
            entry = {
                "dataset": ds,
                "params": json.loads(other),
                "model": model,
                "metric": spec.name,
                "role": spec.role,
                "threshold": 1 if spec.role == "n1" else 2,
                "d": [g["d"] for g in fitted],
                "n_star": [g["curves"][spec.name]["n_star"] for g in fitted],
            }
            if len(fitted) < 2:
                entry.update(
                    b=None,
                    c=None,
                    b_ci=None,
                    status="insufficient",
                    message=f"{spec.label}: n* fitted at {len(fitted)} of {len(ds_all)} values of d; "
                    "an exponent needs >= 2.",
                )
                out.append(entry)
                continue
            ld = np.log(np.array([g["d"] for g in fitted], np.float64))
            ln = np.array([g["curves"][spec.name]["log_n_star"] for g in fitted])
            b, c = np.polyfit(ld, ln, 1)
            draws = [g["_boot"][spec.name] for g in fitted]
            k = min(len(v) for v in draws)
            D = np.stack([v[:k] for v in draws], 1)  # (B, n_d)
            lo_hi = [g["_bounds"] for g in fitted]
            crossed = np.all(
                [(D[:, i] >= lo_hi[i][0]) & (D[:, i] <= lo_hi[i][1]) for i in range(len(fitted))], 0
            )
            crossed &= np.all(np.isfinite(D), 1)
            ldc = ld - ld.mean()
            slopes = np.where(crossed, (np.where(crossed[:, None], D, 0.0) @ ldc) / (ldc @ ldc), np.nan)
            Ss = [g["_S"] for g in fitted]
            # every group's bootstrap variance is (S_g - 1)/S_g of the plug-in one (the smallest S_g corrects
            # for all); the groups are independent, so t has sum (S_g - 1) degrees of freedom
            parametric = any(s is None for s in Ss)
            iv = interval(
                slopes,
                float(b),
                -np.inf,
                np.inf,
                None if parametric else min(Ss),
                None if parametric else sum(s - 1 for s in Ss),
            )
            ci = iv["ci"]
            entry.update(
                b=float(b),
                c=float(c),
                b_ci=ci,
                censored_share=iv["censored_share"],
                status="fit",
                message=f"{spec.label}: n* ~ d^{b:.2f}"
                + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f" (no interval: {iv['ci_note']})"),
            )
            out.append(entry)
    return out


# ------------------------------------------------------------------------------------------ the document


def _group_eps1(rows: list[dict], eps1: float | None) -> float:
    if eps1 is not None:
        return float(eps1)
    vals = sorted({r["eps1"] for r in rows if r["eps1"] is not None})
    if len(vals) > 1:
        raise DiffauditError(
            f"the cells of one curve group were audited with different eps1 ({vals}); "
            "pass --eps1 to fit them against one tolerance."
        )
    return vals[0] if vals else DEFAULT_EPS1


def compute_thresholds(
    root: str | Path, *, level: float = 0.5, eps1: float | None = None, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Read a sweep folder and fit everything; returns the thresholds.json document.

    ``level``: the crossing level of the threshold-2 curves; ``eps1``: the threshold-1 tolerance (None =
    the one each cell's audit recorded, default 0.1).
    """
    if not 0 < level < 1:
        raise DiffauditError(f"--level must be strictly between 0 and 1, got {level}.")
    if eps1 is not None and not eps1 > 0:
        raise DiffauditError(f"--eps1 must be positive, got {eps1}.")
    if n_boot < 10:
        raise DiffauditError(f"--n-boot must be >= 10, got {n_boot}.")
    rows = load_cells(root)
    specs = curve_specs()
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault(_group_key(r), []).append(r)
    groups = []
    for i, ((ds, params, model), rs) in enumerate(sorted(by.items())):
        g = fit_group(rs, level=level, eps1=_group_eps1(rs, eps1), n_boot=n_boot, seed=(seed, i))
        steps = sorted({(r["n"], r["steps"]) for r in rs if r["steps"] is not None})
        g.update(
            dataset=ds,
            params=json.loads(params),
            d=rs[0]["d"],
            model=model,
            budget=[{"n": n, "steps": s} for n, s in steps],
        )
        g["order"] = which_first(g)
        keep = ("status", "n_star", "n_star_ci", "censored_share", "level", "message")
        c1 = g["curves"].get(schema.sweep_metric("n1").key)
        g["n1_star"] = (
            None
            if c1 is None
            else {
                "metric": schema.sweep_metric("n1").key,
                **{k: c1.get(k) for k in keep},
                "b": c1.get("b"),
                "b_ci": c1.get("b_ci"),
            }
        )
        m2 = g["order"]["threshold_2_metric"]
        c2 = g["curves"].get(m2)
        g["n2_star"] = None if c2 is None else {"metric": m2, **{k: c2.get(k) for k in keep}}
        groups.append(g)
    exps = fit_exponents(groups)
    for g in groups:
        for k in ("_boot", "_bounds", "_S"):
            g.pop(k, None)
    return jsonable(
        {
            "schema": SCHEMA,
            "sweep": str(Path(root)),
            "level": level,
            "eps1": eps1,
            "n_boot": n_boot,
            "alpha": ALPHA,
            "max_censored": MAX_CENSORED,
            "metrics": {
                c.name: {
                    "key": c.key,
                    "role": c.role,
                    "label": c.label,
                    "better": c.better,
                    "family": FIT[c.role]["family"],
                    "complement": c.complement,
                }
                for c in specs
            },
            "n_cells": len(rows),
            # cells that lack a curve's metric (e.g. written before it existed): skipped for that curve
            "cells_without": {c.name: sum(r["values"][c.name] is None for r in rows) for c in specs},
            "groups": groups,
            "exponents": exps,
        }
    )


# ----------------------------------------------------------------------------------------------- HTML


def group_title(g: dict) -> str:
    ps = ", ".join(f"{k}={v}" for k, v in sorted(g["params"].items()))
    return f"{g['dataset']} ({ps}) -- {g['model']}"


def _esc(s) -> str:
    return html.escape(str(s))


COLORS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd")


def render_html(doc: dict) -> str:
    """A self-contained page (plotly inlined): per group, E1 against n (log-log, threshold 1) and the
    threshold-2 curves, with the fits, the levels and the n* intervals."""
    parts = []
    first = True
    for g in doc["groups"]:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("threshold 1", "threshold 2"))
        for i, (name, c) in enumerate(g["curves"].items()):
            col = 1 if c["role"] == "n1" else 2
            color = COLORS[i % len(COLORS)]
            pts = c["points"]
            fig.add_trace(
                go.Scatter(
                    x=[p["n"] for p in pts for _ in p["ys"]],
                    y=[y for p in pts for y in p["ys"]],
                    mode="markers",
                    name=c["label"],
                    marker={"color": color},
                    legendgroup=name,
                ),
                row=1,
                col=col,
            )
            if "theta" in c and pts:
                xx = np.linspace(math.log(pts[0]["n"]), math.log(pts[-1]["n"]), 200)
                yy = _curve_at(c["family"], np.array(c["theta"]), xx)
                fig.add_trace(
                    go.Scatter(
                        x=np.exp(xx),
                        y=yy,
                        mode="lines",
                        line={"color": color},
                        showlegend=False,
                        legendgroup=name,
                        hoverinfo="skip",
                    ),
                    row=1,
                    col=col,
                )
            if c["status"] == "fit":
                fig.add_vline(x=c["n_star"], line={"color": color, "dash": "dash"}, row=1, col=col)
                if c.get("n_star_ci"):
                    fig.add_vrect(
                        x0=c["n_star_ci"][0],
                        x1=c["n_star_ci"][1],
                        fillcolor=color,
                        opacity=0.12,
                        line_width=0,
                        row=1,
                        col=col,
                    )
            fig.add_hline(y=c["level"], line={"color": "grey", "dash": "dot"}, row=1, col=col)
        fig.update_xaxes(type="log", title="n (training-set size)")
        fig.update_yaxes(type="log", title="E1 (lower = better)", row=1, col=1)
        fig.update_yaxes(title="rate (higher = better)", range=[-0.05, 1.05], row=1, col=2)
        fig.update_layout(title=group_title(g), height=420, margin={"t": 60, "b": 40})
        notes = "".join(f"<li>{_esc(c['message'])}</li>" for c in g["curves"].values())
        notes += f"<li><b>{_esc(g['order']['statement'])}</b></li>"
        parts.append(
            fig.to_html(full_html=False, include_plotlyjs="inline" if first else False) + f"<ul>{notes}</ul>"
        )
        first = False
    if doc["exponents"]:
        rows = "".join(
            f"<tr><td>{_esc(e['dataset'])}</td><td>{_esc(e['model'])}</td><td>{_esc(e['metric'])}</td>"
            f"<td>{_esc(e['message'])}</td></tr>"
            for e in doc["exponents"]
        )
        parts.append(
            f"<h2>Exponents n* ~ d^b</h2><table border=1 cellpadding=4><tr><th>dataset</th><th>model</th>"
            f"<th>metric</th><th>fit</th></tr>{rows}</table>"
        )
    defs = "".join(
        f"<li><b>{_esc(m)}</b>: {_esc(v['label'])} ({v['family']} fit, {v['better']} is better)</li>"
        for m, v in doc["metrics"].items()
    )
    skipped = "".join(f"<li>{n} cells without {_esc(m)}</li>" for m, n in doc["cells_without"].items() if n)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>diffaudit thresholds</title></head>"
        f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'><h1>Thresholds of {_esc(doc['sweep'])}</h1>"
        f"<p>{doc['n_cells']} cells; threshold-2 level {doc['level']}; {doc['n_boot']} bootstrap resamples "
        f"(seeds as replicates; parametric with one seed); {100 * (1 - doc['alpha']):.0f} % intervals.</p>"
        f"<ul>{defs}{skipped}</ul>{''.join(parts)}</body></html>"
    )


# ------------------------------------------------------------------------------------------------ CLI
