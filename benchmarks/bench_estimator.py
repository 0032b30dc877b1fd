"""Lower-variance EDM loss estimators (diffaudit.harness.edm: K noise draws per item, stratified sigma,
importance-weighted sigma) against plain EDM sampling at equal compute, in one run.

Baseline: ``plain`` = batch 256, one (sigma, noise) draw per item, iid log-normal sigma. Every variant makes
256 denoiser evaluations per step (``K4`` = 64 items x 4 draws), so ratios compare estimators, not budgets.
Network: the presets' EDM MLP 3 x 256 (``mlp:width=256,depth=3``) on CPU; data: the quick preset's datasets
(mcm d = 8, hidden-manifold d = 32, D = 4), n = 1,024 training items each.

1. Gradient variance (``diffaudit.harness.train.minibatch_grad_variance``: tr Cov of the minibatch gradient,
   summed over parameters) of every variant at the SAME parameters: at initialisation and after
   ``--snap-steps`` plain steps. ``--repeats`` gradients per cell in 4 independent blocks, whose spread gives
   the printed standard error.
2. Final loss at equal compute: each variant trained ``--steps`` steps (seeds 0 .. ``--seeds`` - 1), its EMA
   scored with the plain EDM loss over one fixed set of 32 draws per training item shared by all variants
   (common random numbers); the runs also log ``grad_var`` along their own trajectory (the harness option).
3. ``--sweep DIR`` (off by default; 4-8 min per estimator on the shared 2 cores): the quick preset restricted to
   mcm d = 8 (4,000 steps, n = 16 .. 8,192), once per estimator in ``--sweep-variants``, then
   ``diffaudit thresholds``: does n1* / n2* move?

    python benchmarks/bench_estimator.py                       # parts 1-2 (~9 min on the shared 2 cores)
    python benchmarks/bench_estimator.py --sweep runs/est      # + part 3
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffaudit.datasets.base import get_dataset
from diffaudit.harness.edm import EDMPrecond, draw_sigma_noise, edm_loss_from_draws
from diffaudit.harness.networks import parse_model_spec
from diffaudit.harness.train import TrainConfig, init_network, make_generator, minibatch_grad_variance, train
from diffaudit.sweeps.spec import preset_path

MODEL = "mlp:width=256,depth=3"
DATASETS = ("mcm:d=8", "hidden-manifold:d=32,D=4")
VARIANTS = {  # TrainConfig options; 256 denoiser evaluations per step each
    "plain": {"batch": 256},
    "stratified": {"batch": 256, "sigma_sampling": "stratified"},
    "K4": {"batch": 64, "noise_draws": 4},
    "K4 stratified": {"batch": 64, "noise_draws": 4, "sigma_sampling": "stratified"},
    "proposal 1.8": {"batch": 256, "sigma_proposal_std": 1.8},
}


def grad_variance(net, X, opts: dict, repeats: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of the gradient variance over 4 independent blocks of repeats / 4."""
    cfg = TrainConfig(**opts)
    blocks = [
        minibatch_grad_variance(net, X, cfg, make_generator(seed * 100 + b, "cpu"), repeats // 4)
        for b in range(4)
    ]
    return float(np.mean(blocks)), float(np.std(blocks, ddof=1) / 2)


@torch.no_grad()
def eval_loss(net, X, draws_per_item: int = 32, seed: int = 123) -> float:
    """The plain EDM loss of ``net`` over ``draws_per_item`` fixed draws per training item (float64 mean)."""
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(draws_per_item):
        sigma, noise = draw_sigma_noise(g, len(X), tuple(X.shape[1:]), net.sigma_data)
        total += float(edm_loss_from_draws(net, X, sigma, noise, net.sigma_data)) * len(X)
        count += len(X)
    return total / count


def ratio(a: float, se_a: float, b: float, se_b: float) -> tuple[float, float]:
    r = a / b
    return r, r * math.hypot(se_a / a, se_b / b)


def part_variance(x: np.ndarray, name: str, args) -> None:
    X = torch.from_numpy(x)
    sd = float(x.std(dtype=np.float64))
    snaps = {"init": EDMPrecond(init_network(parse_model_spec(MODEL), x.shape[1:], 0), sd).train()}
    cfg = TrainConfig(steps=args.snap_steps, batch=256, log_every=args.snap_steps, device="cpu")
    snaps[f"after {args.snap_steps} plain steps"] = train(x, MODEL, cfg, progress=False).net.train()
    for snap, net in snaps.items():
        print(f"\n{name}, gradient variance at {snap} (R = {args.repeats} per cell):")
        print(f"  {'estimator':<15} {'grad var':>11} {'+-':>9} {'ratio to plain':>16} {'s':>6}")
        base = None
        for v, opts in VARIANTS.items():
            t = time.perf_counter()
            m, se = grad_variance(net, X, opts, args.repeats, seed=1)
            base = base or (m, se)
            r, rse = ratio(m, se, *base)
            print(
                f"  {v:<15} {m:11.4e} {se:9.1e} {r:10.3f} +-{rse:.3f} {time.perf_counter() - t:6.1f}",
                flush=True,
            )


def part_loss(x: np.ndarray, name: str, args) -> None:
    X = torch.from_numpy(x)
    print(f"\n{name}, {args.steps} steps x 256 evaluations, EMA scored on 32 fixed draws per item:")
    print(f"  {'estimator':<15} {'seed':>4} {'eval loss':>10} {'ratio':>7} {'last train loss':>16} "
          f"{'grad_var (logged)':>18} {'s':>6}")  # fmt: skip
    base = {}
    for v, opts in VARIANTS.items():
        for seed in range(args.seeds):
            cfg = TrainConfig(steps=args.steps, log_every=args.steps // 4, device="cpu", seed=seed,
                              grad_variance=16, **opts)  # fmt: skip
            t = time.perf_counter()
            res = train(x, MODEL, cfg, progress=False)
            s = time.perf_counter() - t
            loss = eval_loss(res.ema, X)
            base.setdefault(seed, loss)
            gv = ", ".join(f"{line['grad_var']:.2e}" for line in res.stats[-2:])
            print(f"  {v:<15} {seed:>4} {loss:10.4f} {loss / base[seed]:7.3f} {res.stats[-1]['loss']:16.4f} "
                  f"{gv:>18} {s:6.1f}", flush=True)  # fmt: skip


def quick_mcm_spec(opts: dict, steps: int, n_max: int) -> str:
    """The quick preset's TOML with mcm d = 8 as its only dataset and ``opts`` as its [train] table."""
    head, rest = preset_path("quick").read_text().split("[[dataset]]", 1)
    spec = head + '[[dataset]]\nname = "mcm"\nparams = { d = 8 }\n\n[budget]' + rest.split("[budget]", 1)[1]
    train_toml = "\n".join(f"{k} = {json.dumps(val)}" for k, val in {"lr": 1e-3, **opts}.items())
    for old, new in (
        ("[train]\nbatch = 256\nlr = 1e-3\n", f"[train]\n{train_toml}\n"),
        ("steps = 4000\n", f"steps = {steps}\n"),
        (
            "max = 8192, num = 10",
            f"max = {n_max}, num = {round(1 + 9 * math.log(n_max / 16) / math.log(512))}",
        ),
    ):
        if old not in spec:
            raise SystemExit(f"the quick preset no longer holds {old!r}; update this benchmark")
        spec = spec.replace(old, new)
    return spec


def part_sweep(out: Path, variants: list[str], steps: int, n_max: int) -> None:
    """The quick preset on mcm d = 8 only, once per estimator; prints n1*, n2* from ``diffaudit thresholds``."""
    for v in variants:
        d = out / v.replace(" ", "-")
        d.mkdir(parents=True, exist_ok=True)
        (d / "spec.toml").write_text(quick_mcm_spec(VARIANTS[v], steps, n_max))
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "diffaudit"]
        sweep = [
            *cmd,
            "sweep",
            str(d / "spec.toml"),
            "--out",
            str(d / "sweep"),
            "--workers",
            "2",
            "--threads",
            "1",
        ]
        subprocess.run(sweep + (["--resume"] if (d / "sweep").exists() else []), check=True)
        subprocess.run([*cmd, "thresholds", str(d / "sweep")], check=True, capture_output=True)
        doc = json.loads((d / "sweep" / "thresholds.json").read_text())
        for g in doc["groups"]:
            n1, n2 = g.get("n1_star") or {}, g.get("n2_star") or {}
            print(f"  {v:<15} n1* {n1.get('n_star')} {n1.get('n_star_ci')} ({n1.get('status')})  n2* "
                  f"[{n2.get('metric')}] {n2.get('n_star')} {n2.get('n_star_ci')} ({n2.get('status')})  "
                  f"{time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=400, help="gradients per variance cell (4 blocks)")
    ap.add_argument("--snap-steps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (the harness picks 1 for this model)"
    )
    ap.add_argument("--parts", default="variance,loss")
    ap.add_argument("--sweep", type=Path, default=None, help="also run part 3 into this folder")
    ap.add_argument("--sweep-variants", default="plain,stratified,K4")
    ap.add_argument("--sweep-steps", type=int, default=4000, help="the quick preset's budget")
    ap.add_argument("--sweep-n-max", type=int, default=8192, help="largest n (the quick preset's: 8192)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    parts = args.parts.split(",")
    for spec in DATASETS:
        x = get_dataset(spec).sample(args.n, 0)[0]
        if "variance" in parts:
            part_variance(x, spec, args)
        if "loss" in parts:
            part_loss(x, spec, args)
    if args.sweep is not None:
        print(f"\nquick preset, mcm d = 8 only, per estimator -> {args.sweep}:")
        part_sweep(args.sweep, args.sweep_variants.split(","), args.sweep_steps, args.sweep_n_max)


if __name__ == "__main__":
    main()
