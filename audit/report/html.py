"""``report.html``: the human-readable page of one audit, built from ``report.json`` and the metric schema.

- Metric tables come from ``diffaudit.report.schema``: one table per schema group, the rows in schema
  order with their label, unit, better direction and the verdict they inform, the row's ``help`` as a
  tooltip; a family row (``factors.w1_*``) expands to the members the report holds; a metric the schema
  does not know is still shown (under its key), so the page never hides a number of the report.
- plotly.js: ``plotly="inline"`` (default) embeds it, so a single audit's page is one self-contained file.
  A sweep writes hundreds of cell pages: each would carry the same ~4.6 MB of JavaScript, so the sweep
  writes it once (``write_shared_plotly(root)``) and each cell's page loads it by a relative path
  (``plotly=shared_plotly_src(cell_dir, root)``); the sweep folder stays self-contained as a whole.
- Every string that came from a user (model spec, paths, reasons) passes through ``html.escape``.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_write_bytes
from diffaudit.report import schema

INLINE = "inline"
PLOTLY_FILE = "plotly.min.js"
# A shared plotly.js is named by a plain relative path: no scheme or drive (no ":"), no quotes or spaces,
# so the page can neither load code from elsewhere nor break out of the attribute.
_REL_JS = re.compile(r"[A-Za-z0-9._\-/]+\.js")

VERDICT_TITLES = {
    "convergence": "Threshold 1 · convergence",
    "generalization": "Threshold 2 · generalization",
    "memorization": "Memorization",
}
_INFORMS = {"convergence": "threshold 1", "generalization": "threshold 2", "memorization": "memorization"}
_GROUP_TITLES = {
    "convergence": "Convergence (threshold 1)",
    "factors": "Latent factors (threshold 2)",
    "memorization": "Memorization",
}
_BETTER = {"lower": "↓ lower", "higher": "↑ higher"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.3em .7em;text-align:left}
th{background:#f5f5f5} .num{text-align:right;font-variant-numeric:tabular-nums}
.banner{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.v{padding:.8em 1.2em;border-radius:6px;min-width:14em;flex:1}
.pass{background:#e3f6e5;border:1px solid #7cc48a} .fail{background:#fde7e7;border:1px solid #e08c8c}
.na{background:#f0f0f0;border:1px solid #bbb} .v b{font-size:1.1em} .small{color:#555;font-size:.9em}
.pairs{display:flex;flex-wrap:wrap;gap:.8em} .pair{text-align:center;font-size:.8em}
.m{border-bottom:1px dotted #888;cursor:help}
code{background:#f5f5f5;padding:0 .2em}
"""


# --------------------------------------------------------------------------------------------- plotly.js


def write_shared_plotly(root: str | os.PathLike) -> Path:
    """Write plotly.js once as ``root/plotly.min.js`` for the pages below ``root``; returns its path.

    An existing file with this plotly's exact source is kept (sweeps resume); anything else is replaced
    atomically, so a page never loads half a library.
    """
    path = Path(root) / PLOTLY_FILE
    js = get_plotlyjs().encode("utf-8")
    try:
        if path.stat().st_size == len(js) and path.read_bytes() == js:
            return path
    except FileNotFoundError:
        pass
    return atomic_write_bytes(path, js)


def shared_plotly_src(page_dir: str | os.PathLike, root: str | os.PathLike) -> str:
    """The relative path (posix) from a page written in ``page_dir`` to ``root/plotly.min.js``."""
    rel = os.path.relpath(os.path.abspath(Path(root) / PLOTLY_FILE), os.path.abspath(page_dir))
    return PurePosixPath(*Path(rel).parts).as_posix()


