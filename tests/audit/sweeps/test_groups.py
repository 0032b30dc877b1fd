"""Grouped training in sweeps (issue 13): a group's models equal the cells trained one by one, the grouping
rules and sizes, the GPU assignment as pure functions, the dry run (writes nothing), and a grouped sweep
killed with SIGKILL and resumed (regrouped) with the same cells as a sweep trained one by one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace

import numpy as np
import pytest
from safetensors.torch import load_file

from diffaudit.cli import main as cli_main
from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.harness import vmap
from diffaudit.harness.train import TrainConfig, train
from diffaudit.harness.vmap import unsupported_options
from diffaudit.pipeline.setup import synthetic_data
from diffaudit.sweeps.executors import default_workers, gpu_slots, schedule
from diffaudit.sweeps.groups import (
    DEFAULT_GROUP_MIB,
    GROUP_CPU_BELOW_FLOPS,
    group_key,
    group_train_seconds,
    plan_units,
    should_group,
    step_flops,
    train_group,
)
from diffaudit.sweeps.run import is_complete, run_sweep
from diffaudit.sweeps.spec import derive_seed, expand, load_preset, load_spec, parse_spec
from diffaudit.threads import available_cpus

TINY = "mlp:width=32,depth=2,emb_dim=16"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(**over) -> dict:
    d = {
        "n": [32, 64, 128],
        "seeds": [0, 1],
        "model": TINY,
        "dataset": [{"name": "hidden-manifold", "params": {"d": 8, "D": [2, 3]}}],
        # different budgets per n: 10, 20, 40 steps of batch 32
        "budget": {"rule": "grow", "epochs": 10, "min_steps": 1, "max_steps": 40},
        "train": {"batch": 32, "warmup_steps": 5, "log_every": 7, "weight_decay": 0.01},
    }
    d.update(over)
    return d


def _records(**over) -> list[dict]:
    return [c.record() for c in expand(parse_spec(_spec(**over)))]


# ------------------------------------------------------------------------------ the numbers of a group


def test_group_equals_cells_trained_one_by_one():
    """One group: two dataset parameter values of one shape, two seeds, two n with two step budgets (10, 40), and
    reproducibility pairs (two models per cell). Every model against ``train`` alone on its cell's data."""
    recs = [r for r in _records(reproducibility=True) if r["n_train"] in (32, 128)]
    assert len({group_key(r) for r in recs}) == 1 and len({r["steps"] for r in recs}) == 2
    got = train_group(recs, "cpu")
    for r in recs:
        g = got[r["cell_id"]]
        ds = get_dataset(r["dataset"], **r["params"])
        data = synthetic_data(ds, r["n_train"], r["n_holdout"], r["seed"])
        np.testing.assert_array_equal(g.data.train, data.train)
        sets = {
            "a": (data.train, r["seed"]),
            "b": (
                ds.sample(r["n_train"], derive_seed(r["seed"], "half-b"))[0],
                derive_seed(r["seed"], "half-b"),
            ),
        }
        for role, (x, seed) in sets.items():
            cfg = TrainConfig(steps=r["steps"], seed=seed, device="cpu", **r["train"])
            one = train(x, r["model"], cfg, progress=False, dataset_spec=r["dataset_spec"])
            tm = g.models[role]
            ref, mine = one.ema.net.state_dict(), tm.precond.net.state_dict()
            # same tolerance as tests/audit/harness (vmap's batched kernels round differently)
            diff = max(float((ref[k] - mine[k]).abs().max()) for k in ref)
            assert diff < 1e-5, (r["cell_id"], role, diff)
            assert [s["step"] for s in tm.stats] == [s["step"] for s in one.stats]
            np.testing.assert_allclose(
                [s["loss"] for s in tm.stats], [s["loss"] for s in one.stats], rtol=1e-5
            )
            assert tm.config == one.config  # config.json as the cell trained alone writes it (steps, seed, n)
        assert g.train_seconds > 0


