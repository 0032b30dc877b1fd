"""diffaudit app: entry script (``streamlit run app/Home.py``; ``diffaudit app`` does it for you).

Pages (``pages/``): Overview (every run, filters, verdict badges), Audit (one run in depth), Scaling
(sweeps: metric against n, phase diagram, exponents), Compare (runs side by side). The app only reads
results under the configured roots (``DIFFAUDIT_RESULTS``); it never computes a probe. This page: counts of
runs and verdicts and, when there are conditional audits, how many of each one's conditions fail memorization.
"""

import pandas as pd
import streamlit as st

from diffaudit.app import ui

ui.setup("home")
st.title("diffaudit")
st.markdown(
    "Does a diffusion model **generalize or memorize**? diffaudit measures both thresholds: "
    "**distributional convergence** (threshold 1: FD, KID, precision/recall against real data's own noise floor) "
    "and **latent-factor recovery** (threshold 2: valid, novel samples; no training copies)."
)
st.caption("Results folders: " + ", ".join(f"`{r}`" for r in ui.roots()))

df, problems = ui.require_runs()
n_audit = int((df["kind"] == "audit").sum())
n_cells = int((df["kind"] == "sweep cell").sum())
n_sweeps = df.loc[df["kind"] == "sweep cell", ["root", "sweep"]].drop_duplicates().shape[0]
c = st.columns(4)
c[0].metric("runs", len(df))
c[1].metric("audits", n_audit)
c[2].metric("sweep cells", n_cells)
c[3].metric("sweeps", n_sweeps)

st.subheader("Verdicts")
counts = {
    v: df[f"v_{v}"].value_counts().reindex(["pass", "fail", "n/a"], fill_value=0)
    for v in ("convergence", "generalization", "memorization")
}
st.dataframe(
    {
        "threshold": ["threshold 1 · convergence", "threshold 2 · generalization", "memorization"],
        **{k: [int(counts[v][k]) for v in counts] for k in ("pass", "fail", "n/a")},
    },
    hide_index=True,
)

if ui.any_conditional(df):
    # Conditional audits are judged per condition too: the overview's count of conditions failing memorization
    # (one DuckDB query for every report, data.load_overview), the runs with the most failing first.
    cond = df[df["cond_kind"].notna()].sort_values(
        ["n_conditions_failing", "run_id"], ascending=[False, True], na_position="last"
    )
    failing = cond["n_conditions_failing"].fillna(0) > 0
    st.subheader("Conditional audits")
    st.markdown(
        f"**{int(failing.sum())} of {len(cond)} conditional audits have a condition failing memorization**"
        " (each class or prompt audited on its own rows)"
    )
    table = pd.DataFrame(
        {
            "open": [ui.audit_link(r) for r in cond["run_id"]],
            "run": [ui.run_label(r) for _, r in cond.iterrows()],
            "conditioning": [
                ui.conditioning(k, n) for k, n in zip(cond["cond_kind"], cond["n_conditions"], strict=True)
            ],
            "conditions failing memorization": cond["n_conditions_failing"].to_numpy(),
            "memorization": cond["v_memorization"].to_numpy(),
        }
    )
    st.dataframe(
        table.style.map(ui.verdict_style, subset=["memorization"]),
        hide_index=True,
        width="stretch",
        column_config={
            **ui.conditioning_column_config(),
            "memorization": st.column_config.TextColumn(
                "memorization (overall)", help="the run's memorization verdict on all its samples together"
            ),
        },
    )

st.subheader("Pages")
st.page_link(
    "pages/1_Overview.py", label="Overview: every run, with filters and verdicts", icon=":material/table:"
)
st.page_link(
    "pages/2_Audit.py",
    label="Audit: one run in depth (metrics, samples, copy gallery)",
    icon=":material/search:",
)
st.page_link(
    "pages/3_Scaling.py",
    label="Scaling: metrics against n, phase diagram, thresholds n₁*, n₂*",
    icon=":material/show_chart:",
)
st.page_link("pages/4_Compare.py", label="Compare: runs side by side", icon=":material/compare:")