def plotly_tag(plotly: str = INLINE) -> str:
    """The ``<script>`` that provides plotly.js: inlined, or loaded from a relative path."""
    if plotly == INLINE:
        return f"<script type='text/javascript'>{get_plotlyjs()}</script>"
    if not isinstance(plotly, str) or not _REL_JS.fullmatch(plotly) or plotly.startswith("/"):
        raise DiffauditError(
            f"plotly={plotly!r} is neither 'inline' nor a relative path to a .js file; pass "
            "'inline' or e.g. '../../plotly.min.js' (see shared_plotly_src)."
        )
    return f"<script type='text/javascript' src='{html.escape(plotly)}'></script>"


# --------------------------------------------------------------------------------------------- metrics


def ordered_metrics(
    keys: Iterable[str], *, every_row: bool = False
) -> list[tuple[str, schema.Metric | None]]:
    """``(key, schema row)`` of the metrics ``keys`` (``group.name``) in schema order.

    A family row stands for its members among ``keys`` (in the order given); keys the schema does not know
    follow, with row None, grouped like the schema. ``every_row``: also list every non-family row of the
    schema that ``keys`` lacks (an older report shows it as missing instead of hiding it).
    """
    present = list(dict.fromkeys(keys))
    have = set(present)
    out: list[tuple[str, schema.Metric | None]] = []
    for m in schema.METRICS:
        if m.is_family:
            out += [(k, m) for k in present if schema.get(k) is m]
        elif every_row or m.key in have:
            out.append((m.key, m))
    listed = {k for k, _ in out}
    out += [(k, None) for k in present if k not in listed]
    rank = {g: i for i, g in enumerate(schema.GROUPS)}
    return sorted(out, key=lambda km: rank.get(km[0].partition(".")[0], len(rank)))  # stable: keeps row order


def _fmt(m) -> str:
    if m is None or m.get("value") is None:
        return "—"
    v = m["value"]
    if not isinstance(v, int | float):
        return html.escape(str(v))
    s = f"{v:.4g}"
    if m.get("ci"):
        s += f" <span class='small'>[{m['ci'][0]:.4g}, {m['ci'][1]:.4g}]</span>"
    return s


def metric_tables(report: dict) -> str:
    """One table per metric group: every metric of ``report["probes"]``, described by its schema row."""
    e = html.escape
    probes = report.get("probes") or {}
    keys = [f"{g}.{k}" for g, grp in probes.items() for k in (grp or {})]
    groups: dict[str, list[str]] = {}
    for key, m in ordered_metrics(keys):
        g, _, k = key.partition(".")
        if m is None:
            cells = (f"<span class='m' title='not a row of the metric schema'>{e(key)}</span>", "", "", "")
        else:
            cells = (
                f"<span class='m' title='{e(m.help)}'>{e(schema.label(key))}</span>",
                e(m.unit),
                _BETTER.get(m.better, ""),
                _INFORMS.get(m.threshold, ""),
            )
        groups.setdefault(g, []).append(
            f"<tr><td>{cells[0]} <code class='small'>{e(key)}</code></td><td class='num'>{_fmt(probes[g][k])}</td>"
            f"<td>{cells[1]}</td><td>{cells[2]}</td><td>{cells[3]}</td></tr>"
        )
    head = (
        "<tr><th>metric</th><th>value [95 % interval]</th><th>unit</th><th>better</th>"
        "<th>informs verdict</th></tr>"
    )
    return "".join(
        f"<h3>{e(_GROUP_TITLES.get(g, g))}</h3><table>{head}{''.join(rows)}</table>"
        for g, rows in groups.items()
    )


# --------------------------------------------------------------------------------------------- figures


def pca_trace(p, name: str, marker: dict) -> go.Scattergl:
    """The points of ``p`` (a frame of ``pca.parquet``: columns ``pc1``, ``pc2``) as one scatter trace."""
    return go.Scattergl(x=p["pc1"], y=p["pc2"], mode="markers", name=name, marker=marker)


