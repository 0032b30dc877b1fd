"""The app on conditional audits (issue 14): the Audit page's per-condition table and condition filter, the
Overview's conditioning column and filter, and malformed ``conditions`` entries, on real small runs built once
per session: a class-conditional model of digits whose class 3 is the exact memorizer of its own training
items and whose other classes are the oracle (the Python API: no CLI model has mixed verdicts), the CLI's
conditional oracle on molrg (vectors), beside test_app.py's unconditional vector audit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from test_app import (  # noqa: E402
    _cli,
    arr,
    audit_warnings,
    build_results,
    figures,
    page,
    plain,
    report_of,
    texts,
)

from diffaudit.app import data  # noqa: E402
from diffaudit.report import schema  # noqa: E402

# digits, 300 training items, 300 samples (30 per class): class 3 copies its training items, the rest are fresh
MIXED_SCRIPT = """
import sys
from diffaudit.models.controls import ConditionalControl, make_conditional_control, make_control
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit_on
from diffaudit.pipeline.setup import audit_data

d = audit_data("digits", 300, None, n_samples=300, seed=0)
oracle = make_conditional_control("oracle", d.train, d.train_labels, 10, dataset=d.dataset)
classes = list(oracle.classes_)
classes[3] = make_control("memorizer", train=d.train[d.train_labels == 3])
model = ConditionalControl(oracle.uncond_, tuple(classes), 10)
model.name = "digit-3-memorizer"
cfg = AuditConfig(condition="labels", n_samples=300, extraction_budget=0, progress=False)
run_audit_on(model, d, config=cfg, out_dir=sys.argv[1])
"""
MIXED = "audits/digit-3-memorizer"
VECTOR = "audits/oracle-molrg"
UNCOND = "audits/memorizer-hm"
_COND: dict[str, Path] = {}


def build_conditional(tmp_path_factory) -> Path:
    """The two conditional runs and a copy of test_app.py's unconditional vector audit, once per session."""
    if "root" in _COND:
        return _COND["root"]
    results = build_results(tmp_path_factory)
    root = tmp_path_factory.mktemp("app-conditional")
    cache = tmp_path_factory.mktemp("app-conditional-cache")
    env = {**os.environ, "DIFFAUDIT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", MIXED_SCRIPT, str(root / MIXED)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, f"the mixed conditional audit failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    _cli(
        [
            "audit",
            "--model",
            "control:oracle",
            "--dataset",
            "molrg:d=8,K=3",
            "--n-train",
            "300",
            "--n-samples",
            "300",
            "--condition",
            "labels",
            "--extraction-budget",
            "0",
            "--out",
            str(root / VECTOR),
            "--no-progress",
        ],
        cache,
    )
    shutil.copytree(results / UNCOND, root / UNCOND)
    _COND["root"] = root
    return root


@pytest.fixture(scope="session")
def cond_root(tmp_path_factory) -> Path:
    return build_conditional(tmp_path_factory)


def run_id(rel: str) -> str:
    return f"0:{rel}"


def frame_with(at, column: str) -> pd.DataFrame:
    """The one dataframe on the page that has ``column``."""
    (df,) = [d.value for d in at.dataframe if column in d.value.columns]
    return df


def copies_table(at) -> pd.DataFrame:
    return frame_with(at, "nn_index")


def rows_caption(at) -> int:
    """The row count the copies table's pagination names ("N rows · page 1 of M")."""
    (c,) = [c for c in texts(at, "caption") if " rows · page " in c]
    return int(c.split(" rows")[0])


# ------------------------------------------------------------------------------------------- data layer


