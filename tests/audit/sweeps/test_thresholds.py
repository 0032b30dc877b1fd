"""Threshold fitting against synthetic sweeps with known curves: the fits on exact curves, interval coverage
over repeated synthetic sweeps (seed bootstrap and one-seed parametric bootstrap), censoring, curves that
never cross, exponents across d, cells of the previous format, and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from diffaudit.cli import main as cli_main
from diffaudit.errors import DiffauditError
from diffaudit.report import schema
from diffaudit.sweeps.thresholds import (
    NOT_COPIED,
    compute_thresholds,
    crossing_logistic4,
    expansion,
    fit_group,
    fit_logistic4_batch,
    fit_power_batch,
    interval,
    load_cells,
    logistic4,
    render_html,
    which_first,
)

E1 = schema.sweep_metric("n1").key
REC = schema.sweep_metric("n2").key
GRID = tuple(2**k for k in range(4, 15))  # 16 .. 16384
LO, HI = 0.1, 0.85  # plateaus of the synthetic recovery curve (a real one stops short of 1)
K = 2.0  # its slope in log n


def _recovery(n: float, n2: float) -> float:
    """4-parameter logistic in log n with plateaus LO, HI that crosses 0.5 exactly at n = n2."""
    m = math.log(n2) - math.log((0.5 - LO) / (HI - 0.5)) / K
    return LO + (HI - LO) / (1 + math.exp(-K * (math.log(n) - m)))


def _curves(rng, *, d, kappa, n2, seeds, grid=GRID, e1_fixed=None, rec_fixed=None, single=False):
    """Per cell (n, seed, E1, its sd, recovery, its sd). E[E1] = (d + kappa) / n, so n1* = 10 (d + kappa) at
    eps1 = 0.1: a per-seed multiplicative effect (mean 1, sd 0.1: nested training sets of one seed share it)
    times per-cell relative noise 0.15 plus additive estimation noise 0.005 (E1 goes negative at large n).
    Recovery: the logistic plus a per-seed shift (sd 0.03) and per-cell noise (sd 0.03). ``single``: one seed
    without the seed effects, each cell reporting its full sd (what the parametric bootstrap assumes)."""
    out = []
    for s in seeds:
        g1 = 1.0 if single else 1 + 0.1 * rng.standard_normal()
        g2 = 0.0 if single else 0.03 * rng.standard_normal()
        for n in grid:
            mu = (d + kappa) / n if e1_fixed is None else e1_fixed
            sd1 = math.sqrt((0.15 * mu) ** 2 + 0.005**2)
            e1 = g1 * mu + sd1 * rng.standard_normal()
            rec = (_recovery(n, n2) + g2 + 0.03 * rng.standard_normal()) if rec_fixed is None else rec_fixed
            out.append((n, s, e1, sd1, float(np.clip(rec, 0, 1)), 0.03))
    return out


def _rows(cells):
    return [
        {
            "n": n,
            "seed": s,
            "n_samples": 1000,
            "values": {E1: e1, REC: rec, NOT_COPIED: None},
            "sds": {E1: sd1, REC: sd2, NOT_COPIED: None},
        }
        for n, s, e1, sd1, rec, sd2 in cells
    ]


def _write(root: Path, cells, *, d, model="model", eps1=0.1, old=False, copy=None):
    """Cells as ``sweeps.run`` writes them (``old``: the previous format, without E1 and recovery score)."""
    for n, s, e1, sd1, rec, sd2 in cells:
        p = root / "cells" / f"{model}_{d}_{n}_{s}"
        p.mkdir(parents=True, exist_ok=True)
        cr = 1 - rec if copy is None else copy
        probes = {
            "memorization": {"copy_rate": {"value": cr, "ci": None}},
            "factors": {"novel_valid_rate": {"value": rec, "ci": None}},
        }
        if not old:
            probes["convergence"] = {"bulk_error": {"value": e1, "ci": [e1 - 1.96 * sd1, e1 + 1.96 * sd1]}}
            probes["factors"]["recovery_score"] = {"value": rec, "ci": [rec - 1.96 * sd2, rec + 1.96 * sd2]}
        else:
            probes["convergence"] = {"fd": {"value": 1.0, "ci": None}}
        rep = {
            "schema": "diffaudit.report/1",
            "probes": probes,
            **({} if old else {"thresholds": {"eps1": eps1}}),
            "sweep": {
                "cell": {
                    "dataset": "hidden-manifold",
                    "params": {"d": d, "D": 4},
                    "d": d,
                    "n_train": n,
                    "seed": s,
                    "model_label": model,
                    "n_samples": 1000,
                },
                "train": {"steps": 100},
            },
        }
        (p / "report.json").write_text(json.dumps(rep))


# ------------------------------------------------------------------------------------------ the fits


def test_power_fit_exact_and_with_nonpositive_values():
    x = np.log(np.array(GRID, float))
    y = 3.0 / np.exp(x)
    a, b = fit_power_batch(x, y[None], np.ones((1, len(x))))
    assert a[0] == pytest.approx(math.log(3.0), abs=1e-8) and b[0] == pytest.approx(1.0, abs=1e-8)
    # an unbiased estimate below 0 at large n is used as it is (log E1 would be undefined there)
    y2 = y.copy()
    y2[-3:] = [-0.001, 0.0, -0.0005]
    s2 = np.full((1, len(x)), 0.002**2)
    a2, b2 = fit_power_batch(x, y2[None], np.ones((1, len(x))), s2, c2=0.01)
    assert abs(b2[0] - 1.0) < 0.01 and abs(a2[0] - math.log(3.0)) < 0.05
    # too few distinct n: no fit
    a3, b3 = fit_power_batch(x[:1], y[None, :1], np.ones((1, 1)))
    assert math.isnan(a3[0]) and math.isnan(b3[0])


def test_logistic4_recovers_free_plateaus_and_crossing():
    x = np.log(np.array(GRID, float))
    y = np.array([_recovery(n, 300.0) for n in GRID])
    theta = fit_logistic4_batch(x, y[None], np.ones((1, len(x))))
    assert theta[0, 0] == pytest.approx(LO, abs=2e-3) and theta[0, 1] == pytest.approx(HI, abs=2e-3)
    assert theta[0, 2] == pytest.approx(K, rel=0.02)
    assert crossing_logistic4(theta, 0.5)[0] == pytest.approx(math.log(300.0), abs=5e-3)
    # plateaus that do not bracket the level: no crossing (a curve topping out at 0.425 never reaches 0.5)
    th_low = fit_logistic4_batch(x, 0.5 * y[None], np.ones((1, len(x))))
    assert th_low[0, 1] == pytest.approx(0.5 * HI, abs=2e-3) and math.isnan(
        crossing_logistic4(th_low, 0.5)[0]
    )
    # data below 0 cannot pull the lower plateau below 0, nor push the upper one past what the data show
    th_clip = fit_logistic4_batch(x, y[None] - 0.2, np.ones((1, len(x))))
    assert th_clip[0, 0] == 0.0 and th_clip[0, 1] < 0.66
    # a decreasing curve is not fitted as increasing: flat over the grid, at the mean (0.45), no crossing
    th_dec = fit_logistic4_batch(x, y[::-1][None], np.ones((1, len(x))))
    curve = logistic4(th_dec[0], x)
    assert np.ptp(curve) < 0.02 and curve.mean() == pytest.approx(y.mean(), abs=0.01)
    assert not x[0] <= crossing_logistic4(th_dec, 0.5)[0] <= x[-1]


def test_interval_counts_censored_resamples_and_never_imputes():
    rng = np.random.default_rng(0)
    draws = rng.normal(5.0, 0.2, 1000)
    draws[:200] = np.nan  # no crossing at all
    draws[200:300] = 9.9  # a crossing outside the grid [4, 8]
    iv = interval(draws, 5.0, 4.0, 8.0, None)
    assert iv["censored_share"] == pytest.approx(0.3)
    q = np.quantile(draws[300:], [0.025, 0.975])  # the interval is the crossing resamples' own
    assert iv["ci"] == pytest.approx([5.0 - (5.0 - q[0]), 5.0 + (q[1] - 5.0)])
    assert "30 %" in iv["ci_note"]
    draws[:600] = np.nan
    iv = interval(draws, 5.0, 4.0, 8.0, None)
    assert iv["ci"] is None and iv["censored_share"] == pytest.approx(0.6) and "no interval" in iv["ci_note"]
    # the small-sample expansion: sqrt(S/(S-1)) t_{S-1} / z; 1 for the parametric bootstrap, -> 1 for many seeds
    assert expansion(2) == pytest.approx(math.sqrt(2) * 12.7062 / 1.95996, rel=1e-4)
    assert expansion(None) == 1.0 and expansion(10_000) == pytest.approx(1.0, abs=1e-3)
    iv5 = interval(rng.normal(5.0, 0.2, 4000), 5.0, 4.0, 8.0, 5)
    assert (iv5["ci"][1] - iv5["ci"][0]) / 2 == pytest.approx(1.96 * 0.2 * expansion(5), rel=0.05)


# ------------------------------------------------------------------------------------------ coverage


def _coverage(seeds, reps, single):
    rng = np.random.default_rng(11)
    hits = np.zeros(4, int)
    for r in range(reps):
        g = fit_group(
            _rows(_curves(rng, d=16, kappa=2, n2=300.0, seeds=seeds, single=single)), n_boot=200, seed=r
        )
        c1, c2 = g["curves"][E1], g["curves"][REC]
        assert c1["status"] == c2["status"] == "fit" and c1["censored_share"] < 0.05
        ratio = which_first(g)["ratio_ci"]
        hits += [
            c1["n_star_ci"][0] <= 180 <= c1["n_star_ci"][1],
            c2["n_star_ci"][0] <= 300 <= c2["n_star_ci"][1],
            ratio[0] <= 300 / 180 <= ratio[1],
            c1["b_ci"][0] <= 1.0 <= c1["b_ci"][1],
        ]
    # nominal 95 %: each count inside the central 99 % of Binomial(reps, 0.95)
    lo, hi = binom.ppf(0.005, reps, 0.95), binom.isf(0.005, reps, 0.95)
    assert np.all((hits >= lo) & (hits <= hi)), (hits, lo, hi)
    return hits


def test_seed_bootstrap_coverage_over_repeated_sweeps():
    # 5 seeds, each curve correlated within its seed: n1* = 180, n2* = 300, E1 ~ n^-1
    _coverage(range(5), 50, single=False)


def test_single_seed_parametric_bootstrap_coverage():
    _coverage([0], 50, single=True)


def test_point_estimates_and_exponent_in_n():
    rng = np.random.default_rng(3)
    g = fit_group(_rows(_curves(rng, d=16, kappa=2, n2=300.0, seeds=range(8))), n_boot=300)
    c1, c2 = g["curves"][E1], g["curves"][REC]
    assert abs(math.log(c1["n_star"] / 180)) < 0.15 and abs(math.log(c2["n_star"] / 300)) < 0.1
    assert c1["b"] == pytest.approx(1.0, abs=0.1)
    assert c2["lower"] == pytest.approx(LO, abs=0.04) and c2["upper"] == pytest.approx(HI, abs=0.04)
    assert c1["bootstrap"].startswith("8 seeds")


# ------------------------------------------------------------------------------------------ sweeps on disk


def test_exponents_across_d_and_which_first(tmp_path):
    rng = np.random.default_rng(5)
    ds = (8, 16, 32, 64)
    for d in ds:  # n1* = 10 d (b = 1), n2* = 4 d^1.5 (b = 1.5)
        _write(tmp_path, _curves(rng, d=d, kappa=0, n2=4 * d**1.5, seeds=range(5)), d=d)
    doc = compute_thresholds(tmp_path, n_boot=300)
    assert doc["schema"] == "diffaudit.thresholds/2" and doc["n_cells"] == 4 * 5 * len(GRID)
    exps = {e["metric"]: e for e in doc["exponents"]}
    for key, b in ((E1, 1.0), (REC, 1.5)):
        e = exps[key]
        assert e["status"] == "fit" and e["d"] == list(ds)
        assert e["b_ci"][0] <= b <= e["b_ci"][1] and abs(e["b"] - b) < 0.15
    groups = {g["d"]: g for g in doc["groups"]}
    for d in ds:
        n1 = groups[d]["n1_star"]
        assert n1["metric"] == E1 and abs(math.log(n1["n_star"] / (10 * d))) < 0.2
        assert groups[d]["n2_star"]["metric"] == REC
    # n2*/n1* = 0.4 sqrt(d): 3.2 at d = 64 (threshold 1 first), 1.13 at d = 8 (not resolved)
    assert groups[64]["order"]["first"] == "threshold 1" and groups[64]["order"]["ratio_ci"][0] > 1
    assert groups[8]["order"]["first"] == "indistinguishable"
    assert groups[8]["order"]["ratio_ci"][0] <= 1.13 <= groups[8]["order"]["ratio_ci"][1]
    assert "<script" in render_html(doc)


def test_curves_that_never_cross_are_not_fitted(tmp_path):
    rng = np.random.default_rng(6)
    # a gaussian-control-like model: bulk statistics right (E1 = 0.02 <= 0.1 everywhere), never recovers
    _write(
        tmp_path,
        _curves(rng, d=16, kappa=0, n2=1.0, seeds=range(3), e1_fixed=0.02, rec_fixed=0.0),
        d=16,
        model="gaussian",
        copy=0.0,
    )
    # a model whose E1 stays above eps1 on this grid (n1* = 10^6) while it recovers the factors at n = 120
    _write(
        tmp_path,
        _curves(rng, d=1e5, kappa=0, n2=120.0, seeds=range(3), grid=(16, 64, 256, 1024, 4096)),
        d=32,
        model="slow",
    )
    doc = compute_thresholds(tmp_path, n_boot=200)
    g = {x["model"]: x for x in doc["groups"]}
    gc = g["gaussian"]["curves"]
    assert gc[E1]["status"] == "above" and gc[E1]["n_star"] is None and "theta" not in gc[E1]
    assert gc[REC]["status"] == "below" and "does not cross" in gc[REC]["message"]
    assert gc[E1]["censored_share"] == 1.0 and gc[REC]["censored_share"] == 1.0
    assert g["gaussian"]["order"]["first"] == "threshold 1"
    gs = g["slow"]
    assert gs["curves"][E1]["status"] == "below" and gs["n1_star"]["status"] == "below"
    assert gs["curves"][REC]["status"] == "fit"
    assert gs["order"]["first"] == "threshold 2"


def test_crossing_at_the_grid_edge_is_censored_not_imputed():
    # n2* = the largest n: about half of the refits cross beyond it
    rng = np.random.default_rng(8)
    shares = []
    for r in range(6):
        g = fit_group(_rows(_curves(rng, d=16, kappa=2, n2=GRID[-1], seeds=range(5))), n_boot=200, seed=r)
        c = g["curves"][REC]
        if c["status"] != "fit":
            assert c["status"] in ("below", "no-fit") and c["n_star"] is None
            continue
        shares.append(c["censored_share"])
        if c["censored_share"] > 0.5:
            assert c["n_star_ci"] is None and "no interval" in c["message"]
        else:
            assert (
                c["n_star_ci"][1]
                <= GRID[-1] * math.exp(expansion(5) * (math.log(GRID[-1]) - c["log_n_star"])) + 1e-6
            )
    assert shares and all(0.05 < s < 0.95 for s in shares)


def test_previous_cell_format_is_skipped_and_counted(tmp_path, capsys):
    rng = np.random.default_rng(9)
    _write(tmp_path, _curves(rng, d=16, kappa=2, n2=300.0, seeds=range(2)), d=16, old=True)
    _write(tmp_path, _curves(rng, d=16, kappa=2, n2=300.0, seeds=(5,)), d=16)
    doc = compute_thresholds(tmp_path, n_boot=50)
    n_old = 2 * len(GRID)
    assert doc["cells_without"] == {E1: n_old, REC: n_old, NOT_COPIED: 0}
    # only old cells: the metrics are missing, 1 - copy rate stands in for threshold 2
    only_old = tmp_path / "old"
    _write(only_old, _curves(rng, d=16, kappa=2, n2=300.0, seeds=range(2)), d=16, old=True)
    doc = compute_thresholds(only_old, n_boot=50)
    g = doc["groups"][0]
    assert g["curves"][E1]["status"] == "missing" and g["curves"][REC]["status"] == "missing"
    assert g["n2_star"]["metric"] == NOT_COPIED and g["curves"][NOT_COPIED]["status"] == "fit"
    assert g["order"]["first"] is None
    cli_main(["thresholds", str(only_old), "--n-boot", "20"])
    out = capsys.readouterr().out
    assert f"skipped: {n_old} of {n_old} cells have no {E1}" in out


def test_eps1_is_read_from_the_cells(tmp_path):
    rng = np.random.default_rng(10)
    _write(tmp_path, _curves(rng, d=16, kappa=0, n2=300.0, seeds=range(4)), d=16, eps1=0.05)
    doc = compute_thresholds(tmp_path, n_boot=100)
    c1 = doc["groups"][0]["curves"][E1]
    assert c1["level"] == 0.05 and c1["n_star_ci"][0] <= 320 <= c1["n_star_ci"][1]  # 16 / 0.05
    doc = compute_thresholds(tmp_path, n_boot=100, eps1=0.2)
    assert (
        doc["groups"][0]["curves"][E1]["n_star_ci"][0] <= 80 <= doc["groups"][0]["curves"][E1]["n_star_ci"][1]
    )
    _write(tmp_path, _curves(rng, d=16, kappa=0, n2=300.0, seeds=(9,)), d=16, eps1=0.1)
    with pytest.raises(DiffauditError, match="--eps1"):
        compute_thresholds(tmp_path, n_boot=100)


def test_cli_writes_files_and_exit_codes(tmp_path, capsys):
    rng = np.random.default_rng(12)
    _write(tmp_path, _curves(rng, d=32, kappa=0, n2=2000.0, seeds=range(3)), d=32)
    cli_main(["thresholds", str(tmp_path), "--n-boot", "50"])  # returns normally: exit 0
    out = capsys.readouterr().out
    assert "n1*:" in out and "n2*:" in out and "threshold 1 first" in out
    doc = json.loads((tmp_path / "thresholds.json").read_text())
    assert doc["schema"] == "diffaudit.thresholds/2" and "_boot" not in doc["groups"][0]
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
    rng = np.random.default_rng(13)
    _write(tmp_path, _curves(rng, d=32, kappa=0, n2=2000.0, seeds=(0,)), d=32)
    tmp = tmp_path / "cells" / ".model_32_16_0.x.tmp"
    tmp.mkdir()
    (tmp / "report.json").write_text("{}")
    (tmp_path / "cells" / "incomplete").mkdir()
    doc = compute_thresholds(tmp_path, n_boot=20)
    assert doc["n_cells"] == len(GRID)


def test_malformed_cells_are_skipped_with_a_warning(tmp_path):
    """A list, binary bytes, n_train "abc" or 0, and nesting deeper than the parser: skipped and counted."""
    rng = np.random.default_rng(14)
    _write(tmp_path, _curves(rng, d=32, kappa=0, n2=2000.0, seeds=(0,)), d=32)
    good = sorted((tmp_path / "cells").iterdir())[0]
    rep = json.loads((good / "report.json").read_text())
    bad = {
        "list": "[1, 2, 3]",
        "binary": b"\x89PNG\r\n\x1a\n\xff\xfe\x00",
        "deep": "[" * 100_000 + "]" * 100_000,
        "n_abc": {**rep, "sweep": {**rep["sweep"], "cell": {**rep["sweep"]["cell"], "n_train": "abc"}}},
        "n_zero": {**rep, "sweep": {**rep["sweep"], "cell": {**rep["sweep"]["cell"], "n_train": 0}}},
        "probes_list": {**rep, "probes": [1]},
    }
    for name, content in bad.items():
        (tmp_path / "cells" / name).mkdir()
        f = tmp_path / "cells" / name / "report.json"
        if isinstance(content, bytes):
            f.write_bytes(content)
        else:
            f.write_text(content if isinstance(content, str) else json.dumps(content))
    skipped = []
    with pytest.warns(UserWarning, match=f"skipped {len(bad)} malformed cell"):
        rows = load_cells(tmp_path, skipped=skipped)
    assert len(rows) == len(GRID) and sorted(c for c, _ in skipped) == sorted(bad)
    assert "'abc'" in dict(skipped)["n_abc"] and "0" in dict(skipped)["n_zero"]
    with pytest.warns(UserWarning, match="malformed"):
        doc = compute_thresholds(tmp_path, n_boot=20)
    assert doc["n_cells"] == len(GRID)
    # the CLI, as a user runs it: exit 0, the warning on stderr, the files written
    r = subprocess.run(
        [sys.executable, "-m", "diffaudit", "thresholds", str(tmp_path), "--n-boot", "20"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and f"skipped {len(bad)} malformed cell" in r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "thresholds.json").is_file()
    # only malformed cells: the usual one-line error, exit 2
    only_bad = tmp_path / "only_bad"
    (only_bad / "cells" / "list").mkdir(parents=True)
    (only_bad / "cells" / "list" / "report.json").write_text("[]")
    r = subprocess.run(
        [sys.executable, "-m", "diffaudit", "thresholds", str(only_bad)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "no complete sweep cells" in r.stderr and "Traceback" not in r.stderr
