"""Streamlit glue shared by the pages: cached loaders, the empty state, warnings, badges, pickers.

Caching: ``st.cache_resource`` holds one DuckDB connection per process; ``st.cache_data`` holds the
overview keyed on the scan fingerprint (every report.json's path, modification time and size), so a
new or rewritten run shows up on the next rerun while an unchanged tree is never re-read. ``*_ui()``
functions only draw widgets and return the chosen parameters.
"""

from __future__ import annotations

import string
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import streamlit as st

from diffaudit.app import data
from diffaudit.errors import DiffauditError
from diffaudit.report import schema

VERDICT_BADGE = {
    "pass": ":green-background[**PASS**]",
    "fail": ":red-background[**FAIL**]",
    "n/a": ":gray-background[n/a]",
}
# Column titles of verdicts in tables (overview, per-condition table).
VERDICT_COLUMNS = {
    "convergence": "threshold 1",
    "generalization": "threshold 2",
    "memorization": "memorization",
}
VERDICT_ICON = {"pass": "✔ pass", "fail": "✘ fail", "n/a": "– n/a"}
_VERDICT_CSS = {
    "pass": "background-color: #d9f2dd; color: #1b5e20",
    "fail": "background-color: #fbdada; color: #8e1b1b",
    "n/a": "color: #777",
}


# Longest user string drawn on a page: a 50 MB model name must not be shipped to (and laid out by) the browser.
MAX_SHOWN = 200
_MD_SPECIAL = set(string.punctuation)


def shown(v, limit: int = MAX_SHOWN) -> str:
    """A user-supplied value as plain display text: None/NaN -> "—", cut to ``limit`` characters (… marks a cut)."""
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
        return "—"
    s = v if isinstance(v, str) else str(v)[: 4 * limit]
    return s if len(s) <= limit else s[: limit - 1] + "…"


def md(v, limit: int = MAX_SHOWN) -> str:
    """``shown(v)`` made inert for Streamlit markdown: every ASCII punctuation character is backslash-escaped
    (CommonMark: an escaped character is literal text), so ``![x](http://…)`` in a report is shown, never
    fetched as an image, and ``**``, ``:red[…]``, ``$…$`` and HTML stay text; line breaks become spaces."""
    s = " ".join(shown(v, limit).split())
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in s)


def shown_json(obj, limit: int = MAX_SHOWN, items: int = 100):
    """A JSON-ready copy of ``obj`` for ``st.json``: strings cut to ``limit``, lists/objects to ``items`` entries
    (the report's nesting is bounded by ``data.read_report``)."""
    if isinstance(obj, str):
        return shown(obj, limit)
    if isinstance(obj, dict):
        return {shown(k, 80): shown_json(v, limit, items) for k, v in list(obj.items())[:items]}
    if isinstance(obj, list):
        return [shown_json(v, limit, items) for v in obj[:items]]
    return obj


def verdict_style(v) -> str:
    """CSS for a verdict cell of a pandas Styler (the overview's verdict badges)."""
    return _VERDICT_CSS.get(v, "")


def label(key: str) -> str:
    """A metric's short label from the schema (``group.name``; family members get their factor's name)."""
    return schema.label(key)


def direction(key: str) -> str:
    """``"lower is better"`` / ``"higher is better"`` from the schema, or "" for a context metric."""
    m = schema.get(key)
    return f"{m.better} is better" if m is not None and m.better else ""


def axis_title(key: str) -> str:
    """Label with its better direction, for plot axes."""
    d = direction(key)
    return f"{label(key)} ({d})" if d else label(key)


PAGE_SIZES = (25, 50, 100, 250)


def setup(title: str) -> None:
    st.set_page_config(page_title=f"diffaudit · {title}", layout="wide")


def roots() -> list[Path]:
    return data.configured_roots()


@st.cache_resource
def connection():
    return data.connect()


@st.cache_data(show_spinner=False, max_entries=8)
def _load(roots_key: tuple[str, ...], fingerprint: tuple, _scan: data.Scan):
    df, problems = data.load_overview(_scan, [Path(r) for r in roots_key], connection())
    return df, problems


def load_runs() -> tuple[pd.DataFrame, list[data.Problem], list[str]]:
    """Overview frame (cached on file mtimes), problems, missing roots. Cheap when nothing changed."""
    rs = roots()
    s = data.scan(rs)
    df, problems = _load(tuple(str(r) for r in rs), s.fingerprint + (tuple(p.path for p in s.problems),), s)
    return df, problems, list(s.missing_roots)


def show_problems(problems: list[data.Problem], missing: list[str]) -> None:
    for m in missing:
        st.warning(
            f"Results folder `{m}` does not exist (yet). Run `diffaudit audit …` or `diffaudit sweep …` to fill it."
        )
    if problems:
        with st.expander(
            f"{len(problems)} run folder(s) skipped", expanded=len(problems) <= 3, icon=":material/warning:"
        ):
            for p in problems:
                st.warning(f"Skipped `{p.path}`: {p.reason}.")