def test_condition_frame_and_overview_match_the_reports(cond_root):
    rep = report_of(cond_root / MIXED)
    same, notes = data.check_report(rep)
    assert notes == [] and same == rep  # a conditional report the audit wrote is untouched
    cf, keys = data.condition_frame(same)
    assert len(cf) == len(rep["conditions"]) == rep["inputs"]["condition"]["n_conditions"] == 10
    for (_, row), e in zip(cf.iterrows(), rep["conditions"], strict=True):
        assert (row["index"], row["condition"], row["n_train"]) == (e["index"], e["condition"], e["n_train"])
        for v in data.VERDICTS:
            assert row[v] == e["verdict"][v] and row[f"reason_{v}"] == e["reasons"][v]
        for k in keys:
            m = e["metrics"].get(k)
            assert (pd.isna(row[k]) and m is None) or row[k] == pytest.approx(m["value"])
    measured = {k for e in rep["conditions"] for k, m in e["metrics"].items() if m and m["value"] is not None}
    assert set(keys) == measured
    assert cf.loc[cf["memorization"] == "fail", "condition"].tolist() == ["3"]  # the known answer

    df, problems, _ = data.overview([cond_root])
    assert problems == []
    by = df.set_index("rel")
    for rel in (MIXED, VECTOR):
        r = report_of(cond_root / rel)
        fails = sum(e["verdict"]["memorization"] == "fail" for e in r["conditions"])
        assert by.loc[rel, "cond_kind"] == "labels"
        assert by.loc[rel, "n_conditions"] == len(r["conditions"])
        assert by.loc[rel, "n_conditions_failing"] == fails
    assert (by.loc[MIXED, "n_conditions_failing"], by.loc[VECTOR, "n_conditions_failing"]) == (1, 0)
    assert by.loc[UNCOND, "cond_kind"] is None
    assert pd.isna(by.loc[UNCOND, "n_conditions"]) and pd.isna(by.loc[UNCOND, "n_conditions_failing"])


# ------------------------------------------------------------------------------------------- audit page


def test_audit_page_shows_the_per_condition_table(cond_root, monkeypatch):
    rep = report_of(cond_root / MIXED)
    at = page("audit", [cond_root], {"run": run_id(MIXED)}, monkeypatch)
    subs = texts(at, "subheader")
    assert subs[:5] == ["Verdicts", "Metrics", "Per label", "Samples", "Copy gallery"]
    # the only warnings: the audit's own (300 samples, 30 per class: too few for reliable verdicts)
    assert len(rep["warnings"]) == 2 and audit_warnings(at) == rep["warnings"]
    assert len(at.warning) == len(rep["warnings"])
    table = frame_with(at, "n generated")
    assert len(table) == 10 and table["label"].tolist() == [e["condition"] for e in rep["conditions"]]
    for v, col in (("convergence", "threshold 1"), ("memorization", "memorization")):
        assert table[col].tolist() == [e["verdict"][v] for e in rep["conditions"]]
    assert table.loc[table["memorization"] == "fail", "label"].tolist() == ["3"]
    assert any(plain(m) == "**Memorization fails for 1 of 10 labels**: 3" for m in texts(at, "markdown"))
    copy_rate = schema.label("memorization.copy_rate")
    assert table[copy_rate].tolist() == pytest.approx(
        [e["metrics"]["memorization.copy_rate"]["value"] for e in rep["conditions"]]
    )
    # the main metrics that some condition measured (no MIA AUC: a black box), then, on request, every one
    measured = {k for e in rep["conditions"] for k in e["metrics"]}
    fixed = ["label", "n train", "n generated", "threshold 1", "threshold 2", "memorization"]
    assert table.columns.tolist()[:6] == fixed
    assert set(table.columns[6:]) == {schema.label(k) for k in data.CONDITION_MAIN if k in measured}
    assert "memorization.mia_auc" not in measured and "convergence.kid" in measured
    at.toggle(key="audit_cond_all").set_value(True).run()
    every = frame_with(at, "n generated")
    assert set(every.columns[6:]) == {schema.label(k) for k in measured}
    # the reasons, one sentence per verdict and condition
    why = frame_with(at, "skipped probes")
    assert why["memorization"].tolist() == [e["reasons"]["memorization"] for e in rep["conditions"]]
    at.radio(key="audit_cond_rows").set_value("failing memorization").run()
    assert frame_with(at, "n generated")["label"].tolist() == ["3"]
    assert not at.exception