def test_a_diverging_model_leaves_its_group_with_the_error_it_gets_alone():
    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    bad = (x * 3e19).astype(np.float32)  # finite data whose loss overflows
    cfg = TrainConfig(steps=12, batch=16, log_every=5, device="cpu")
    with pytest.raises(DiffauditError) as alone:
        train(bad, TINY, replace(cfg, seed=1), progress=False)
    res = vmap.train_many([x, bad, x], TINY, cfg, [0, 1, 2], steps=[12, 12, 7], on_diverge="drop")
    assert res.errors == [None, str(alone.value), None] and res.ema_states[1] is None
    assert [s["step"] for s in res.model_stats[2]] == [5, 7] and res.ema_states[2] is not None
    ref = train(x, TINY, replace(cfg, seed=0), progress=False).ema.net.state_dict()
    assert max(float((ref[k] - res.ema_states[0][k]).abs().max()) for k in ref) < 1e-5
    with pytest.raises(DiffauditError, match="diverged"):
        vmap.train_many([x, bad], TINY, cfg, [0, 1])


# ----------------------------------------------------------------------------------- grouping rules


def test_grouping_rules_sizes_and_modes(monkeypatch):
    recs = _records(
        dataset=[
            {"name": "hidden-manifold", "params": {"d": 8, "D": [2, 3]}},
            {"name": "mcm", "params": {"d": 8}},  # the same shape (8,): same group
            {"name": "hidden-manifold", "params": {"d": 16, "D": 2}},  # another shape
        ],
        controls=["gaussian"],
    )
    trained = [r for r in recs if not r["model"].startswith("control:")]
    units = plan_units(recs, mode="on", device="cpu")
    groups = [u for u in units if u[0].get("group")]
    alone = [u for u in units if not u[0].get("group")]
    assert sorted(len(u) for u in groups) == [6, 18]  # d=8: 3 datasets x 2 seeds x 3 n; d=16: 2 seeds x 3 n
    assert all(len({group_key(r) for r in u}) == 1 for u in groups)
    assert {r["cell_id"] for u in groups for r in u} == {r["cell_id"] for r in trained}
    assert all(len(u) == 1 and u[0]["model"] == "control:gaussian" for u in alone)
    assert units[: len(groups)] == groups  # groups first (largest first), then the cells alone in sweep order
    assert [u[0]["cell_id"] for u in alone] == [
        r["cell_id"] for r in recs if r["model"].startswith("control:")
    ]
    # off: one unit per cell in sweep order (as before grouping); auto groups on CUDA, and on CPU only the
    # networks below the measured break-even: this tiny MLP, not the quick preset's 3 x 256 at batch 256
    assert plan_units(recs, mode="off", device="cuda") == [[r] for r in recs]

    def plan(units):  # the cells of each unit and its group id (the group's memory budget is per device)
        return [([r["cell_id"] for r in u], (u[0].get("group") or {}).get("id")) for u in units]

    assert plan(plan_units(recs, mode="auto", device="cuda")) == plan(units)
    assert plan_units(recs, mode="auto", device="cpu") == units
    assert {u[0]["group"]["budget_mib"] for u in groups} == {DEFAULT_GROUP_MIB["cpu"]}
    quick = [c.record() for c in expand(load_preset("quick"))]
    assert step_flops(quick[0]) > GROUP_CPU_BELOW_FLOPS > step_flops(recs[0])
    assert plan_units(quick, mode="auto", device="cpu") == [[r] for r in quick]
    assert len(plan_units(quick, mode="auto", device="cuda")) == 2  # one group per sample shape
    assert should_group("auto", "cuda") and should_group("on", "cpu") and not should_group("off", "cuda")
    assert should_group("auto", "cpu", 1e6) and not should_group("auto", "cpu", 1e9)
    # size: at most max_models models, and within the memory budget (a cell too big alone trains alone)
    small = plan_units(trained, mode="on", device="cpu", max_models=4)
    assert max(len(u) for u in small) == 4 and sum(len(u) for u in small) == len(trained)
    # similar budgets packed together: each bucket's cells in order of falling budget
    d8 = [r["steps"] for u in small for r in u if r["d"] == 8]
    assert (
        len(d8) == 18
        and [max(r["steps"] for r in u) - min(r["steps"] for r in u) for u in small].count(0) >= 3
    )
    # at least one group per worker (a group's cells are audited by the worker that trained them)
    spread = plan_units(trained, mode="on", device="cpu", workers=4)
    assert sorted(len(u) for u in spread) == [1, 1, 2, 2, 4, 4, 5, 5]  # 18 cells in 4 groups, 6 cells in 4
    tiny = plan_units(trained, mode="on", device="cpu", budget_mib=0.5)
    assert 1 < max(len(u) for u in tiny) < 18
    assert all(not u[0].get("group") for u in plan_units(trained, mode="on", device="cpu", budget_mib=1e-3))
    # reproducibility cells bring two models each
    rep = plan_units(_records(reproducibility=True), mode="on", device="cpu", max_models=4)
    assert max(len(u) for u in rep) == 2 and rep[0][0]["group"]["models"] == 4
    # training options the vmap trainer does not implement: those cells train alone (generic over fields)
    monkeypatch.setattr(vmap, "SUPPORTED_OPTIONS", vmap.SUPPORTED_OPTIONS - {"weight_decay"})
    assert all(len(u) == 1 and not u[0].get("group") for u in plan_units(trained, mode="on", device="cpu"))
    assert group_key(trained[0]) is None
    monkeypatch.undo()
    for f in fields(TrainConfig):
        if f.name in vmap.SUPPORTED_OPTIONS:
            continue
        default = getattr(TrainConfig(), f.name)
        other = (
            not default
            if isinstance(default, bool)
            else (default + 2 if isinstance(default, int | float) else "x")
        )
        assert unsupported_options(TrainConfig(**{f.name: other})) == [f.name]
    assert unsupported_options(TrainConfig(lr=0.5, seed=3, steps=9)) == []


