"""Grouped training for sweeps: the cells that train the same network on samples of the same shape with
the same training options are trained together in one vectorised loop (``diffaudit.harness.vmap.train_many``),
each model with its own training set, seed, step budget and EMA; then every cell is audited and written on
its own, exactly as a cell trained alone (``diffaudit.sweeps.run``).

What may share a group (``group_key``): trained cells (not the analytic controls) with one network spec, one
sample shape and one set of training options apart from the seed and the step budget; the dataset, its
parameters, n and the seed may differ. A cell whose training options include one that ``train_many`` does not
implement (``diffaudit.harness.vmap.unsupported_options``: any option added to ``TrainConfig`` after the ones
the vmap trainer knows, set away from its default) trains alone. A reproducibility cell brings two models
(its pair's second half, ``checkpoint_b``), which train in the same group.

When to group (``should_group``, the sweep's ``--group auto|on|off``; ``auto`` is the default):

- CUDA: always. One small network leaves a GPU idle between kernel launches: ``benchmarks/bench_harness.py``
  measured 16 vmapped 3 x 128 MLPs at 10.4x the model-steps/s of one-by-one training on an H200 and 64 at
  25.7x, and ``bench_sweep_gpu.py`` measured one 3 x 256 MLP cell at only 2.2x the host CPU's speed.
- CPU: only small networks. On one thread a group does the same arithmetic as the loop, and saves the
  per-model Python and dispatch overhead of each step, which matters only when a step is small:
  ``benchmarks/bench_grouped.py`` (``benchmarks/README.md``: 8 grouped depth-3 MLPs against one-by-one
  training, one thread, the shared 2-core EPYC at load 2.7-4, three runs) measured 1.4x-6x at 1e6-2.7e7
  training FLOPs per model and step, 1.5x-2.0x at 3.2e7, but 0.98x-1.45x at 4.2e7-4.4e7, 0.70x-1.95x at
  8e7-1e8, and 0.98x-1.16x for the presets' 3 x 256 MLP at batch 256 (3.4e8; the quick preset's 20 trained
  cells 0.93x-1.00x, and 0.84x for 8 such models in an earlier measurement). So ``auto`` groups the cells of a
  network whose FLOPs per step (``step_flops``, the rule of ``diffaudit.harness.train``: 6 x parameters x
  batch x noise draws, x pixels for images) are below ``GROUP_CPU_BELOW_FLOPS`` = 3e7, where every measurement was >= 1.4x;
  above it grouping was not reliably faster. The sweep's workers keep every core busy either way.
  ``--group on`` groups every network, ``off`` none.

Group size: members are packed, in order of their step budgets, into groups whose estimated device memory
(``diffaudit.harness.vmap.model_bytes``: parameters, gradients, Adam state, EMA, activations of a batch, the
training set) stays within a budget in MiB (``--group-mib``; default ``DEFAULT_GROUP_MIB``) and that hold at
most ``MAX_GROUP`` models (the per-step random draws are a Python loop over the models; 64 models measured
25.7x on the GPU). A cell too large for the budget on its own trains alone.

A group is one unit of a sweep executor (once grouping is on for a network, even a group of one model trains
in ``train_many``: on CPU a model's numbers in ``train_many`` measured bit for bit the same whatever the group
holds, so a resumed, regrouped sweep repeats an uninterrupted one exactly): its cells' records carry
``record["group"]`` (the group id, a hash of its cell ids, and its cells); ``run.run_group`` trains them
together, then audits each cell into its own folder atomically. A kill -9 loses the groups in flight, never a
finished cell, and ``--resume`` regroups the cells that are left (the cell's ``cell.json`` records the group
it was trained in). A grouped cell's numbers equal its one-by-one training (``train``) up to float rounding
(``diffaudit.harness.vmap``); on CUDA, where kernels may differ with the group's size, a regrouped cell also
only up to rounding.

``--dry-run`` (``run.dry_run``, ``estimate``): the units, the training steps, and a time estimate from a
short calibration on this machine (a few timed steps per network and group size, and the network's forward
pass for the sampler) plus the documented per-sample cost of the probes (``PROBE_S_*``).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from diffaudit.datasets.base import get_dataset
from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError
from diffaudit.harness.edm import EDMPrecond
from diffaudit.harness.train import TrainConfig, init_network, train
from diffaudit.harness.vmap import model_bytes, network_size, train_many, unsupported_options
from diffaudit.pipeline.config import DEFAULT_N_SAMPLES, AuditConfig
from diffaudit.pipeline.setup import AuditData, synthetic_data
from diffaudit.sweeps.executors import schedule
from diffaudit.sweeps.spec import GROUP_MODES, derive_seed

# Default memory budget of one group, MiB. CUDA: room for the audit's sampling and other workers on a 16 GB
# card; CPU (only with --group on): a small share of a laptop's memory.
DEFAULT_GROUP_MIB = {"cuda": 8192.0, "cpu": 2048.0}
MAX_GROUP = 64  # models per group (see the module docstring)
# CPU, --group auto: group a network below this many training FLOPs per model and step (module docstring)
GROUP_CPU_BELOW_FLOPS = 3e7

# Audit cost outside the network (probes, copy search, report), seconds on one thread of the 2-core dev
# machine (x86_64 EPYC, idle), measured with diffaudit.sweeps.run.train_and_audit_cell on hidden-manifold
# d = 32 with the quick preset's audit (Heun 32 steps): 2,000 samples and n = 1,024: 4.9 s audit of which
# 1.6 s sampling; 500 samples: 2.3 s / 0.46 s; 2,000 samples and n = 8,192: 6.5 s / 2.1 s. A rough guide
# (the factor probes cost more on some datasets); the sampler's share is measured per network at run time.
PROBE_S_BASE = 1.3
PROBE_S_PER_SAMPLE = 1.0e-3
PROBE_S_PER_TRAIN_ITEM = 1.7e-4


def should_group(mode: str, device: str, flops: float | None = None) -> bool:
    """Whether a sweep on ``device`` ("cpu" | "cuda") trains a network of ``flops`` training FLOPs per model
    and step (``step_flops``) in groups under ``--group mode``."""
    if mode not in GROUP_MODES:
        raise DiffauditError(f"--group {mode!r}: choose one of {', '.join(GROUP_MODES)}.")
    if mode == "auto":
        if str(device).startswith("cuda"):
            return True
        return flops is not None and flops < GROUP_CPU_BELOW_FLOPS
    return mode == "on"


def train_config(record: dict, device: str, seed: int | None = None, steps: int | None = None) -> TrainConfig:
    """The ``TrainConfig`` a trained cell's record asks for (as ``run._train_model`` builds it)."""
    return TrainConfig(
        steps=int(record["steps"] if steps is None else steps),
        seed=int(record["seed"] if seed is None else seed),
        device=device,
        **record["train"],
    )


