"""The Streamlit app (diffaudit.app): every page through ``streamlit.testing.v1.AppTest`` on results made by
real small runs of the CLI (two audits and a tiny sweep + thresholds, built once per session), plus the
data layer against a plain json.load reference, the empty/missing/corrupt cases and path safety."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from diffaudit.app import data  # noqa: E402
from diffaudit.report import schema  # noqa: E402
from diffaudit.report.html import _CSS, ordered_metrics, plotly_tag  # noqa: E402

APP = Path(data.__file__).resolve().parent
PAGES = {
    "home": APP / "Home.py",
    "overview": APP / "pages" / "1_Overview.py",
    "audit": APP / "pages" / "2_Audit.py",
    "scaling": APP / "pages" / "3_Scaling.py",
    "compare": APP / "pages" / "4_Compare.py",
}

SWEEP_SPEC = """
name = "app-fixture"
n = [32, 64, 128]
seeds = [0, 1]
model = "mlp:width=16,depth=2"
controls = ["gaussian"]

[[dataset]]
name = "hidden-manifold"
params = { d = [8, 16], D = 2 }

[budget]
rule = "steps"
steps = 20

[train]
batch = 32
warmup_steps = 2

[audit]
n_samples = 100
n_holdout = 100
sampler_steps = 4
options = { n_boot = 2, kid_subsets = 3, mia_n = 30, mia_draws = 1 }
"""
N_CELLS = 2 * 3 * 2 * 2  # d x n x seeds x (model + gaussian)

_BUILT: dict[str, Path] = {}


def _cli(args: list[str], cache: Path) -> None:
    env = {**os.environ, "DIFFAUDIT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "diffaudit", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert r.returncode == 0, f"diffaudit {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def build_results(tmp_path_factory) -> Path:
    """Real runs through the CLI, once per test session (shared with test_app_browser.py)."""
    if "root" in _BUILT:
        return _BUILT["root"]
    root = tmp_path_factory.mktemp("app-results")
    cache = tmp_path_factory.mktemp("app-cache")
    _cli(
        [
            "audit",
            "--model",
            "control:memorizer",
            "--dataset",
            "hidden-manifold:d=8",
            "--n-train",
            "128",
            "--n-samples",
            "150",
            "--num-steps",
            "8",
            "--out",
            str(root / "audits" / "memorizer-hm"),
            "--no-progress",
        ],
        cache,
    )
    _cli(
        [
            "audit",
            "--model",
            "control:memorizer",
            "--dataset",
            "sprites:oracle_steps=30",
            "--n-train",
            "64",
            "--n-samples",
            "48",
            "--num-steps",
            "6",
            "--out",
            str(root / "audits" / "memorizer-sprites"),
            "--no-progress",
        ],
        cache,
    )
    spec = root.parent / "app-fixture.toml"
    spec.write_text(SWEEP_SPEC)
    _cli(["sweep", str(spec), "--out", str(root / "sweeps" / "tiny"), "--quiet", "--workers", "2"], cache)
    _cli(["thresholds", str(root / "sweeps" / "tiny"), "--n-boot", "20"], cache)
    _BUILT["root"], _BUILT["cache"] = root, cache  # the cache: its test-size sprites oracle and moments
    return root


@pytest.fixture(scope="session")
def results(tmp_path_factory) -> Path:
    return build_results(tmp_path_factory)


def page(name: str, roots, query: dict | None = None, monkeypatch=None) -> AppTest:
    monkeypatch.setenv(data.ENV_RESULTS, os.pathsep.join(str(r) for r in roots))
    at = AppTest.from_file(str(PAGES[name]), default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def report_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def plain(s: str) -> str:
    """Markdown source with CommonMark backslash escapes undone: the text the browser shows."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", s)


def inert(s: str) -> bool:
    """True when no markdown/HTML punctuation of ``s`` is left unescaped (so it renders as literal text)."""
    return re.search(r"(?<!\\)[!\[\]()<>*_`:$]", s.replace("\\\\", "")) is None


def figures(at: AppTest) -> list[dict]:
    out = []
    for el in at.get("plotly_chart"):
        out.append(json.loads(el.proto.spec))
    return out


def arr(v) -> np.ndarray:
    """A plotly array, also in its binary form {"dtype", "bdata"}."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v, dtype=float)


# ------------------------------------------------------------------------------------------- data layer


def test_overview_matches_plain_json_reference(results):
    df, problems, missing = data.overview([results])
    assert problems == [] and missing == []
    files = sorted(results.rglob("report.json"))
    assert len(df) == len(files) == 2 + N_CELLS
    assert (df["kind"] == "sweep cell").sum() == N_CELLS
    for f in files:
        rep = json.loads(f.read_text())
        row = df[df["path"] == str(f.parent.resolve())].iloc[0]
        for g, k in data.METRICS:
            if f"{g}.{k}" == data.FD_RATIO:
                continue  # derived for old reports: checked below
            m = rep["probes"].get(g, {}).get(k)
            if m is None:
                assert pd.isna(row[f"{g}.{k}"])
            else:
                assert row[f"{g}.{k}"] == pytest.approx(m["value"], rel=1e-12, abs=0)
                if m.get("ci"):
                    assert (row[f"{g}.{k}.lo"], row[f"{g}.{k}.hi"]) == pytest.approx(tuple(m["ci"]))
        for v in data.VERDICTS:
            assert row[f"v_{v}"] == rep["verdict"][v]
        if "sweep" in rep:
            cell = rep["sweep"]["cell"]
            assert (row["n_train"], row["d"], row["seed"], row["model_label"]) == (
                cell["n_train"],
                cell["d"],
                cell["seed"],
                cell["model_label"],
            )
            assert row["sweep"] == "sweeps/tiny"
        else:
            assert row["n_train"] == rep["inputs"]["n_train"]
        assert row[data.FD_RATIO] == pytest.approx(_fd_ratio_reference(rep), rel=1e-12)
    assert df[data.FD_RATIO].notna().all()


def _fd_ratio_reference(rep: dict) -> float:
    """The schema's definition read from one report by hand: reported, else FD at equal n (else FD) / floor."""
    conv = rep["probes"]["convergence"]
    if conv.get("fd_ratio") is not None:
        return conv["fd_ratio"]["value"]
    fd = conv.get("fd_equal_n") or conv.get("fd")
    return fd["value"] / conv["fd_train_holdout"]["value"]