def test_choosing_a_condition_filters_the_gallery_and_copies(cond_root, monkeypatch):
    run = cond_root / MIXED
    cp = pd.read_parquet(run / "copies.parquet")
    with np.load(run / "thumbs.npz") as z:
        pair_gen, first = z["pairs_generated_index"], z["generated_index"]
    at = page("audit", [cond_root], {"run": run_id(MIXED)}, monkeypatch)
    assert len(at.get("image")) == 1 + len(pair_gen)  # "all": every stored pair, as for an unconditional run
    assert rows_caption(at) == len(cp)
    box = at.selectbox(key="audit_condition")
    assert box.value is None and len(box.options) == 1 + 10
    for name in ("3", "0"):
        pos = [e["condition"] for e in report_of(run)["conditions"]].index(name)
        at.selectbox(key="audit_condition").set_value(pos).run()
        assert not at.exception
        j = report_of(run)["conditions"][pos]["index"]
        mine = cp[cp["condition"] == j]
        shown = copies_table(at)
        assert len(mine) == 30 and rows_caption(at) == len(mine)
        assert set(shown["index"]) == set(mine["index"]) and (shown["condition_name"] == name).all()
        n_pairs = int(np.isin(pair_gen, mine["index"]).sum())
        n_grid = int(np.isin(first, mine["index"]).any())
        assert n_pairs >= 1 and len(at.get("image")) == n_grid + n_pairs
        mc = frame_with(at, "nearest_of")  # most-copied items of this class: a pandas reference
        ref = (
            mine.groupby("nn_index")
            .agg(copies=("is_copy", "sum"), nearest_of=("is_copy", "size"))
            .reset_index()
            .sort_values(["copies", "nearest_of", "nn_index"], ascending=[False, False, True])
            .head(20)
        )
        assert mc["train_index"].tolist() == ref["nn_index"].tolist()
        assert mc["copies"].tolist() == ref["copies"].tolist()
        hist = next(f for f in figures(at) if "Ratio" in f["layout"].get("title", {}).get("text", ""))
        np.testing.assert_allclose(np.sort(arr(hist["data"][0]["x"])), np.sort(mine["ratio"].to_numpy()))
        if name == "3":  # the memorized class: every sample a copy; its own verdicts drawn with their badges
            assert mine["is_copy"].all() and mc["copies"].sum() == 30
            md = " ".join(plain(m) for m in texts(at, "markdown"))
            assert "3 · memorization" in md and "FAIL" in md
        else:
            assert not mine["is_copy"].any() and mc["copies"].sum() == 0
    at.toggle(key="audit_copies_only").set_value(True).run()  # copies of class 0: none
    assert rows_caption(at) == 0 and len(copies_table(at)) == 0
    at.selectbox(key="audit_condition").set_value(None).run()
    assert rows_caption(at) == int(cp["is_copy"].sum())
    assert len(at.get("image")) == 1 + len(pair_gen)


def test_vector_conditional_run_filters_the_pca(cond_root, monkeypatch):
    run = cond_root / VECTOR
    rep = report_of(run)
    at = page("audit", [cond_root], {"run": run_id(VECTOR)}, monkeypatch)
    table = frame_with(at, "n generated")
    assert len(table) == 3 and (table["memorization"] == "pass").all()
    assert any(plain(m) == "**Memorization fails for 0 of 3 labels**" for m in texts(at, "markdown"))
    pca = pd.read_parquet(run / "pca.parquet")
    cp = pd.read_parquet(run / "copies.parquet")
    at.selectbox(key="audit_condition").set_value(1).run()
    assert not at.exception
    rows = cp.loc[cp["condition"] == rep["conditions"][1]["index"], "index"]
    fig = next(f for f in figures(at) if "PCA" in f["layout"].get("title", {}).get("text", ""))
    n_gen = sum(len(arr(t["x"])) for t in fig["data"] if t["name"].startswith("generated"))
    assert n_gen == int(pca[(pca["set"] == "generated") & pca["index"].isin(rows)].shape[0]) > 0
    assert rows_caption(at) == len(rows)


