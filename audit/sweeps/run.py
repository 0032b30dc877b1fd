"""Data-scaling sweeps: train and audit one model per cell, resumably, on local processes or Ray.

Layout of a sweep folder ``DIR``::

    DIR/sweep.json               spec copy + every cell's record, written before any cell starts
    DIR/cells/<cell-id>/         one complete cell (renamed into place only when finished):
        cell.json                the cell's record (config, budget, derived seeds, device, threads)
        report.json              diffaudit.report/1 (as ``diffaudit audit``), plus a "sweep" section
        metrics.parquet          from run_audit
        checkpoint/              model.safetensors + config.json (trained cells)
    DIR/cells/.<cell-id>.*.tmp   a cell being written (removed on resume)

A cell is complete iff ``DIR/cells/<cell-id>/report.json`` exists: cells are built in a temporary
sibling folder and renamed in one ``os.replace`` (``diffaudit.fileio.atomic_directory``), so a kill -9 at
any moment leaves either a complete cell or a temp folder that the next run deletes. Every cell's
numbers depend only on its own record (seeds per cell, fixed thread count per worker), never on the
order in which cells run, so a resumed sweep ends with the same results as an uninterrupted one (grouped
cells too on CPU, where a model's numbers in the vectorised trainer measured bit for bit independent of its
group; on CUDA a regrouped cell equals its first computation up to float rounding).

Training. Under ``--group auto`` (the default) on CUDA, under ``auto`` on CPU for networks small enough that
grouping measured faster there, and under ``--group on`` always, the cells that train the same network on
samples of one shape with the same options (different n, seeds, dataset parameters, step budgets) train
together as one group in one vectorised loop (``diffaudit.harness.vmap.train_many``; the rules, the measured
CPU break-even and the group size in ``diffaudit.sweeps.groups``), each model with its own training set, seed,
budget and EMA, equal to training the cell alone up to float rounding. A group is one executor unit
(``run_group``): it trains, then each of its cells is audited and written as its own folder exactly as a cell
trained alone (the same report.json, checkpoint/ with options.json and stats.jsonl), with ``cell.json``
recording the group (``"group": {"id", "cells", "models", "train_seconds"}``; ``null`` for a cell trained
alone) and ``timings.train`` its share of the group's training time. So cells stay the unit of resumption: a
kill -9 loses at most the groups in flight, and ``--resume`` regroups the cells that are left. Otherwise cells
train one by one (one ``diffaudit.train.train`` per cell): on CPU the presets' 3 x 256 MLP at batch 256
measured no faster grouped (0.84x-1.16x, ``diffaudit.sweeps.groups``). Controls and cells with training
options the vmap trainer does not implement always train alone. ``diffaudit sweep --dry-run`` (``dry_run``)
prints the units, the training steps and a calibrated time estimate, and writes nothing.

Executors (``diffaudit.sweeps.executors``, a registry by name) run units (a cell, or a group): ``local`` runs
them in this process (``workers == 1``) or in a spawn process pool, each worker with a fixed torch thread
count (one GPU per worker on CUDA, units queued to the next free worker); ``ray`` submits each unit as a task
with ``num_cpus`` = threads and ``num_gpus`` = 1 on CUDA, to ``ray.init(address=...)`` or a local instance. On
a cluster, ``DIR`` must be on a file system that every node sees under the same path. Every executor runs
units through ``run_unit``, so the atomicity and resume rules above hold under each of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from diffaudit import __version__
from diffaudit.datasets.base import get_dataset, parse_spec
from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_directory, atomic_write_json, jsonable
from diffaudit.harness.checkpoint import save_checkpoint
from diffaudit.harness.train import train
from diffaudit.hashing import params_sha256
from diffaudit.models.adapters import load_model
from diffaudit.models.checkpoint import CheckpointModel
from diffaudit.pipeline.run import run_audit_on
from diffaudit.pipeline.setup import AuditData, synthetic_data
from diffaudit.progress import progress_display
from diffaudit.report.html import shared_plotly_src, write_shared_plotly
from diffaudit.sweeps.executors import check_executor, default_workers, make_executor, worker_threads
from diffaudit.sweeps.groups import (
    DEFAULT_GROUP_MIB,
    GROUP_MODES,
    Estimate,
    GroupedCell,
    TrainedModel,
    audit_config,
    audit_draw,
    cell_models,
    estimate,
    group_id,
    plan_units,
    sample_batches,
    sample_group,
    should_sample_together,
    train_config,
    train_group,
)
from diffaudit.sweeps.reproducibility import shared_noise_reproducibility
from diffaudit.sweeps.spec import (
    CELL_SCHEMA,
    SPEC_SCHEMA,
    Cell,
    SweepSpec,
    derive_seed,
    expand,
)
from diffaudit.threads import torch_threads

CellFn = Callable[[dict, Path, str], dict]


# ------------------------------------------------------------------------------------------ one cell


def _train_model(record: dict, x: np.ndarray, device: str, out_dir: Path | None, seed: int):

    cfg = train_config(record, device, seed=seed)
    res = train(x, record["model"], cfg, out_dir=out_dir, progress=False, dataset_spec=record["dataset_spec"])
    model = CheckpointModel(
        precond=res.ema,
        config=res.config,
        device="cpu" if device == "cpu" else device,
        num_steps=int(record["sampler_steps"]),
    )
    return model, res


def _grouped_model(tm: TrainedModel, record: dict, device: str, out_dir: Path) -> CheckpointModel:
    """A model trained in a group, written as ``train(out_dir=...)`` writes a run (options.json, stats.jsonl,
    the checkpoint) and wrapped for the audit."""
    if tm.precond is None:
        raise DiffauditError(tm.error or "training failed in its group")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "options.json", {**tm.config, "device": tm.device, "out_dir": str(out_dir)})
    with open(out_dir / "stats.jsonl", "w", encoding="utf-8") as f:
        for line in tm.stats:
            f.write(json.dumps(line) + "\n")
    save_checkpoint(out_dir, tm.precond, tm.config)
    return CheckpointModel(
        precond=tm.precond,
        config=tm.config,
        device="cpu" if device == "cpu" else device,
        num_steps=int(record["sampler_steps"]),
    )


def _reproducibility(model_a, model_b, record: dict) -> dict:
    """Disjoint-split reproducibility (Zhang et al. 2023; Kadkhodaie et al. 2024): two models trained on
    disjoint sets of the same size, sampled from the same noise (``diffaudit.sweeps.reproducibility``)."""

    r = shared_noise_reproducibility(
        model_a, model_b, int(record["n_samples"]), seed=derive_seed(record["seed"], "repro")
    )
    return {
        "rp": {"value": float(r.rp), "ci": None if r.rp_ci is None else [float(v) for v in r.rp_ci]},
        "mean_similarity": float(r.mean_similarity),
        "threshold": float(r.threshold),
        "n": int(r.n),
    }


def _audit(model, data: AuditData, record: dict, out_dir: Path, device: str, samples=None) -> dict:
    """``run_audit`` into ``out_dir`` (report.json, metrics.parquet, copies, HTML land in the cell folder).
    ``samples``: the audit's generated samples, drawn already with the cell's group (``run_group``)."""
    cfg = audit_config(record, device)
    sub = out_dir / "audit"  # run_audit builds its own folder atomically; its files are moved up
    report = run_audit_on(
        model,
        data,
        config=cfg,
        out_dir=sub,
        model_spec=record["model"],
        inputs={"sweep_cell": record["cell_id"], **data.provenance},
        html_plotly=record.get("html_plotly", "inline"),
        samples=samples,
    )
    for p in sub.iterdir():
        os.replace(p, out_dir / p.name)
    sub.rmdir()
    return report


def compute_cell(
    record: dict, out_dir: Path, device: str = "cpu", *, trained: GroupedCell | None = None
) -> dict:
    """Train (or fit the control) and audit one cell into ``out_dir`` (an empty folder); return its report.

    This is the default cell function; ``run_sweep(cell_fn=...)`` takes any function with the same
    signature that writes ``report.json`` into ``out_dir``. ``trained``: the cell's data and models from its
    group (``run_group``), written and audited as if the cell had trained them here.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if trained is not None:
        ds, data = trained.dataset, trained.data
    else:
        ds = get_dataset(record["dataset"], **record["params"])
        data = synthetic_data(ds, int(record["n_train"]), int(record["n_holdout"]), int(record["seed"]))
    x_train = data.train
    timings["data"] = time.perf_counter() - t0
    t = time.perf_counter()
    train_info: dict = {"steps": int(record["steps"]), "budget": record["budget"]}
    model_b = None
    if record["model"].startswith("control:"):
        model = load_model(record["model"], train=x_train, dataset=ds, num_steps=int(record["sampler_steps"]))
    elif trained is not None:
        model = _grouped_model(trained.models["a"], record, device, out_dir / "checkpoint")
        if trained.models["a"].stats:
            train_info["final_loss"] = float(trained.models["a"].stats[-1]["loss"])
        if record["reproducibility"]:
            model_b = _grouped_model(trained.models["b"], record, device, out_dir / "checkpoint_b")
    else:
        model, res = _train_model(record, x_train, device, out_dir / "checkpoint", int(record["seed"]))
        if res.stats:
            train_info["final_loss"] = float(res.stats[-1]["loss"])
        if record["reproducibility"]:
            x_b = ds.sample(int(record["n_train"]), derive_seed(record["seed"], "half-b"))[0]
            # its own initialisation too: agreement must come from the data, not from a shared init
            model_b, _ = _train_model(
                record, x_b, device, out_dir / "checkpoint_b", derive_seed(record["seed"], "half-b")
            )
    # a grouped cell's training ran before this function: its share of the group's time, by model-steps
    timings["train"] = time.perf_counter() - t + (trained.train_seconds if trained is not None else 0.0)
    t = time.perf_counter()
    samples = None if trained is None else trained.samples
    report = _audit(model, data, record, out_dir, device, samples=samples)
    timings["audit"] = time.perf_counter() - t
    if samples is not None:  # drawn with the group's other models before this function: its share
        timings["group_sampling"] = trained.sample_seconds
    extra: dict = {}
    if model_b is not None:
        t = time.perf_counter()
        extra["reproducibility"] = _reproducibility(model, model_b, record)
        timings["reproducibility"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    report = dict(report)
    report["sweep"] = {
        "cell_id": record["cell_id"],
        "cell": {
            k: record[k]
            for k in (
                "dataset",
                "params",
                "dataset_spec",
                "d",
                "n_train",
                "seed",
                "model",
                "model_label",
                "n_samples",
                "n_holdout",
            )
        },
        "train": train_info,
        # how the audit's samples were drawn: with the group's other models, or by the cell's own model
        "sampling": {
            "together": samples is not None,
            "error": None if trained is None else trained.sample_error,
        },
        **extra,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    atomic_write_json(out_dir / "report.json", jsonable(report))
    return report


def cell_dir(out: Path, cell_id: str) -> Path:
    return Path(out) / "cells" / cell_id


def is_complete(out: Path, cell_id: str) -> bool:
    return (cell_dir(out, cell_id) / "report.json").is_file()


def _set_threads(threads: int) -> None:
    if threads:
        with contextlib.suppress(ImportError):
            import torch

            torch.set_num_threads(int(threads))
        with contextlib.suppress(ImportError, AttributeError):
            import faiss

            faiss.omp_set_num_threads(int(threads))


def _failed_status(cid: str, e: BaseException, seconds: float) -> dict:
    if isinstance(e, DiffauditError):
        return {"cell_id": cid, "status": "failed", "error": str(e), "seconds": seconds}
    return {
        "cell_id": cid,
        "status": "failed",
        "error": f"{type(e).__name__}: {e}",
        "traceback": traceback.format_exc(),
        "seconds": seconds,
    }


def run_one(
    record: dict, out: str, device: str = "cpu", threads: int = 0, cell_fn: CellFn | None = None
) -> dict:
    """Run one cell into ``out/cells/<id>`` atomically (skips a complete one). Returns a status dict."""
    out = Path(out)
    cid = record["cell_id"]
    if is_complete(out, cid):
        return {"cell_id": cid, "status": "skipped", "seconds": 0.0}
    _set_threads(threads)
    fn = cell_fn or compute_cell
    t0 = time.perf_counter()
    final = cell_dir(out, cid)
    # every cell's report.html loads the sweep's one plotly.min.js (prepare writes it) instead of inlining 4.8 MB
    record = {**record, "html_plotly": shared_plotly_src(final, out)}
    try:
        # overwrite: a folder without report.json under the final name is not a cell; replace it
        with atomic_directory(final, overwrite=True) as tmp:
            atomic_write_json(
                tmp / "cell.json",
                {**record, "group": record.get("group"), "device": device, "threads": int(threads)},
            )
            fn(record, tmp, device)
            if not (tmp / "report.json").is_file():
                raise RuntimeError(f"cell function wrote no report.json for {cid}")
    except Exception as e:
        # a user mistake, a bug of ours or a diverged run: report it, keep the other cells going
        return _failed_status(cid, e, time.perf_counter() - t0)
    return {"cell_id": cid, "status": "done", "seconds": time.perf_counter() - t0}


def run_group(
    records: list[dict],
    out: str,
    device: str = "cpu",
    threads: int = 0,
    cell_fn: CellFn | None = None,
    sample_together: bool | None = None,
) -> list[dict]:
    """One group (records marked ``"group"`` by ``groups.plan_units``): train the models of its incomplete
    cells together, then audit and write each cell atomically (``run_one``). If the group's training fails,
    every cell of it is reported failed; a model that diverges fails only its own cell.

    ``sample_together`` (None: ``groups.should_sample_together``, i.e. on CUDA): draw the cells' audit samples
    for all the group's models in one vectorised loop (``groups.sample_group``), in batches of cells bounded
    in host memory, each batch audited before the next is drawn; every cell's samples equal its own model's
    up to float32 rounding. If that sampling fails, the cells sample their own models as usual."""
    out = Path(out)
    if cell_fn is not None:
        raise DiffauditError("grouped training needs the default cell function; run without --group on.")
    todo = [r for r in records if not is_complete(out, r["cell_id"])]
    statuses = [
        {"cell_id": r["cell_id"], "status": "skipped", "seconds": 0.0}
        for r in records
        if is_complete(out, r["cell_id"])
    ]
    if not todo:
        return statuses
    _set_threads(threads)
    t0 = time.perf_counter()
    try:
        trained = train_group(todo, device)
    except Exception as e:
        dt = time.perf_counter() - t0
        return statuses + [_failed_status(r["cell_id"], e, dt) for r in todo]
    dt = time.perf_counter() - t0
    ids = [r["cell_id"] for r in todo]
    info = {
        "id": group_id(ids),
        "cells": ids,
        "models": sum(len(cell_models(r)) for r in todo),
        "train_seconds": round(dt, 3),
    }
    together = should_sample_together(device) if sample_together is None else bool(sample_together)
    batches = [[r] for r in todo]
    draws: dict[str, tuple[int, int]] = {}
    if together:
        try:
            draws = {r["cell_id"]: audit_draw(r, device) for r in todo}
            batches = sample_batches(todo, {c: n for c, (n, _) in draws.items()})
        except Exception as e:  # noqa: BLE001 -- a bad [audit] option fails in the cell's own audit, as alone
            for r in todo:
                trained[r["cell_id"]].sample_error = f"{type(e).__name__}: {e}"
            together = False
    budget = float((records[0].get("group") or {}).get("budget_mib") or 0) or None
    for batch in batches:
        if together:
            _presample(batch, trained, draws, device, budget)
        for r in batch:
            g = trained.pop(r["cell_id"])
            s = run_one({**r, "group": info}, str(out), device, threads, partial(compute_cell, trained=g))
            # its share of the training (and of the group's sampling), as for a cell trained alone
            s["seconds"] += g.train_seconds + g.sample_seconds
            statuses.append(s)
    return statuses


def _presample(
    batch: list[dict], trained: dict[str, GroupedCell], draws: dict, device: str, budget_mib: float | None
) -> None:
    """Draw the audit samples of ``batch``'s cells together (``groups.sample_group``) into their
    ``GroupedCell.samples``, within the group's device memory budget (a quarter of it: the network's weights,
    the ODE state and other workers share the device). A failure here (e.g. out of device memory) is not a
    cell's failure: the cells then sample their own models in their audits, as without grouping."""
    models = {}
    for r in batch:
        tm = trained[r["cell_id"]].models["a"]
        if tm.precond is not None:
            models[r["cell_id"]] = CheckpointModel(
                precond=tm.precond,
                config=tm.config,
                device="cpu" if device == "cpu" else device,
                num_steps=int(r["sampler_steps"]),
            )
    if not models:
        return
    mib = budget_mib or DEFAULT_GROUP_MIB["cuda" if str(device).startswith("cuda") else "cpu"]
    try:
        samples, seconds = sample_group(batch, models, draws, device, mib / 4)
    except Exception as e:  # noqa: BLE001 -- the per-cell path is the fallback; each report says why
        for cid in models:
            trained[cid].sample_error = f"{type(e).__name__}: {e}"
        return
    total = sum(len(x) for x in samples.values()) or 1
    for cid, x in samples.items():
        trained[cid].samples = x
        trained[cid].sample_seconds = seconds * len(x) / total


def run_unit(
    records: list[dict], out: str, device: str = "cpu", threads: int = 0, cell_fn: CellFn | None = None
) -> list[dict]:
    """A unit of work for an executor: a group (``run_group``), or one or more cells run in order."""
    if records and records[0].get("group"):
        return run_group(records, out, device, threads, cell_fn)
    return [run_one(r, out, device, threads, cell_fn) for r in records]


# ------------------------------------------------------------------------------------------ the sweep


@dataclass
class SweepResult:
    out: Path
    n_cells: int
    already_complete: int
    done: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cell_seconds: dict = field(default_factory=dict)
    # {"id", "cells"} of each group trained (none without grouping)
    groups: list[dict] = field(default_factory=list)


def clean_stale(out: Path) -> int:
    """Delete temp folders left by a killed run (``cells/.<id>.*.tmp`` / ``.old``)."""
    cells = Path(out) / "cells"
    k = 0
    if cells.is_dir():
        for p in cells.iterdir():
            if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.endswith(".old")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                k += 1
    return k


@contextlib.contextmanager
def _sweep_lock(out: Path):
    """One sweep process per folder (an flock, released by the kernel even after kill -9)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".lock", "w")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DiffauditError(
                f"another sweep is running in {out}; wait for it or pass a new --out."
            ) from None
        yield
    finally:
        f.close()


def _sweep_doc(spec: SweepSpec, cells: list[Cell]) -> dict:

    return {
        "schema": SPEC_SCHEMA,
        "cell_schema": CELL_SCHEMA,
        "name": spec.name,
        "spec": spec.raw,
        "spec_sha256": params_sha256(spec.raw),
        "cells": [c.record() for c in cells],
        "diffaudit_version": __version__,
    }


def prepare(spec: SweepSpec, out: Path, resume: bool) -> list[dict]:
    """Check the folder, write sweep.json, clean stale temps; return every cell's record."""
    out = Path(out)
    cells = expand(spec)
    records = [c.record() for c in cells]
    doc = _sweep_doc(spec, cells)
    sj = out / "sweep.json"
    existing_cells = (out / "cells").is_dir() and any(
        not p.name.startswith(".") for p in (out / "cells").iterdir()
    )
    if sj.is_file():
        try:
            old = json.loads(sj.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        old_ids = [c.get("cell_id") for c in old.get("cells", [])]
        if old_ids and old_ids != [r["cell_id"] for r in records] and existing_cells:
            raise DiffauditError(
                f"{out} holds a different sweep (its sweep.json lists other cells); pass a new --out."
            )
    if existing_cells and not resume:
        raise DiffauditError(
            f"{out} already holds sweep cells; pass --resume to finish that sweep or a new --out."
        )
    atomic_write_json(sj, doc)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    write_shared_plotly(out)
    clean_stale(out)
    return records


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    executor: str = "local",
    workers: int | None = None,
    resume: bool = False,
    ray_address: str | None = None,
    device: str = "cpu",
    cell_fn: CellFn | None = None,
    progress: bool = True,
    threads: int | None = None,
    group: str | None = None,
    group_mib: float | None = None,
) -> SweepResult:
    """Run (or finish) a sweep into ``out``. ``cell_fn(record, tmp_dir, device)`` computes one cell
    (default ``compute_cell``); ``executor`` names an entry of ``diffaudit.sweeps.executors.EXECUTORS``
    (``local`` with ``workers == 1`` runs units in this process, in order). ``group``: "auto" | "on" | "off"
    (default: the spec's ``[sweep] group``, else "auto"), ``group_mib``: memory budget of one group
    (``diffaudit.sweeps.groups``); grouping needs the default cell function."""
    out = Path(out)
    check_executor(executor)
    if workers is not None and workers < 1:
        raise DiffauditError(f"--workers must be >= 1, got {workers}.")
    if threads is not None and threads < 1:
        raise DiffauditError(f"--threads must be >= 1, got {threads}.")
    if out.exists() and not out.is_dir():
        raise DiffauditError(f"--out {out} is a file; pass a folder for the sweep.")
    group, group_mib = _group_options(spec, group, group_mib)
    device = resolve_device(device).type  # a worker pins its own cuda:i
    if cell_fn is not None and group == "on":
        raise DiffauditError("--group on trains with the default cell function; pass no cell_fn.")
    with _sweep_lock(out):
        records = prepare(spec, out, resume)
        pending = [r for r in records if not is_complete(out, r["cell_id"])]
        res = SweepResult(out=out, n_cells=len(records), already_complete=len(records) - len(pending))
        t0 = time.perf_counter()
        n_workers = workers or default_workers(device)
        # torch threads per worker: fixed by the command (not by how many cells are left), so a resumed
        # run computes every cell with the same thread count as an uninterrupted one
        threads = worker_threads(n_workers, threads)  # workers x threads never exceed the CPUs we may use
        if cell_fn is None:
            units = plan_units(pending, mode=group, device=device, budget_mib=group_mib, workers=n_workers)
        else:
            units = [[r] for r in pending]
        res.groups = [
            {"id": u[0]["group"]["id"], "cells": [r["cell_id"] for r in u]}
            for u in units
            if u[0].get("group")
        ]
        with progress_display("sweep", enabled=progress, transient=False) as prog:
            task = prog.add_task("", total=len(records), completed=res.already_complete)

            def on_done(statuses: list[dict]) -> None:
                for s in statuses:
                    if s["status"] == "failed":
                        res.failed.append(s)
                        prog.console.print(f"[red]cell {s['cell_id']} failed:[/red] {s['error']}")
                    elif s["status"] == "done":
                        res.done.append(s["cell_id"])
                        res.cell_seconds[s["cell_id"]] = s["seconds"]
                    prog.update(task, advance=1, description=s["cell_id"][:48])

            ex = make_executor(executor, workers=n_workers, ray_address=ray_address)
            ex.run(
                units, out, device=device, threads=threads, cell_fn=cell_fn, unit_fn=run_unit, on_done=on_done
            )
        res.seconds = time.perf_counter() - t0
    return res


def _group_options(spec: SweepSpec, group: str | None, group_mib: float | None) -> tuple[str, float | None]:
    """``--group``/``--group-mib``, else the spec's ``[sweep]`` values, else auto and the default budget."""
    group = group or spec.group or "auto"
    if group not in GROUP_MODES:
        raise DiffauditError(f"--group {group!r}: choose one of {', '.join(GROUP_MODES)}.")
    group_mib = group_mib if group_mib is not None else spec.group_mib
    if group_mib is not None and not group_mib > 0:
        raise DiffauditError(f"--group-mib must be > 0, got {group_mib}.")
    return group, group_mib


@dataclass
class DryRun:
    """What ``run_sweep`` would do, without doing it (``dry_run``)."""

    name: str
    n_cells: int
    already_complete: int
    device: str
    workers: int
    threads: int
    group: str  # the mode asked for
    grouping: bool  # whether this run would train any group
    units: list[list[dict]]  # as the executor would get them
    estimate: Estimate | None

    @property
    def pending(self) -> list[dict]:
        return [r for u in self.units for r in u]

    @property
    def train_steps(self) -> int:
        """Training steps of every model still to train (a reproducibility cell trains two)."""
        return sum(
            int(r["steps"]) * len(cell_models(r))
            for r in self.pending
            if not r["model"].startswith("control:")
        )


def dry_run(
    spec: SweepSpec,
    out: str | Path | None = None,
    *,
    workers: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    group: str | None = None,
    group_mib: float | None = None,
    calibrate: bool = True,
) -> DryRun:
    """The units ``run_sweep`` would run (cells already complete in ``out`` left out) and, with
    ``calibrate``, a time estimate from a short calibration on this machine (``groups.estimate``).
    Reads ``out`` if it exists; writes nothing anywhere."""
    group, group_mib = _group_options(spec, group, group_mib)
    dev = resolve_device(device).type
    records = [c.record() for c in expand(spec)]
    done = 0
    if out is not None and (Path(out) / "cells").is_dir():
        pending = [r for r in records if not is_complete(Path(out), r["cell_id"])]
        done = len(records) - len(pending)
    else:
        pending = records
    n_workers = workers or default_workers(dev)
    n_threads = worker_threads(n_workers, threads)
    units = plan_units(pending, mode=group, device=dev, budget_mib=group_mib, workers=n_workers)
    est = None
    if calibrate and units:
        with torch_threads(n_threads):
            est = estimate(units, dev, n_workers)
    return DryRun(
        name=spec.name,
        n_cells=len(records),
        already_complete=done,
        device=dev,
        workers=n_workers,
        threads=n_threads,
        group=group,
        grouping=any(u[0].get("group") for u in units),
        units=units,
        estimate=est,
    )


# ------------------------------------------------------------------------------ one cell, for the demo


def train_and_audit_cell(
    dataset_spec: str,
    n_train: int,
    model_spec: str,
    steps: int,
    seed: int,
    out_dir,
    *,
    n_samples: int = 2000,
    n_holdout: int = 2000,
    sampler_steps: int = 32,
    train: dict | None = None,
    audit_options: dict | None = None,
    device: str = "cpu",
) -> dict:
    """Train ``model_spec`` on ``dataset.sample(n_train, seed)`` for ``steps`` steps and audit it, as a
    sweep cell would; writes ``out_dir`` atomically (report.json, metrics.parquet, checkpoint/) and
    returns the report dict. ``out_dir`` must not exist yet."""

    name, params = parse_spec(dataset_spec)
    get_dataset(name, **params)
    cell = Cell(
        dataset=name,
        params=params,
        n_train=int(n_train),
        seed=int(seed),
        model=model_spec,
        steps=int(steps),
        budget={"rule": "steps", "steps": int(steps)},
        train=dict(train or {}),
        n_samples=int(n_samples),
        n_holdout=int(n_holdout),
        sampler_steps=int(sampler_steps),
        audit_options=dict(audit_options or {}),
        reproducibility=False,
    )
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DiffauditError(f"{out_dir} already exists; pass a new folder for the cell.")
    record = cell.record()
    with atomic_directory(out_dir) as tmp:
        atomic_write_json(tmp / "cell.json", {**record, "device": device})
        report = compute_cell(record, tmp, device)
    return report
