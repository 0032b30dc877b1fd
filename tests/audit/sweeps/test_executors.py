"""Sweep executors: the registry, a toy executor registered from outside, and the local pool, each checked
against the in-process run of the same sweep with the stub cell function of test_sweep.py."""

from __future__ import annotations

import json

import pytest
from test_sweep import _spec_dict, _stub_cell  # the sibling test module (pytest puts its folder on sys.path)

from diffaudit.cli import main as cli_main
from diffaudit.errors import DiffauditError
from diffaudit.sweeps import executors
from diffaudit.sweeps.executors import (
    EXECUTORS,
    Executor,
    InProcessExecutor,
    PoolExecutor,
    RayExecutor,
    executor_description,
    make_executor,
    register_executor,
)
from diffaudit.sweeps.run import is_complete, run_sweep
from diffaudit.sweeps.spec import expand, parse_spec


class Killed(Exception):
    pass


class ReversedExecutor(Executor):
    """A toy executor: units run in this process in reverse order, and it stops after ``stop_after`` units
    (as a killed run would)."""

    name = "reversed"
    description = "units in reverse order (test)"

    def __init__(self, workers: int, stop_after: int | None = None):
        self.workers = workers
        self.stop_after = stop_after
        self.seen: list[str] = []

    def run(self, units, out, *, device, threads, cell_fn, unit_fn, on_done) -> None:
        for k, u in enumerate(reversed(units)):
            if self.stop_after is not None and k == self.stop_after:
                raise Killed
            self.seen.extend(r["cell_id"] for r in u)
            on_done(unit_fn(u, str(out), device, threads, cell_fn))


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so a toy executor does not outlive its test."""
    monkeypatch.setattr(executors, "EXECUTORS", dict(EXECUTORS))
    return executors


def _cells(out) -> dict:
    """cell id -> (report.json text, cell.json), for the complete cells."""
    res = {}
    for p in sorted((out / "cells").iterdir()):
        if (p / "report.json").is_file():
            res[p.name] = ((p / "report.json").read_text(), json.loads((p / "cell.json").read_text()))
    return res


def test_registry_has_local_and_ray_with_descriptions():
    assert {"local", "ray"} <= set(EXECUTORS)
    assert all(executor_description(k) for k in EXECUTORS)
    # local: in this process for one worker, a pool otherwise (the pre-registry behaviour)
    assert isinstance(make_executor("local", workers=1), InProcessExecutor)
    pool = make_executor("local", workers=3)
    assert isinstance(pool, PoolExecutor) and pool.workers == 3
    ray = make_executor("ray", workers=2, ray_address="auto")
    assert isinstance(ray, RayExecutor) and (ray.workers, ray.address) == (2, "auto")


def test_toy_executor_gives_the_local_cells(tmp_path, registry, monkeypatch):
    made: list[ReversedExecutor] = []

    def factory(workers, ray_address=None):
        made.append(ReversedExecutor(workers))
        return made[-1]

    register_executor("reversed", factory)
    spec = parse_spec(_spec_dict())
    ids = [c.cell_id for c in expand(spec)]
    monkeypatch.setenv("STUB_FAIL", ids[2])
    r = run_sweep(
        spec, tmp_path / "toy", executor="reversed", workers=1, threads=1, cell_fn=_stub_cell, progress=False
    )
    assert made[0].seen == ids[::-1]  # it really ran, in its own order
    # on_done accounting: every unit reported once, the failing one as failed
    assert r.done == [i for i in ids[::-1] if i != ids[2]]
    assert [f["cell_id"] for f in r.failed] == [ids[2]] and "boom" in r.failed[0]["error"]
    monkeypatch.delenv("STUB_FAIL")
    r = run_sweep(
        spec,
        tmp_path / "toy",
        executor="reversed",
        workers=1,
        threads=1,
        cell_fn=_stub_cell,
        resume=True,
        progress=False,
    )
    assert r.done == [ids[2]] and r.already_complete == len(ids) - 1
    ref = run_sweep(spec, tmp_path / "local", workers=1, threads=1, cell_fn=_stub_cell, progress=False)
    assert sorted(ref.done) == sorted(ids)
    toy, local = _cells(tmp_path / "toy"), _cells(tmp_path / "local")
    assert sorted(toy) == sorted(ids) and toy == local


def test_interrupted_toy_executor_resumes_under_local(tmp_path, registry):
    register_executor("reversed", lambda workers, ray_address=None: ReversedExecutor(workers, stop_after=3))
    spec = parse_spec(_spec_dict())
    ids = [c.cell_id for c in expand(spec)]
    with pytest.raises(Killed):
        run_sweep(
            spec,
            tmp_path / "sw",
            executor="reversed",
            workers=1,
            threads=1,
            cell_fn=_stub_cell,
            progress=False,
        )
    assert [i for i in ids if is_complete(tmp_path / "sw", i)] == ids[-3:]
    r = run_sweep(
        spec, tmp_path / "sw", workers=1, threads=1, cell_fn=_stub_cell, resume=True, progress=False
    )
    assert r.already_complete == 3 and r.done == ids[:-3]
    run_sweep(spec, tmp_path / "ref", workers=1, threads=1, cell_fn=_stub_cell, progress=False)
    assert _cells(tmp_path / "sw") == _cells(tmp_path / "ref")


def test_unknown_executor_lists_the_registered_ones(tmp_path, registry):
    spec = parse_spec(_spec_dict())
    with pytest.raises(DiffauditError, match=r"'slurm'.*choose one of local, ray\.$"):
        run_sweep(spec, tmp_path / "sw", executor="slurm", cell_fn=_stub_cell, progress=False)
    assert not (tmp_path / "sw").exists()  # refused before anything is written
    register_executor("reversed", ReversedExecutor)
    with pytest.raises(DiffauditError, match=r"choose one of local, ray, reversed\.$"):
        make_executor("slurm", workers=1)
    with pytest.raises(ValueError, match="already registered"):
        register_executor("local", ReversedExecutor)


def test_cli_executor_choices_come_from_the_registry(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["sweep", "--preset", "quick", "--out", str(tmp_path / "o"), "--executor", "slurm"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(f"'{k}'" in err for k in EXECUTORS)


@pytest.mark.slow
def test_pool_executor_gives_the_in_process_cells(tmp_path):
    """Two spawn workers (the stub is pickled by reference; spawn children get this process's sys.path)."""
    spec = parse_spec(
        _spec_dict(seeds=[0], dataset=[{"name": "hidden-manifold", "params": {"d": 8, "D": 2}}])
    )
    r = run_sweep(spec, tmp_path / "pool", workers=2, threads=1, cell_fn=_stub_cell, progress=False)
    ref = run_sweep(spec, tmp_path / "one", workers=1, threads=1, cell_fn=_stub_cell, progress=False)
    assert not r.failed and sorted(r.done) == sorted(ref.done) and len(ref.done) == len(expand(spec)) == 3
    assert _cells(tmp_path / "pool") == _cells(tmp_path / "one")
