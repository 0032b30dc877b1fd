"""Sampling a sweep group's models together (``diffaudit.models.group_sampling.sample_models``: one Heun loop,
the networks vmapped over the models) against the baseline of sampling them one by one
(``CheckpointModel.sample_from_noise``, what each cell's audit does alone), in the same run.

    python benchmarks/bench_group_sampling.py                  # CPU, the presets' 3 x 256 MLP and smaller ones
    python benchmarks/bench_group_sampling.py --threads 1      # one torch thread (a sweep worker's share)
    python benchmarks/bench_group_sampling.py --device cuda    # GPU: the paper preset's 4 x 512 MLP too

Models: M randomly initialised MLPs of one spec on d-dimensional samples, each with its own sigma_data (as the
cells of one group, trained on different data), ``--n`` samples each, ``--steps`` sampler steps (Heun: 2N - 1
network evaluations). Random weights cost the same as trained ones. The result of every model is checked
against the one-by-one path (max abs difference printed). Rates: samples per second over all models.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from diffaudit.harness.edm import EDMPrecond
from diffaudit.harness.networks import parse_model_spec
from diffaudit.harness.train import init_network
from diffaudit.models.checkpoint import CheckpointModel
from diffaudit.models.group_sampling import sample_models
from diffaudit.models.sampler import noise_from_seeds


def make_models(spec: str, d: int, M: int, steps: int, device: str) -> list[CheckpointModel]:
    out = []
    for m in range(M):
        sd = 0.5 + 0.1 * m
        net = init_network(parse_model_spec(spec), (d,), m)
        cfg = {"model": spec, "shape": [d], "sigma_data": sd}
        out.append(CheckpointModel(precond=EDMPrecond(net, sd), config=cfg, device=device, num_steps=steps))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def one(spec: str, d: int, M: int, n: int, steps: int, device: str, seq_models: int) -> dict:
    models = make_models(spec, d, M, steps, device)
    noises = [noise_from_seeds(range(n), (d,), base_seed=m) for m in range(M)]
    k = min(seq_models, M)
    models[0].sample_from_noise(noises[0][:8])  # warm-up of both paths (allocator, kernels)
    sample_models(models[:2], [z[:8] for z in noises[:2]])
    sync(device)
    t0 = time.perf_counter()
    seq = [models[m].sample_from_noise(noises[m]) for m in range(k)]
    sync(device)
    t_seq = (time.perf_counter() - t0) / k  # seconds per model
    t0 = time.perf_counter()
    grp = sample_models(models, noises)
    sync(device)
    t_grp = (time.perf_counter() - t0) / M
    err = max(float(np.abs(grp[m] - seq[m]).max()) for m in range(k))
    return {
        "spec": spec,
        "d": d,
        "M": M,
        "n": n,
        "seq_s_per_model": t_seq,
        "grp_s_per_model": t_grp,
        "ratio": t_seq / t_grp,
        "max_abs_diff": err,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--n", type=int, default=2000, help="samples per model (the presets' audit: 2,000)")
    ap.add_argument("--steps", type=int, default=32, help="sampler steps (the presets': 32)")
    ap.add_argument("--seq-models", type=int, default=4, help="models the one-by-one baseline samples")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [
        ("mlp:width=64,depth=3", 8, 8),
        ("mlp:width=128,depth=3", 32, 8),
        ("mlp:width=256,depth=3", 32, 8),
        ("mlp:width=256,depth=3", 32, 16),
    ]
    if args.device.startswith("cuda"):
        cases += [("mlp:width=256,depth=3", 32, 64), ("mlp:width=512,depth=4", 64, 32)]
    n, steps = (args.n, args.steps) if not args.smoke else (64, 4)
    if args.smoke:
        cases = cases[:1]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"device {args.device}, torch threads {torch.get_num_threads()}, load {load:.2f}"
    )
    print(
        f"{'network':24s} {'d':>4s} {'M':>4s} {'n':>6s} {'one-by-one s/model':>19s} "
        f"{'together s/model':>17s} {'ratio':>6s} {'max |diff|':>11s}"
    )
    for spec, d, M in cases:
        r = one(spec, d, M, n, steps, args.device, args.seq_models)
        print(
            f"{spec:24s} {d:4d} {M:4d} {n:6d} {r['seq_s_per_model']:19.3f} {r['grp_s_per_model']:17.3f} "
            f"{r['ratio']:5.2f}x {r['max_abs_diff']:11.2e}"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load at the end: {load:.2f}")


if __name__ == "__main__":
    main()
