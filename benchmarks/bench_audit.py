"""`diffaudit audit` at scale: 10k generated vs 50k training 32x32 images (+ 10k holdout), pixels features.

    python benchmarks/bench_audit.py [--n-gen 10000] [--n-train 50000] [--n-holdout 10000]

Writes sprites (size=32) as `samples:` / `--train` / `--holdout` .npy files, runs the real CLI in a
subprocess (end-to-end wall time, target < 60 s on 2 cores), prints the per-stage timings from
report.json, and times the named baseline in the same run: the training-copy search (2 nearest
neighbours of every generated sample in the whole training set) with scikit-learn
``NearestNeighbors(algorithm="brute")`` against diffaudit's ``find_copies`` (FAISS exact search in blocks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-gen", type=int, default=10_000)
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-holdout", type=int, default=10_000)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--n-boot", type=int, help="pass --n-boot to the audit (default: the audit's default)")
    ap.add_argument(
        "--scipy-eigh",
        action="store_true",
        help="experiment: run the same CLI with numpy.linalg.eigh replaced by scipy.linalg.eigh(driver='evr') "
        "(this machine's numpy syevd is ~5x slower at D=1024; FD calls it once per bootstrap resample)",
    )
    args = ap.parse_args()

    from diffaudit.datasets.base import get_dataset

    ds = get_dataset("sprites:size=32")
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    t = time.perf_counter()
    gen = ds.sample(args.n_gen, 100)[0]
    train = ds.sample(args.n_train, 1)[0]
    hold = ds.sample(args.n_holdout, 2)[0]
    for name, x in (("gen", gen), ("train", train), ("holdout", hold)):
        np.save(work / f"{name}.npy", x)
    print(
        f"data: {args.n_gen} generated, {args.n_train} train, {args.n_holdout} holdout, shape {gen.shape[1:]} "
        f"(written in {time.perf_counter() - t:.1f} s)"
    )

    out = work / "report"
    cmd = [
        sys.executable,
        "-m",
        "diffaudit",
        "audit",
        "--model",
        f"samples:{work / 'gen.npy'}",
        "--train",
        str(work / "train.npy"),
        "--holdout",
        str(work / "holdout.npy"),
        "--features",
        "pixels",
        "--out",
        str(out),
        "--no-progress",
    ] + ([] if args.n_boot is None else ["--n-boot", str(args.n_boot)])
    if args.scipy_eigh:
        shim = (
            "import numpy, scipy.linalg, sys; "
            "numpy.linalg.eigh = lambda a, UPLO='L': scipy.linalg.eigh(a, lower=(UPLO == 'L'), driver='evr'); "
            "from diffaudit.cli import main; main(sys.argv[1:])"
        )
        cmd = [sys.executable, "-c", shim, *cmd[3:]]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-2000:])
        raise SystemExit(p.returncode)
    rep = json.loads((out / "report.json").read_text())
    print(f"diffaudit audit end to end: {wall:.1f} s (target < 60 s)")
    print("per-stage timings (report.json): " + ", ".join(f"{k} {v:.1f}s" for k, v in rep["timings"].items()))

    if not args.skip_baseline:
        from sklearn.neighbors import NearestNeighbors

        from diffaudit.probes.memorization import find_copies

        xg = gen.reshape(len(gen), -1)
        xt = train.reshape(len(train), -1)
        t = time.perf_counter()
        cr = find_copies(xg, xt)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        d, i = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(xt).kneighbors(xg)
        t_sk = time.perf_counter() - t
        agree = float((i[:, 0] == cr.nn_index).mean())
        print(
            f"copy search 2-NN, {len(xg)} x {len(xt)} x {xg.shape[1]}: find_copies {t_ours:.1f} s, "
            f"sklearn brute {t_sk:.1f} s -> {t_sk / t_ours:.2f}x (nn agreement {agree:.4f})"
        )


if __name__ == "__main__":
    main()