def show_report_notes(notes: list[str], whose: str = "This report") -> None:
    """``data.check_report``'s notes as one warning: the fields of the wrong type that are left out."""
    if notes:
        st.warning(
            f"{whose} has fields of the wrong type; they are left out: "
            + "; ".join(md(n, 160) for n in notes[:8])
            + (f"; and {len(notes) - 8} more." if len(notes) > 8 else ".")
        )


# More audit warnings than this go into one expander (fewer are drawn as they are).
MANY_WARNINGS = 3


def show_report_warnings(warnings: list[str]) -> None:
    """The audit's own warnings (``data.report_warnings``): one warning box each, or, when there are more than
    ``MANY_WARNINGS``, one expander of them that names how many (a page of boxes would bury the verdicts)."""
    if not warnings:
        return
    box = (
        st.expander(f"The audit left {len(warnings)} warnings", icon=":material/warning:")
        if len(warnings) > MANY_WARNINGS
        else st.container()
    )
    with box:
        for w in warnings:
            st.warning(f"**Audit warning:** {md(w, 800)}")


def empty_state(missing: list[str]) -> None:
    rs = ", ".join(f"`{r}`" for r in roots())
    st.info(
        f"No audits or sweep cells found under {rs}.\n\n"
        "Create some results first, for example:\n\n"
        "- `diffaudit demo --out reports/demo` (three analytic controls, about 2 minutes on a CPU)\n"
        "- `diffaudit audit --model control:gaussian --dataset hidden-manifold --n-train 2000`\n"
        "- `diffaudit sweep --preset quick --out reports/quick`\n\n"
        "then reload this page, or point the app elsewhere: `diffaudit app --results DIR`.",
        icon=":material/inbox:",
    )


def require_runs() -> tuple[pd.DataFrame, list[data.Problem]]:
    """The overview frame, or the friendly empty state and ``st.stop()`` when there is nothing to show."""
    df, problems, missing = load_runs()
    show_problems(problems, missing)
    if df.empty:
        empty_state(missing)
        st.stop()
    return df, problems


def fmt(v, ci_lo=None, ci_hi=None) -> str:
    if v is None or pd.isna(v):
        return "—"
    s = f"{v:.4g}"
    if ci_lo is not None and ci_hi is not None and not pd.isna(ci_lo) and not pd.isna(ci_hi):
        s += f" [{ci_lo:.4g}, {ci_hi:.4g}]"
    return s


def run_label(row) -> str:
    bits = [shown(row["model_label"], 80), shown(row["dataset"], 40)]
    if not pd.isna(row["d"]):
        bits.append(f"d={row['d']}")
    if not pd.isna(row["n_train"]):
        bits.append(f"n={row['n_train']}")
    if not pd.isna(row["seed"]):
        bits.append(f"seed={row['seed']}")
    return f"{' · '.join(bits)}  ({shown(row['run_id'], 120)})"


def resolve_or_refuse(run_id: str) -> Path | None:
    """The run folder, or an error box (and None) for an id that is unsafe or unknown."""
    try:
        return data.resolve_run(run_id, roots())
    except DiffauditError as e:
        st.error(f"Refused: {md(str(e), 400)}")
        return None


def artifact(run_dir: Path, name: str) -> Path | None:
    """A run's artifact file, or None; a file that resolves outside the roots is refused with a warning."""
    try:
        return data.artifact(run_dir, name, roots())
    except DiffauditError as e:
        st.warning(f"{name} skipped: {md(str(e), 400)}")
        return None


CONDITIONING = ("all", "unconditional", "conditional")


def any_conditional(df: pd.DataFrame) -> bool:
    """Whether some run of the overview frame is a conditional audit (its per-condition columns are drawn)."""
    return "cond_kind" in df.columns and bool(df["cond_kind"].notna().any())


def conditioning(kind, n) -> str:
    """A run's conditioning as the tables show it: ``"labels × 10"``; "—" for an unconditional run."""
    if kind is None or pd.isna(kind):
        return "—"
    return f"{shown(kind, 40)} × {n}" if not pd.isna(n) else shown(kind, 40)


def audit_link(run_id: str) -> str:
    """The Audit page of a run, relative to any page (a ``LinkColumn`` value)."""
    return "Audit?run=" + quote(run_id, safe="")


def conditioning_column_config() -> dict:
    """``st.dataframe`` column configs of the tables that show ``conditioning`` and the failing conditions."""
    return {
        "open": st.column_config.LinkColumn(
            "open", display_text="open ↗", help="Open this run on the Audit page"
        ),
        "conditioning": st.column_config.TextColumn(
            "conditioning", help="conditional audits: the kind of condition × the number of conditions"
        ),
        "conditions failing memorization": st.column_config.NumberColumn(
            "conditions failing memorization",
            format="%d",
            help="conditions of a conditional audit whose own memorization verdict is fail",
        ),
    }


