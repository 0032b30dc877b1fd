"""Audit: one run in depth: verdicts, metrics with intervals, per-condition results (conditional audits), samples,
copy gallery, factors, membership."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from diffaudit.app import data, ui
from diffaudit.errors import DiffauditError
from diffaudit.report import html, images

ui.setup("audit")
st.title("Audit")
df, _ = ui.require_runs()
con = ui.connection()

asked = st.query_params.get("run")
if asked is not None:
    if ui.resolve_or_refuse(asked) is None:
        st.info(f"Showing the first run of the list instead of the refused `?run=` ({df['run_id'].iloc[0]}).")
        asked = None
        st.query_params.clear()
    elif asked not in set(df["run_id"]):
        st.warning(
            f"Run {ui.md(asked)} from the link is not among the listed runs (skipped, see above); showing the "
            "first run of the list instead."
        )
        asked = None
        st.query_params.clear()
run_id = ui.run_picker_ui(df, "audit_run", default=asked)
if run_id != st.query_params.get("run"):
    st.query_params["run"] = run_id
run_dir = ui.resolve_or_refuse(run_id)
if run_dir is None:
    st.stop()
try:
    rep = data.read_report(run_dir)
except DiffauditError as e:
    st.warning(f"This run cannot be shown: {ui.md(str(e), 400)}")
    st.stop()
rep, notes = data.check_report(rep)
ui.show_report_notes(notes)
row = df[df["run_id"] == run_id].iloc[0]
inp = rep.get("inputs") or {}
# Every user string below goes through ui.md (escaped, cut): a report's strings are text, never markdown.
data_bit = "no dataset" if pd.isna(row["dataset_spec"]) else f"data {ui.md(row['dataset_spec'])}"
st.header(
    f"{ui.md(inp.get('model', row['model']))}"
    + ("" if pd.isna(row["dataset"]) else f" on {ui.md(row['dataset'])}")
)
st.caption(
    f"run {ui.md(run_id)} · folder {ui.md(str(run_dir), 300)} · {data_bit} · "
    f"created {ui.md(rep.get('created', '?'))} · "
    f"{ui.md(inp.get('n_generated'))} generated / {ui.md(inp.get('n_train'))} train / "
    f"{ui.md(inp.get('n_holdout'))} holdout · features {ui.md((inp.get('features') or {}).get('id'))}"
)
if (inp.get("features") or {}).get("random_init"):
    st.warning("Features come from a randomly initialised network (plumbing test): the numbers mean nothing.")
# The audit's own warnings (too few samples for reliable verdicts, a checkpoint trained on other data, ...): read
# before the verdicts they qualify.
ui.show_report_warnings(data.report_warnings(rep))

# ------------------------------------------------------------------------------------------ verdicts
st.subheader("Verdicts")
cols = st.columns(3)
names = {
    "convergence": "Threshold 1 · convergence",
    "generalization": "Threshold 2 · generalization",
    "memorization": "Memorization",
}
verdict, reasons = rep.get("verdict") or {}, rep.get("reasons") or {}
for c, k in zip(cols, names, strict=True):
    v = verdict.get(k, "n/a")
    c.markdown(f"**{names[k]}**  \n{ui.VERDICT_BADGE.get(v, ui.md(v, 40))}")
    if reasons.get(k):
        c.caption(ui.md(reasons[k], 600))
thr = rep.get("thresholds") or {}
if thr:
    st.caption(
        "Verdict thresholds of this audit: "
        + ", ".join(f"{ui.md(k, 60)} = {ui.md(v, 60)}" for k, v in list(thr.items())[:20])
    )

# ------------------------------------------------------------------------------------------ metrics
st.subheader("Metrics")
try:
    mt = data.metrics_table(run_dir, rep, con=con)
except DiffauditError as e:
    st.warning(f"metrics.parquet skipped: {e}")
    mt = data.metrics_table(run_dir, rep, use_parquet=False)  # the values in report.json
mt = data.metric_view(mt)  # labels, units, directions, groups: the metric schema
mt["value [95 % interval]"] = [
    ui.fmt(v, lo, hi) for v, lo, hi in zip(mt["value"], mt["ci_lo"], mt["ci_hi"], strict=True)
]
mt["better"] = mt["better"].map({"lower": "↓ lower", "higher": "↑ higher"}).fillna("")
mt["informs"] = (
    mt["informs"]
    .map({"convergence": "threshold 1", "generalization": "threshold 2", "memorization": "memorization"})
    .fillna("")
)
left, right = st.columns([3, 2])
with left:
    show_all = st.toggle("show every metric (not only the public ones)", value=False, key="audit_all_metrics")
    shown = mt if show_all else mt[mt["public"]]
    st.dataframe(
        shown[
            [
                "group",
                "metric",
                "value [95 % interval]",
                "better",
                "informs",
                "unit",
                "help",
                "name",
                "value",
                "ci_lo",
                "ci_hi",
            ]
        ],
        hide_index=True,
        width="stretch",
        column_config={
            "informs": st.column_config.TextColumn("informs verdict"),
            "help": st.column_config.TextColumn("what it measures"),
        },
    )
    st.caption(
        "Metrics, labels and directions come from the metric schema; '—' = not measured in this run "
        "(or not yet part of the report when it was written)."
    )
with right:
    # rates in [0, 1] that are public or inform a verdict (schema unit "rate"), on one axis
    rates = mt[(mt["unit"] == "rate") & (mt["public"] | (mt["informs"] != "")) & mt["value"].notna()]
    if len(rates):
        err_hi = (rates["ci_hi"] - rates["value"]).fillna(0).clip(lower=0)
        err_lo = (rates["value"] - rates["ci_lo"]).fillna(0).clip(lower=0)
        fig = go.Figure(
            go.Bar(
                x=rates["metric"],
                y=rates["value"],
                error_y={"type": "data", "array": err_hi, "arrayminus": err_lo},
            )
        )
        fig.update_layout(
            title="Rates with 95 % intervals", yaxis_range=[0, 1.05], height=330, margin={"t": 40, "b": 10}
        )
        st.plotly_chart(fig, width="stretch")
    fds = mt[
        mt["name"].isin(["convergence.fd", "convergence.fd_train_holdout", "convergence.fd_gen_train"])
        & mt["value"].notna()
    ]
    if len(fds):
        fig = go.Figure(
            go.Bar(
                x=fds["metric"],
                y=fds["value"],
                error_y={
                    "type": "data",
                    "array": (fds["ci_hi"] - fds["value"]).fillna(0).clip(lower=0),
                    "arrayminus": (fds["value"] - fds["ci_lo"]).fillna(0).clip(lower=0),
                },
            )
        )
        fig.update_layout(
            title="Fréchet distance vs the real-data noise floor", height=300, margin={"t": 40, "b": 10}
        )
        st.plotly_chart(fig, width="stretch")

# ------------------------------------------------------------------------------------------ conditions
# A conditional audit (--condition labels|prompts): every condition audited on its own rows. ``chosen``: the
# condition (its index in report.json's list, copies.parquet's ``condition``) whose samples the sections below
# show; None shows every sample, as for an unconditional run (which draws none of this).
chosen = chosen_name = chosen_rows = None
cond = data.condition_info(rep)
if cond is not None:
    cf, cond_keys = data.condition_frame(rep)
    noun = ui.condition_noun(cond["kind"])
    st.subheader(f"Per {noun}")
    st.caption(
        f"{cond['n']} {noun}s"
        + (f" ({ui.md(cond['source'], 40)})" if cond.get("source") else "")
        + (f" · guidance {ui.fmt(cond['guidance'])}" if cond.get("guidance") is not None else "")
        + f" · each {noun} audited on its own generated, training and held-out rows; click a column to sort."
    )
    if cf.empty:
        st.info(f"This report lists no per-{noun} results.")
    else:
        failing = cf[cf["memorization"] == "fail"]
        names_failing = ", ".join(ui.md(c, 60) for c in failing["condition"].head(20))
        st.markdown(
            f"**Memorization fails for {len(failing)} of {len(cf)} {noun}s**"
            + (f": {names_failing}" if len(failing) else "")
            + (f" and {len(failing) - 20} more" if len(failing) > 20 else "")
        )
        o1, o2 = st.columns([2, 3])
        rows = o1.radio(
            "rows",
            ["all", "failing memorization", "failing any verdict"],
            horizontal=True,
            key="audit_cond_rows",
        )
        every = o2.toggle(
            f"show every per-{noun} metric (not only the main ones)", value=False, key="audit_cond_all"
        )
        keys = cond_keys if every else [k for k in cond_keys if k in data.CONDITION_MAIN]
        view = cf
        if rows == "failing memorization":
            view = cf[cf["memorization"] == "fail"]
        elif rows == "failing any verdict":
            view = cf[(cf[list(data.VERDICTS)] == "fail").any(axis=1)]
        labels: dict[str, str] = {}
        for k in keys:  # schema labels; a clash (unknown keys, …) keeps the key itself
            labels[k] = ui.label(k) if ui.label(k) not in labels.values() else k
        table = pd.DataFrame({noun: [ui.shown(c, 80) for c in view["condition"]]}, index=view.index)
        if (view["value"].fillna("") != view["condition"]).any():
            table["value"] = [ui.shown(v, 120) for v in view["value"]]
        table["n train"] = view["n_train"]
        table["n generated"] = view["n_generated"]
        for v, col in ui.VERDICT_COLUMNS.items():
            table[col] = view[v]
        for k in keys:
            table[labels[k]] = view[k]
        if cf["robust_z"].notna().any():
            table["detector robust z"] = view["robust_z"]
        if cf["memorized"].notna().any():
            table["known memorized"] = view["memorized"]
        st.dataframe(
            table.style.map(ui.verdict_style, subset=list(ui.VERDICT_COLUMNS.values())),
            hide_index=True,
            width="stretch",
            column_config={
                "n train": st.column_config.NumberColumn("n train", format="%d"),
                "n generated": st.column_config.NumberColumn("n generated", format="%d"),
                **{
                    labels[k]: st.column_config.NumberColumn(
                        labels[k], format="%.4g", help=ui.direction(k) or None
                    )
                    for k in keys
                },
            },
        )
        with st.expander(f"Why: the reason of every per-{noun} verdict"):
            why = pd.DataFrame({noun: table[noun]})
            for v, col in ui.VERDICT_COLUMNS.items():
                why[col] = [ui.shown(r, 600) for r in view[f"reason_{v}"]]
            why["skipped probes"] = [ui.shown(r, 600) if r else "" for r in view["skipped"]]
            st.dataframe(why, hide_index=True, width="stretch")
        det = (rep.get("details") or {}).get("cond_memorization") or {}
        if det:
            bits = []
            if det.get("most_suspect") is not None:
                bits.append(f"most suspect {noun}: {ui.md(det['most_suspect'], 120)}")
            if det.get("flagged") is not None:
                fl = det["flagged"]
                bits.append(
                    f"{len(fl)} flagged"
                    + (": " + ", ".join(ui.md(f, 60) for f in fl[:20]) if fl else "")
                    + (f" and {len(fl) - 20} more" if len(fl) > 20 else "")
                    + (
                        f" (robust z above {det['threshold_z']:.3g})"
                        if det.get("threshold_z") is not None
                        else ""
                    )
                )
            for k in ("flag_skipped", "auc_skipped"):
                if det.get(k):
                    bits.append(ui.md(det[k], 400))
            if bits:
                st.caption(
                    "Text-conditional memorization detector (Wen et al. 2024): " + "; ".join(bits) + "."
                )
        pos = ui.condition_picker_ui(cf, noun, "audit_condition")
        if pos is not None:
            r = cf.iloc[pos]
            chosen, chosen_name = int(r["index"]), ui.md(r["condition"], 80)
            cols = st.columns(3)
            for c, v in zip(cols, data.VERDICTS, strict=True):
                c.markdown(
                    f"**{chosen_name} · {ui.VERDICT_COLUMNS[v]}**  \n"
                    f"{ui.VERDICT_BADGE.get(r[v], ui.md(r[v], 40))}"
                )
                if isinstance(r[f"reason_{v}"], str) and r[f"reason_{v}"]:
                    c.caption(ui.md(r[f"reason_{v}"], 600))

# ------------------------------------------------------------------------------------------ samples
st.subheader("Samples")
thumbs = None
tp = ui.artifact(run_dir, "thumbs.npz")
if tp is not None:
    try:
        thumbs = data.load_thumbs(tp)
    except DiffauditError as e:
        st.warning(f"thumbs.npz skipped: {e}")


copies_path = ui.artifact(run_dir, "copies.parquet")
pca_path = ui.artifact(run_dir, "pca.parquet")
if chosen is not None:  # the generated samples of the chosen condition (copies.parquet knows each one's)
    try:
        if copies_path is None or "condition" not in data.copies_columns(copies_path, con=con):
            raise DiffauditError("it has no condition column")
        chosen_rows = data.condition_rows(copies_path, chosen, con=con)
    except DiffauditError as e:
        st.warning(
            f"The samples of {chosen_name} cannot be picked out (copies.parquet: {ui.md(str(e), 300)}); "
            "every sample is shown."
        )
        chosen = None
if thumbs is not None and "generated" in thumbs and len(thumbs["generated"]):
    g = thumbs["generated"]
    if chosen is None:
        st.image(
            images.mosaic(g, cols=16),
            caption=f"first {len(g)} generated samples (thumbnails stored by the audit)",
        )
    else:
        gidx = thumbs.get("generated_index", np.arange(len(g)))
        keep = np.isin(np.asarray(gidx, dtype=np.int64)[: len(g)], chosen_rows)
        if keep.any():
            st.image(
                images.mosaic(g[: len(keep)][keep], cols=16),
                caption=f"the {int(keep.sum())} samples of {chosen_name} among the first {len(g)} generated "
                "(thumbnails stored by the audit)",
            )
        else:
            st.info(
                f"None of the first {len(g)} generated samples (the thumbnails stored) is of {chosen_name}."
            )
elif pca_path is not None:
    try:
        pca = data.read_parquet(pca_path, con=con)
        if chosen is not None and "index" in pca.columns:
            pca = pca[(pca["set"] != "generated") | pca["index"].isin(chosen_rows)]
        fig = go.Figure()
        for name, colour in (("train", "#1f77b4"), ("holdout", "#2ca02c"), ("generated", "#ff7f0e")):
            p = pca[pca["set"] == name]
            if name == "generated":
                p = p[~p["is_copy"]]
            if len(p):
                fig.add_trace(html.pca_trace(p, name, {"size": 4, "opacity": 0.5, "color": colour}))
        p = pca[(pca["set"] == "generated") & pca["is_copy"]]
        if len(p):
            fig.add_trace(
                html.pca_trace(p, "generated (copy)", {"size": 7, "symbol": "x", "color": "#d62728"})
            )
        fig.update_layout(
            title="2-D PCA of generated / train / holdout features, coloured by copy flag"
            + ("" if chosen is None else f"; generated: the chosen {noun} only"),
            xaxis_title="PC 1",
            yaxis_title="PC 2",
            height=460,
        )
        st.plotly_chart(fig, width="stretch")
    except DiffauditError as e:
        st.warning(f"pca.parquet skipped: {e}")
else:
    st.info("This run stored no sample thumbnails and no PCA points.")

# ------------------------------------------------------------------------------------------ copies
st.subheader("Copy gallery")
if copies_path is None:
    st.info("This run has no copies.parquet (no nearest-neighbour data).")
else:
    det = (rep.get("details") or {}).get("memorization") or {}
    st.caption(
        f"Copy rule {ui.md(det.get('rule', '?'))}: ratio d₁/d₂ below {ui.fmt(det.get('ratio_threshold'))} "
        f"(d₁, d₂: distances to the nearest and second-nearest training item)"
        + (
            f", d₁ below the holdout 1 % quantile {det['holdout_threshold']:.4g}"
            if det.get("holdout_threshold")
            else ""
        )
        + "."
    )
    if chosen is not None:
        st.caption(f"Showing the generated samples of {chosen_name} only (choose another above).")
    try:
        if thumbs is not None and "pairs_generated" in thumbs and len(thumbs["pairs_generated"]):
            gi = thumbs["pairs_generated_index"].astype(np.int64)
            pairs = data.read_parquet(
                copies_path,
                'SELECT * FROM {src} WHERE "index" IN (SELECT unnest(?))',
                con=con,
                params=[gi.tolist()],
            ).set_index("index")
            order = st.radio(
                "sort the gallery by", ["ratio", "d1"], horizontal=True, key="audit_gallery_sort"
            )
            info = pairs.loc[gi]
            rank = (
                np.lexsort((info["d1"].to_numpy(), info["ratio"].to_numpy()))
                if order == "ratio"
                else np.lexsort((info["ratio"].to_numpy(), info["d1"].to_numpy()))
            )
            if chosen is not None:  # the stored pairs of that condition (the audit keeps a few of each)
                rank = rank[np.isin(gi[rank], chosen_rows)]
                if not len(rank):
                    st.info(f"The audit stored no sample pair of {chosen_name}.")
            per_row = 4
            for start in range(0, len(rank), per_row):
                cs = st.columns(per_row)
                for c, j in zip(cs, rank[start : start + per_row], strict=False):
                    pair = np.stack([thumbs["pairs_generated"][j], thumbs["pairs_train"][j]])
                    r = info.iloc[j]
                    c.image(
                        images.mosaic(pair, cols=2),
                        caption=f"generated #{gi[j]} | train #{int(r['nn_index'])} · d₁ {r['d1']:.3g} · "
                        f"ratio {r['ratio']:.2f}{' · COPY' if bool(r['is_copy']) else ''}"
                        + (f" · {r['transform']}" if "transform" in r.index else ""),
                    )
        c1, c2 = st.columns([3, 2])
        with c1:
            st.markdown("**Nearest training item of every generated sample**")
            o1, o2 = st.columns(2)
            order = o1.selectbox(
                "sort by",
                ["ratio", "d1", "d2", "index", "ratio (desc)", "d1 (desc)"],
                key="audit_copies_sort",
            )
            only = o2.toggle("copies only", value=False, key="audit_copies_only")
            n_all = data.copies_count(copies_path, only, chosen, con=con)
            size, page = ui.pagination_ui(n_all, "audit_copies")
            page_df, n_rows = data.copies_page(
                copies_path, order, page, size, only, con=con, condition=chosen
            )
            st.dataframe(page_df, hide_index=True, width="stretch")
        with c2:
            st.markdown("**Most-copied training items**")
            mc = data.most_copied(copies_path, 20, con=con, condition=chosen)
            st.dataframe(mc, hide_index=True, width="stretch")
            top = mc[mc["copies"] > 0]
            if len(top):
                fig = go.Figure(go.Bar(x=top["train_index"].astype(str), y=top["copies"]))
                fig.update_layout(
                    height=260,
                    xaxis_title="training item",
                    yaxis_title="generated copies",
                    margin={"t": 10, "b": 10},
                    xaxis_type="category",
                )
                st.plotly_chart(fig, width="stretch")
        where, params = data.copies_where(False, chosen)
        d = data.read_parquet(
            copies_path, f"SELECT d1, ratio, is_copy FROM {{src}} {where}", con=con, params=params
        )
        # d₁/d₂ lies in [0, 1]: fixed bins of 0.02 on that scale, the last one [1, 1.02) for ties d₁ = d₂
        # (plotly's own bins draw all-zero ratios, every sample an exact copy, as one bar from -0.5 to 0.5)
        fig = go.Figure(
            go.Histogram(x=d["ratio"], xbins={"start": 0.0, "end": 1.01, "size": 0.02}, name="ratio d₁/d₂")
        )
        if det.get("ratio_threshold") is not None:
            fig.add_vline(x=float(det["ratio_threshold"]), line_dash="dash", annotation_text="copy threshold")
        fig.update_layout(
            title="Ratio d₁/d₂ of generated samples (small = copy-like)",
            height=300,
            xaxis_title="d₁/d₂",
            xaxis_range=[0, 1.02],
            margin={"t": 40, "b": 10},
        )
        st.plotly_chart(fig, width="stretch")
    except DiffauditError as e:
        st.warning(f"copies.parquet skipped: {e}")

# ------------------------------------------------------------------------------------------ factors
fac = (rep.get("details") or {}).get("factors")
st.subheader("Per-factor fidelity")
if not fac:
    st.info("No factor probes for this run (they need a synthetic dataset with known factors).")
else:
    names = fac.get("factor_names") or sorted((fac.get("wasserstein_rel") or {}).keys())
    w1 = fac.get("wasserstein_rel") or {}
    ks = fac.get("ks") or {}
    ff = pd.DataFrame(
        {
            "factor": [ui.shown(n, 60) for n in names],
            "relative W1": [w1.get(n) for n in names],
            "KS": [ks.get(n) for n in names],
        }
    )
    c1, c2 = st.columns([3, 2])
    if ff[["relative W1", "KS"]].notna().any(axis=None):
        fig = go.Figure(
            [
                go.Bar(x=ff["factor"], y=ff["relative W1"], name="relative W₁"),
                go.Bar(x=ff["factor"], y=ff["KS"], name="KS statistic"),
            ]
        )
        fig.update_layout(
            barmode="group",
            height=320,
            title="Recovered factors of valid samples vs the true prior (0 = identical)",
            margin={"t": 40, "b": 10},
        )
        c1.plotly_chart(fig, width="stretch")
    else:  # an empty chart would only show axes: say why there is nothing to draw
        c1.info(
            "No per-factor statistics: "
            + ("; ".join(ui.md(n, 300) for n in (fac.get("notes") or [])[:3]) or "none in this report")
            + "."
        )
    with c2:
        st.dataframe(ff, hide_index=True, width="stretch")
        if fac.get("tau") is not None:
            st.caption(
                f"validity threshold τ = {fac['tau']:.3g} on the oracle-projection residual; "
                f"coverage of the factor space {ui.fmt(fac.get('reference_coverage'))} (reference)"
            )

# ------------------------------------------------------------------------------------------ membership
mia = (rep.get("details") or {}).get("membership")
if mia:
    st.subheader("Membership inference")
    roc = mia.get("roc")
    if roc and roc.get("fpr") and roc.get("tpr"):
        fig = go.Figure(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name="ROC"))
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="chance"))
        fig.update_layout(
            title="Membership-inference ROC",
            xaxis_title="false-positive rate",
            yaxis_title="true-positive rate",
            height=360,
        )
        st.plotly_chart(fig, width="stretch")
    if mia.get("sigmas") and mia.get("auc"):
        fig = html.mia_auc_figure(
            [("AUC", mia["sigmas"], mia["auc"])],
            title="Loss-threshold attack: AUC per noise level σ",
            chance_text="chance",
        )
        st.plotly_chart(fig, width="stretch")

# ------------------------------------------------------------------------------------------ the rest
skipped = rep.get("skipped") or []
if skipped:
    with st.expander(f"{len(skipped)} probe(s) skipped"):
        for s in skipped:
            st.markdown(f"- {ui.md(s.get('probe'), 80)}: {ui.md(s.get('reason'), 600)}")
with st.expander("Timings and inputs"):
    tm = rep.get("timings") or {}
    if tm:
        st.bar_chart(pd.Series({k: v for k, v in tm.items() if k != "total"}, name="seconds"))
        st.caption(f"total {ui.fmt(tm.get('total'))} s")
    st.json(ui.shown_json(inp), expanded=False)
    if rep.get("sweep"):
        st.json(ui.shown_json(rep["sweep"]), expanded=False)
html_path = ui.artifact(run_dir, "report.html")
if html_path is not None:
    shared = data.html_plotly_src(html_path)
    st.download_button(
        "Download report.html" if shared else "Download the self-contained report.html",
        html_path.read_bytes(),
        "report.html",
        "text/html",
    )
    if shared:  # sweep cells share one plotly.js per sweep folder
        st.caption(
            f"This page loads plotly.js from `{shared}` (one copy per sweep): open it inside the sweep "
            "folder, or copy that file beside it."
        )