def test_fd_ratio_reported_value_wins_and_old_reports_derive_it():
    nan = float("nan")
    s = lambda *v: pd.Series(v, dtype=float)  # noqa: E731
    got = data.fd_ratio(
        s(2.5, nan, nan, nan, nan),
        s(3.0, 3.0, nan, 3.0, nan),
        s(4.0, 4.0, 4.0, 3.0, nan),
        s(1.5, 1.5, 2.0, 0.0, 1.0),
    )
    # reported | fd_equal_n / floor | fd / floor (no fd_equal_n) | floor 0: no ratio | nothing measured
    np.testing.assert_array_equal(got.to_numpy(), [2.5, 2.0, 2.0, nan, nan])


def _as_old_report(src: Path, dst: Path, keep_fd_equal_n: bool = True) -> dict:
    """A copy of a run as an older diffaudit wrote it: the metrics added since are absent from report.json
    and metrics.parquet (old public + extra keys only)."""
    old = {
        "convergence": {
            "fd",
            "fd_train_holdout",
            "kid",
            "precision",
            "recall",
            "density",
            "coverage",
            "fd_gen_train",
            "fd_equal_n",
        },
        "factors": {
            "validity",
            "novel_valid_rate",
            "residual_median",
            "novel_rate_among_valid",
            "factor_coverage",
        },
        "memorization": {
            "copy_rate",
            "unique_train_copied",
            "n_copies",
            "copy_rate_ratio",
            "copy_rate_holdout",
            "copy_rate_ratio_and_holdout",
            "ct",
            "auth_pct",
            "mia_auc",
            "mia_tpr_at_1pct",
        },
    }
    if not keep_fd_equal_n:
        old["convergence"].discard("fd_equal_n")
    shutil.copytree(src, dst)
    rep = report_of(dst)
    rep["probes"] = {
        g: {k: v for k, v in grp.items() if k in old[g] or k.startswith("w1_")}
        for g, grp in rep["probes"].items()
    }
    (dst / "report.json").write_text(json.dumps(rep))
    mt = pd.read_parquet(dst / "metrics.parquet")
    keep = [n.partition(".")[2] in old.get(n.partition(".")[0], ()) or ".w1_" in n for n in mt["name"]]
    mt[keep].to_parquet(dst / "metrics.parquet", index=False)
    return rep


def test_old_reports_show_missing_metrics_as_dashes(results, tmp_path, monkeypatch):
    root = tmp_path / "old"
    rep = _as_old_report(results / "audits" / "memorizer-hm", root / "a")
    rep_b = _as_old_report(results / "audits" / "memorizer-hm", root / "b", keep_fd_equal_n=False)
    new = [
        k
        for k in (f"{g}.{n}" for g, n in data.METRICS)
        if k.partition(".")[2] not in rep["probes"][k.partition(".")[0]]
    ]
    assert "convergence.moment_error" in new and data.FD_RATIO in new  # the fixture really is old
    df, problems, _ = data.overview([root])
    assert problems == [] and len(df) == 2
    row = df.set_index("rel").loc["a"]
    conv = rep["probes"]["convergence"]
    assert row[data.FD_RATIO] == pytest.approx(
        conv["fd_equal_n"]["value"] / conv["fd_train_holdout"]["value"]
    )
    conv_b = rep_b["probes"]["convergence"]
    assert df.set_index("rel").loc["b", data.FD_RATIO] == pytest.approx(
        conv_b["fd"]["value"] / conv_b["fd_train_holdout"]["value"]
    )
    assert all(pd.isna(row[k]) for k in new if k != data.FD_RATIO)
    at = page("audit", [root], {"run": "0:a"}, monkeypatch)
    at.toggle(key="audit_all_metrics").set_value(True).run()
    assert not at.exception
    shown = at.dataframe[0].value.set_index("name")
    singles = [m.key for m in schema.METRICS if not m.is_family]
    assert set(singles) <= set(shown.index)  # every schema row listed, even those the old report lacks
    for k in new:
        if k != data.FD_RATIO:
            assert shown.loc[k, "value [95 % interval]"] == "—" and pd.isna(shown.loc[k, "value"])
    assert shown.loc[data.FD_RATIO, "value"] == pytest.approx(row[data.FD_RATIO])
    at = page("compare", [root], {"runs": ["0:a", "0:b"]}, monkeypatch)
    table = at.dataframe[2].value
    assert (table.loc[schema.label("convergence.moment_error")].iloc[1:] == "—").all()
    assert table.loc[schema.label(data.FD_RATIO), table.columns[1]] == f"{row[data.FD_RATIO]:.4g}"
    page("overview", [root], monkeypatch=monkeypatch)
    page("scaling", [root], monkeypatch=monkeypatch)