def cell_models(record: dict) -> list[tuple[str, int]]:
    """The models a trained cell trains, as (role, network seed): ("a", seed), and ("b", the derived seed)
    for a reproducibility cell (its second, disjoint half; ``run.compute_cell``)."""
    out = [("a", int(record["seed"]))]
    if record.get("reproducibility"):
        out.append(("b", derive_seed(record["seed"], "half-b")))
    return out


_SHAPES: dict[str, tuple[int, ...]] = {}


def sample_shape(record: dict) -> tuple[int, ...]:
    spec = record["dataset_spec"]
    if spec not in _SHAPES:
        _SHAPES[spec] = tuple(get_dataset(record["dataset"], **record["params"]).shape)
    return _SHAPES[spec]


_PARAMS: dict[tuple, int] = {}


def step_flops(record: dict) -> float:
    """Training FLOPs per model and step of a trained cell: 6 x parameters x batch, x pixels for images (the
    estimate ``diffaudit.harness.train`` chooses its CPU threads by)."""
    shape = sample_shape(record)
    key = (record["model"], shape)
    if key not in _PARAMS:
        _PARAMS[key] = network_size(record["model"], shape)[0]
    pixels = math.prod(shape[1:]) if len(shape) == 3 else 1
    evals = int(record["train"].get("batch", 256)) * int(record["train"].get("noise_draws", 1))
    return 6.0 * _PARAMS[key] * evals * pixels


def group_key(record: dict) -> tuple | None:
    """What cells must share to train in one group; None for a cell that trains alone (a control, or training
    options that ``train_many`` does not implement)."""
    if record["model"].startswith("control:") or int(record.get("steps", 0)) < 1:
        return None
    cfg = train_config(record, "cpu")
    if unsupported_options(cfg):
        return None
    opts = tuple(sorted((k, repr(v)) for k, v in record["train"].items() if k not in ("seed", "steps")))
    return (record["model"], sample_shape(record), opts)