def mia_auc_figure(
    curves: Iterable[tuple[str | None, list, list]],
    *,
    title: str = "Membership-inference AUC per noise level",
    sigma_title: str = "σ",
    chance_text: str | None = None,
) -> go.Figure:
    """AUC of the loss-threshold membership attack per noise level sigma (log axis), a line per
    ``(name, sigmas, auc)`` of ``curves``; chance (AUC 0.5) dotted, labelled ``chance_text`` if given."""
    f = go.Figure([go.Scatter(x=s, y=auc, mode="lines+markers", name=n) for n, s, auc in curves])
    f.add_hline(y=0.5, line_dash="dot", **({"annotation_text": chance_text} if chance_text else {}))
    f.update_layout(title=title, xaxis_type="log", xaxis_title=sigma_title, yaxis_title="AUC", height=320)
    return f


def basin_figure(basin: dict) -> go.Figure:
    """The basin-of-attraction probe per noise level (``details.basin`` of a report): return rates of training
    and held-out items (Wilson intervals) and the AUC of the return distance (DeLong intervals)."""
    rows = basin["per_sigma"]
    s = [r["sigma"] for r in rows]
    f = make_subplots(rows=1, cols=2, subplot_titles=("return rate", "AUC (train vs holdout)"))
    for key, name in (("return_train", "train"), ("return_holdout", "holdout"), ("auc", "AUC")):
        v = [r[key] for r in rows]
        ci = [r[f"{key}_ci"] for r in rows]
        err = {"type": "data", "array": [c[1] - x for c, x in zip(ci, v, strict=True)]}
        err["arrayminus"] = [x - c[0] for c, x in zip(ci, v, strict=True)]
        f.add_trace(
            go.Scatter(x=s, y=v, error_y=err, mode="lines+markers", name=name),
            row=1,
            col=2 if key == "auc" else 1,
        )
    f.add_hline(y=0.5, line_dash="dot", row=1, col=2)
    f.update_xaxes(type="log", title_text="sigma")
    f.update_layout(
        title=f"Basin of attraction: return within radius {basin['radius']:.3g} "
        f"(sigma chosen: {basin['best_sigma']:.3g})",
        height=340,
    )
    return f