def test_spec_group_option_and_errors(tmp_path):
    spec = parse_spec(_spec(sweep={"group": "on", "group_mib": 512}))
    assert (spec.group, spec.group_mib) == ("on", 512.0)
    assert [c.cell_id for c in expand(spec)] == [c.cell_id for c in expand(parse_spec(_spec()))]
    for bad, match in (
        ({"group": "yes"}, "group = 'yes'"),
        ({"group_mib": 0}, "group_mib"),
        ({"x": 1}, "unknown"),
    ):
        with pytest.raises(DiffauditError, match=match):
            parse_spec(_spec(sweep=bad))
    with pytest.raises(DiffauditError, match="default cell function"):
        run_sweep(spec, tmp_path / "o", workers=1, cell_fn=lambda r, o, d: {}, progress=False)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------- devices and schedule


def test_gpu_assignment_and_schedule_with_fake_device_counts():
    assert default_workers("cuda", n_gpus=4) == 4 and default_workers("auto", n_gpus=2) == 2
    assert default_workers("cuda", n_gpus=0) == available_cpus() == default_workers("cpu", n_gpus=8)
    assert (
        gpu_slots(4, 2) == [0, 1, 0, 1] and gpu_slots(3, 8) == [0, 1, 2] and gpu_slots(2, 0) == [None, None]
    )
    # units queued to the worker (GPU) that is free first
    where, end = schedule([10, 4, 3, 3, 1], 2)
    assert where == [0, 1, 1, 1, 0] and end == 11  # at t = 10 both are free: the first takes it
    assert schedule([5, 5, 5], 3) == ([0, 1, 2], 5) and schedule([], 2) == ([], 0.0)
    # a group's training time: models leave when their budget is spent
    assert group_train_seconds([40, 10, 20], lambda k: float(k)) == 10 * 3 + 10 * 2 + 20 * 1


# ------------------------------------------------------------------------------------------ dry run

TOML = """
name = "g"
n = [32, 64, 128, 256]
seeds = [0]
model = "mlp:width=32,depth=2,emb_dim=16"
controls = ["gaussian"]

[[dataset]]
name = "hidden-manifold"
params = { d = 8, D = 2 }

[budget]
rule = "grow"
epochs = 8
min_steps = 10
max_steps = 40

[train]
batch = 32
warmup_steps = 5

[audit]
n_samples = 100
n_holdout = 100
sampler_steps = 8
options = { n_boot = 2, kid_subsets = 5, mia_n = 50, mia_draws = 1, extraction_budget = 100 }
"""


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    p = tmp_path / "g.toml"
    p.write_text(TOML)
    out = tmp_path / "never"
    cli_main(["sweep", str(p), "--out", str(out), "--dry-run", "--group", "on", "--workers", "1"])  # exit 0
    text = capsys.readouterr().out
    assert not out.exists()
    ids = [c.cell_id for c in expand(load_spec(p))]
    assert all(i in text for i in ids)
    assert "1 group(s), 4 cell(s) alone" in text  # 4 trained cells in one group; the 4 controls alone
    assert "4 cells, 4 models" in text and "steps 10..40" in text
    assert f"training steps: {10 + 16 + 32 + 40:,}" in text
    assert "calibration:" in text and "estimate: training" in text
    # without grouping (auto on CPU), no groups
    cli_main(["sweep", str(p), "--dry-run", "--workers", "1", "--group", "off"])
    assert "--group off: one by one (0 group(s), 8 cell(s) alone)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli_main(["sweep", str(p)])  # --out is required without --dry-run
    assert e.value.code == 2 and "--out is required" in capsys.readouterr().err


