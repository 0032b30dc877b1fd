"""Benchmark of the torch k-NN engine (``probes.knn_torch``) against FAISS on the CPU, measured in one run.

The engine exists for CUDA machines whose FAISS is the CPU-only wheel (issue 13); on the CPU it is the test
path, so the number to read is its time ratio to the baseline it replaces there, ``neighbors.search``'s FAISS
blocked brute force (both with float64 re-ranking, same k, same blocks budget), on the same data:
20,000 queries x 10,000 database rows at d = 64 and d = 768 (Gaussian data), k = 16 (the copy search's k).
Indices are compared too. With a CUDA device the torch engine is timed there as well.

    python benchmarks/bench_knn_torch.py                 # d = 64 and 768, both engines, best of 2
    python benchmarks/bench_knn_torch.py --threads 1 --dims 64

The CLI's thread policy is applied first (``diffaudit.threads``: ``--threads`` > ``$DIFFAUDIT_THREADS`` > usable
CPUs, and ``OMP_WAIT_POLICY=PASSIVE``, before torch and FAISS load); without the passive wait policy, on a busy
machine, OpenMP threads spin and the torch engine's many small per-block operations suffer most. Wall times
still need an otherwise idle machine: process time and the load average (``os.getloadavg``) are printed beside
them, before and after.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall s, process s of that call, result) over ``repeats`` calls."""
    best = (float("inf"), 0.0, None)
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        w = time.perf_counter() - t
        if w < best[0]:
            best = (w, time.process_time() - c, out)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nq", type=int, default=20_000)
    ap.add_argument("--nb", type=int, default=10_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 768])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--threads", type=int, default=None, help="FAISS and torch threads (default: the policy's)"
    )
    args = ap.parse_args()

    from diffaudit.threads import apply_thread_policy, resolve_threads

    n = apply_thread_policy(resolve_threads(args.threads), override=args.threads is not None)

    import faiss  # after the policy: libgomp reads OMP_WAIT_POLICY when it loads
    import torch

    from diffaudit.probes.neighbors import search

    print(
        f"torch {torch.__version__}, faiss {faiss.__version__}, {n} thread(s), OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.2f} (1 min)"
    )
    print(
        "| d | FAISS CPU s (cpu s) | torch CPU s (cpu s) | torch / FAISS | same indices | max rel. dD |",
        end="",
    )
    cuda = torch.cuda.is_available()
    print(" torch CUDA s | FAISS CPU / torch CUDA |" if cuda else "")
    print("|---|---|---|---|---|---|" + ("---|---|" if cuda else ""))
    for d in args.dims:
        rng = np.random.default_rng(d)
        xb = rng.standard_normal((args.nb, d), dtype=np.float32)
        xq = rng.standard_normal((args.nq, d), dtype=np.float32)

        def run(engine, device="cpu", xq=xq, xb=xb):
            return search(xq, xb, args.k, index="exact", engine=engine, device=device)

        run("faiss", xq=xq[:200]), run("torch", xq=xq[:200])  # warm-up: imports, thread pools
        wf, cf, f = best_of(lambda: run("faiss"), args.repeats)
        wt, ct, t = best_of(lambda: run("torch"), args.repeats)
        same = float((f.I == t.I).mean())
        dd = float(np.max(np.abs(f.D - t.D) / np.maximum(np.abs(f.D), 1e-30)))
        row = f"| {d} | {wf:.2f} ({cf:.2f}) | {wt:.2f} ({ct:.2f}) | {wt / wf:.2f} | {same:.4f} | {dd:.1e} |"
        if cuda:
            run("torch", "cuda", xq=xq[:200])
            wg, _, g = best_of(lambda: (run("torch", "cuda"), torch.cuda.synchronize())[0], args.repeats)
            assert (g.I == f.I).mean() > 0.999
            row += f" {wg:.3f} | {wf / wg:.1f} |"
        print(row, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