def _figures(report: dict, art: dict) -> list[str]:
    """HTML snippets of the plotly figures (plotly.js NOT included; the page provides it once)."""
    figs = []
    conv = report["probes"]["convergence"]
    bars = [
        ("generated vs holdout", conv.get("fd_equal_n") or conv.get("fd")),
        ("train vs holdout (noise floor)", conv.get("fd_train_holdout")),
        ("generated vs train", conv.get("fd_gen_train")),
    ]
    bars = [(n, m) for n, m in bars if m is not None]
    if bars:
        err_hi = [(m["ci"][1] - m["value"]) if m.get("ci") else 0.0 for _, m in bars]
        err_lo = [(m["value"] - m["ci"][0]) if m.get("ci") else 0.0 for _, m in bars]
        f = go.Figure(
            go.Bar(
                x=[n for n, _ in bars],
                y=[m["value"] for _, m in bars],
                error_y={"type": "data", "array": err_hi, "arrayminus": err_lo},
            )
        )
        f.update_layout(title="Fréchet distance (threshold 1)", yaxis_title="FD", height=360)
        figs.append(f)
    copies = art["copies"]
    f = go.Figure()
    f.add_trace(go.Histogram(x=copies.d1, name="generated → train", opacity=0.6, histnorm="probability"))
    if copies.holdout_d1 is not None:
        f.add_trace(
            go.Histogram(x=copies.holdout_d1, name="holdout → train", opacity=0.6, histnorm="probability")
        )
    if copies.holdout_threshold is not None:
        f.add_vline(x=copies.holdout_threshold, line_dash="dash", annotation_text="holdout 1 % quantile")
    f.update_layout(
        barmode="overlay",
        title="Nearest-training-item distance d1 (memorization)",
        xaxis_title="d1",
        height=360,
    )
    figs.append(f)
    val = art.get("validity")
    if val is not None:
        f = go.Figure(go.Histogram(x=np.log10(np.maximum(val.residual, 1e-12)), name="generated"))
        f.add_vline(
            x=float(np.log10(max(val.tau, 1e-12))), line_dash="dash", annotation_text="tau (valid below)"
        )
        f.update_layout(
            title="Oracle-projection residual (log10), threshold 2", xaxis_title="log10 residual", height=340
        )
        figs.append(f)
        names = list(art["dataset"].factor_names)
        zt = art["z_true"]
        zv = val.z_hat[val.valid]
        f = make_subplots(rows=1, cols=len(names), subplot_titles=names)
        for j in range(len(names)):
            for z, name, colour in ((zt, "true", "#1f77b4"), (zv, "generated (valid)", "#d62728")):
                f.add_trace(
                    go.Histogram(
                        x=z[:, j],
                        name=name,
                        histnorm="probability",
                        opacity=0.5,
                        marker_color=colour,
                        showlegend=j == 0,
                    ),
                    row=1,
                    col=j + 1,
                )
        f.update_layout(
            barmode="overlay", title="Recovered factors of valid samples vs the true prior", height=320
        )
        figs.append(f)
    mia = report.get("details", {}).get("membership")
    if mia:
        figs.append(mia_auc_figure([(None, mia["sigmas"], mia["auc"])], sigma_title="sigma"))
    basin = report.get("details", {}).get("basin")
    if basin:
        figs.append(basin_figure(basin))
    pca = art.get("pca")
    if pca is not None:
        f = go.Figure()
        for name in ("train", "holdout", "generated"):
            p = pca[pca["set"] == name]
            if len(p):
                f.add_trace(pca_trace(p, name, {"size": 4, "opacity": 0.5}))
        p = pca[(pca["set"] == "generated") & pca["is_copy"]]
        if len(p):
            f.add_trace(pca_trace(p, "copies", {"size": 7, "symbol": "x", "color": "black"}))
        f.update_layout(title="PCA of features (first two components of the training set)", height=420)
        figs.append(f)
    return [fig.to_html(full_html=False, include_plotlyjs=False) for fig in figs]


# --------------------------------------------------------------------------------------------- page


CONDITION_COLUMNS = (  # the per-condition table: metric key, column title
    ("convergence.bulk_error", "E1 (bulk)"),
    ("convergence.fd", "FD"),
    ("factors.novel_valid_rate", "novel valid"),
    ("memorization.copy_rate", "copy rate"),
    ("memorization.unique_train_copied", "items copied"),
    ("memorization.mia_auc", "MIA AUC"),
)


