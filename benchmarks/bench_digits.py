"""Real images end to end (issue 12, part 4): small EDM UNets trained on scikit-learn's 1,797 handwritten digits at
16x16 (``digits:size=16``, nearest-neighbour upsampled, see ``diffaudit.datasets.digits``) at n = 32, 128, 512 and
1,497, each audited with every memorization probe: copy rate under the transform-robust search (shifts, flip,
crops), partial copies, extraction yield, membership-inference AUC, basin-of-attraction AUC and C_T.

Baselines, measured in the same run on the same data (``--controls``, on by default): ``control:memorizer`` (the
exact empirical-score denoiser of the training set, sampled with the same Heun sampler: what a perfect copier
reads) and ``control:oracle`` (fresh real digits outside the training set: what a perfect generalizer reads; skipped
where fewer than ``--n-samples`` digits lie outside the training set -- at n = 1,497 only the 300 holdout images).

Holdout: the same 300 held-out digits at every n (``Digits.split`` reads the holdout from the end of one seeded
permutation, independent of n_train). Training on all 1,797 would leave no held-out real data, and the copy rule's
calibration, C_T, membership and basin all need it; so the largest n is 1,797 - 300 = 1,497 (83 % of the set),
not 1,797. The training set at each n is the audit's own (``synthetic_data(..., seed=0)``), nested in n.

Budget: the same for every n, ``--steps`` optimizer steps of batch ``--batch`` (default 2,000 x 32 = 64,000 image
visits: 2,000 epochs at n = 32, 43 at n = 1,497) -- a fixed compute budget, as in the sweep presets, so the rows
compare data sizes at one cost; the large-n models are undertrained, not shown to generalize. Torch runs on
``--threads`` threads (default 1: measured ~4x faster than 2 threads for this model on 2 cores next to other jobs).

    python benchmarks/bench_digits.py                          # n = 32 128 512 1497, ~4 min per n on 2 loaded cores
    python benchmarks/bench_digits.py --n 32 128 --out runs/digits
    python benchmarks/bench_digits.py --n 1497 --steps 20000   # a budget that sees each large-n image ~430 times

Each model's checkpoint and audit report are kept under ``--out`` (default: a temporary folder, printed), so a row
can be re-audited with ``diffaudit audit --model ckpt:OUT/unet-n32/checkpoint --dataset digits:size=16 --n-train 32
--n-holdout 300``; ``OUT/rows.json`` holds the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import diffaudit
from diffaudit.fileio import atomic_write_json, jsonable
from diffaudit.harness.train import TrainConfig, train
from diffaudit.models.adapters import load_model
from diffaudit.models.checkpoint import CheckpointModel
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit_on
from diffaudit.pipeline.setup import synthetic_data
from diffaudit.threads import torch_threads

DATASET = "digits:size=16"
COLUMNS = (
    "model",
    "n",
    "train s",
    "final loss",
    "copy rate [95 % CI]",
    "partial",
    "copied / n",
    "extracted (yield)",
    "MIA AUC [CI]",
    "basin AUC [CI]",
    "C_T",
    "memorization",
    "audit s",
)


def fmt(metric, digits: int = 3, ci: bool = True) -> str:
    if metric is None:
        return "-"
    v = f"{metric['value']:.{digits}f}"
    if ci and metric.get("ci"):
        lo, hi = metric["ci"]
        v += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return v


def row(label: str, n: int, rep: dict, train_s: float | None, loss: float | None, audit_s: float) -> dict:
    m = rep["probes"]["memorization"]
    ex = m.get("unique_extracted")
    return {
        "model": label,
        "n": n,
        "train s": "-" if train_s is None else f"{train_s:.0f}",
        "final loss": "-" if loss is None else f"{loss:.4f}",
        "copy rate [95 % CI]": fmt(m.get("copy_rate")),
        "partial": fmt(m.get("copy_rate_partial"), ci=False),
        "copied / n": f"{m['unique_train_copied']['value']:.0f} / {n}",
        "extracted (yield)": "-"
        if ex is None
        else f"{ex['value']:.0f} ({m['extraction_yield']['value']:.3f})",
        "MIA AUC [CI]": fmt(m.get("mia_auc"), 2),
        "basin AUC [CI]": fmt(m.get("basin_auc"), 2),
        "C_T": fmt(m.get("ct"), 1, ci=False),
        "memorization": rep["verdict"]["memorization"],
        "audit s": f"{audit_s:.0f}",
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uptime unavailable"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[32, 128, 512, 1497])
    ap.add_argument("--n-holdout", type=int, default=300)
    ap.add_argument("--model", default="unet:channels=16,levels=2")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--extraction-budget", type=int, default=1000)
    ap.add_argument("--sampler-steps", type=int, default=18, help="Heun steps of the audit's sampler")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-controls", dest="controls", action="store_false")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_digits_"))
    out.mkdir(parents=True, exist_ok=True)
    diffaudit.set_threads(args.threads)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; {uptime()}")
    print(f"output: {out}")
    tcfg = TrainConfig(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup_steps=min(100, args.steps // 10),
        log_every=max(1, args.steps // 10),
        seed=args.seed,
        device="cpu",
    )
    acfg = dict(
        n_samples=args.n_samples,
        n_boot=0,
        extraction_budget=args.extraction_budget,
        seed=args.seed,
        device="cpu",
    )
    print(
        f"budget: {args.model}, {args.steps} steps x batch {args.batch}, lr {args.lr}; audit: {args.n_samples} "
        f"samples ({args.sampler_steps} Heun steps), holdout {args.n_holdout}, extraction budget "
        f"{args.extraction_budget}, torch threads {args.threads}"
    )
    rows: list[dict] = []
    for n in args.n:
        data = synthetic_data(DATASET, n, args.n_holdout, seed=args.seed)
        t0 = time.perf_counter()
        with torch_threads(args.threads):
            res = train(
                data.train,
                args.model,
                tcfg,
                out_dir=out / f"unet-n{n}" / "checkpoint",
                progress=False,
                dataset_spec=data.dataset.spec,
            )
        train_s = time.perf_counter() - t0
        models = [("unet", CheckpointModel(precond=res.ema, config=res.config, num_steps=args.sampler_steps))]
        if args.controls:
            for name in ("memorizer", "oracle"):
                pool = data.dataset.n_population - n  # the oracle draws real digits outside the training set
                if name == "oracle" and pool < args.n_samples:
                    print(
                        f"control:oracle | {n} | skipped: only {pool} digits lie outside the training set (the "
                        f"holdout itself), fewer than --n-samples {args.n_samples}",
                        flush=True,
                    )
                    continue
                models.append(
                    (
                        f"control:{name}",
                        load_model(
                            f"control:{name}",
                            train=data.train,
                            dataset=data.dataset,
                            num_steps=args.sampler_steps,
                        ),
                    )
                )
        for label, model in models:
            t0 = time.perf_counter()
            with torch_threads(args.threads):
                rep = run_audit_on(
                    model,
                    data,
                    config=AuditConfig(**acfg),
                    out_dir=out / f"{label.replace(':', '-')}-n{n}" / "report",
                    model_spec=label,
                )
            audit_s = time.perf_counter() - t0
            r = row(
                label,
                n,
                rep,
                train_s if label == "unet" else None,
                res.stats[-1]["loss"] if label == "unet" else None,
                audit_s,
            )
            r["raw"] = {"memorization": rep["probes"]["memorization"], "verdict": rep["verdict"]}
            rows.append(r)
            print(" | ".join(str(r[c]) for c in COLUMNS), flush=True)
            atomic_write_json(out / "rows.json", jsonable(rows))
    print()
    print(markdown(rows))
    print(f"\nafter: {uptime()}")


if __name__ == "__main__":
    main()