# ------------------------------------------------------------------------- kill -9 and resume, grouped


def _sweep_proc(spec_path, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "diffaudit", "sweep", str(spec_path), "--out", str(out), "--workers", "1"]
        + ["--threads", "1", "--quiet", "--group", "on", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _numbers_close(a, b, where=""):
    """Same layout (keys, lengths, types); floats to the rounding a group's training leaves on the audit."""
    if isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            # wall-clock fields, sample hashes (rounding), the thread settings of the process and how the
            # samples were drawn (alone, or with the group's other models: test_group_sampling.py)
            if k not in (
                "timings",
                "created",
                "elapsed_s",
                "out_dir",
                "path",
                "hashes",
                "threads",
                "sampling",
            ):
                _numbers_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _numbers_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert np.isclose(a, b, rtol=1e-3, atol=1e-6, equal_nan=True), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.mark.slow
def test_grouped_sweep_kill9_resume_regroups_and_matches_one_by_one(tmp_path):
    spec_path = tmp_path / "g.toml"
    spec_path.write_text(TOML)
    spec = load_spec(spec_path)
    ids = [c.cell_id for c in expand(spec)]
    trained = [c.cell_id for c in expand(spec) if not c.is_control]
    part = tmp_path / "part"
    p = _sweep_proc(spec_path, part)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if any(is_complete(part, i) for i in ids):
            break
        time.sleep(0.02)
    assert p.poll() is None, "the sweep finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = {i: (part / "cells" / i / "report.json").stat() for i in ids if is_complete(part, i)}
    assert 1 <= len(done) < len(ids)
    first = {json.loads((part / "cells" / i / "cell.json").read_text())["group"]["id"] for i in done}
    assert len(first) == 1  # the group in flight was training all four trained cells

    q = _sweep_proc(spec_path, part, "--resume")
    so, se = q.communicate(timeout=120)
    assert q.returncode == 0, se
    left = [i for i in trained if i not in done]
    assert (
        f"{len(done)} already complete" in so
        and f"({len(left)} cell(s) trained in 1 vectorised group(s))" in so
    )
    for i, st in done.items():  # finished cells are never recomputed
        st2 = (part / "cells" / i / "report.json").stat()
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert all(is_complete(part, i) for i in ids)
    assert not [x for x in (part / "cells").iterdir() if x.name.startswith(".")]
    for i in left:  # regrouped: the cells that were left, in a new group
        g = json.loads((part / "cells" / i / "cell.json").read_text())["group"]
        assert sorted(g["cells"]) == sorted(left) and g["id"] not in first
    for i in ids:
        if i not in trained:
            assert json.loads((part / "cells" / i / "cell.json").read_text())["group"] is None

    # the same sweep trained one by one, in this process: same files, same numbers (to rounding)
    ref = tmp_path / "ref"
    r = run_sweep(spec, ref, workers=1, threads=1, group="off", progress=False)
    assert not r.failed and not r.groups
    for i in ids:
        a, b = part / "cells" / i, ref / "cells" / i
        assert sorted(x.name for x in a.rglob("*")) == sorted(x.name for x in b.rglob("*"))
        _numbers_close(
            json.loads((a / "report.json").read_text()), json.loads((b / "report.json").read_text()), i
        )
        if i in trained:
            wa, wb = (
                load_file(str(a / "checkpoint" / "model.safetensors")),
                load_file(str(b / "checkpoint" / "model.safetensors")),
            )
            assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
            for f in ("config.json",):
                assert json.loads((a / "checkpoint" / f).read_text()) == json.loads(
                    (b / "checkpoint" / f).read_text()
                )
            sa = [json.loads(x) for x in (a / "checkpoint" / "stats.jsonl").read_text().splitlines()]
            sb = [json.loads(x) for x in (b / "checkpoint" / "stats.jsonl").read_text().splitlines()]
            assert [x["step"] for x in sa] == [x["step"] for x in sb] and set(sa[0]) == set(sb[0])
        ca = json.loads((a / "cell.json").read_text())
        cb = json.loads((b / "cell.json").read_text())
        assert {k: v for k, v in ca.items() if k != "group"} == {k: v for k, v in cb.items() if k != "group"}