def test_prompt_audit_metrics_are_shown_whatever_they_are(cond_root, tmp_path, monkeypatch):
    """A prompt audit's report (the mixed run relabelled as one): the detector's per-condition score (a schema
    metric of conditional audits) is a main column, a metric the schema does not know shows under its key with
    every metric, the prompts are shown beside their names, and the detector's summary is named."""
    root = tmp_path / "r"
    shutil.copytree(cond_root / MIXED, root / "run")
    rep = report_of(root / "run")
    rep["inputs"]["condition"].update(kind="prompts", source="file")
    for j, e in enumerate(rep["conditions"]):
        e.update(condition=f"p{j}", value=f"a photo of the digit {j}", robust_z=float(j), memorized=j == 3)
        e["metrics"]["memorization.cond_score"] = {"value": 0.1 * j, "ci": [0.0, 1.0]}
        e["metrics"]["memorization.future_metric"] = {"value": 7.0, "ci": None}
    rep["details"]["cond_memorization"] = {
        "scores": [0.1 * j for j in range(10)],
        "most_suspect": "p9",
        "flagged": ["p9"],
    }
    (root / "run" / "report.json").write_text(json.dumps(rep))
    at = page("audit", [root], {"run": "0:run"}, monkeypatch)
    assert "Per prompt" in texts(at, "subheader") and len(at.warning) == len(audit_warnings(at)) == 2
    table = frame_with(at, "n generated")
    score = schema.label("memorization.cond_score")
    assert table[score].tolist() == pytest.approx([0.1 * j for j in range(10)])
    assert table["value"].tolist() == [f"a photo of the digit {j}" for j in range(10)]
    assert table["prompt"].tolist() == [f"p{j}" for j in range(10)]
    assert table["known memorized"].tolist() == [j == 3 for j in range(10)]
    assert "memorization.future_metric" not in table.columns
    at.toggle(key="audit_cond_all").set_value(True).run()
    assert (frame_with(at, "n generated")["memorization.future_metric"] == 7.0).all()
    assert any(
        "most suspect prompt: p9" in plain(c) and "1 flagged: p9" in plain(c) for c in texts(at, "caption")
    )


def test_unconditional_run_draws_no_condition_section(cond_root, monkeypatch):
    at = page("audit", [cond_root], {"run": run_id(UNCOND)}, monkeypatch)
    assert texts(at, "subheader")[:4] == ["Verdicts", "Metrics", "Samples", "Copy gallery"]
    assert not any(s.startswith("Per ") for s in texts(at, "subheader"))
    assert "audit_condition" not in [s.key for s in at.selectbox]
    assert not any("n generated" in d.value.columns for d in at.dataframe)


# ------------------------------------------------------------------------------------------- overview


def test_overview_conditioning_column_and_filter(cond_root, monkeypatch):
    at = page("overview", [cond_root], monkeypatch=monkeypatch)
    t = at.dataframe[0].value.set_index("run_id")
    assert t.loc[run_id(MIXED), "conditioning"] == "labels × 10"
    assert t.loc[run_id(VECTOR), "conditioning"] == "labels × 3"
    assert t.loc[run_id(UNCOND), "conditioning"] == "—"
    fails = t["conditions failing memorization"]
    assert (fails[run_id(MIXED)], fails[run_id(VECTOR)]) == (1, 0) and pd.isna(fails[run_id(UNCOND)])
    at.selectbox(key="ov_cond").set_value("conditional").run()
    assert sorted(at.dataframe[0].value["run_id"]) == [run_id(MIXED), run_id(VECTOR)]
    at.selectbox(key="ov_cond").set_value("unconditional").run()
    assert at.dataframe[0].value["run_id"].tolist() == [run_id(UNCOND)]
    # a tree without conditional runs: no conditioning column and no filter, as before
    only = cond_root.parent / (cond_root.name + "-uncond")
    if not only.exists():
        shutil.copytree(cond_root / UNCOND, only / "run")
    at = page("overview", [only], monkeypatch=monkeypatch)
    assert "conditioning" not in at.dataframe[0].value.columns
    assert "ov_cond" not in [s.key for s in at.selectbox]