def condition_table(report: dict) -> str:
    """The per-condition verdicts and main metrics of a conditional audit ("" otherwise)."""
    conds = report.get("conditions")
    if not conds:
        return ""
    e = html.escape
    kind = (report.get("inputs", {}).get("condition") or {}).get("kind", "condition")
    head = "".join(
        f"<th>{e(h)}</th>"
        for h in ("condition", "n train", "n generated", *schema.VERDICTS, *(t for _, t in CONDITION_COLUMNS))
    )
    rows = []
    for c in conds:
        cells = [f"<td>{e(str(c['condition']))}</td>", f"<td class='num'>{c['n_train']}</td>"]
        cells.append(f"<td class='num'>{c['n_generated']}</td>")
        for k in schema.VERDICTS:
            v = c["verdict"].get(k, "n/a")
            why = e(c.get("reasons", {}).get(k, ""))
            cls = {"pass": "pass", "fail": "fail"}.get(v, "na")
            cells.append(f"<td class='{cls}' title='{why}'>{e(v)}</td>")
        for key, _ in CONDITION_COLUMNS:
            m = c["metrics"].get(key)
            cells.append("<td class='num'>" + ("" if m is None else f"{m['value']:.4g}") + "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<h2>Per {e(kind.rstrip('s'))}</h2><p class='small'>Each condition audited on its own samples, training "
        "and held-out rows (hover a verdict for its reason).</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    )


def render_html(report: dict, art: dict, images: dict, *, plotly: str = INLINE) -> str:
    """The report page. ``images``: data URIs from the writer (``samples``, ``train``, ``pairs`` of
    (generated index, train index, URI)), empty for vector data; ``plotly``: ``"inline"`` or a relative
    path to a shared ``plotly.min.js`` (see the module docstring)."""
    e = html.escape
    script = plotly_tag(plotly)  # checked first: a bad option fails before any work
    inp = report["inputs"]
    banner = []
    for k in schema.VERDICTS:
        v = report["verdict"][k]
        cls = {"pass": "pass", "fail": "fail"}.get(v, "na")
        banner.append(
            f"<div class='v {cls}'><div class='small'>{e(VERDICT_TITLES[k])}</div><b>{e(v.upper())}</b>"
            f"<div class='small'>{e(report['reasons'].get(k, ''))}</div></div>"
        )
    skipped = "".join(
        f"<li><code>{e(s['probe'])}</code>: {e(s['reason'])}</li>" for s in report.get("skipped", [])
    )
    timings = "".join(
        f"<tr><td>{e(k)}</td><td class='num'>{v:.2f} s</td></tr>" for k, v in report["timings"].items()
    )
    feats = inp.get("features", {})
    warn = ""
    if feats.get("random_init"):
        warn = (
            "<p class='fail v'><b>Warning:</b> features come from a randomly initialised network (plumbing "
            "test); the numbers mean nothing.</p>"
        )
    warn += "".join(f"<p class='na v'><b>Warning:</b> {e(str(w))}</p>" for w in report.get("warnings", []))
    info_rows = [
        ("model", inp.get("model")),
        ("dataset", inp.get("dataset")),
        ("train", inp.get("train")),
        ("holdout", inp.get("holdout")),
        ("features", feats.get("id")),
        (
            "generated / train / holdout",
            f"{inp.get('n_generated')} / {inp.get('n_train')} / {inp.get('n_holdout')}",
        ),
        ("seed", inp.get("seeds", {}).get("sample")),
        ("created", report.get("created")),
    ]
    info = "".join(
        f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in info_rows if v is not None
    )
    gallery = ""
    if images:
        copies = art["copies"]
        pairs = "".join(
            f"<div class='pair'><img src='{uri}' alt='pair'><br>gen #{g} · train #{t}<br>d1 {copies.d1[g]:.3g}, "
            f"ratio {copies.ratio[g]:.2f}{' · <b>copy</b>' if copies.is_copy[g] else ''}"
            f"<br>transform <code>{e('identity' if copies.transform is None else str(copies.transform[g]))}</code>"
            "</div>"
            for g, t, uri in images["pairs"]
        )
        gallery = (
            f"<h2>Samples</h2><p>Generated (first 64):</p><img src='{images['samples']}' alt='generated samples'>"
            f"<p>Training data (first 64):</p><img src='{images['train']}' alt='training samples'>"
            f"<h2>Closest generated samples beside their nearest training items</h2><div class='pairs'>{pairs}</div>"
        )
    figs = "".join(f"<div>{s}</div>" for s in _figures(report, art))
    title = f"diffaudit report — {inp.get('model')}"
    per_condition = condition_table(report)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(str(title))}</title><style>{_CSS}</style>{script}</head><body>"
        f"<h1>{e(str(title))}</h1>{warn}<div class='banner'>{''.join(banner)}</div>"
        f"<h2>Inputs</h2><table>{info}</table>"
        f"{per_condition}"
        f"<h2>Metrics</h2><p class='small'>Hover a metric's name for what it measures.</p>{metric_tables(report)}"
        + (f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else "")
        + f"{gallery}<h2>Plots</h2>{figs}<h2>Timings</h2><table>{timings}</table>"
        f"<p class='small'>schema {e(report['schema'])} · diffaudit "
        f"{e(str(inp.get('versions', {}).get('diffaudit', '')))}</p>"
        "</body></html>"
    )