@pytest.mark.parametrize(
    "bad",
    [
        "0:../../etc",
        "0:/etc",
        "0:audits/../../..",
        "../audits",
        "/etc/passwd",
        "9:audits",
        "0:audits\\..\\..",
        "0:audits/\x00",
        "",
        "x:audits",
        "0:audits",
    ],
)
def test_resolve_run_refuses_ids_outside_the_root(results, bad):
    # "0:audits" is inside the root but is not a run (no report.json): refused as well
    with pytest.raises(data.UnsafePathError):
        data.resolve_run(bad, [results])


def test_symlink_out_of_the_root_is_refused(results, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(results / "audits" / "memorizer-hm", outside / "run")
    root = tmp_path / "root"
    shutil.copytree(results / "audits" / "memorizer-hm", root / "ok")
    (root / "link").symlink_to(outside / "run", target_is_directory=True)
    df, problems, _ = data.overview([root])
    assert df["run_id"].tolist() == ["0:ok"]  # the symlinked folder is not followed
    assert data.resolve_run("0:ok", [root]) == root / "ok"
    with pytest.raises(data.UnsafePathError):
        data.resolve_run("0:link", [root])
    with pytest.raises(data.UnsafePathError):
        data.artifact(root / "ok", "../../etc/passwd", [root])


# ------------------------------------------------------------------------------------------- pages


def test_home_page(results, monkeypatch):
    at = page("home", [results], monkeypatch=monkeypatch)
    assert texts(at, "title") == ["diffaudit"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"runs": str(2 + N_CELLS), "audits": "2", "sweep cells": str(N_CELLS), "sweeps": "1"}
    assert "Conditional audits" not in texts(at, "subheader")  # drawn only when some run is conditional


def test_overview_page_filters_and_paginates(results, monkeypatch):
    at = page("overview", [results], monkeypatch=monkeypatch)
    assert texts(at, "title") == ["Overview"]
    table = at.dataframe[0].value
    assert len(table) == 2 + N_CELLS  # default page size 50
    at.multiselect(key="ov_kind").set_value(["audit"]).run()
    table = at.dataframe[0].value
    assert sorted(table["run_id"]) == ["0:audits/memorizer-hm", "0:audits/memorizer-sprites"]
    for _, r in table.iterrows():
        rep = report_of(results / r["run_id"].split(":", 1)[1])
        assert r["copy rate"] == pytest.approx(rep["probes"]["memorization"]["copy_rate"]["value"])
        assert r["threshold 1"] == rep["verdict"]["convergence"]
        assert r["open"] == "Audit?run=" + r["run_id"].replace(":", "%3A").replace("/", "%2F")
    at.multiselect(key="ov_kind").set_value([]).run()
    at.selectbox(key="ov_size").set_value(25).run()
    at.number_input(key="ov_page").set_value(2).run()
    assert len(at.dataframe[0].value) == 2 + N_CELLS - 25


def test_audit_page_vector_run(results, monkeypatch):
    run = results / "audits" / "memorizer-hm"
    rep = report_of(run)
    at = page("audit", [results], {"run": "0:audits/memorizer-hm"}, monkeypatch)
    assert texts(at, "title") == ["Audit"]
    assert [plain(h) for h in texts(at, "header")] == ["control:memorizer on hidden-manifold"]
    assert any(rep["inputs"]["dataset"] in plain(c) for c in texts(at, "caption"))
    assert not at.error
    md = " ".join(texts(at, "markdown"))
    for v in data.VERDICTS:  # the memorizer: copies everything, so memorization fails
        assert {"pass": "PASS", "fail": "FAIL", "n/a": "n/a"}[rep["verdict"][v]] in md
    assert rep["verdict"]["memorization"] == "fail"
    shown = at.dataframe[0].value.set_index("name")
    assert sorted(shown.index) == sorted(m.key for m in schema.METRICS if m.public)  # the public rows only
    for name in data.PUBLIC_METRICS:
        g, k = name.split(".")
        m = rep["probes"][g][k]
        row = schema.get(name)
        assert shown.loc[name, "metric"] == row.label and shown.loc[name, "help"] == row.help
        assert shown.loc[name, "better"] == {"lower": "↓ lower", "higher": "↑ higher", None: ""}[row.better]
        assert shown.loc[name, "group"] == row.group
        if m is None:
            assert pd.isna(shown.loc[name, "value"]) and shown.loc[name, "value [95 % interval]"] == "—"
        else:
            assert shown.loc[name, "value"] == pytest.approx(m["value"])
    assert shown.loc["memorization.copy_rate", "value"] == 1.0
    at.toggle(key="audit_all_metrics").set_value(True).run()
    every = at.dataframe[0].value
    reported = [f"{g}.{k}" for g, grp in rep["probes"].items() for k in grp]
    assert set(every["name"]) == set(reported)  # every metric of report.json (family members included)
    assert every["name"].tolist() == [k for k, _ in ordered_metrics(reported, every_row=True)]
    subs = texts(at, "subheader")
    assert subs[:4] == ["Verdicts", "Metrics", "Samples", "Copy gallery"]
    assert "Per-factor fidelity" in subs and "Membership inference" in subs
    titles = [f["layout"].get("title", {}).get("text", "") for f in figures(at)]
    assert any("PCA" in t for t in titles)
    pca = next(f for f in figures(at) if "PCA" in f["layout"]["title"]["text"])
    copies = next(t for t in pca["data"] if t["name"] == "generated (copy)")
    n_copy_pts = pd.read_parquet(run / "pca.parquet").query("set == 'generated' and is_copy").shape[0]
    assert len(arr(copies["x"])) == n_copy_pts > 0
    # most-copied training items agree with a pandas reference on copies.parquet
    cp = pd.read_parquet(run / "copies.parquet")
    ref = cp[cp["is_copy"]].groupby("nn_index").size().sort_values(ascending=False)
    mc = at.dataframe[2].value
    assert mc["copies"].iloc[0] == ref.iloc[0]


def test_audit_page_image_run_shows_thumbnails_and_gallery(results, monkeypatch):
    run = results / "audits" / "memorizer-sprites"
    at = page("audit", [results], {"run": "0:audits/memorizer-sprites"}, monkeypatch)
    with np.load(run / "thumbs.npz") as z:
        n_pairs = len(z["pairs_generated"])
    assert len(at.get("image")) == 1 + n_pairs  # the sample grid + one image per stored pair
    assert "Per-factor fidelity" in texts(at, "subheader")
    at.radio(key="audit_gallery_sort").set_value("d1").run()
    assert not at.exception
    at.selectbox(key="audit_copies_sort").set_value("d1 (desc)").run()
    assert not at.exception
    d1 = at.dataframe[1].value["d1"].to_numpy()
    assert np.all(np.diff(d1) <= 0)


@pytest.mark.parametrize(
    "bad", ["0:../../../etc", "/etc/passwd", "0:audits/../../x", "7:audits/memorizer-hm"]
)
def test_audit_page_refuses_path_traversal(results, monkeypatch, bad):
    at = page("audit", [results], {"run": bad}, monkeypatch)
    assert any(e.startswith("Refused:") for e in texts(at, "error"))
    assert plain(texts(at, "header")[0]).startswith("control:")  # a run from the list, nothing else read
    assert any(i.startswith("Showing the first run") for i in texts(at, "info"))


def test_scaling_page(results, monkeypatch):
    at = page("scaling", [results], monkeypatch=monkeypatch)
    assert texts(at, "title") == ["Scaling"]
    at.selectbox(key="sc_metric").set_value("memorization.copy_rate").run()
    at.selectbox(key="sc_d").set_value(8).run()
    assert not at.exception
    subs = texts(at, "subheader")
    assert subs == ["copy rate against n", "Phase diagram (n × d)", "Exponents: log n* against log d"]
    figs = figures(at)
    curve = figs[0]
    df, _, _ = data.overview([results])
    cells = df[(df["kind"] == "sweep cell") & (df["d"] == 8)]
    for label in ("gaussian", "model"):
        tr = next(t for t in curve["data"] if t["name"] == f"{label} (mean over seeds)")
        ref = cells[cells["model_label"] == label].groupby("n_train")["memorization.copy_rate"].mean()
        assert arr(tr["x"]).tolist() == [32.0, 64.0, 128.0]
        np.testing.assert_allclose(arr(tr["y"]), ref.to_numpy())
    assert curve["layout"]["xaxis"]["type"] == "log"
    heat = figs[1]["data"][0]
    assert heat["type"] == "heatmap" and heat["y"] == ["8", "16"] and heat["x"] == ["32", "64", "128"]
    thr = json.loads((results / "sweeps" / "tiny" / "thresholds.json").read_text())
    notes = at.dataframe[0].value["note"].tolist()
    assert thr["groups"][0]["n1_star"]["message"] in notes


def test_scaling_page_draws_fitted_thresholds(results, monkeypatch, tmp_path):
    # the real sweep, with its thresholds.json edited so that n1* and n2* lie inside the grid
    sweep = tmp_path / "root" / "tiny"
    shutil.copytree(results / "sweeps" / "tiny", sweep)
    thr = json.loads((sweep / "thresholds.json").read_text())
    for g in thr["groups"]:
        g["n1_star"].update(
            status="fit", n_star=50.0 * g["d"] / 8, n_star_ci=[40.0 * g["d"] / 8, 60.0 * g["d"] / 8]
        )
        g["n2_star"].update(status="fit", n_star=100.0, n_star_ci=[80.0, 120.0])
    thr["exponents"] = [
        {
            "dataset": "hidden-manifold",
            "params": {"D": 2},
            "model": "model",
            "metric": "fd_ratio",
            "threshold": 1,
            "d": [8, 16],
            "n_star": [50.0, 100.0],
            "b": 1.0,
            "c": float(np.log(50 / 8)),
            "b_ci": [0.8, 1.2],
            "status": "fit",
            "message": "n* ~ d^1.00",
        }
    ]
    (sweep / "thresholds.json").write_text(json.dumps(thr))
    at = page("scaling", [tmp_path / "root"], monkeypatch=monkeypatch)
    at.selectbox(key="sc_d").set_value(8).run()
    curve, _, expo = figures(at)
    xs = sorted(s["x0"] for s in curve["layout"]["shapes"] if s["type"] == "line")
    assert xs == [50.0, 50.0, 100.0, 100.0]  # n1* and n2* of both models
    rects = sorted((s["x0"], s["x1"]) for s in curve["layout"]["shapes"] if s["type"] == "rect")
    assert rects[0] == (40.0, 60.0)
    fit = next(t for t in expo["data"] if t["name"].startswith("model fd_ratio"))
    np.testing.assert_allclose(arr(fit["y"]), [50.0, 100.0])


def test_compare_page(results, monkeypatch):
    a, b = "0:audits/memorizer-hm", "0:audits/memorizer-sprites"
    at = page("compare", [results], {"runs": [a, b]}, monkeypatch)
    assert texts(at, "title") == ["Compare"]
    assert texts(at, "subheader") == ["Verdicts", "Metrics", "Overlaid curves"]
    table = at.dataframe[2].value
    assert len(table.columns) == 3 and table.columns[0] == "better"
    assert table.loc[schema.label("memorization.copy_rate"), "better"] == "lower"
    assert table.loc[schema.label("memorization.ct"), "better"] == ""
    assert list(table.index) == [schema.label(f"{g}.{k}") for g, k in data.METRICS]
    for col, rid in zip(table.columns[1:], (a, b), strict=True):
        rep = report_of(results / rid.split(":", 1)[1])
        m = rep["probes"]["memorization"]["copy_rate"]
        assert table.loc["copy rate", col].startswith(f"{m['value']:.4g}")
        fd = rep["probes"]["convergence"]["fd_train_holdout"]
        assert (
            table.loc[schema.label("convergence.fd_train_holdout"), col]
            == f"{fd['value']:.4g} [{fd['ci'][0]:.4g}, {fd['ci'][1]:.4g}]"
        )
    names = {t["name"] for f in figures(at) for t in f["data"]}
    assert {n for n in names if n.startswith(("A:", "B:"))} and len(figures(at)) >= 3
    at = page("compare", [results], {"runs": [a, "0:../../etc/passwd"]}, monkeypatch)
    assert any(e.startswith("Refused:") for e in texts(at, "error"))


# ------------------------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("name", list(PAGES))
def test_empty_root_shows_a_friendly_empty_state(tmp_path, monkeypatch, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    at = page(name, [empty], monkeypatch=monkeypatch)
    assert any("No audits or sweep cells found" in i for i in texts(at, "info"))
    assert not at.error


def test_missing_root_is_named(tmp_path, monkeypatch):
    at = page("overview", [tmp_path / "nope"], monkeypatch=monkeypatch)
    assert any("does not exist" in w and "nope" in w for w in texts(at, "warning"))
    assert any("No audits or sweep cells found" in i for i in texts(at, "info"))


def test_corrupt_and_partial_runs_are_skipped_with_a_warning(results, tmp_path, monkeypatch):
    root = tmp_path / "mixed"
    good = results / "audits" / "memorizer-hm"
    shutil.copytree(good, root / "good")
    shutil.copytree(good, root / "truncated")
    txt = (good / "report.json").read_text()
    (root / "truncated" / "report.json").write_text(txt[: len(txt) // 2])
    shutil.copytree(good, root / "partial")
    (root / "partial" / "report.json").unlink()
    shutil.copytree(good, root / "wrong-schema")
    (root / "wrong-schema" / "report.json").write_text(json.dumps({"schema": "something/9"}))
    (root / ".good.1234.tmp").mkdir()  # an atomic write in progress: ignored silently
    (root / ".good.1234.tmp" / "metrics.parquet").write_bytes(b"")
    df, problems, _ = data.overview([root])
    assert df["run_id"].tolist() == ["0:good"]
    assert sorted(Path(p.path).name for p in problems) == ["partial", "truncated", "wrong-schema"]
    for name in ("overview", "audit", "compare"):
        at = page(name, [root], monkeypatch=monkeypatch)
        warns = " ".join(texts(at, "warning"))
        for bad in ("partial", "truncated", "wrong-schema"):
            assert f"{root / bad}" in warns
    at = page("overview", [root], monkeypatch=monkeypatch)
    assert at.metric[0].value == "1"


def test_corrupt_parquet_inside_a_run_is_a_warning_not_a_crash(results, tmp_path, monkeypatch):
    root = tmp_path / "r"
    shutil.copytree(results / "audits" / "memorizer-hm", root / "run")
    (root / "run" / "copies.parquet").write_bytes(b"PAR1 not really parquet")
    (root / "run" / "metrics.parquet").write_bytes(b"garbage")
    at = page("audit", [root], {"run": "0:run"}, monkeypatch)
    warns = " ".join(texts(at, "warning"))
    assert "copies.parquet skipped" in warns and "metrics.parquet skipped" in warns
    rep = report_of(root / "run")
    shown = at.dataframe[0].value.set_index("name")  # metrics fall back to report.json
    assert shown.loc["convergence.kid", "value"] == pytest.approx(
        rep["probes"]["convergence"]["kid"]["value"]
    )


def test_symlinked_artifact_out_of_the_root_is_refused_on_the_page(results, tmp_path, monkeypatch):
    root = tmp_path / "r"
    shutil.copytree(results / "audits" / "memorizer-hm", root / "run")
    secret = tmp_path / "secret.parquet"
    shutil.copy(root / "run" / "copies.parquet", secret)
    (root / "run" / "copies.parquet").unlink()
    (root / "run" / "copies.parquet").symlink_to(secret)
    at = page("audit", [root], {"run": "0:run"}, monkeypatch)
    assert any("copies.parquet skipped" in w and "outside" in w for w in texts(at, "warning"))
    assert "Most-copied training items" not in " ".join(texts(at, "markdown"))


def test_overview_cache_follows_file_changes(results, tmp_path, monkeypatch):
    root = tmp_path / "live"
    shutil.copytree(results / "audits" / "memorizer-hm", root / "a")
    at = page("overview", [root], monkeypatch=monkeypatch)
    assert at.metric[0].value == "1"
    shutil.copytree(results / "audits" / "memorizer-sprites", root / "b")
    at.run()
    assert at.metric[0].value == "2"
    rep = report_of(root / "a")
    rep["probes"]["memorization"]["copy_rate"]["value"] = 0.123
    (root / "a" / "report.json").write_text(json.dumps(rep))
    at.run()
    assert 0.123 in at.dataframe[0].value["copy rate"].tolist()


# ------------------------------------------------------------------------------------------- CLI


def test_app_command_binds_localhost_by_default(tmp_path):
    from diffaudit.cli.app import entry_script, streamlit_argv

    argv = streamlit_argv(8600, "127.0.0.1")
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--server.port") + 1] == "8600"
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false"
    assert entry_script().is_file() and (entry_script().parent / "pages" / "2_Audit.py").is_file()
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = subprocess.run(
        [sys.executable, "-m", "diffaudit", "app", "--results", str(f)], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.startswith("error: --results") and "Traceback" not in r.stderr


def test_html_plotly_src_reads_the_writers_script_tag(tmp_path):
    shared, inline = tmp_path / "shared.html", tmp_path / "inline.html"
    shared.write_text(f"<html><head><style>{_CSS}</style>{plotly_tag('../../plotly.min.js')}</head></html>")
    inline.write_text(f"<html><head><style>{_CSS}</style>{plotly_tag('inline')}</head></html>")
    assert data.html_plotly_src(shared) == "../../plotly.min.js"
    assert data.html_plotly_src(inline) is None
    assert data.html_plotly_src(tmp_path / "missing.html") is None


# ------------------------------------------------------------------------------------------- hostile reports


def _edited_copy(results: Path, dst_root: Path, edit, name: str = "run") -> Path:
    """A copy of the vector audit under ``dst_root/name`` with ``edit(report)`` applied to its report.json."""
    run = dst_root / name
    shutil.copytree(results / "audits" / "memorizer-hm", run)
    rep = report_of(run)
    edit(rep)
    (run / "report.json").write_text(json.dumps(rep))
    return run


def test_report_strings_render_as_text_not_markdown(results, tmp_path, monkeypatch):
    model = "![x](http://127.0.0.1:9/pixel.png) **bold** <img src=x> :red[red] $x$"
    reason = "[click](http://127.0.0.1:9/) `code`"

    def edit(rep):
        rep["inputs"]["model"] = model
        rep["reasons"]["convergence"] = reason
        rep["skipped"] = [{"probe": "![p](http://127.0.0.1:9/p.png)", "reason": "<b>x</b>"}]

    _edited_copy(results, tmp_path / "r", edit)
    at = page("audit", [tmp_path / "r"], {"run": "0:run"}, monkeypatch)
    (header,) = texts(at, "header")
    assert plain(header) == f"{model} on hidden-manifold" and inert(header)
    assert not inert(model)  # the check itself sees unescaped markdown
    captions = texts(at, "caption")
    assert any(plain(c) == reason for c in captions)
    assert all(inert(c) for c in captions if plain(c) == reason)
    md = [m for m in texts(at, "markdown") if "p.png" in plain(m)]
    (item,) = md
    probe, reason_shown = item.removeprefix("- ").split(": ")  # the page's own separator
    assert inert(probe) and inert(reason_shown)
    assert (plain(probe), plain(reason_shown)) == ("![p](http://127.0.0.1:9/p.png)", "<b>x</b>")


def test_huge_model_string_is_cut_for_display(results, tmp_path, monkeypatch):
    big = "A" * 5_000_000  # a 5 MB model name; anything past a few hundred characters is cut

    def edit(rep):
        rep["inputs"]["model"] = big

    _edited_copy(results, tmp_path / "r", edit)
    at = page("audit", [tmp_path / "r"], {"run": "0:run"}, monkeypatch)
    (header,) = texts(at, "header")
    assert plain(header).startswith("A" * 100) and "…" in header and len(header) < 1000
    assert all(len(c) < 5000 for c in texts(at, "caption"))
    for name in ("overview", "compare", "home"):
        page(name, [tmp_path / "r"], monkeypatch=monkeypatch)  # no exception
    df, _, _ = data.overview([tmp_path / "r"])
    assert len(df["model"].iloc[0]) == data.TEXT_LIMIT and df["model"].iloc[0].endswith("…")


def test_unlisted_run_in_the_link_is_named(results, tmp_path, monkeypatch):
    root = tmp_path / "r"
    shutil.copytree(results / "audits" / "memorizer-hm", root / "good")
    shutil.copytree(results / "audits" / "memorizer-hm", root / "odd")
    (root / "odd" / "report.json").write_text(json.dumps({"schema": "something/9"}))
    at = page("audit", [root], {"run": "0:odd"}, monkeypatch)
    assert any("not among the listed runs" in w for w in texts(at, "warning"))
    assert at.selectbox(key="audit_run").value == "0:good"
    at = page("audit", [root], {"run": "0:good"}, monkeypatch)  # the other side: a listed run, no note
    assert not any("not among the listed runs" in w for w in texts(at, "warning"))
    assert not texts(at, "info") or not any(i.startswith("Showing the first") for i in texts(at, "info"))


def test_run_without_a_dataset_says_so(results, tmp_path, monkeypatch):
    _edited_copy(results, tmp_path / "r", lambda rep: rep["inputs"].pop("dataset"))
    at = page("audit", [tmp_path / "r"], {"run": "0:run"}, monkeypatch)
    text = " ".join(texts(at, "caption") + texts(at, "header"))
    assert "nan" not in text and "no dataset" in text
    assert plain(texts(at, "header")[0]) == "control:memorizer"


def _set(path: str, value):
    def edit(rep):
        *parents, last = path.split(".")
        o = rep
        for k in parents:
            o = o.setdefault(k, {})
        o[last] = value

    return edit


@pytest.mark.parametrize(
    "path, value",
    [
        ("verdict.generalization", ["pass"]),
        ("inputs", "a string"),
        ("inputs.features", 3),
        ("reasons", {"convergence": {"nested": 1}}),
        ("timings", {"total": "slow", "sample": [1]}),
        ("skipped", ["not an object"]),
        ("details.factors", {"factor_names": 3, "tau": 0.1, "reference_coverage": None}),
        ("details.factors.wasserstein_rel", {"x0": "big"}),
        ("details.memorization.ratio_threshold", "0.5"),
        ("details.membership", {"roc": {"fpr": ["a"], "tpr": [1]}, "sigmas": "x", "auc": [0.5]}),
        ("probes.convergence.kid", "high"),
        ("probes.convergence.fd", {"value": "1.0", "ci": [0, 1]}),
        ("probes.convergence.fd_train_holdout", {"value": 1.0, "ci": "wide"}),
        ("created", 12),
        ("warnings", "only 10 samples"),
        ("warnings", {"sample": "too few"}),
        ("warnings", [3, "fine", {"a": 1}]),
    ],
)
def test_wrong_field_types_are_skipped_with_a_warning(results, tmp_path, monkeypatch, path, value):
    _edited_copy(results, tmp_path / "r", _set(path, value))
    at = page("audit", [tmp_path / "r"], {"run": "0:run"}, monkeypatch)
    warns = plain(" ".join(texts(at, "warning")))
    assert "wrong type" in warns and path.split(".")[-1 if path != "verdict.generalization" else 0] in warns
    assert texts(at, "header")  # the rest of the run is still drawn
    for name in ("overview", "compare", "home"):
        page(name, [tmp_path / "r"], monkeypatch=monkeypatch)


def in_order(block):
    """The elements of a page (or block) in the order they are drawn, expanders and columns entered."""
    for _, node in sorted(block.children.items()):
        if node.type in ("expandable", "vertical", "horizontal", "column", "container") or (
            not hasattr(node, "value") and getattr(node, "children", None)
        ):
            yield from in_order(node)
        else:
            yield node


AUDIT_WARNING = "**Audit warning:** "


def audit_warnings(at: AppTest) -> list[str]:
    """The texts of the report's own warnings on the Audit page (markdown escapes undone)."""
    return [
        plain(w)[len(AUDIT_WARNING) :] for w in texts(at, "warning") if plain(w).startswith(AUDIT_WARNING)
    ]


def test_audit_page_shows_the_reports_warnings_before_the_verdicts(results, monkeypatch):
    rep = report_of(results / "audits" / "memorizer-hm")
    assert rep["warnings"] and all(isinstance(w, str) for w in rep["warnings"])  # 150 samples: too few
    at = page("audit", [results], {"run": "0:audits/memorizer-hm"}, monkeypatch)
    assert audit_warnings(at) == rep["warnings"]
    assert not at.expander or all("warnings" not in e.label for e in at.expander)  # few: drawn as they are
    drawn = [(n.type, getattr(n, "value", None)) for n in in_order(at.main)]
    first_warning = next(i for i, (_, v) in enumerate(drawn) if str(v).startswith(AUDIT_WARNING))
    assert first_warning < drawn.index(("subheader", "Verdicts"))  # read before the verdicts they qualify
    assert not any("wrong type" in w for w in texts(at, "warning"))


def test_many_report_warnings_go_into_one_expander(results, tmp_path, monkeypatch):
    many = [f"warning number {k}: [link](http://127.0.0.1:9/) **not bold**" for k in range(6)]
    _edited_copy(results, tmp_path / "r", lambda rep: rep.update(warnings=many))
    at = page("audit", [tmp_path / "r"], {"run": "0:run"}, monkeypatch)
    (box,) = [e for e in at.expander if "warnings" in e.label]
    assert box.label == "The audit left 6 warnings"
    assert [plain(w.value)[len(AUDIT_WARNING) :] for w in box.warning] == many
    assert audit_warnings(at) == many
    assert all(inert(w.value[len(AUDIT_WARNING) :]) for w in box.warning)  # report text, never markdown


@pytest.mark.parametrize(
    "warnings, shown, note",
    [
        (None, [], None),  # no key at all: an older report
        ([], [], None),
        ("disk full", [], "field warnings is a str, not a list"),
        (["kept", 3, None, "", {"x": "y"}, "  "], ["kept"], "2 element(s) of warnings are not strings"),
    ],
    ids=["absent", "empty", "string", "mixed-list"],
)
def test_missing_or_malformed_warnings_never_crash(results, tmp_path, monkeypatch, warnings, shown, note):
    def edit(rep):
        rep.pop("warnings", None)
        if warnings is not None:
            rep["warnings"] = warnings

    _edited_copy(results, tmp_path / "r", edit)
    at = page("audit", [tmp_path / "r"], {"run": "0:run"}, monkeypatch)
    assert audit_warnings(at) == shown
    wrong = [plain(w) for w in texts(at, "warning") if "wrong type" in w]
    if note is None:
        assert wrong == []
    else:
        (w,) = wrong
        assert w.startswith("This report has fields of the wrong type") and note in w, w
    assert texts(at, "subheader")[:2] == ["Verdicts", "Metrics"]  # the rest of the run is still drawn
    assert data.report_warnings(data.check_report(report_of(tmp_path / "r" / "run"))[0]) == shown


def test_check_report_keeps_a_valid_report_and_drops_only_wrong_types(results):
    rep = report_of(results / "audits" / "memorizer-hm")
    same, notes = data.check_report(rep)
    assert same == rep and notes == []  # the other side: a report the audit wrote is untouched
    bad = json.loads(json.dumps(rep))
    bad["verdict"] = ["pass"]
    bad["timings"]["sample"] = "slow"
    out, notes = data.check_report(bad)
    assert "verdict" not in out and "sample" not in out["timings"] and out["inputs"] == rep["inputs"]
    assert len(notes) == 2 and "verdict" in notes[0]


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_report_is_skipped_with_a_warning(results, tmp_path, monkeypatch, depth):
    run = _edited_copy(results, tmp_path / "r", lambda rep: rep["details"].update(deep="@@"))
    txt = (run / "report.json").read_text()
    (run / "report.json").write_text(txt.replace('"@@"', "[" * depth + "]" * depth))
    assert data.nesting(json.loads("[" * 30 + "]" * 30)) == 30
    with pytest.raises(data.DiffauditError, match="nested"):
        data.read_report(run)
    for name in ("audit", "overview", "compare", "home"):
        at = page(name, [tmp_path / "r"], monkeypatch=monkeypatch)
        if name == "audit" and at.header:  # listed: refused when opened
            assert any("nested" in w for w in texts(at, "warning"))


def test_report_nested_like_the_audit_writes_is_read(results):
    rep = data.read_report(results / "audits" / "memorizer-hm")
    assert 3 <= data.nesting(rep) <= data.MAX_NESTING


# ------------------------------------------------------------------------------------------- scaling axes


def _censored_sweep(results: Path, dst: Path, ci: list[float]) -> Path:
    sweep = dst / "tiny"
    shutil.copytree(results / "sweeps" / "tiny", sweep)
    thr = json.loads((sweep / "thresholds.json").read_text())
    for g in thr["groups"]:
        g["n1_star"].update(status="fit", n_star=50.0, n_star_ci=ci)
    (sweep / "thresholds.json").write_text(json.dumps(thr))
    return sweep


@pytest.mark.parametrize("ci", [[40.0, 1e21], [1e-3, 60.0], [40.0, 60.0]])
def test_scaling_axis_stays_on_the_measured_n(results, tmp_path, monkeypatch, ci):
    _censored_sweep(results, tmp_path / "root", ci)
    at = page("scaling", [tmp_path / "root"], monkeypatch=monkeypatch)
    at.selectbox(key="sc_d").set_value(8).run()
    curve = figures(at)[0]
    lo, hi = curve["layout"]["xaxis"]["range"]
    assert 10**lo <= 32 and 10**hi >= 128  # covers the data ...
    assert 32 / 10**lo < 1.5 and 10**hi / 128 < 1.5  # ... and not much more
    rects = [(s["x0"], s["x1"]) for s in curve["layout"]["shapes"] if s["type"] == "rect"]
    assert rects and all(32 <= a < b <= 128 for a, b in rects)
    assert sorted({a for a, _ in rects} | {b for _, b in rects}) == [max(ci[0], 32.0), min(ci[1], 128.0)]
    notes = [a["text"] for a in curve["layout"].get("annotations", []) if "interval to" in a["text"]]
    censored = ci[0] < 32 or ci[1] > 128
    assert bool(notes) == censored
    if ci[1] > 128:
        assert all(t.endswith("→") and "1e+21" in t for t in notes)
    if ci[0] < 32:
        assert all(t.startswith("←") for t in notes)
    assert any("outside" in c or "beyond" in c for c in texts(at, "caption")) == censored


def test_sweep_names_for_a_sweep_root_and_loose_cells(results, tmp_path, monkeypatch):
    sweep = results / "sweeps" / "tiny"
    at = page("scaling", [sweep], monkeypatch=monkeypatch)
    (opt,) = at.selectbox(key="sc_sweep").options
    assert opt == f"tiny  (in {sweep})"
    loose = tmp_path / "loose"
    cell = next((sweep / "cells").iterdir())
    shutil.copytree(cell, loose / cell.name)
    at = page("scaling", [loose], monkeypatch=monkeypatch)
    (opt,) = at.selectbox(key="sc_sweep").options
    assert opt == f"cells outside a sweep folder  (in {loose})" and "nan" not in opt
    only_audits = tmp_path / "audits"
    shutil.copytree(results / "audits", only_audits)
    at = page("scaling", [only_audits], monkeypatch=monkeypatch)
    assert not at.selectbox and any("No sweep cells" in i for i in texts(at, "info"))


# ------------------------------------------------------------------------------------------- CLI: busy port


def test_app_on_a_busy_port_is_one_error_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "diffaudit", "app", "--results", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
        )
    assert r.returncode == 2 and r.stderr.startswith(f"error: --port {port}") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_port_check_passes_a_free_port():
    from diffaudit.cli.app import check_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check_port("127.0.0.1", port)  # free again: no error