# ------------------------------------------------------------------------------------------- compare, home


def side_by_side(reps: dict[str, dict], verdict: str, metric: str) -> tuple[list, dict]:
    """Plain-json reference of the Compare page's per-condition table: condition names (first seen first) and,
    per run label, the (verdict, metric value) of each name; ("—", nan) where the run has no such condition."""
    names = list(dict.fromkeys(e["condition"] for rep in reps.values() for e in rep["conditions"]))
    cells = {}
    for run, rep in reps.items():
        by = {e["condition"]: e for e in rep["conditions"]}
        cells[run] = [
            (by[n]["verdict"][verdict], (by[n]["metrics"].get(metric) or {}).get("value", float("nan")))
            if n in by
            else ("—", float("nan"))
            for n in names
        ]
    return names, cells


def check_side_by_side(table: pd.DataFrame, noun: str, names, cells, v_title: str, m_title: str) -> None:
    assert table.columns.tolist() == [noun, *(f"{r} · {t}" for r in cells for t in (v_title, m_title))]
    assert table[noun].tolist() == names
    for run, want in cells.items():
        assert table[f"{run} · {v_title}"].tolist() == [v for v, _ in want]
        np.testing.assert_allclose(table[f"{run} · {m_title}"].to_numpy(float), [m for _, m in want])


def test_compare_page_lines_up_the_per_condition_verdicts(cond_root, monkeypatch):
    reps = [report_of(cond_root / MIXED), report_of(cond_root / VECTOR)]
    at = page("compare", [cond_root], {"runs": [run_id(MIXED), run_id(VECTOR)]}, monkeypatch)
    assert texts(at, "subheader") == ["Verdicts", "Per label", "Metrics", "Overlaid curves"]
    assert not at.warning
    runs = at.dataframe[0].value["run"].tolist()  # "A: ...", "B: ..."
    names, cells = side_by_side(dict(zip(runs, reps, strict=True)), "memorization", "memorization.copy_rate")
    assert (
        names[:3] == ["0", "1", "2"] and len(names) == 10
    )  # the digits' 10 classes; molrg's 3 match 0, 1, 2
    table = frame_with(at, "label")
    check_side_by_side(table, "label", names, cells, "memorization", schema.label("memorization.copy_rate"))
    assert table.loc[table[f"{runs[0]} · memorization"] == "fail", "label"].tolist() == [
        "3"
    ]  # the known answer
    assert (table[f"{runs[1]} · memorization"].tolist()[3:]) == ["—"] * 7  # molrg has no classes 3..9
    (cap,) = [plain(c) for c in texts(at, "caption") if "are matched by name" in c]
    assert f"{runs[0]}: memorization fails for 1 of 10 labels" in cap
    assert f"{runs[1]}: memorization fails for 0 of 3 labels" in cap
    # another verdict and another metric, from the per-condition main metrics both runs measured
    metric_box = at.selectbox(key="cmp_cond_metric")
    assert set(metric_box.options) <= {schema.label(k) for k in data.CONDITION_MAIN}
    fd = "convergence.fd"
    at.selectbox(key="cmp_cond_verdict").set_value("convergence").run()
    at.selectbox(key="cmp_cond_metric").set_value(fd).run()
    assert not at.exception
    names, cells = side_by_side(dict(zip(runs, reps, strict=True)), "convergence", fd)
    check_side_by_side(frame_with(at, "label"), "label", names, cells, "threshold 1", schema.label(fd))


