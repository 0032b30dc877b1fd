"""run_audit on the analytic controls (known answers), the report schema, files, escaping and atomicity."""

import json

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.models.adapters import load_model
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit
from diffaudit.pipeline.setup import dataset_split
from diffaudit.pipeline.verdicts import evaluate_gates, parse_gate
from diffaudit.report import schema
from diffaudit.report.schema import SCHEMA, public_keys

N_TRAIN, N_GEN = 1000, 500


@pytest.fixture(scope="module")
def hm():
    ds = get_dataset("hidden-manifold:d=32,D=4")
    return (ds, *dataset_split(ds, N_TRAIN, N_GEN, seed=0))


@pytest.fixture(scope="module")
def reports(hm, tmp_path_factory):
    ds, xt, zt, xh, zh = hm
    out = tmp_path_factory.mktemp("reports")
    res = {}
    for name in ("oracle", "gaussian", "memorizer"):
        # the gaussian needs the full 32 Heun steps: with 12, discretisation error alone gives FD ~5x the floor
        model = load_model(
            f"control:{name}", train=xt, dataset=ds, num_steps=12 if name == "memorizer" else None
        )
        cfg = AuditConfig(n_samples=N_GEN, seed=0, n_boot=10, kid_subsets=10)
        res[name] = run_audit(
            model,
            train=xt,
            holdout=xh,
            dataset=ds,
            config=cfg,
            out_dir=out / name,
            model_spec=f"control:{name}",
            train_z=zt,
            holdout_z=zh,
        )
    return out, res


def test_schema_public_keys(reports):
    out, res = reports
    rep = json.loads((out / "oracle" / "report.json").read_text())
    assert rep["schema"] == SCHEMA
    for group, keys in public_keys().items():
        assert set(keys) <= set(rep["probes"][group])
        for k in keys:
            m = rep["probes"][group][k]
            assert m is None or (set(m) == {"value", "ci"} and isinstance(m["value"], float))
            if m is not None and m["ci"] is not None:
                assert len(m["ci"]) == 2 and m["ci"][0] <= m["ci"][1]
    assert set(rep["verdict"]) == {"convergence", "generalization", "memorization"}
    assert all(v in ("pass", "fail", "n/a") for v in rep["verdict"].values())
    for stage in (
        "sample",
        "embed",
        "moments",
        "convergence",
        "copies",
        "copy_tests",
        "factors",  # oracle: black box
        "report",
        "total",
    ):
        assert rep["timings"][stage] >= 0
    inp = rep["inputs"]
    assert len(inp["hashes"]["train"]) == 64 and inp["features"]["id"] == "pixels"
    assert inp["features"]["random_init"] is False and inp["versions"]["diffaudit"]
    # every metric under probes has a schema row (so it is gateable, shown, stored)
    for g, grp in rep["probes"].items():
        for k in grp:
            assert schema.get(f"{g}.{k}") is not None, f"{g}.{k}"


def test_control_verdicts(reports):
    _, res = reports
    o, g, m = res["oracle"]["verdict"], res["gaussian"]["verdict"], res["memorizer"]["verdict"]
    assert o == {"convergence": "pass", "generalization": "pass", "memorization": "pass"}
    assert g["convergence"] == "pass" and g["generalization"] == "fail" and g["memorization"] == "pass"
    assert m["memorization"] == "fail" and m["generalization"] == "fail"
    p = res["gaussian"]["probes"]
    assert p["factors"]["validity"]["value"] <= 0.05
    assert res["memorizer"]["probes"]["memorization"]["copy_rate"]["value"] >= 0.95
    assert res["memorizer"]["probes"]["memorization"]["mia_auc"]["value"] >= 0.9
    assert abs(res["gaussian"]["probes"]["memorization"]["mia_auc"]["value"] - 0.5) < 0.1
    assert res["oracle"]["probes"]["memorization"]["copy_rate"]["value"] <= 0.02
    assert res["oracle"]["probes"]["memorization"].get("mia_auc") is None  # black box: skipped
    assert any("black box" in s["reason"] for s in res["oracle"]["skipped"])


def test_report_files(reports, hm):
    import pandas as pd

    out, res = reports
    _, xt, _, _, _ = hm
    d = out / "memorizer"
    for f in ("report.json", "report.html", "metrics.parquet", "copies.parquet", "pca.parquet"):
        assert (d / f).is_file()
    met = pd.read_parquet(d / "metrics.parquet")
    row = met[met["name"] == "memorization.copy_rate"].iloc[0]
    assert row["value"] == res["memorizer"]["probes"]["memorization"]["copy_rate"]["value"]
    cp = pd.read_parquet(d / "copies.parquet")
    assert len(cp) == N_GEN and {"index", "nn_index", "d1", "d2", "ratio", "is_copy", "valid"} <= set(
        cp.columns
    )
    # nearest neighbours against brute force: regenerate the samples (deterministic) and check a few rows
    model = load_model("control:memorizer", train=xt, num_steps=12)
    gen = model.sample(N_GEN, 0)
    for i in (0, 7, 123):
        dist = np.linalg.norm(xt.astype(np.float64) - gen[i].astype(np.float64), axis=1)
        assert cp["nn_index"][i] == int(np.argmin(dist))
        assert cp["d1"][i] == pytest.approx(dist.min(), abs=1e-4)
    html = (d / "report.html").read_text()
    assert html.count("Plotly") > 0 and "<script src=" not in html  # plotly inlined, nothing fetched


