"""Threshold fitting: synthetic sweeps with known n*, the no-crossing case, exponents across d, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from diffaudit.cli import main as cli_main
from diffaudit.errors import DiffauditError
from diffaudit.sweeps.thresholds import compute_thresholds, fit_logistic, render_html


def _write_cell(root: Path, cid: str, *, d: int, n: int, seed: int, model: str, fd: float, floor: float,
                copy: float | None, nv: float | None) -> None:
    p = root / "cells" / cid
    p.mkdir(parents=True, exist_ok=True)

    def v(x):
        return None if x is None else {"value": x, "ci": None}

    rep = {
        "schema": "diffaudit.report/1",
        "probes": {"convergence": {"fd": v(fd)}, "memorization": {"copy_rate": v(copy)},
                   "factors": {"novel_valid_rate": v(nv)}},
        "sweep": {"cell": {"dataset": "hidden-manifold", "params": {"d": d, "D": 4}, "d": d, "n_train": n,
                           "seed": seed, "model_label": model},
                  "fd_floor": v(floor), "train": {"steps": 100}},
    }
    (p / "report.json").write_text(json.dumps(rep))


def _logistic(n, n_star, k=2.0):
    return 1 / (1 + math.exp(-k * (math.log(n) - math.log(n_star))))


def _synthetic(root: Path, truths: dict[int, tuple[float, float]], *, seeds=(0, 1, 2), noise=0.03, seed=0,
               grid=tuple(2**k for k in range(4, 15))) -> None:
    """Cells whose fd_ratio and 1 - copy rate follow logistic curves with known n1*, n2* per d; plus a
    gaussian control whose FD sits at the floor and which never produces novel-valid samples."""
    rng = np.random.default_rng(seed)
    floor = 0.02
    for d, (n1, n2) in truths.items():
        for s in seeds:
            for n in grid:
                y1 = float(np.clip(_logistic(n, n1) + rng.normal(0, noise), 0.01, 1.0))
                y2 = float(np.clip(_logistic(n, n2) + rng.normal(0, noise), 0.0, 1.0))
                _write_cell(root, f"m_{d}_{n}_{s}", d=d, n=n, seed=s, model="model", fd=floor / y1, floor=floor,
                            copy=1 - y2, nv=y2)
                _write_cell(root, f"g_{d}_{n}_{s}", d=d, n=n, seed=s, model="gaussian", fd=floor * 1.05,
                            floor=floor, copy=0.0, nv=0.0)


def test_fit_logistic_recovers_exact_curve():
    x = np.log(np.array([16, 32, 64, 128, 256, 512, 1024.0]))
    a, b = -2.0 * math.log(100.0), 2.0
    y = 1 / (1 + np.exp(-(a + b * x)))
    a_hat, b_hat = fit_logistic(x, y, ridge=0.0)
    assert a_hat == pytest.approx(a, rel=1e-5) and b_hat == pytest.approx(b, rel=1e-5)
    # a step (perfectly separated) stays finite thanks to the ridge, crossing between the two sides
    a_s, b_s = fit_logistic(x, (x > math.log(100)).astype(float))
    assert 64 < math.exp(-a_s / b_s) < 128


def test_known_thresholds_recovered_within_intervals(tmp_path):
    truths = {16: (300.0, 60.0), 32: (1200.0, 120.0)}
    _synthetic(tmp_path, truths)
    doc = compute_thresholds(tmp_path, n_boot=300)
    groups = {(g["d"], g["model"]): g for g in doc["groups"]}
    for d, (n1, n2) in truths.items():
        g = groups[(d, "model")]
        c1, c2 = g["curves"]["fd_ratio"], g["curves"]["not_copied"]
        assert c1["status"] == "fit" and c2["status"] == "fit"
        assert c1["n_star_ci"][0] <= n1 <= c1["n_star_ci"][1]
        assert c2["n_star_ci"][0] <= n2 <= c2["n_star_ci"][1]
        assert abs(math.log(c1["n_star"] / n1)) < 0.2
        # threshold 2 comes first here, by a factor 5-10, and the interval says so
        assert g["order"]["first"] == "threshold 2"
        assert g["order"]["ratio_ci"][1] < 1
    exps = {e["metric"]: e for e in doc["exponents"] if e["model"] == "model"}
    # n1* ~ d^2, n2* ~ d^1 by construction
    assert exps["fd_ratio"]["b_ci"][0] <= 2.0 <= exps["fd_ratio"]["b_ci"][1]
    assert exps["not_copied"]["b_ci"][0] <= 1.0 <= exps["not_copied"]["b_ci"][1]
    assert "<script" in render_html(doc)


def test_no_crossing_is_recorded_not_fitted(tmp_path):
    _synthetic(tmp_path, {32: (1200.0, 120.0)}, seeds=(0,))
    doc = compute_thresholds(tmp_path, n_boot=50)
    g = next(g for g in doc["groups"] if g["model"] == "gaussian")
    assert g["curves"]["fd_ratio"]["status"] == "above" and g["curves"]["fd_ratio"]["n_star"] is None
    assert g["curves"]["novel_valid"]["status"] == "below"
    assert "does not cross" in g["curves"]["novel_valid"]["message"]
    assert g["order"]["first"] == "threshold 1"
    # the model's threshold 1 never crosses when the grid stops before it
    other = tmp_path / "short"
    _synthetic(other, {32: (1e6, 120.0)}, seeds=(0,), grid=(16, 64, 256, 1024, 4096))
    g = next(g for g in compute_thresholds(other, n_boot=50)["groups"] if g["model"] == "model")
    assert g["curves"]["fd_ratio"]["status"] == "below"
    assert g["order"]["first"] == "threshold 2"


def test_cli_writes_files_and_exit_codes(tmp_path, capsys):
    _synthetic(tmp_path, {32: (1200.0, 120.0)}, seeds=(0,))
    cli_main(["thresholds", str(tmp_path), "--n-boot", "50"])  # returns normally: exit 0
    out = capsys.readouterr().out
    assert "threshold 2 first" in out
    doc = json.loads((tmp_path / "thresholds.json").read_text())
    assert doc["schema"] == "diffaudit.thresholds/1"
    assert (tmp_path / "thresholds.html").stat().st_size > 100_000  # plotly inlined
    empty = tmp_path / "empty"
    (empty / "cells").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        cli_main(["thresholds", str(empty)])
    assert e.value.code == 2
    assert "no complete sweep cells" in capsys.readouterr().err
    with pytest.raises(DiffauditError, match="level"):
        compute_thresholds(tmp_path, level=1.5)


def test_half_written_cells_are_ignored(tmp_path):
    _synthetic(tmp_path, {32: (1200.0, 120.0)}, seeds=(0,))
    tmp = tmp_path / "cells" / ".m_32_16_0.x.tmp"
    tmp.mkdir()
    (tmp / "report.json").write_text("{}")
    (tmp_path / "cells" / "incomplete").mkdir()
    doc = compute_thresholds(tmp_path, n_boot=20)
    assert doc["n_cells"] == 2 * 11
