"""`diffaudit demo` end to end (subprocess), plus the plain-words summary on fixed reports."""

import json
import os
import subprocess
import sys

import pytest

from diffaudit.pipeline.demo import explain, index_html


def _rep(conv, gen, mem, e1=0.01, fd_ratio=1.2, validity=1.0, nv=0.95, copy=0.0, auc=None, factors=None):
    m = lambda v: None if v is None else {"value": v, "ci": None}  # noqa: E731
    return {
        "verdict": {"convergence": conv, "generalization": gen, "memorization": mem},
        "thresholds": {"eps1": 0.1},
        "details": {"factors": factors or {}},
        "probes": {
            "convergence": {"moment_error": m(e1), "fd_ratio": m(fd_ratio)},
            "factors": {"validity": m(validity), "novel_valid_rate": m(nv)},
            "memorization": {"copy_rate": m(copy), "mia_auc": m(auc)},
        },
    }


def test_explain_words():
    s = explain("gaussian", _rep("pass", "fail", "pass", e1=0.02, fd_ratio=1.4, validity=0.0, nv=0.0))
    assert s.startswith(
        "gaussian: bulk statistics match the data (second-moment error E1 0.020 <= 0.1; FD 1.4x"
    )
    assert "but only 0 % of its samples lie on the data manifold" in s
    s = explain("memorizer", _rep("pass", "fail", "fail", copy=1.0, nv=0.0, auc=1.0))
    assert "100 % of its samples are copies of training items" in s and "AUC 1.00" in s
    s = explain("oracle", _rep("pass", "pass", "pass", nv=0.97, copy=0.004))
    assert "97 % of its samples are valid and novel, with factors distributed like the truth" in s
    assert "no memorization" in s
    s = explain("small", _rep("fail", "fail", "pass", e1=2.5, validity=0.2, nv=0.2))
    assert "bulk statistics off (second-moment error E1 2.5 > 0.1" in s
    s = explain(
        "dropper", _rep("pass", "fail", "pass", nv=0.9, factors={"factor_match": False, "mismatch": "shape"})
    )
    assert "not distributed like the true ones (shape)" in s


def test_index_html_escapes():
    html = index_html(
        [
            {
                "name": "<b>x</b>",
                "dataset": "d",
                "html": "a/report.html",
                "summary": "<script>",
                "verdict": {"convergence": "pass", "generalization": "n/a", "memorization": "fail"},
            }
        ]
    )
    assert "<script>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "diffaudit", "demo", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    assert len(index) == 8  # 3 controls x 2 datasets + 2 trained models
    names = " ".join(e["name"] for e in index)
    for m in ("oracle", "gaussian", "memorizer"):
        assert names.count(m) == 2
    html = (out / "index.html").read_text()
    by = {}
    for e in index:
        assert set(e) >= {"name", "dataset", "report"}
        rep = json.loads((out / e["report"]).read_text())
        assert rep["schema"] == "diffaudit.report/1"
        assert e["report"].replace("report.json", "report.html") in html
        by[e["name"]] = rep["verdict"]
    # the controls table of DESIGN.md, on both datasets
    for ds in ("hidden-manifold", "sprites16"):
        assert by[f"{ds}/oracle"] == {"convergence": "pass", "generalization": "pass", "memorization": "pass"}
        assert (
            by[f"{ds}/gaussian"]["convergence"] == "pass" and by[f"{ds}/gaussian"]["generalization"] == "fail"
        )
        assert by[f"{ds}/memorizer"]["memorization"] == "fail"
    # the case this project exists for: the memorizer of a large training set has the data's bulk statistics
    # (threshold 1 passes) while every sample is a training copy (threshold 2 and memorization fail)
    assert by["hidden-manifold/memorizer"] == {
        "convergence": "pass",
        "generalization": "fail",
        "memorization": "fail",
    }
    assert "gaussian: bulk statistics match the data" in p.stdout and "lie on the data manifold" in p.stdout
    # the n = 16 model cannot have the bulk statistics of 32-dimensional data: threshold 1 fails
    assert by["hidden-manifold/mlp-n16"]["convergence"] == "fail"
    # the two trained models: same budget, n = 16 vs n = 2048; the small one reproduces its training set
    small = json.loads((out / "hidden-manifold-mlp-n16" / "report.json").read_text())["probes"]
    large = json.loads((out / "hidden-manifold-mlp-n2048" / "report.json").read_text())["probes"]
    assert small["memorization"]["copy_rate"]["value"] > 0.3
    assert large["memorization"]["copy_rate"]["value"] < 0.05
    assert large["factors"]["novel_valid_rate"]["value"] > small["factors"]["novel_valid_rate"]["value"]
    assert "trained MLP, n=16" in p.stdout and "trained MLP, n=2048" in p.stdout