def filters_ui(df: pd.DataFrame, key: str) -> dict:
    """Filter widgets for the overview; returns the chosen values. The conditioning filter is drawn only
    when some run is a conditional audit."""
    cond = any_conditional(df)
    c = st.columns([2, 2, 2, 2, 2, 2] if cond else [2, 2, 2, 2, 2])
    kinds = c[0].multiselect("kind", sorted(df["kind"].dropna().unique()), key=f"{key}_kind")
    datasets = c[1].multiselect("dataset", sorted(df["dataset"].dropna().unique()), key=f"{key}_ds")
    models = c[2].multiselect("model", sorted(df["model_label"].dropna().unique()), key=f"{key}_model")
    verdict = c[3].selectbox("verdict", ["any", "all pass", "any fail"], key=f"{key}_verdict")
    conditioning = (
        c[4].selectbox(
            "conditioning",
            CONDITIONING,
            key=f"{key}_cond",
            help="conditional: audits of a class- or text-conditional model (--condition), judged per condition",
        )
        if cond
        else "all"
    )
    text = c[-1].text_input("search run id", key=f"{key}_text")
    return {
        "kind": kinds,
        "dataset": datasets,
        "model": models,
        "verdict": verdict,
        "conditioning": conditioning,
        "text": text,
    }


def apply_filters(df: pd.DataFrame, f: dict) -> pd.DataFrame:
    m = pd.Series(True, index=df.index)
    if f.get("kind"):
        m &= df["kind"].isin(f["kind"])
    if f.get("dataset"):
        m &= df["dataset"].isin(f["dataset"])
    if f.get("model"):
        m &= df["model_label"].isin(f["model"])
    vcols = [f"v_{v}" for v in data.VERDICTS]
    if f.get("verdict") == "all pass":
        m &= (df[vcols] == "pass").all(axis=1)
    elif f.get("verdict") == "any fail":
        m &= (df[vcols] == "fail").any(axis=1)
    if f.get("conditioning") in ("unconditional", "conditional") and "cond_kind" in df.columns:
        is_cond = df["cond_kind"].notna()
        m &= is_cond if f["conditioning"] == "conditional" else ~is_cond
    if f.get("text"):
        m &= df["run_id"].str.contains(f["text"], case=False, regex=False)
    return df[m]


def pagination_ui(n_rows: int, key: str) -> tuple[int, int]:
    """Page size and page index (0-based) for a table of ``n_rows``."""
    c1, c2, c3 = st.columns([1, 1, 4])
    size = c1.selectbox("rows per page", PAGE_SIZES, index=1, key=f"{key}_size")
    n_pages = data.paginate(n_rows, size)
    page = c2.number_input("page", min_value=1, max_value=n_pages, value=1, step=1, key=f"{key}_page")
    c3.caption(f"{n_rows} rows · page {int(page)} of {n_pages}")
    return int(size), int(page) - 1


def run_picker_ui(df: pd.DataFrame, key: str, default: str | None = None) -> str | None:
    """A selectbox over runs (labels with ids); returns the chosen run id."""
    ids = df["run_id"].tolist()
    labels = {r["run_id"]: run_label(r) for _, r in df.iterrows()}
    idx = ids.index(default) if default in ids else 0
    return st.selectbox("run", ids, index=idx, format_func=lambda i: labels.get(i, i), key=key)


def condition_noun(kind: str) -> str:
    """``"labels"`` -> ``"label"``, ``"prompts"`` -> ``"prompt"``; anything else -> ``"condition"``."""
    return {"labels": "label", "prompts": "prompt"}.get(kind, "condition")


def condition_picker_ui(cf: pd.DataFrame, noun: str, key: str) -> int | None:
    """A selectbox over a conditional audit's conditions (``data.condition_frame``'s rows, failing verdicts
    named); returns the chosen row's position, or None for every condition."""
    opts = [None, *range(len(cf))]
    if st.session_state.get(key) not in opts:  # a position of another run's list
        st.session_state.pop(key, None)

    def name(i):
        if i is None:
            return f"all {noun}s"
        r = cf.iloc[i]
        bad = [VERDICT_COLUMNS[v] for v in data.VERDICTS if r[v] == "fail"]
        return shown(r["condition"], 80) + (f"  (fails {', '.join(bad)})" if bad else "")

    return st.selectbox(
        f"show the samples and copies of one {noun}",
        opts,
        format_func=name,
        key=key,
        help=f"Filters the sample grid, the copy gallery and the copies tables below to one {noun}.",
    )
