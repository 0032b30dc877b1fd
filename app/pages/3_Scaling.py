"""Scaling: sweep metrics against the training-set size n, the n x d phase diagram, and the exponents.

Curves: mean over seeds, band = min..max over seeds. n1*, n2* (vertical lines, their 95 % intervals as
bands) and the exponents of n* ~ d^b come from ``DIR/thresholds.json`` (``diffaudit thresholds DIR``).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from diffaudit.app import data, ui
from diffaudit.report import schema

ui.setup("scaling")
st.title("Scaling")
df, _ = ui.require_runs()
cells = df[(df["kind"] == "sweep cell") & df["n_train"].notna()].copy()
if cells.empty:
    st.info(
        "No sweep cells under the results folders. Run a sweep first, e.g. "
        "`diffaudit sweep --preset quick --out reports/quick`, then `diffaudit thresholds reports/quick`.",
        icon=":material/inbox:",
    )
    st.stop()

cells["sweep_key"] = [data.sweep_label(s, r) for s, r in zip(cells["sweep"], cells["root"], strict=True)]
# The sweep's transition metrics first (schema rows marked n1 / n2), then FD / floor, then every other row.
_FIRST = [schema.sweep_metric("n1").key, schema.sweep_metric("n2").key, data.FD_RATIO]
METRIC_CHOICES = list(dict.fromkeys(_FIRST + [f"{g}.{k}" for g, k in data.METRICS]))


def scaling_ui(cells: pd.DataFrame) -> dict:
    c = st.columns(4)
    sweep = c[0].selectbox("sweep", sorted(cells["sweep_key"].unique()), key="sc_sweep")
    sub = cells[cells["sweep_key"] == sweep]
    dataset = c[1].selectbox("dataset", sorted(sub["dataset"].dropna().unique()), key="sc_dataset")
    sub = sub[sub["dataset"] == dataset]
    avail = [m for m in METRIC_CHOICES if m in sub and sub[m].notna().any()]
    metric = c[2].selectbox("metric", avail, format_func=ui.label, key="sc_metric")
    models = c[3].multiselect(
        "models",
        sorted(sub["model_label"].dropna().unique()),
        default=sorted(sub["model_label"].dropna().unique()),
        key="sc_models",
    )
    return {"sweep": sweep, "dataset": dataset, "metric": metric, "models": models}


p = scaling_ui(cells)
sub = cells[
    (cells["sweep_key"] == p["sweep"])
    & (cells["dataset"] == p["dataset"])
    & cells["model_label"].isin(p["models"])
]
metric = p["metric"]
if sub.empty or metric is None:
    st.info("Nothing to plot for this choice.")
    st.stop()
root = Path(sub["root"].iloc[0])
sweep_rel = sub["sweep"].iloc[0]
in_sweep = isinstance(sweep_rel, str)
thr_path = data.sweep_file(sweep_rel, root, "thresholds.json") if in_sweep else None
thr = data.read_json_file(thr_path) if thr_path is not None else None
groups = [
    g for g in (thr or {}).get("groups", []) if isinstance(g, dict) and g.get("dataset") == p["dataset"]
]
if not in_sweep:
    st.caption("These cells are not inside a sweep folder (SWEEP/cells/<id>), so no thresholds.json is read.")
elif thr_path is None:
    st.caption(
        f"No thresholds.json in this sweep yet: run `diffaudit thresholds {root / sweep_rel}` for fitted n₁*, n₂*."
    )

# ---------------------------------------------------------------------------------------- curves
st.subheader(f"{ui.label(metric)} against n")
d_values = sorted(int(v) for v in sub["d"].dropna().unique())
d_pick = st.selectbox("d", d_values or [None], key="sc_d") if d_values else None
curve = sub[sub["d"] == d_pick] if d_pick is not None else sub
palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
fig = go.Figure()
for k, (model, grp) in enumerate(curve.groupby("model_label", sort=True)):
    colour = palette[k % len(palette)]
    agg = (
        grp.groupby("n_train")[metric]
        .agg(["mean", "min", "max", "count"])
        .dropna(subset=["mean"])
        .sort_index()
    )
    if agg.empty:
        continue
    x = agg.index.astype(float).to_numpy()
    if (agg["count"] > 1).any():
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([agg["max"], agg["min"][::-1]]),
                fill="toself",
                fillcolor=colour,
                opacity=0.18,
                line={"width": 0},
                hoverinfo="skip",
                name=f"{model}: seeds (min–max)",
                showlegend=True,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=agg["mean"],
            mode="lines+markers",
            name=f"{model} (mean over seeds)",
            line={"color": colour},
        )
    )
# The x-axis spans the measured n (with a small margin). An n* or interval end outside that range (a
# censored bootstrap can put an interval end at n ~ 1e21) is clipped to the edge and marked with an arrow.
n_measured = curve.loc[curve[metric].notna(), "n_train"].astype(float)
n_lo, n_hi = (float(n_measured.min()), float(n_measured.max())) if len(n_measured) else (1.0, 10.0)
x_range = [np.log10(n_lo) - 0.08, np.log10(n_hi) + 0.08]  # log10 units (plotly's log axes)
edge_notes: list[str] = []
for k, model in enumerate(sorted(curve["model_label"].dropna().unique())):
    colour = palette[k % len(palette)]
    for g in groups:
        if g.get("model") != model or (d_pick is not None and g.get("d") != d_pick):
            continue
        for key, dash, label in (("n1_star", "dash", "n₁*"), ("n2_star", "dot", "n₂*")):
            s = g.get(key) if isinstance(g.get(key), dict) else {}
            n_star = s.get("n_star")
            if s.get("status") != "fit" or not isinstance(n_star, int | float) or not np.isfinite(n_star):
                continue
            ci = s.get("n_star_ci")
            ci = (
                ci
                if isinstance(ci, list) and len(ci) == 2 and all(isinstance(c, int | float) for c in ci)
                else None
            )
            if ci:
                x0, x1 = max(ci[0], n_lo), min(ci[1], n_hi)
                if x0 < x1:
                    fig.add_vrect(x0=x0, x1=x1, fillcolor=colour, opacity=0.12, line_width=0)
                for end, edge, arrow, side in ((ci[0], n_lo, "←", "below"), (ci[1], n_hi, "→", "above")):
                    if (end < edge) if side == "below" else (end > edge):
                        edge_notes.append(
                            f"{label} {ui.md(model, 80)}: 95 % interval runs {side} the measured n to {end:.3g}"
                        )
                        fig.add_annotation(
                            x=np.log10(edge),
                            y=0.02 + 0.07 * (len(edge_notes) - 1),
                            yref="paper",
                            text=f"{label} interval to {end:.2g} {arrow}"
                            if side == "above"
                            else f"{arrow} {label} interval to {end:.2g}",
                            showarrow=False,
                            xanchor="right" if side == "above" else "left",
                            font={"color": colour, "size": 11},
                        )
            if not n_lo <= n_star <= n_hi:
                edge_notes.append(f"{label} {ui.md(model, 80)} = {n_star:.3g} lies outside the measured n")
                continue
            fig.add_vline(
                x=n_star,
                line_dash=dash,
                line_color=colour,
                annotation_text=f"{label} {model} = {n_star:.0f}",
                annotation_position="top",
            )
fig.update_layout(
    xaxis_type="log",
    xaxis_range=x_range,
    xaxis_title="training-set size n (log)",
    yaxis_title=ui.axis_title(metric),
    height=440,
    legend={"orientation": "h", "y": -0.2},
)
st.plotly_chart(fig, width="stretch")
if edge_notes:
    st.caption(
        "Drawn inside the measured n only (arrows mark what lies beyond): " + "; ".join(edge_notes) + "."
    )
if groups:
    rows = []
    for g in groups:
        if d_pick is not None and g.get("d") != d_pick:
            continue
        for key, label in (("n1_star", "n₁* (threshold 1)"), ("n2_star", "n₂* (threshold 2)")):
            s = g.get(key) or {}
            ci = s.get("n_star_ci")
            rows.append(
                {
                    "model": g.get("model"),
                    "d": g.get("d"),
                    "threshold": label,
                    "status": s.get("status"),
                    "n*": s.get("n_star"),
                    "95 % interval": f"[{ci[0]:.0f}, {ci[1]:.0f}]" if ci else "—",
                    "note": s.get("message"),
                }
            )
        rows.append(
            {
                "model": g.get("model"),
                "d": g.get("d"),
                "threshold": "which first",
                "status": (g.get("order") or {}).get("first"),
                "n*": None,
                "95 % interval": "",
                "note": (g.get("order") or {}).get("statement"),
            }
        )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        column_config={"n*": st.column_config.NumberColumn("n*", format="%.0f")},
    )

# ---------------------------------------------------------------------------------------- phase diagram
st.subheader("Phase diagram (n × d)")
ph_model = st.selectbox("model", sorted(sub["model_label"].unique()), key="sc_phase_model")
ph = sub[sub["model_label"] == ph_model].dropna(subset=["d"])
if ph["d"].nunique() < 1 or ph[metric].isna().all():
    st.info("No values of this metric to place on an n × d grid.")
else:
    piv = ph.pivot_table(index="d", columns="n_train", values=metric, aggfunc="mean").sort_index()
    fig = go.Figure(
        go.Heatmap(
            z=piv.to_numpy(),
            x=[str(int(v)) for v in piv.columns],
            y=[str(int(v)) for v in piv.index],
            colorscale="Viridis",
            colorbar={"title": ui.label(metric)[:18]},
            hovertemplate="n=%{x}<br>d=%{y}<br>value=%{z:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis_title="training-set size n",
        yaxis_title="dimension d",
        height=360,
        xaxis_type="category",
        yaxis_type="category",
    )
    st.plotly_chart(fig, width="stretch")

# ---------------------------------------------------------------------------------------- exponents


def _span(lo: float, hi: float, values) -> tuple[float, float]:
    """(lo, hi) widened to the finite positive ``values`` (what a log axis can show)."""
    v = [float(x) for x in values if np.isfinite(x) and x > 0]
    return (min(lo, *v), max(hi, *v)) if v else (lo, hi)


st.subheader("Exponents: log n* against log d")
if thr is None:
    st.info(
        "Fitted thresholds appear here once `diffaudit thresholds DIR` has written thresholds.json for this sweep."
    )
else:
    fig = go.Figure()
    any_pt = False
    # The n* axis spans the fitted n* and lines, and their intervals up to a factor 2 beyond: an interval end
    # further out (up to n ~ 1e21 for a censored bootstrap) would flatten every point into a sliver, so its
    # error bar runs off the plot's edge and the caption gives it.
    y_lo, y_hi = np.inf, -np.inf
    intervals: list[tuple[str, float, float]] = []
    for k, g_model in enumerate(sorted({g.get("model") for g in groups})):
        for key, symbol, label in (("n1_star", "circle", "n₁*"), ("n2_star", "diamond", "n₂*")):
            pts = [
                (g["d"], g[key])
                for g in groups
                if g.get("model") == g_model
                and g.get("d") is not None
                and (g.get(key) or {}).get("status") == "fit"
                and g[key].get("n_star")
            ]
            if not pts:
                continue
            any_pt = True
            dd = [q[0] for q in pts]
            ns = [q[1]["n_star"] for q in pts]
            lo = [n - (q[1]["n_star_ci"] or [n, n])[0] for q, n in zip(pts, ns, strict=True)]
            hi = [(q[1]["n_star_ci"] or [n, n])[1] - n for q, n in zip(pts, ns, strict=True)]
            y_lo, y_hi = _span(y_lo, y_hi, ns)
            intervals += [
                (f"{label} {ui.md(g_model, 80)} at d = {d_}", n - a, n + b)
                for d_, n, a, b in zip(dd, ns, lo, hi, strict=True)
            ]
            fig.add_trace(
                go.Scatter(
                    x=dd,
                    y=ns,
                    mode="markers",
                    marker={"symbol": symbol, "size": 10, "color": palette[k % len(palette)]},
                    name=f"{label} {g_model}",
                    error_y={"type": "data", "array": hi, "arrayminus": lo},
                )
            )
    for e in thr.get("exponents") or []:
        if e.get("dataset") != p["dataset"] or e.get("status") != "fit" or not e.get("d"):
            continue
        xs = np.array([min(e["d"]), max(e["d"])], float)
        ys = np.exp(e["c"]) * xs ** e["b"]
        y_lo, y_hi = _span(y_lo, y_hi, ys)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"dash": "dash"},
                name=f"{e['model']} {e['metric']}: n* ∝ d^{e['b']:.2f}",
            )
        )
    if any_pt and np.isfinite(y_lo):
        ends = [a for _, a, _ in intervals] + [b for _, _, b in intervals]
        y_lo, y_hi = _span(y_lo, y_hi, [v for v in ends if y_lo / 2 <= v <= 2 * y_hi])
        beyond = [f"{what}: interval [{a:.3g}, {b:.3g}]" for what, a, b in intervals if a < y_lo or b > y_hi]
        y_lo, y_hi = y_lo / 1.2, y_hi * 1.2  # margin
        fig.update_layout(
            xaxis_type="log",
            yaxis_type="log",
            yaxis_range=[np.log10(y_lo), np.log10(y_hi)],  # plotly's log axes take log10 units
            xaxis_title="d (log)",
            yaxis_title="n* (log)",
            height=380,
        )
        st.plotly_chart(fig, width="stretch")
        if beyond:
            st.caption("Error bars cut at the plot's edge: " + "; ".join(beyond) + ".")
    else:
        st.info(
            "No transition was located inside the grid for this dataset (see the table above), so there is no n* to plot."
        )
    ex = [e for e in (thr.get("exponents") or []) if e.get("dataset") == p["dataset"]]
    if ex:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "model": e.get("model"),
                        "metric": e.get("metric"),
                        "status": e.get("status"),
                        "b": e.get("b"),
                        "b 95 % interval": e.get("b_ci"),
                        "note": e.get("message"),
                    }
                    for e in ex
                ]
            ),
            hide_index=True,
            width="stretch",
        )
