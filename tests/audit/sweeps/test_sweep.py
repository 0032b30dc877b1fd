"""Sweeps: spec parsing and validation, cell expansion and ids, nested training sets, atomic/resumable
cells (in-process with a stub cell function, and end to end through the CLI with kill -9), Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffaudit.cli import main as cli_main
from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.pipeline.setup import data_seeds
from diffaudit.sweeps.run import clean_stale, is_complete, run_sweep
from diffaudit.sweeps.spec import Budget, derive_seed, expand, load_preset, load_spec, parse_spec

TINY = """
name = "tiny"
n = [32, 64, 128, 256]
seeds = [0]
model = "mlp:width=32,depth=2"
controls = ["gaussian"]

[[dataset]]
name = "hidden-manifold"
params = { d = 8, D = 2 }

[budget]
rule = "steps"
steps = 40

[train]
batch = 64
warmup_steps = 5

[audit]
n_samples = 200
n_holdout = 200
sampler_steps = 8
options = { n_boot = 2, kid_subsets = 5, mia_n = 50, mia_draws = 1 }
"""


def _spec_dict(**over):
    d = {
        "n": [32, 64, 128],
        "seeds": [0, 1],
        "model": "mlp:width=32,depth=2",
        "dataset": [{"name": "hidden-manifold", "params": {"d": [8, 16], "D": 2}}],
        "budget": {"rule": "steps", "steps": 10},
    }
    d.update(over)
    return d


def _write(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------ spec and cells


def test_expansion_counts_and_stable_ids():
    spec = parse_spec(_spec_dict(controls=["gaussian"]))
    cells = expand(spec)
    # 2 values of d x 2 seeds x (model + gaussian) x 3 n
    assert len(cells) == 2 * 2 * 2 * 3
    ids = [c.cell_id for c in cells]
    assert len(set(ids)) == len(ids)
    assert ids == [c.cell_id for c in expand(parse_spec(_spec_dict(controls=["gaussian"])))]
    assert ids[0].startswith("hidden-manifold_D2_d8_n000032_s0_model_")
    # a change to what a cell computes changes its id; the unchanged cells keep theirs
    other = expand(parse_spec(_spec_dict(controls=["gaussian"], budget={"rule": "steps", "steps": 11})))
    changed = {c.cell_id for c in other} - set(ids)
    assert len(changed) == 2 * 2 * 3  # every trained cell; the controls do not train
    assert all("_model_" in c for c in changed)


def test_log_spaced_grid_and_budget_rules():
    spec = parse_spec(_spec_dict(n={"min": 64, "max": 8192, "num": 8}))
    assert spec.n_grid == (64, 128, 256, 512, 1024, 2048, 4096, 8192)
    b = Budget(rule="epochs", epochs=10)
    assert b.steps_for(1000, 100) == 100
    g = Budget(rule="grow", epochs=10, min_steps=50, max_steps=300)
    assert [g.steps_for(n, 100) for n in (10, 1000, 100000)] == [50, 100, 300]
    spec = parse_spec(
        _spec_dict(
            budget={"rule": "grow", "epochs": 10, "min_steps": 5, "max_steps": 40}, train={"batch": 32}
        )
    )
    steps = {c.n_train: c.steps for c in expand(spec)}
    assert steps == {32: 10, 64: 20, 128: 40}
    assert all(c.budget["steps"] == c.steps for c in expand(spec))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"dataset": [{"name": "nope"}]}, "unknown dataset 'nope'"),
        ({"dataset": [{"name": "hidden-manifold", "params": {"zz": 1}}]}, "no parameter 'zz'"),
        ({"n": [1, 2]}, "'n' must be"),
        ({"n": {"min": 4, "max": 5, "num": 8}}, "repeated sizes"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"budget": {"rule": "forever"}}, "rule = 'forever'"),
        ({"budget": {"rule": "epochs"}}, "needs epochs > 0"),
        ({"model": "transformer:x=1"}, "unknown model"),
        ({"controls": ["oracle"]}, "controls"),
        ({"bogus": 1}, "unknown key"),
        ({"train": {"nope": 1}}, "unknown key"),
    ],
)
def test_spec_validation(bad, match):
    with pytest.raises(DiffauditError, match=match):
        parse_spec(_spec_dict(**bad))


def test_cli_bad_spec_exits_2(tmp_path, capsys):
    p = _write(tmp_path, "n = [32, 64\n")
    with pytest.raises(SystemExit) as e:
        cli_main(["sweep", str(p), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "not valid TOML" in capsys.readouterr().err
    p = _write(tmp_path, 'n = [32, 64]\n[[dataset]]\nname = "mnist-ish"\n', "b.toml")
    with pytest.raises(SystemExit) as e:
        cli_main(["sweep", str(p), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "unknown dataset 'mnist-ish'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["sweep", "--out", str(tmp_path / "o")])
    assert e.value.code == 2


def test_presets_parse():
    quick = load_preset("quick")
    cells = expand(quick)
    assert (
        quick.n_grid[0] == 16 and quick.n_grid[-1] == 8192 and len(quick.n_grid) == 10 and quick.seeds == (0,)
    )
    assert {g.name for g in quick.datasets} == {"mcm", "hidden-manifold"}
    controls = load_preset("controls")
    assert not controls.train_models and controls.controls == ("gaussian",) and len(controls.seeds) == 3
    assert len(expand(controls)) == 4 * 11 * 3
    assert {c.model_label for c in cells} == {"model"}
    paper = load_preset("paper")
    assert {g.name for g in paper.datasets} == {"mcm", "hidden-manifold", "molrg", "sprites"}
    assert paper.n_grid[0] == 16 and paper.n_grid[-1] == 65536 and len(paper.seeds) == 3
    assert max(c.d or 0 for c in expand(paper)) == 128


def test_nested_training_sets_and_disjoint_streams():
    """Cells follow the audit's data-seed rule (train 3 seed + 1, holdout 3 seed + 2): the smaller n is a prefix
    of the larger under one seed; the holdout and the reproducibility partner come from other streams."""
    cells = [c for c in expand(parse_spec(_spec_dict())) if c.d == 8 and c.seed == 1]
    ds = get_dataset(cells[0].dataset, **cells[0].params)
    assert all(c.data_seeds == data_seeds(c.seed) == (3 * c.seed + 1, 3 * c.seed + 2) for c in cells)
    sets = [ds.sample(c.n_train, c.data_seeds[0])[0] for c in cells]
    for small, big in zip(sets, sets[1:], strict=False):
        np.testing.assert_array_equal(small, big[: len(small)])
    hold = ds.sample(64, cells[0].data_seeds[1])[0]
    half_b = ds.sample(128, derive_seed(1, "half-b"))[0]
    train = sets[-1]
    for other in (hold, half_b):
        d2 = ((train[:, None, :] - other[None, :, :]) ** 2).sum(-1)
        assert d2.min() > 1e-6  # no shared points
    assert len({*cells[0].data_seeds, derive_seed(1, "half-b"), 1}) == 4


# ------------------------------------------------------------------------- machinery with a stub cell


def _stub_cell(record, out_dir, device):
    """A deterministic stand-in for train+audit: its 'result' is a function of the record only."""
    if os.environ.get("STUB_FAIL") == record["cell_id"]:
        raise RuntimeError("boom")
    rng = np.random.default_rng([record["seed"], record["n_train"]])
    (out_dir / "report.json").write_text(json.dumps({"x": float(rng.random()), "n": record["n_train"]}))
    return {}


def test_resume_skips_completed_and_cleans_stale(tmp_path, monkeypatch):
    spec = parse_spec(_spec_dict())
    out = tmp_path / "sw"
    cells = expand(spec)
    monkeypatch.setenv("STUB_FAIL", cells[3].cell_id)
    r = run_sweep(spec, out, workers=1, cell_fn=_stub_cell, progress=False)
    assert len(r.done) == len(cells) - 1 and len(r.failed) == 1
    assert not (out / "cells" / cells[3].cell_id).exists()  # a failed cell leaves nothing behind
    sj = json.loads((out / "sweep.json").read_text())
    assert [c["cell_id"] for c in sj["cells"]] == [c.cell_id for c in cells]
    # without --resume, an existing sweep folder is refused
    with pytest.raises(DiffauditError, match="--resume"):
        run_sweep(spec, out, workers=1, cell_fn=_stub_cell, progress=False)
    # a stale temp folder (as a kill -9 would leave) and a final-name folder without report.json
    stale = out / "cells" / f".{cells[5].cell_id}.abc123.tmp"
    stale.mkdir()
    (stale / "report.json").write_text("{}")
    stat_before = {
        c.cell_id: (out / "cells" / c.cell_id / "report.json").stat()
        for c in cells
        if c.cell_id != cells[3].cell_id
    }
    monkeypatch.delenv("STUB_FAIL")
    r2 = run_sweep(spec, out, workers=1, resume=True, cell_fn=_stub_cell, progress=False)
    assert r2.done == [cells[3].cell_id] and r2.already_complete == len(cells) - 1
    assert not stale.exists()
    for cid, st in stat_before.items():
        st2 = (out / "cells" / cid / "report.json").stat()
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert all(is_complete(out, c.cell_id) for c in cells)
    # a different spec in the same folder is refused even with --resume
    with pytest.raises(DiffauditError, match="different sweep"):
        run_sweep(
            parse_spec(_spec_dict(seeds=[5])), out, workers=1, resume=True, cell_fn=_stub_cell, progress=False
        )


def test_clean_stale_only_touches_temp_names(tmp_path):
    cells = tmp_path / "cells"
    (cells / "keep").mkdir(parents=True)
    (cells / ".x.1.tmp").mkdir()
    (cells / ".x.2.old").mkdir()
    assert clean_stale(tmp_path) == 2
    assert [p.name for p in cells.iterdir()] == ["keep"]


# ---------------------------------------------------------------------------- end to end (real cells)


def _reports(out: Path) -> dict:
    """cell id -> report.json without wall-clock fields."""

    def strip(o):
        if isinstance(o, dict):
            return {
                k: strip(v)
                for k, v in o.items()
                if k not in ("timings", "created", "elapsed_s", "out_dir", "path")
            }
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    return {
        p.name: strip(json.loads((p / "report.json").read_text()))
        for p in sorted((out / "cells").iterdir())
        if (p / "report.json").is_file()
    }


def _sweep_proc(spec_path, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diffaudit",
            "sweep",
            str(spec_path),
            "--out",
            str(out),
            "--workers",
            "1",
            "--threads",
            "1",
            "--quiet",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_tiny_sweep_end_to_end_and_kill9_resume(tmp_path):
    spec_path = _write(tmp_path, TINY)
    spec = load_spec(spec_path)
    ids = [c.cell_id for c in expand(spec)]
    full = tmp_path / "full"
    p = _sweep_proc(spec_path, full)
    so, se = p.communicate(timeout=300)
    assert p.returncode == 0, se
    ref = _reports(full)
    assert sorted(ref) == sorted(ids)
    one = ref[ids[0]]
    assert one["schema"] == "diffaudit.report/1"
    for key in ("fd", "fd_train_holdout", "kid"):
        assert key in one["probes"]["convergence"]
    assert one["sweep"]["train"]["steps"] == 40 and one["probes"]["convergence"]["moment_error"] is not None
    assert (full / "cells" / ids[0] / "checkpoint" / "model.safetensors").is_file()
    assert (full / "cells" / ids[0] / "metrics.parquet").is_file()

    # kill -9 once some cells are complete, then finish with --resume
    part = tmp_path / "part"
    p = _sweep_proc(spec_path, part)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        done = [i for i in ids if (part / "cells" / i / "report.json").is_file()]
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the sweep finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = {i: (part / "cells" / i / "report.json").stat() for i in ids if is_complete(part, i)}
    assert 2 <= len(done) < len(ids)
    q = _sweep_proc(spec_path, part, "--resume")
    so, se = q.communicate(timeout=300)
    assert q.returncode == 0, se
    assert f"{len(done)} already complete" in so
    for i, st in done.items():
        st2 = (part / "cells" / i / "report.json").stat()
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert not [x for x in (part / "cells").iterdir() if x.name.startswith(".")]
    assert _reports(part) == ref  # same numbers as the uninterrupted run

    # thresholds on the real sweep: runs, writes both files, exit 0 even when curves do not cross
    from diffaudit.sweeps.thresholds import compute_thresholds

    doc = compute_thresholds(full, n_boot=50)
    assert {g["model"] for g in doc["groups"]} == {"model", "gaussian"}
    for g in doc["groups"]:
        assert set(g["curves"]) == {"convergence.bulk_error", "factors.recovery_score", "not_copied"}
        assert all(
            c["status"] in ("fit", "above", "below", "no-fit", "insufficient", "missing")
            for c in g["curves"].values()
        )


@pytest.mark.slow
def test_ray_executor_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    spec = parse_spec(
        _spec_dict(seeds=[0], n=[32, 64], dataset=[{"name": "hidden-manifold", "params": {"d": 8, "D": 2}}])
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stub lives in this test module
    try:
        r = run_sweep(spec, tmp_path / "ray", executor="ray", workers=2, cell_fn=_ray_stub, progress=False)
    finally:
        ray.shutdown()
    assert len(r.done) == 2 and not r.failed
    ref = tmp_path / "local"
    run_sweep(spec, ref, workers=1, cell_fn=_ray_stub, progress=False)
    assert _reports(tmp_path / "ray") == _reports(ref)


def _ray_stub(record, out_dir, device):
    """Trains for real (tiny), so the Ray path runs the whole harness in a Ray worker process."""
    from diffaudit.datasets.base import get_dataset
    from diffaudit.harness.train import TrainConfig, train

    ds = get_dataset(record["dataset"], **record["params"])
    x = ds.sample(record["n_train"], record["seed"])[0]
    res = train(
        x,
        record["model"],
        TrainConfig(steps=record["steps"], batch=16, seed=record["seed"], device="cpu"),
        progress=False,
    )
    (out_dir / "report.json").write_text(json.dumps({"loss": res.stats[-1]["loss"], "pid_free": True}))
    return {}


@pytest.mark.slow
def test_demo_cell_and_reproducibility_pair(tmp_path):
    """``train_and_audit_cell`` (for the demo) and a sweep with the disjoint-split reproducibility probe."""
    from diffaudit.sweeps.run import train_and_audit_cell

    opts = {"n_boot": 2, "kid_subsets": 5, "mia_n": 30, "mia_draws": 1}
    rep = train_and_audit_cell(
        "hidden-manifold:d=8,D=2",
        32,
        "mlp:width=32,depth=2",
        20,
        0,
        tmp_path / "cell",
        n_samples=100,
        n_holdout=100,
        sampler_steps=8,
        train={"batch": 16},
        audit_options=opts,
    )
    assert rep["schema"] == "diffaudit.report/1" and rep["sweep"]["train"]["steps"] == 20
    assert (tmp_path / "cell" / "report.json").is_file() and (
        tmp_path / "cell" / "checkpoint" / "config.json"
    ).is_file()
    with pytest.raises(DiffauditError, match="already exists"):
        train_and_audit_cell("hidden-manifold:d=8,D=2", 32, "mlp:width=32,depth=2", 20, 0, tmp_path / "cell")
    spec = parse_spec(
        {
            "n": [32],
            "seeds": [0],
            "model": "mlp:width=32,depth=2",
            "reproducibility": True,
            "dataset": [{"name": "hidden-manifold", "params": {"d": 8, "D": 2}}],
            "budget": {"rule": "steps", "steps": 20},
            "train": {"batch": 16},
            "audit": {"n_samples": 100, "n_holdout": 100, "sampler_steps": 8, "options": opts},
        }
    )
    r = run_sweep(spec, tmp_path / "rep", workers=1, threads=1, progress=False)
    assert len(r.done) == 1 and not r.failed
    cell = tmp_path / "rep" / "cells" / r.done[0]
    rp = json.loads((cell / "report.json").read_text())["sweep"]["reproducibility"]
    assert 0.0 <= rp["rp"]["value"] <= 1.0 and rp["n"] == 100
    assert (cell / "checkpoint_b" / "model.safetensors").is_file()