def test_compare_conditional_with_unconditional_names_the_latter(cond_root, tmp_path, monkeypatch):
    at = page("compare", [cond_root], {"runs": [run_id(MIXED), run_id(UNCOND)]}, monkeypatch)
    assert texts(at, "subheader") == ["Verdicts", "Per label", "Metrics", "Overlaid curves"]
    runs = at.dataframe[0].value["run"].tolist()
    names, cells = side_by_side(
        {runs[0]: report_of(cond_root / MIXED)}, "memorization", "memorization.copy_rate"
    )
    table = frame_with(at, "label")  # the unconditional run gets no empty columns
    check_side_by_side(table, "label", names, cells, "memorization", schema.label("memorization.copy_rate"))
    (cap,) = [plain(c) for c in texts(at, "caption") if "are matched by name" in c]
    assert f"{runs[1]}: unconditional" in cap
    # two unconditional runs compare as before: no per-condition section (test_app.py checks the rest)
    for name in ("a", "b"):
        shutil.copytree(cond_root / UNCOND, tmp_path / "two" / name)
    at = page("compare", [tmp_path / "two"], {"runs": ["0:a", "0:b"]}, monkeypatch)
    assert texts(at, "subheader") == ["Verdicts", "Metrics", "Overlaid curves"]
    assert "cmp_cond_verdict" not in [s.key for s in at.selectbox]


def test_compare_and_home_survive_malformed_conditions(cond_root, tmp_path, monkeypatch):
    """a: an entry that is not an object, a verdict that is a list, a copy rate that is text; b: ``conditions``
    an object; c: ``inputs.condition`` a string. Each is a wrong-type warning; what is left is lined up."""
    root = tmp_path / "r"
    edits = {
        "a": [
            (("conditions", 0), "not an object"),
            (("conditions", 1, "verdict"), ["fail"]),
            (("conditions", 2, "metrics", "memorization.copy_rate"), "high"),
        ],
        "b": [(("conditions",), {"0": 1})],
        "c": [(("inputs", "condition"), "labels")],
    }
    for name, changes in edits.items():
        shutil.copytree(cond_root / MIXED, root / name)
        rep = report_of(root / name)
        for path, value in changes:
            _set(path, value)(rep)
        (root / name / "report.json").write_text(json.dumps(rep))
    at = page("compare", [root], {"runs": ["0:a", "0:b", "0:c"]}, monkeypatch)
    runs = at.dataframe[0].value["run"].tolist()
    warns = [plain(w) for w in texts(at, "warning")]
    for run, field in zip(runs, ("conditions", "conditions", "inputs.condition"), strict=True):
        assert any(
            w.startswith(f"The report of {run} has fields of the wrong type") and field in w for w in warns
        )
    assert "Per condition" in texts(at, "subheader")  # labels and an unnamed kind: "condition"
    table = frame_with(at, "condition")
    good = report_of(cond_root / MIXED)["conditions"]
    order = [e["condition"] for e in good[1:]] + [good[0]["condition"]]  # a's entries first; c adds entry 0
    assert table["condition"].tolist() == order
    a_v, a_m = table[f"{runs[0]} · memorization"], table[f"{runs[0]} · copy rate"]
    assert a_v.iloc[-1] == "—" and np.isnan(a_m.iloc[-1])  # a lost entry 0
    assert a_v.iloc[0] == "n/a"  # entry 1's verdict was dropped
    assert np.isnan(a_m.iloc[1]) and not np.isnan(a_m.iloc[2])  # entry 2's copy rate was dropped
    assert not any(c.startswith(runs[1]) for c in table.columns)  # b lists no conditions
    assert table[f"{runs[2]} · memorization"].tolist() == [
        e["verdict"]["memorization"] for e in good[1:] + good[:1]
    ]
    (cap,) = [plain(c) for c in texts(at, "caption") if "are matched by name" in c]
    assert f"{runs[1]}: lists no per-condition results" in cap
    at = page("home", [root], monkeypatch=monkeypatch)
    shown = frame_with(at, "conditions failing memorization")
    df, _, _ = data.overview([root])
    ref = df.set_index("run_id")["n_conditions_failing"]
    assert len(shown) == 3
    for link, n in zip(shown["open"], shown["conditions failing memorization"], strict=True):
        rid = link.removeprefix("Audit?run=").replace("%3A", ":")
        assert (pd.isna(n) and pd.isna(ref[rid])) or n == ref[rid]
    assert ref["0:a"] == ref["0:c"] == 1


