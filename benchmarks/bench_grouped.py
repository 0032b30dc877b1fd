"""Grouped training of sweep cells (``diffaudit.sweeps.groups``, one ``train_many`` loop per group) against
the baseline of training the same cells one by one with ``diffaudit.harness.train.train``, in the same run.

    python benchmarks/bench_grouped.py                      # CPU: the quick preset, then the break-even
    python benchmarks/bench_grouped.py --only breakeven     # CPU: the break-even table alone
    python benchmarks/bench_grouped.py --threads 2          # both paths on 2 torch threads
    python benchmarks/bench_grouped.py --device cuda        # GPU: a reduced --preset paper
    python benchmarks/bench_grouped.py --device cpu --paper --smoke   # the GPU path's code, tiny, on CPU

CPU (default): the quick preset's trained cells (mcm d = 8 and hidden-manifold d = 32, n = 16 ... 8,192, 3 x
256 MLP, batch 256): two groups of 10 (one per sample shape), each cell trained ``--steps`` steps (the preset
trains 4,000; only the rate matters). Both paths get ``--threads`` torch threads (``train`` drops to one
thread below ``diffaudit.threads.SINGLE_THREAD_BELOW_FLOPS``; the threads each path used are printed).

Break-even (CPU, ``breakeven``): 8 MLPs of depth 3 (d = 8 and 32; width 32 ... 256; batch 32 ... 256) grouped
against 3 of them one by one, one thread, 24-40 steps: the ratio against the training FLOPs per model and step
(6 x parameters x batch) that ``diffaudit.sweeps.groups.GROUP_CPU_BELOW_FLOPS`` is read from.

GPU (``--device cuda``, or ``--paper``): a reduced ``--preset paper``: hidden-manifold and mcm at d in {32,
64}, n in {2^6, 2^10, 2^14}, seeds 0, 1, 2, reproducibility pairs (two models per cell), the preset's 4 x 512
MLP and batch 256, ``--steps`` steps per model (default 300 on CUDA): 36 cells, 72 models in 2 groups (one per
d). The one-by-one baseline trains the first ``--seq-models`` models only (its rate per model-step does not
depend on which); it also checks that model 0 of the first group equals ``train`` alone (fp32: bf16 off on
both paths).

Rates are model-steps per second of the training loops alone (``train``'s and ``train_many``'s own clocks,
after the first quarter of the steps, which holds the allocator and kernel warm-up): data sampling and
set-up are excluded on both paths.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from dataclasses import replace

import numpy as np
import tomllib
import torch

from diffaudit.datasets.base import get_dataset
from diffaudit.harness.train import TrainConfig, train
from diffaudit.harness.vmap import network_size, train_many
from diffaudit.pipeline.setup import synthetic_data
from diffaudit.sweeps.groups import cell_models, plan_units, train_config
from diffaudit.sweeps.spec import derive_seed, expand, load_preset, parse_spec, preset_path


def paper_spec(steps: int, smoke: bool) -> dict:
    raw = copy.deepcopy(tomllib.loads(preset_path("paper").read_text()))
    raw["name"] = "paper-grouped"
    raw["dataset"] = [d for d in raw["dataset"] if d["name"] in ("hidden-manifold", "mcm")]
    for d in raw["dataset"]:
        d["params"]["d"] = [32, 64]
    raw["n"] = [64, 1024, 16384]
    raw["controls"] = []
    raw["budget"] = {"rule": "steps", "steps": int(steps)}
    raw["train"]["bf16"] = False  # fp32 on both paths, so the equality check is the tests' one
    if smoke:  # the same code on CPU in seconds
        raw["model"] = "mlp:width=32,depth=2"
        raw["n"] = [64, 256]
        raw["seeds"] = [0]
        raw["train"]["batch"] = 32
        for d in raw["dataset"]:
            d["params"]["d"] = [8]
    return raw


def model_jobs(unit: list[dict]) -> list[tuple[dict, str, np.ndarray, int]]:
    """(record, role, training set, network seed) of every model of a unit, as ``train_group`` draws them."""
    jobs = []
    for r in unit:
        ds = get_dataset(r["dataset"], **r["params"])
        x_a = synthetic_data(ds, int(r["n_train"]), int(r["n_holdout"]), int(r["seed"])).train
        for role, seed in cell_models(r):
            x = x_a if role == "a" else ds.sample(int(r["n_train"]), derive_seed(r["seed"], "half-b"))[0]
            jobs.append((r, role, x, seed))
    return jobs


def rate_from(lines: list[dict], models: int) -> float:
    """Model-steps per second between the first and the last stats line."""
    dt = lines[-1]["elapsed_s"] - lines[0]["elapsed_s"]
    return models * (lines[-1]["step"] - lines[0]["step"]) / max(dt, 1e-9)


def breakeven(threads: int) -> None:
    """Grouped / one-by-one model-steps per second for small to medium MLPs on ``threads`` threads."""
    M, rng = 8, np.random.default_rng(0)
    print(f"break-even: {M} grouped MLPs (depth 3) vs one by one, torch threads {threads}")
    print(
        f"{'d':>3s} {'width':>5s} {'batch':>5s} {'FLOPs/step':>10s} {'one':>7s} {'grouped':>8s} {'ratio':>6s}"
    )
    for d in (8, 32):
        for width in (32, 64, 128, 256):
            for batch in (32, 256):
                spec = f"mlp:width={width},depth=3"
                sets = [rng.standard_normal((512, d)).astype(np.float32) for _ in range(M)]
                steps = 40 if width * batch < 20000 else 24
                cfg = TrainConfig(steps=steps, batch=batch, log_every=steps // 4, device="cpu")
                rate_g = rate_from(train_many(sets, spec, cfg, list(range(M))).stats, M)
                dt = ds = 0.0
                for m in range(3):
                    st = train(sets[m], spec, replace(cfg, seed=m), progress=False).stats
                    dt += st[-1]["elapsed_s"] - st[0]["elapsed_s"]
                    ds += st[-1]["step"] - st[0]["step"]
                flops = 6.0 * network_size(spec, (d,))[0] * batch
                rate_1 = ds / dt
                ratio = rate_g / rate_1
                print(f"{d:3d} {width:5d} {batch:5d} {flops:10.2e} {rate_1:7.0f} {rate_g:8.0f} {ratio:6.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--paper", action="store_true", help="the reduced paper preset (default on CUDA)")
    ap.add_argument("--smoke", action="store_true", help="tiny network and sizes (checks the code path)")
    ap.add_argument("--steps", type=int, default=None, help="steps per model (default 100 CPU, 300 CUDA)")
    ap.add_argument("--seq-models", type=int, default=8, help="models the one-by-one baseline trains (paper)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both paths (CPU)")
    ap.add_argument("--only", default="quick,breakeven", help="CPU parts: quick, breakeven (comma-separated)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    parts = set(a.only.split(","))
    if a.device == "cpu" and not a.paper and "quick" not in parts:
        if "breakeven" in parts:
            breakeven(a.threads)
        return
    paper = a.paper or a.device == "cuda"
    steps = a.steps or (300 if a.device == "cuda" else 100)
    if paper:
        spec = parse_spec(paper_spec(steps, a.smoke), where="paper-grouped")
    else:
        spec = load_preset("quick")
        spec = parse_spec({**spec.raw, "budget": {"rule": "steps", "steps": steps}}, where="quick")
    records = [c.record() for c in expand(spec) if not c.is_control]
    units = [u for u in plan_units(records, mode="on", device=a.device) if u[0].get("group")]
    log = max(steps // 4, 1)

    grouped_rates, group_sizes, first = [], [], None
    for u in units:
        jobs = model_jobs(u)
        cfg = replace(train_config(u[0], a.device, seed=0, steps=steps), log_every=log)
        sets = [x for _, _, x, _ in jobs]
        seeds = [s for _, _, _, s in jobs]
        if a.device == "cuda":  # CUDA context and kernels, outside the timed loop
            train_many(sets[:2], u[0]["model"], replace(cfg, steps=2), seeds[:2])
        res = train_many(sets, u[0]["model"], cfg, seeds, steps=[steps] * len(jobs))
        grouped_rates.append((rate_from(res.stats, len(jobs)), len(jobs)))
        group_sizes.append(len(jobs))
        if first is None:
            first = (jobs[0], res.ema_states[0], cfg)
    # one-by-one: every model (CPU), or the first --seq-models of them (paper)
    all_jobs = [j for u in units for j in model_jobs(u)]
    seq = all_jobs if not paper else all_jobs[: a.seq_models]
    seq_time, seq_steps, threads_seq = 0.0, 0, None
    for r, _role, x, seed in seq:
        cfg = replace(train_config(r, a.device, seed=seed, steps=steps), log_every=log)
        one = train(x, r["model"], cfg, progress=False)
        seq_time += one.stats[-1]["elapsed_s"] - one.stats[0]["elapsed_s"]
        seq_steps += one.stats[-1]["step"] - one.stats[0]["step"]
        threads_seq = torch.get_num_threads()
    rate_seq = seq_steps / seq_time
    total_models = sum(group_sizes)
    # the grouped rate of the whole set: total model-steps over the summed loop times
    t_grouped = sum(m * (steps - log) / rt for rt, m in grouped_rates)
    rate_grouped = total_models * (steps - log) / t_grouped

    (r0, _, x0, s0), ema0, cfg0 = first
    ref = train(x0, r0["model"], train_config(r0, a.device, seed=s0, steps=steps), progress=False)
    ref_state = ref.ema.net.state_dict()
    diff = max(float((ref_state[k] - ema0[k].to(ref_state[k].device)).abs().max()) for k in ref_state)

    dev = (
        torch.cuda.get_device_name(0)
        if a.device == "cuda"
        else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"device: {dev}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}; load average {load}")
    print(
        f"spec {spec.name}: {len(records)} trained cells, {total_models} models in {len(units)} groups "
        f"{group_sizes}, {records[0]['model']}, batch {records[0]['train'].get('batch')}, "
        f"{steps} steps each (rates after step {log})"
    )
    print(f"torch threads: --threads {a.threads}; one-by-one train() used {threads_seq} (its FLOPs rule)")
    print(f"one by one (train, {len(seq)} models): {rate_seq:9.1f} model-steps/s")
    for (rt, _), sz in zip(grouped_rates, group_sizes, strict=True):
        print(f"group of {sz:3d} models (train_many)    : {rt:9.1f} model-steps/s")
    print(f"grouped, all {total_models} models          : {rate_grouped:9.1f} model-steps/s")
    print(f"grouped / one by one: {rate_grouped / rate_seq:.2f}x")
    print(f"model 0 of group 1 vs train() alone: max |diff| of EMA weights {diff:.2e} (test tolerance 1e-5)")
    if a.device == "cpu" and not a.paper and "breakeven" in parts:
        breakeven(a.threads)


if __name__ == "__main__":
    main()