def test_html_escapes_user_strings(hm, tmp_path):
    ds, xt, zt, xh, zh = hm
    evil = "<script>alert('x')</script>"
    model = load_model("control:gaussian", train=xt, num_steps=8)
    run_audit(
        model,
        train=xt,
        holdout=xh,
        config=AuditConfig(n_samples=100, n_boot=2, kid_subsets=2),
        out_dir=tmp_path / "r",
        model_spec=f"entry:{evil}",
        inputs={"train": evil},
    )
    html = (tmp_path / "r" / "report.html").read_text()
    assert evil not in html and "&lt;script&gt;alert(" in html


def test_no_holdout_skips_and_says_why(hm):
    ds, xt, zt, xh, zh = hm
    model = load_model("control:gaussian", train=xt, num_steps=8)
    rep = run_audit(model, train=xt, config=AuditConfig(n_samples=200))
    assert (
        rep["probes"]["convergence"]["fd"] is None
        and rep["probes"]["convergence"]["fd_train_holdout"] is None
    )
    assert rep["verdict"]["convergence"] == "n/a" and rep["verdict"]["generalization"] == "n/a"
    assert rep["verdict"]["memorization"] in ("pass", "fail")
    probes = {s["probe"] for s in rep["skipped"]}
    assert "convergence" in probes and "factors" in probes
    assert rep["probes"]["memorization"]["copy_rate"] is not None


def test_holdout_fraction_split(hm):
    _, xt, _, _, _ = hm
    model = load_model("control:gaussian", train=xt, num_steps=8)
    rep = run_audit(
        model, train=xt, config=AuditConfig(n_samples=200, holdout_fraction=0.25, n_boot=2, kid_subsets=2)
    )
    assert rep["inputs"]["n_train"] == 750 and rep["inputs"]["n_holdout"] == 250
    assert rep["probes"]["convergence"]["fd"] is not None


def test_failure_leaves_no_report_dir(hm, tmp_path, monkeypatch):
    import diffaudit.report.writer as report_mod

    ds, xt, zt, xh, zh = hm

    def boom(tmp, report, art):
        (tmp / "report.html").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_mod, "_write_contents", boom)
    model = load_model("control:gaussian", train=xt, num_steps=8)
    with pytest.raises(RuntimeError):
        run_audit(
            model,
            train=xt,
            holdout=xh,
            config=AuditConfig(n_samples=50, n_boot=2, kid_subsets=2),
            out_dir=tmp_path / "r",
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_in_process(hm, tmp_path):
    ds, xt, zt, xh, zh = hm
    model = load_model("control:gaussian", train=xt, num_steps=8)
    with pytest.raises(DiffauditError, match="shape"):
        run_audit(model, train=xt[:, :16], config=AuditConfig(n_samples=10))
    bad = xh.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DiffauditError, match="NaN"):
        run_audit(model, train=xt, holdout=bad, config=AuditConfig(n_samples=10), out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_gates():
    assert parse_gate("memorization.copy_rate<=0.001") == ("memorization.copy_rate", "<=", 0.001)
    assert parse_gate(" convergence.fd < 5e-1 ") == ("convergence.fd", "<", 0.5)
    for bad in (
        "copy_rate<=0.1",
        "memorization.copy_rate=0.1",
        "memorization.copy_rate<=abc",
        "memorization.copy_rate<=0.1;rm",
    ):
        with pytest.raises(DiffauditError, match="malformed"):
            parse_gate(bad)
    with pytest.raises(DiffauditError, match="valid keys"):
        parse_gate("memorization.nope<=1")
    rep = {
        "probes": {"memorization": {"copy_rate": {"value": 0.01, "ci": None}}, "convergence": {"fd": None}}
    }
    res = evaluate_gates(
        rep,
        [
            parse_gate("memorization.copy_rate<=0.01"),
            parse_gate("memorization.copy_rate<0.01"),
            parse_gate("convergence.fd<=100"),
        ],
    )
    assert [r["passed"] for r in res] == [True, False, False]  # an unmeasured metric fails its gate


def test_membership_roc_is_stored_and_matches_the_auc(reports):
    # the ROC curve the app draws must be the attack the AUC measured: its area equals the best AUC
    _, res = reports
    for name in ("memorizer", "gaussian"):
        mem = res[name]["details"]["membership"]
        roc = mem["roc"]
        fpr, tpr = np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
        assert fpr[0] == 0.0 and fpr[-1] == 1.0 and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        assert abs(area - res[name]["probes"]["memorization"]["mia_auc"]["value"]) < 0.02, name
        assert roc["sigma"] == pytest.approx(mem["best_sigma"])