def group_id(cell_ids: list[str]) -> str:
    return "g" + hashlib.sha256("\n".join(sorted(cell_ids)).encode()).hexdigest()[:10]


def cell_bytes(record: dict) -> int:
    """Estimated training memory of a cell's models in a group (``model_bytes`` per model)."""
    evals = int(record["train"].get("batch", 256)) * int(record["train"].get("noise_draws", 1))
    one = model_bytes(record["model"], sample_shape(record), evals, int(record["n_train"]))
    return one * len(cell_models(record))


def plan_units(
    records: list[dict],
    *,
    mode: str = "auto",
    device: str = "cpu",
    budget_mib: float | None = None,
    max_models: int = MAX_GROUP,
    workers: int = 1,
) -> list[list[dict]]:
    """Split the pending cells into executor units: groups (records marked with ``"group"``) first, the
    costliest first, then the cells that train alone, in their sweep order. Without any group, one unit per
    cell in sweep order (as before grouping existed).

    A network's cells are split into at least ``workers`` groups of near-equal size (where it has that many
    cells): a group's cells are audited one after another by the worker that trained them, so one big group
    would leave the other workers idle."""
    if mode not in GROUP_MODES:
        raise DiffauditError(f"--group {mode!r}: choose one of {', '.join(GROUP_MODES)}.")
    if mode == "off":
        return [[r] for r in records]
    if budget_mib is not None and not budget_mib > 0:
        raise DiffauditError(f"--group-mib must be > 0, got {budget_mib}.")
    budget = (
        float(budget_mib or DEFAULT_GROUP_MIB["cuda" if str(device).startswith("cuda") else "cpu"]) * 2**20
    )
    if max_models < 1:
        raise DiffauditError(f"the largest group must hold at least one model, got {max_models}.")
    buckets: dict[tuple, list[dict]] = {}
    alone: list[dict] = []
    for r in records:
        k = group_key(r)
        (alone.append(r) if k is None else buckets.setdefault(k, []).append(r))
    groups: list[list[dict]] = []
    for members in buckets.values():
        if not should_group(mode, device, step_flops(members[0])):
            alone.extend(members)
            continue
        # similar budgets together: a group runs as long as its longest member
        n_before = len(groups)
        members = sorted(members, key=lambda r: (-int(r["steps"]), int(r["n_train"])))
        n_all = sum(len(cell_models(r)) for r in members)
        k = math.ceil(n_all / max_models)  # groups needed for the size cap, then at least one per worker
        k = max(k, min(int(workers), len(members)))
        sizes = [n_all // k + (1 if i < n_all % k else 0) for i in range(k)]  # near-equal, in models
        cur: list[dict] = []
        used = 0
        n_models = 0
        for r in members:
            b, m = cell_bytes(r), len(cell_models(r))
            if b > budget or m > max_models:
                alone.append(r)
                continue
            cap = sizes[min(len(groups) - n_before, k - 1)]
            if cur and (used + b > budget or n_models + m > cap):
                groups.append(cur)
                cur, used, n_models = [], 0, 0
            cur.append(r)
            used += b
            n_models += m
        if cur:
            groups.append(cur)
    if not groups:
        return [[r] for r in records]
    units: list[list[dict]] = []
    solo_ids = {r["cell_id"] for r in alone}
    for g in groups:
        ids = [r["cell_id"] for r in g]
        info = {
            "id": group_id(ids),
            "cells": ids,
            "models": sum(len(cell_models(r)) for r in g),
            "budget_mib": budget
            / 2**20,  # the group's device memory (its audit samples are drawn within it too)
        }
        units.append([{**r, "group": info} for r in g])
    units.sort(key=lambda u: -sum(int(r["steps"]) * len(cell_models(r)) for r in u))
    units += [[r] for r in records if r["cell_id"] in solo_ids]
    return units


# ------------------------------------------------------------------------------------- training a group


@dataclass
class TrainedModel:
    """One model of a group, as ``run.compute_cell`` writes and audits it."""

    precond: object | None  # EDMPrecond with the EMA weights (CPU), None if training diverged
    config: dict  # the checkpoint's config.json, as ``train`` writes it for this model alone
    stats: list[dict]  # its stats.jsonl lines, as ``train`` logs them
    device: str  # the training device, as ``train`` records it in options.json
    error: str | None = None  # why it has no weights


@dataclass
class GroupedCell:
    """What ``run.compute_cell`` needs from the group for one cell: its data and its trained model(s)."""

    dataset: object
    data: AuditData
    models: dict[str, TrainedModel]  # role ("a", and "b" for a reproducibility pair) -> model
    group: dict = field(default_factory=dict)  # the group's record (id, cells, models, train_seconds)
    train_seconds: float = 0.0  # this cell's share of the group's training time (by model-steps)
    # the audit's generated samples, drawn with the group's other models (``sample_group``), else None
    samples: np.ndarray | None = None
    sample_seconds: float = 0.0  # this cell's share of the group's sampling time (by samples)
    sample_error: str | None = None  # why sampling together failed (the audit then sampled the model alone)


def train_group(records: list[dict], device: str) -> dict[str, GroupedCell]:
    """Train the models of ``records`` (one group: same ``group_key``) together; cell id -> ``GroupedCell``.

    Each model's data, seed and step budget are the ones its cell uses when trained alone: the training set
    ``synthetic_data(...).train`` (and for a reproducibility cell the disjoint ``half-b`` set), the network
    seed of ``cell_models``, ``record["steps"]``. A diverged model fails only its own cell."""
    keys = {group_key(r) for r in records}
    if None in keys or len(keys) != 1:
        raise DiffauditError("these cells cannot train in one group; train them one by one.")
    datasets, data, sets, seeds, steps, specs, owners = {}, {}, [], [], [], [], []
    for r in records:
        ds = get_dataset(r["dataset"], **r["params"])
        datasets[r["cell_id"]] = ds
        data[r["cell_id"]] = synthetic_data(ds, int(r["n_train"]), int(r["n_holdout"]), int(r["seed"]))
        for role, seed in cell_models(r):
            x = (
                data[r["cell_id"]].train
                if role == "a"
                else ds.sample(int(r["n_train"]), derive_seed(r["seed"], "half-b"))[0]
            )
            sets.append(x)
            seeds.append(seed)
            steps.append(int(r["steps"]))
            specs.append(r["dataset_spec"])
            owners.append((r["cell_id"], role))
    cfg = train_config(records[0], device, seed=0, steps=max(steps))
    res = train_many(
        sets, records[0]["model"], cfg, seeds, dataset_specs=specs, steps=steps, on_diverge="drop"
    )
    dev = str(resolve_device(device))
    total = sum(steps)
    out: dict[str, GroupedCell] = {}
    for m, (cid, role) in enumerate(owners):
        if cid not in out:
            out[cid] = GroupedCell(dataset=datasets[cid], data=data[cid], models={})
        tm = TrainedModel(
            precond=res.precond(m) if res.ema_states[m] is not None else None,
            config=res.configs[m],
            stats=res.model_stats[m],
            device=dev,
            error=res.errors[m],
        )
        out[cid].models[role] = tm
        out[cid].train_seconds += res.seconds * steps[m] / total
    return out


# ------------------------------------------------------------------------------- sampling the group's models


def should_sample_together(device: str) -> bool:
    """Whether ``run.run_group`` draws its cells' audit samples in one loop for all the group's models
    (``sample_group``): on CUDA only. ``benchmarks/bench_group_sampling.py`` measured the vectorised loop
    0.71x-0.80x the speed of sampling the models one by one on the CPU (2-core EPYC, one thread, 8-16 MLPs of
    width 64-256, 2,000 samples each: the one-by-one path already runs 1,024-row batches, which keep a CPU
    core busy); on a GPU one small network leaves the device idle between kernel launches, as in training."""
    return str(device).startswith("cuda")


def audit_config(record: dict, device: str) -> AuditConfig:
    """The ``AuditConfig`` of a cell's audit: its ``[audit]`` options, else the cell's n_samples and seed."""
    opts = dict(record["audit_options"])
    opts.setdefault("n_samples", int(record["n_samples"]))
    opts.setdefault("seed", int(record["seed"]))
    opts.setdefault("device", "cpu" if device == "cpu" else device)
    opts["kid_subset_size"] = min(
        int(opts.get("kid_subset_size", 1000)), int(record["n_samples"]), int(record["n_holdout"])
    )
    return AuditConfig.from_options(opts, where=f"cell {record['cell_id']} [audit]")


def audit_draw(record: dict, device: str) -> tuple[int, int]:
    """(n, seed) of the generated samples a trained cell's audit draws (``run_audit``'s rule for a model that
    is not a sample file and an unconditional audit: the config's n_samples, else DEFAULT_N_SAMPLES)."""
    cfg = audit_config(record, device)
    return (DEFAULT_N_SAMPLES if cfg.n_samples is None else int(cfg.n_samples)), int(cfg.seed)


# host memory for one batch of cells' pre-drawn samples (float32) before they are audited
SAMPLE_BATCH_MIB = 1024.0


def sample_batches(
    records: list[dict], draws: dict[str, int], limit_mib: float | None = None
) -> list[list[dict]]:
    """``records`` in consecutive batches whose pre-drawn samples (``draws``: cell id -> samples its audit
    draws; float32, with their float64 noise alongside) stay within ``limit_mib`` (default
    ``SAMPLE_BATCH_MIB``; at least one cell a batch): each batch is sampled together, then its cells are
    audited, so the group never holds every cell's samples at once."""
    limit = SAMPLE_BATCH_MIB if limit_mib is None else float(limit_mib)
    out: list[list[dict]] = []
    size = 0.0
    for r in records:
        mib = (
            12.0 * draws[r["cell_id"]] * math.prod(sample_shape(r)) / 2**20
        )  # float32 samples + float64 noise
        if out and size + mib <= limit:
            out[-1].append(r)
            size += mib
        else:
            out.append([r])
            size = mib
    return out


def sample_group(
    records: list[dict], models: dict, draws: dict[str, tuple[int, int]], device: str, budget_mib: float
) -> tuple[dict[str, np.ndarray], float]:
    """The audit samples of ``records`` (cell id -> (n, *shape) float32), drawn together for every cell's
    model "a" (``diffaudit.models.group_sampling.sample_models``) within ``budget_mib`` of device memory,
    generation i of a cell from noise seed (seed, i) exactly as its audit's ``sample`` stage draws it; and the
    seconds it took. ``models``: cell id -> the cell's ``CheckpointModel`` (cells whose training failed are
    left out); ``draws``: cell id -> (n, seed) of its audit (``audit_draw``)."""
    from diffaudit.models.group_sampling import sample_models
    from diffaudit.models.sampler import noise_from_seeds

    todo = [r for r in records if r["cell_id"] in models]
    t0 = time.perf_counter()
    noises = []
    for r in todo:
        n, seed = draws[r["cell_id"]]
        noises.append(noise_from_seeds(range(n), models[r["cell_id"]].shape, base_seed=seed))
    xs = sample_models([models[r["cell_id"]] for r in todo], noises, budget_mib=budget_mib)
    return {r["cell_id"]: x for r, x in zip(todo, xs, strict=True)}, time.perf_counter() - t0


# ------------------------------------------------------------------------------------ dry run: estimates


def _step_seconds(model: str, shape, batch: int, opts: dict, M: int, device: str, budget_s: float) -> float:
    """Seconds per training step of ``M`` models (``train`` for one, ``train_many`` for more), timed after a
    warm-up step for at most ``budget_s`` seconds (at least one timed step)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((max(2 * batch, 64), *shape)).astype(np.float32)
    base = replace(TrainConfig(**opts), device=device, log_every=1, seed=0)

    def run(steps: int) -> list[dict]:
        cfg = replace(base, steps=steps)
        if M == 1:
            return train(x, model, cfg, progress=False).stats
        return train_many([x] * M, model, cfg, list(range(M))).stats

    t = time.perf_counter()
    first = run(2)
    guess = max(first[1]["elapsed_s"] - first[0]["elapsed_s"], 1e-4)
    if time.perf_counter() - t > budget_s:
        return guess
    k = int(min(20, max(2, budget_s / guess)))
    lines = run(k + 1)
    return max((lines[-1]["elapsed_s"] - lines[0]["elapsed_s"]) / k, 1e-6)


def _forward_seconds_per_sample(model: str, shape, device: str, budget_s: float) -> float:
    """Seconds of one denoiser evaluation per sample (the sampler's unit of work): 64 samples, then as many as
    fit a tenth of ``budget_s`` (at most 4,096), best of 3 timed evaluations after a warm-up one."""
    import torch

    dev = resolve_device(device)
    net = EDMPrecond(init_network(model, tuple(shape), 0), 1.0).to(dev).eval()

    def best_of(n: int, reps: int) -> float:
        x = torch.randn((n, *shape), device=dev)
        best = float("inf")
        with torch.no_grad():
            net(x, 1.0)
            for _ in range(reps):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                net(x, 0.5)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
        return best / n

    per = best_of(64, 1)
    n = int(min(4096, max(64, budget_s / 10 / max(per, 1e-9))))
    return per if n == 64 else best_of(n, 3)


def _sample_batches_of(unit: list[dict]) -> list[list[dict]]:
    """The batches a group's cells are sampled in (``sample_batches`` with each cell's audit draw)."""
    try:
        draws = {r["cell_id"]: audit_draw(r, "cpu")[0] for r in unit}
    except DiffauditError:  # a bad [audit] option: the cell fails alone, so it samples alone
        return [[r] for r in unit]
    return sample_batches(unit, draws)


def _group_forward_seconds_per_sample(
    model: str, shape, M: int, device: str, rows: int | None = None
) -> float:
    """Seconds per sample and denoiser evaluation when ``M`` models are sampled together (``sample_group``'s
    loop, ``diffaudit.models.group_sampling``): one-step Heun (one evaluation) of ``rows`` samples per
    model (default: 4,096 samples over all models, 8 to 256 a model), best of 2 after a warm-up."""
    rows = int(rows or max(8, min(256, 4096 // max(M, 1))))
    from diffaudit.models.checkpoint import CheckpointModel
    from diffaudit.models.group_sampling import sample_models

    dev = str(resolve_device(device))
    cfg = {"model": model, "shape": list(shape), "sigma_data": 1.0}
    models = [
        CheckpointModel(
            precond=EDMPrecond(init_network(model, tuple(shape), m), 1.0), config=cfg, device=dev, num_steps=1
        )
        for m in range(M)
    ]
    noise = [np.zeros((rows, *shape)) for _ in range(M)]
    sample_models(models, [z[:2] for z in noise])
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        sample_models(models, noise)  # returns host arrays: the device work is done
        best = min(best, time.perf_counter() - t)
    return best / (M * rows)


@dataclass
class Estimate:
    units: list[list[dict]]
    train_s: list[float]  # per unit
    audit_s: list[float]  # per unit
    wall_s: float  # the units scheduled on ``workers`` workers (``executors.schedule``)
    calibration: list[dict]  # what was timed
    calibration_s: float


def unit_models(unit: list[dict]) -> list[int]:
    """Step budgets of the models a unit trains (empty for a control)."""
    return [int(r["steps"]) for r in unit for _ in cell_models(r) if not r["model"].startswith("control:")]


def group_train_seconds(budgets: list[int], step_s) -> float:
    """Training time of one group whose models have ``budgets`` steps: while k models are left, a step costs
    ``step_s(k)`` (models leave the group when their budget is spent)."""
    b = sorted(budgets)
    t, done = 0.0, 0
    for i, s in enumerate(b):
        t += (s - done) * step_s(len(b) - i)
        done = s
    return t


def estimate(
    units: list[list[dict]],
    device: str,
    workers: int,
    *,
    calibrate_s: float = 0.4,
    cpu_max_models: int = 4,
) -> Estimate:
    """Time estimate of ``units`` on ``workers`` workers of ``device``, from a short calibration here: per
    network (model, shape, training options), timed steps at one model and at the largest group (on CPU at
    most ``cpu_max_models`` models, extrapolated linearly: a CPU group is arithmetic-bound), linear in
    between; the audit as the sampler's measured network evaluations plus the documented ``PROBE_S_*``
    cost."""
    t_start = time.perf_counter()
    dev = resolve_device(device).type
    nets: dict[tuple, dict] = {}
    for u in units:
        r = u[0]
        if r["model"].startswith("control:"):
            continue
        k = (r["model"], sample_shape(r), tuple(sorted((a, repr(b)) for a, b in r["train"].items())))
        size = len(unit_models(u))
        e = nets.setdefault(k, {"record": r, "max_m": 1, "sizes": set()})
        e["max_m"] = max(e["max_m"], size)
        if r.get("group"):  # its cells' models "a" are sampled together, batch by batch (``sample_group``)
            e["sizes"].update(len(b) for b in _sample_batches_of(u))
    calib = []
    for k, e in nets.items():
        r = e["record"]
        opts = {a: b for a, b in r["train"].items() if a not in ("steps", "seed", "device", "log_every")}
        batch = int(opts.get("batch", 256))
        m_hi = e["max_m"] if dev == "cuda" else min(e["max_m"], cpu_max_models)
        t1 = _step_seconds(r["model"], k[1], batch, opts, 1, dev, calibrate_s)
        pts = {1: t1}
        # a CPU group is at most as fast as its arithmetic: a network too slow to time at m_hi models within
        # the budget is taken as linear in the models (one model's step time per model)
        if m_hi > 1 and (dev == "cuda" or 3 * m_hi * t1 <= calibrate_s):
            pts[m_hi] = _step_seconds(r["model"], k[1], batch, opts, m_hi, dev, calibrate_s)
        e["points"] = pts
        e["fwd"] = _forward_seconds_per_sample(r["model"], k[1], dev, calibrate_s)
        line = {
            "model": r["model"],
            "shape": list(k[1]),
            "batch": batch,
            "step_s": {str(m): round(v, 6) for m, v in pts.items()},
            "forward_s_per_sample": e["fwd"],
        }
        if should_sample_together(dev) and e["sizes"]:  # a group's audit samples are drawn together
            e["fwd_group"] = {
                m: _group_forward_seconds_per_sample(r["model"], k[1], m, dev) for m in sorted(e["sizes"])
            }
            line["group_forward_s_per_sample"] = {str(m): v for m, v in e["fwd_group"].items()}
        calib.append(line)

    def step_fn(e):
        pts = e["points"]
        (m0, t0), (m1, t1) = (1, pts[1]), max(pts.items())
        slope = (t1 - t0) / (m1 - m0) if m1 > m0 else 0.0
        return lambda m: t0 + slope * (m - 1) if m1 > m0 else t0 * m

    train_s, audit_s = [], []
    for u in units:
        r = u[0]
        budgets = unit_models(u)
        if budgets:
            k = (r["model"], sample_shape(r), tuple(sorted((a, repr(b)) for a, b in r["train"].items())))
            e = nets[k]
            f = step_fn(e)
            train_s.append(
                group_train_seconds(budgets, f) if len(budgets) > 1 else budgets[0] * e["points"][1]
            )
            # a group's samples are drawn together on CUDA (calibrated at each group size of the sweep)
            together = bool(r.get("group")) and "fwd_group" in e
        else:
            train_s.append(0.0)
            together = False
        fwd = {}  # cell id -> seconds per sample and network evaluation of its audit's sampler
        for b in _sample_batches_of(u) if together else [[c] for c in u]:
            for c in b:
                fwd[c["cell_id"]] = e["fwd_group"][len(b)] if together else (e["fwd"] if budgets else 0.0)
        a = 0.0
        for c in u:
            ns = int(c["n_samples"])
            evals = ns * (2 * int(c["sampler_steps"]) - 1)
            a += PROBE_S_BASE + PROBE_S_PER_SAMPLE * ns + PROBE_S_PER_TRAIN_ITEM * int(c["n_train"])
            a += evals * fwd[c["cell_id"]]
        audit_s.append(a)
    _, wall = schedule([t + a for t, a in zip(train_s, audit_s, strict=True)], workers)
    return Estimate(
        units=units,
        train_s=train_s,
        audit_s=audit_s,
        wall_s=wall,
        calibration=calib,
        calibration_s=time.perf_counter() - t_start,
    )


def describe_units(units: list[list[dict]]) -> list[dict]:
    """One line of facts per unit, for ``--dry-run``."""
    out = []
    for u in units:
        g = u[0].get("group")
        out.append(
            {
                "group": g["id"] if g else None,
                "cells": [r["cell_id"] for r in u],
                "models": len(unit_models(u)),
                "model": u[0]["model"],
                "shape": list(sample_shape(u[0])),
                "steps": unit_models(u),
            }
        )
    return out


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
