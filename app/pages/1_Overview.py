"""Overview: every audit and sweep cell under the results roots, with filters, verdict badges, pagination."""

import streamlit as st

from diffaudit.app import data, ui

ui.setup("overview")
st.title("Overview")
df, problems = ui.require_runs()

c = st.columns(4)
c[0].metric("runs", len(df))
c[1].metric("audits", int((df["kind"] == "audit").sum()))
c[2].metric("sweep cells", int((df["kind"] == "sweep cell").sum()))
c[3].metric("skipped folders", len(problems))

flt = ui.filters_ui(df, "ov")
sel = ui.apply_filters(df, flt)
conditional = ui.any_conditional(df)  # some run is a conditional audit: draw its columns
sort_by = st.selectbox(
    "sort by",
    [
        "run_id",
        "created",
        "n_train",
        "d",
        "convergence.fd",
        "memorization.copy_rate",
        "factors.novel_valid_rate",
        *(["n_conditions_failing"] if conditional else []),
    ],
    key="ov_sort",
)
sel = sel.sort_values(sort_by, kind="stable", na_position="last")
size, page = ui.pagination_ui(len(sel), "ov")
view = sel.iloc[page * size : (page + 1) * size].copy()

verdict_cols = ui.VERDICT_COLUMNS
metric_cols = (
    "convergence.fd",
    "convergence.fd_train_holdout",
    data.FD_RATIO,
    "factors.novel_valid_rate",
    "memorization.copy_rate",
)
table = view[["model_label", "dataset", "d", "n_train", "seed"]].copy()
table.insert(0, "open", [ui.audit_link(r) for r in view["run_id"]])
for v, label in verdict_cols.items():
    table[label] = view[f"v_{v}"]
if conditional:
    table["conditioning"] = [
        ui.conditioning(k, n) for k, n in zip(view["cond_kind"], view["n_conditions"], strict=True)
    ]
    table["conditions failing memorization"] = view["n_conditions_failing"]
for m in metric_cols:
    table[ui.label(m)] = view[m]
table["kind"] = view["kind"]
table["run_id"] = view["run_id"]
table["created"] = view["created"]
styled = table.style.map(ui.verdict_style, subset=list(verdict_cols.values()))
st.dataframe(
    styled,
    hide_index=True,
    width="stretch",
    column_config={
        **ui.conditioning_column_config(),
        "model_label": st.column_config.TextColumn("model"),
        "d": st.column_config.NumberColumn("d", format="%d"),
        "n_train": st.column_config.NumberColumn("n_train", format="%d"),
        **{
            ui.label(m): st.column_config.NumberColumn(
                ui.label(m), format="%.4g", help=ui.direction(m) or None
            )
            for m in metric_cols
        },
    },
)
st.caption(
    f"Showing {len(view)} of {len(sel)} matching runs ({len(df)} in total). "
    f"Public metrics: {', '.join(data.PUBLIC_METRICS)}."
)
st.download_button(
    "Download the filtered table (CSV)", sel.to_csv(index=False).encode(), "diffaudit-runs.csv", "text/csv"
)