def test_home_page_counts_conditions_failing_memorization(cond_root, monkeypatch):
    at = page("home", [cond_root], monkeypatch=monkeypatch)
    assert "Conditional audits" in texts(at, "subheader")
    assert "**1 of 2 conditional audits have a condition failing memorization**" in plain(
        " ".join(texts(at, "markdown"))
    )
    table = frame_with(at, "conditions failing memorization")
    assert table["open"].tolist() == [f"Audit?run=0%3A{r.replace('/', '%2F')}" for r in (MIXED, VECTOR)]
    assert table["conditioning"].tolist() == ["labels × 10", "labels × 3"]
    for rel, n in zip((MIXED, VECTOR), table["conditions failing memorization"], strict=True):
        assert n == sum(
            e["verdict"]["memorization"] == "fail" for e in report_of(cond_root / rel)["conditions"]
        )
    assert table["memorization"].tolist() == [
        report_of(cond_root / r)["verdict"]["memorization"] for r in (MIXED, VECTOR)
    ]
    assert table["conditions failing memorization"].tolist() == [1, 0]


# ------------------------------------------------------------------------------------------- malformed


def _set(path: tuple, value):
    def edit(rep):
        o = rep
        for k in path[:-1]:
            o = o[k]
        o[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "path, value, n_rows",
    [
        (("conditions", 0), "not an object", 9),
        (("conditions", 1, "verdict"), ["fail"], 10),
        (("conditions", 1, "reasons"), {"memorization": 3}, 10),
        (("conditions", 2, "metrics", "memorization.copy_rate"), "high", 10),
        (("conditions", 2, "metrics", "convergence.fd"), {"value": 1.0, "ci": "wide"}, 10),
        (("conditions", 3, "n_train"), "many", 10),
        (("conditions", 4, "index"), "four", 10),
        (("conditions", 5, "condition"), {"name": 5}, 10),
        (("conditions", 6, "skipped"), [3], 10),
        (("conditions",), {"0": 1}, None),
        (("inputs", "condition"), "labels", 10),
        (("inputs", "condition", "names"), [1, 2], 10),
        (("details", "cond_memorization"), {"flagged": "3", "most_suspect": 3}, 10),
    ],
    ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else None,
)
def test_malformed_conditions_give_a_warning_not_an_exception(
    cond_root, tmp_path, monkeypatch, path, value, n_rows
):
    root = tmp_path / "r"
    shutil.copytree(cond_root / MIXED, root / "run")
    rep = report_of(root / "run")
    _set(path, value)(rep)
    (root / "run" / "report.json").write_text(json.dumps(rep))
    at = page("audit", [root], {"run": "0:run"}, monkeypatch)
    warns = plain(" ".join(texts(at, "warning")))
    assert "wrong type" in warns and str(path[0]) in warns, warns
    assert texts(at, "header")  # the rest of the run is still drawn
    tables = [d.value for d in at.dataframe if "n generated" in d.value.columns]
    if n_rows is None:
        assert not tables  # no list of conditions left
    else:
        assert len(tables[0]) == n_rows
        at.selectbox(key="audit_condition").set_value(3).run()  # the filter still works
        assert not at.exception
        assert rows_caption(at) == 30
    at = page("overview", [root], monkeypatch=monkeypatch)  # the overview's own query reads these keys
    assert at.dataframe[0].value["conditioning"].iloc[0].endswith("× 10")
