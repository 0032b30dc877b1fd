"""The basin-of-attraction stage of an audit: its rows, details and figure on the controls; skipped for a black box."""

import json

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.models.adapters import load_model
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit
from diffaudit.pipeline.setup import dataset_split

ROWS = ("basin_auc", "basin_return_train", "basin_return_holdout")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    ds = get_dataset("hidden-manifold:d=16,D=2")
    xt, zt, xh, zh = dataset_split(ds, 500, 500, seed=0)
    out = tmp_path_factory.mktemp("basin")
    res = {}
    for name in ("oracle", "gaussian", "memorizer"):
        model = load_model(f"control:{name}", train=xt, dataset=ds, num_steps=8)
        cfg = AuditConfig(n_samples=100, n_boot=2, kid_subsets=4, mia_n=100, mia_draws=1)
        res[name] = run_audit(
            model, train=xt, holdout=xh, dataset=ds, config=cfg, out_dir=out / name, train_z=zt, holdout_z=zh
        )
    return out, res


def test_memorizer_returns_and_the_report_shows_it(reports):
    out, res = reports
    rep = res["memorizer"]
    m = rep["probes"]["memorization"]
    assert m["basin_auc"]["value"] > 0.95 and m["basin_auc"]["ci"][0] > 0.85
    assert m["basin_return_train"]["value"] >= 0.95 and m["basin_return_holdout"]["value"] <= 0.1
    b = rep["details"]["basin"]
    cfg = AuditConfig()
    assert b["n"] == cfg.basin_n and b["n_eval"] == [cfg.basin_n // 2] * 2
    assert b["sigmas"] == pytest.approx([s * b["spacing"] for s in cfg.basin_sigmas])
    assert 0 < b["radius"] < b["spacing"] and b["radius_quantile"] == cfg.basin_quantile
    assert b["best_sigma"] in b["sigmas"] and len(b["per_sigma"]) == len(cfg.basin_sigmas)
    assert b["denoiser_calls"] == 2 * cfg.basin_n * len(cfg.basin_sigmas) * (2 * cfg.basin_steps - 1)
    on_disk = json.loads((out / "memorizer" / "report.json").read_text())
    assert on_disk["details"]["basin"]["per_sigma"] == json.loads(json.dumps(b["per_sigma"]))
    assert "Basin of attraction" in (out / "memorizer" / "report.html").read_text()
    assert "basin" in rep["timings"]


def test_gaussian_shows_no_gap(reports):
    _, res = reports
    m = res["gaussian"]["probes"]["memorization"]
    lo, hi = m["basin_auc"]["ci"]
    assert lo <= 0.5 <= hi
    tr, ho = m["basin_return_train"]["ci"], m["basin_return_holdout"]["ci"]
    assert tr[0] <= ho[1] and ho[0] <= tr[1]
    for row in res["gaussian"]["details"]["basin"]["per_sigma"]:
        assert row["return_train_ci"][0] <= row["return_holdout_ci"][1]
        assert row["return_holdout_ci"][0] <= row["return_train_ci"][1]


def test_black_box_skips_the_stage_and_says_why(reports):
    _, res = reports
    rep = res["oracle"]
    assert all(rep["probes"]["memorization"].get(k) is None for k in ROWS)
    why = {s["probe"]: s["reason"] for s in rep["skipped"]}
    assert "black box" in why["basin"] and "basin" not in rep["details"]


def test_config_checks_the_basin_options():
    for bad in ({"basin_n": 3}, {"basin_sigmas": (0.1, 0.0)}, {"basin_steps": 0}, {"basin_quantile": 1.0}):
        with pytest.raises(DiffauditError, match=next(iter(bad))):
            AuditConfig(**bad).check()
    assert AuditConfig(basin_sigmas=[0.1, 0.2]).as_dict()["basin_sigmas"] == [0.1, 0.2]
    assert np.isclose(AuditConfig.from_options({"basin_sigmas": [0.3]}).basin_sigmas[0], 0.3)


def test_config_refuses_infinite_fractional_and_scalar_options():
    cases = {
        "basin_sigmas": (float("inf"),),
        "mia_sigmas": (0.1, float("nan")),
        "extraction_budget": 2.7,
        "basin_n": 10.5,
        "seed": True,
    }
    for name, v in cases.items():
        with pytest.raises(DiffauditError, match=name) as e:
            AuditConfig(**{name: v}).check()
        assert str(e.value).count(". ") == 0 and "\n" not in str(e.value)
    with pytest.raises(DiffauditError, match="basin_sigmas=0.1 is not a list"):
        AuditConfig(basin_sigmas=0.1).check()  # was a TypeError from the constructor
    with pytest.raises(DiffauditError, match="basin_n"):
        AuditConfig(basin_n=19).check()  # 9 evaluated items of each set
    assert AuditConfig(extraction_budget=0, basin_n=20, n_samples=1000.0).check().extraction_budget == 0
