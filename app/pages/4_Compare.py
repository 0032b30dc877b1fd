"""Compare: two or more runs side by side: verdicts, per-condition verdicts (conditional audits), metrics with
intervals, overlaid curves."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from diffaudit.app import data, ui
from diffaudit.errors import DiffauditError
from diffaudit.report import html

ui.setup("compare")
st.title("Compare")
df, _ = ui.require_runs()
con = ui.connection()

asked = []
for rid in st.query_params.get_all("runs"):
    if ui.resolve_or_refuse(rid) is not None:
        asked.append(rid)
labels = {r["run_id"]: ui.run_label(r) for _, r in df.iterrows()}
ids = df["run_id"].tolist()


def compare_ui() -> list[str]:
    default = [r for r in asked if r in labels] or ids[:2]
    return st.multiselect(
        "runs to compare (two or more)",
        ids,
        default=default,
        format_func=lambda i: labels.get(i, i),
        key="cmp_runs",
    )


chosen = compare_ui()
if sorted(chosen) != sorted(st.query_params.get_all("runs")):
    st.query_params["runs"] = chosen
if len(chosen) < 2:
    st.info("Pick at least two runs to compare.")
    st.stop()

short = {}
for k, rid in enumerate(chosen):
    r = df[df["run_id"] == rid].iloc[0]
    bits = [str(r["model_label"])]
    if not pd.isna(r["n_train"]):
        bits.append(f"n={r['n_train']}")
    if not pd.isna(r["d"]):
        bits.append(f"d={r['d']}")
    short[rid] = f"{chr(65 + k) if k < 26 else k}: {' '.join(bits)}"
sel = df.set_index("run_id").loc[chosen]
st.dataframe(
    pd.DataFrame(
        {"run": [short[r] for r in chosen], "run id": chosen, "dataset": sel["dataset_spec"].tolist()}
    ),
    hide_index=True,
    width="stretch",
)

# Each run's report.json, read once and checked (fields of the wrong type are left out, with a warning): the
# per-condition results and the membership curves come from it. (run folder, report | None when unreadable)
reports: dict[str, tuple] = {}
for r in chosen:
    run_dir, rep = ui.resolve_or_refuse(r), None
    if run_dir is not None:
        try:
            rep, notes = data.check_report(data.read_report(run_dir))
            ui.show_report_notes(notes, f"The report of {ui.md(short[r])}")
        except DiffauditError as e:
            st.warning(f"{ui.md(short[r])}: report.json skipped: {ui.md(str(e), 400)}")
    reports[r] = (run_dir, rep)

st.subheader("Verdicts")
verdicts = pd.DataFrame(
    {short[r]: [sel.loc[r, f"v_{v}"] for v in data.VERDICTS] for r in chosen},
    index=["threshold 1 · convergence", "threshold 2 · generalization", "memorization"],
)
st.dataframe(verdicts.style.map(ui.verdict_style), width="stretch")


def condition_compare_ui(metric_keys: list[str], noun: str) -> tuple[str, str]:
    """The per-condition verdict and metric to line up; returns (verdict, metric key)."""
    c1, c2 = st.columns(2)
    verdict = c1.selectbox(
        f"per-{noun} verdict",
        list(data.VERDICTS),
        index=list(data.VERDICTS).index("memorization"),
        format_func=lambda v: ui.VERDICT_COLUMNS[v],
        key="cmp_cond_verdict",
    )
    default = "memorization.copy_rate"
    metric = c2.selectbox(
        f"per-{noun} metric",
        metric_keys,
        index=metric_keys.index(default) if default in metric_keys else 0,
        format_func=ui.label,
        key="cmp_cond_metric",
    )
    return verdict, metric


# Conditional audits (--condition labels|prompts): their per-condition verdicts side by side, conditions matched
# by name. Drawn only when some chosen run is one; unconditional runs are named, not given empty columns.
infos = {r: data.condition_info(rep) for r, (_, rep) in reports.items() if rep is not None}
cond_runs = [r for r in chosen if infos.get(r) is not None]
if cond_runs:
    kinds = {infos[r]["kind"] for r in cond_runs}
    noun = ui.condition_noun(kinds.pop()) if len(kinds) == 1 else "condition"
    per = {short[r]: data.condition_frame(reports[r][1]) for r in cond_runs}  # (frame, measured metric keys)
    frames = {k: cf for k, (cf, _) in per.items()}
    listed = {k: cf for k, cf in frames.items() if len(cf)}
    measured = list(dict.fromkeys(k for _, keys in per.values() for k in keys))
    metric_keys = [k for k in data.CONDITION_MAIN if k in measured] or measured  # the main ones, else any
    st.subheader(f"Per {noun}")
    if not listed:
        st.info(f"None of these reports lists per-{noun} results.")
    else:
        verdict, metric = condition_compare_ui(metric_keys or ["memorization.copy_rate"], noun)
        v_title, m_title = ui.VERDICT_COLUMNS[verdict], ui.label(metric)
        cmp = data.condition_comparison(listed, verdict, metric, (v_title, m_title))
        cmp = cmp.rename(columns={"condition": noun})
        cmp[noun] = [ui.shown(c, 80) for c in cmp[noun]]
        v_cols = [f"{k} · {v_title}" for k in listed]
        st.dataframe(
            cmp.style.map(ui.verdict_style, subset=v_cols),
            hide_index=True,
            width="stretch",
            column_config={
                f"{k} · {m_title}": st.column_config.NumberColumn(
                    f"{k} · {m_title}", format="%.4g", help=ui.direction(metric) or None
                )
                for k in listed
            },
        )
        bits = [
            f"{ui.md(k)}: {v_title} fails for {int((cf[verdict] == 'fail').sum())} of {len(cf)} {noun}s"
            for k, cf in listed.items()
        ]
        bits += [f"{ui.md(k)}: lists no per-{noun} results" for k, cf in frames.items() if not len(cf)]
        bits += [f"{ui.md(short[r])}: unconditional" for r in chosen if r not in cond_runs]
        st.caption(
            "; ".join(bits) + f". {noun.capitalize()}s are matched by name; '—': the run has no such {noun}."
        )

st.subheader("Metrics")
names = [f"{g}.{k}" for g, k in data.METRICS]  # every schema row; a run without one shows "—"
table = pd.DataFrame(
    {
        "better": [ui.direction(m).replace(" is better", "") for m in names],
        **{
            short[r]: [ui.fmt(sel.loc[r, m], sel.loc[r, f"{m}.lo"], sel.loc[r, f"{m}.hi"]) for m in names]
            for r in chosen
        },
    },
    index=[ui.label(m) for m in names],
)
st.dataframe(table, width="stretch")

st.subheader("Overlaid curves")
rate_names = [
    "convergence.precision",
    "convergence.recall",
    "convergence.coverage",
    "factors.validity",
    "factors.novel_valid_rate",
    "memorization.copy_rate",
]
fig = go.Figure()
for r in chosen:
    v = sel.loc[r, rate_names].astype(float)
    lo = sel.loc[r, [f"{m}.lo" for m in rate_names]].astype(float).to_numpy()
    hi = sel.loc[r, [f"{m}.hi" for m in rate_names]].astype(float).to_numpy()
    fig.add_trace(
        go.Bar(
            x=[ui.label(m) for m in rate_names],
            y=v.to_numpy(),
            name=short[r],
            error_y={
                "type": "data",
                "array": np.nan_to_num(hi - v.to_numpy()).clip(0),
                "arrayminus": np.nan_to_num(v.to_numpy() - lo).clip(0),
            },
        )
    )
fig.update_layout(barmode="group", yaxis_range=[0, 1.05], height=360, title="Rates with 95 % intervals")
st.plotly_chart(fig, width="stretch")

c1, c2 = st.columns(2)
ecdf_d1, ecdf_ratio = go.Figure(), go.Figure()
mia_curves = []
for r in chosen:
    run_dir, rep = reports[r]
    if run_dir is None:
        continue
    cp = ui.artifact(run_dir, "copies.parquet")
    if cp is not None:
        try:
            d = data.read_parquet(cp, "SELECT d1, ratio FROM {src}", con=con)
        except DiffauditError as e:
            st.warning(f"{ui.md(short[r])}: copies.parquet skipped: {ui.md(str(e), 400)}")
            d = None
        if d is not None and len(d):
            y = np.arange(1, len(d) + 1) / len(d)
            ecdf_d1.add_trace(go.Scatter(x=np.sort(d["d1"].to_numpy()), y=y, mode="lines", name=short[r]))
            ecdf_ratio.add_trace(
                go.Scatter(x=np.sort(d["ratio"].to_numpy()), y=y, mode="lines", name=short[r])
            )
    mia = ((rep or {}).get("details") or {}).get("membership")
    if mia and mia.get("sigmas") and mia.get("auc"):
        mia_curves.append((short[r], mia["sigmas"], mia["auc"]))
ecdf_d1.update_layout(
    title="Distance d₁ to the nearest training item (ECDF)",
    xaxis_title="d₁ (squared L2)",
    yaxis_title="share of generated samples",
    height=340,
)
ecdf_ratio.update_layout(
    title="Ratio d₁/d₂ (ECDF; mass near 0 = copies)",
    xaxis_title="d₁/d₂",
    yaxis_title="share of generated samples",
    height=340,
)
c1.plotly_chart(ecdf_d1, width="stretch")
c2.plotly_chart(ecdf_ratio, width="stretch")
if mia_curves:
    st.plotly_chart(html.mia_auc_figure(mia_curves), width="stretch")
