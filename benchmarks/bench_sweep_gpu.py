"""A reduced ``--preset paper`` sweep on one device, with per-cell timings.

    python benchmarks/bench_sweep_gpu.py                 # on a GPU (device cuda): the reduced paper sweep
    python benchmarks/bench_sweep_gpu.py --device cpu    # smoke check on CPU (tiny budget)

Reduction of the paper preset: hidden-manifold and mcm only (no images), d in {32, 64}, n in
{2^6, 2^10, 2^14}, seed 0, fixed 2000 steps (CPU smoke: 50 steps, n_samples 500), the gaussian
control at every cell. Prints per cell: training steps, train / audit seconds, and training steps per
second; then the baseline: the same training of one cell on CPU for 100 steps, and the ratio of the
device's steps/s to it (1.0 when --device cpu).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import tomllib

from diffaudit.sweeps.run import run_sweep
from diffaudit.sweeps.spec import expand, parse_spec, preset_path


def reduced_spec(
    device: str,
    steps: int | None = None,
    n_samples: int | None = None,
    datasets: tuple[str, ...] = ("hidden-manifold", "mcm"),
) -> dict:
    raw = tomllib.loads(preset_path("paper").read_text())
    raw = copy.deepcopy(raw)
    raw["name"] = "paper-reduced"
    raw["dataset"] = [d for d in raw["dataset"] if d["name"] in datasets]
    for d in raw["dataset"]:
        d["params"]["d"] = [32, 64]
    raw["n"] = [64, 1024, 16384]
    raw["seeds"] = [0]
    raw["reproducibility"] = False
    raw["budget"] = {"rule": "steps", "steps": 2000 if device != "cpu" else 50}
    if device == "cpu":
        raw["n"] = [64, 256]
        raw["dataset"] = raw["dataset"][:1]
        raw["dataset"][0]["params"]["d"] = [16]
        raw["model"] = "mlp:width=64,depth=2"
        raw["audit"].update(n_samples=500, n_holdout=500, sampler_steps=16)
    if steps:
        raw["budget"]["steps"] = int(steps)
    if n_samples:
        raw["audit"].update(n_samples=int(n_samples), n_holdout=int(n_samples))
    return raw


def cpu_baseline_steps_per_s(record: dict, steps: int = 100) -> float:
    from diffaudit.datasets.base import get_dataset
    from diffaudit.harness.train import TrainConfig, train

    ds = get_dataset(record["dataset"], **record["params"])
    x = ds.sample(record["n_train"], record["seed"])[0]
    cfg = TrainConfig(steps=steps, seed=0, device="cpu", **record["train"])
    t = time.perf_counter()
    train(x, record["model"], cfg, progress=False)
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="sweep folder (default: a temp folder)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="override the training steps per cell")
    ap.add_argument("--n-samples", type=int, default=None, help="override generated/holdout samples per cell")
    ap.add_argument(
        "--datasets", default="hidden-manifold,mcm", help="comma-separated subset of the paper datasets"
    )
    args = ap.parse_args()
    raw = reduced_spec(args.device, args.steps, args.n_samples, tuple(args.datasets.split(",")))
    spec = parse_spec(raw, where="paper-reduced")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_sweep_"))
    t0 = time.perf_counter()
    res = run_sweep(spec, out, device=args.device, workers=args.workers, resume=True, progress=False)
    wall = time.perf_counter() - t0
    print(
        f"device {args.device}: {res.n_cells} cells in {wall:.1f} s ({len(res.failed)} failed); folder {out}"
    )
    print(f"{'cell':60s} {'steps':>6s} {'train_s':>8s} {'audit_s':>8s} {'steps/s':>8s}")
    best = None
    for c in expand(spec):
        rp = out / "cells" / c.cell_id / "report.json"
        if not rp.is_file():
            print(f"{c.cell_id:60s} (missing)")
            continue
        t = json.loads(rp.read_text())["sweep"]["timings"]
        sps = c.steps / t["train"] if c.steps and t.get("train") else float("nan")
        print(f"{c.cell_id:60s} {c.steps:6d} {t.get('train', 0):8.2f} {t.get('audit', 0):8.2f} {sps:8.1f}")
        if c.steps and (best is None or c.n_train > best[0].n_train):
            best = (c, sps)
    if best is not None:
        base = cpu_baseline_steps_per_s(best[0].record()) if args.device != "cpu" else best[1]
        print(
            f"baseline (CPU, same cell {best[0].cell_id}, 100 steps): {base:.1f} steps/s; "
            f"{args.device} / CPU = {best[1] / base:.2f}x"
        )


if __name__ == "__main__":
    main()
