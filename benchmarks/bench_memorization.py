"""Benchmark of the k-NN engine behind the memorization probes (issue 4, section 6).

1. Exact k-NN (k = 2), 100k x 128 training vectors, 10k queries: ``diffaudit.probes.neighbors.knn``
   (blocked FAISS + float64 re-ranking) against scikit-learn ``NearestNeighbors(algorithm="brute")``
   measured in the same run; indices are compared too.
2. IVF + exact re-ranking, 1M x 128 training vectors, 10k queries: build + search time, recall@1
   against exact search on all queries, the probe's own recall@1 estimate, peak memory (RSS of a
   fresh child process).

Data: a clustered set (2000 Gaussian clusters, intrinsic spread decaying over dimensions), closer to
real embedding sets than isotropic Gaussians, which are IVF's worst case (no cluster structure).

    python benchmarks/bench_memorization.py            # both parts
    python benchmarks/bench_memorization.py --n-ivf 200000   # smaller IVF part
    python benchmarks/bench_memorization.py --part exact --threads 1

Wall times need an otherwise idle machine: FAISS's OpenMP threads spin-wait and degrade badly when
the cores are oversubscribed, so CPU (process) time is printed next to wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def clustered(n: int, seed: int, D: int = 128, K: int = 2000) -> np.ndarray:
    centres = np.random.default_rng(12345).standard_normal((K, D)).astype(np.float32) * 2.0
    scale = np.linspace(1.0, 0.1, D).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, D), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i : i + m] = (
            centres[rng.integers(0, K, m)] + rng.standard_normal((m, D), dtype=np.float32) * scale
        )
    return out


def part_exact(n_train: int, n_query: int) -> dict:
    from sklearn.neighbors import NearestNeighbors

    from diffaudit.probes.neighbors import knn

    xb, xq = clustered(n_train, 0), clustered(n_query, 1)
    knn(xq[:100], xb, 2)  # warm-up (FAISS import, thread pool)
    t, c = time.perf_counter(), time.process_time()
    D, I = knn(xq, xb, 2)  # noqa: E741
    t_ours, c_ours = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    nn = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(xb)
    Ds, Is = nn.kneighbors(xq)
    t_sk, c_sk = time.perf_counter() - t, time.process_time() - c
    agree = float((I[:, 0] == Is[:, 0]).mean())
    return {
        "n_train": n_train,
        "n_query": n_query,
        "t_diffaudit_s": t_ours,
        "t_sklearn_s": t_sk,
        "speedup": t_sk / t_ours,
        "cpu_diffaudit_s": c_ours,
        "cpu_sklearn_s": c_sk,
        "cpu_speedup": c_sk / c_ours,
        "top1_agreement": agree,
        "max_abs_dist_diff": float(np.abs(np.sqrt(D) - Ds).max()),
    }


def part_ivf(n_train: int, n_query: int) -> dict:
    from diffaudit.probes.neighbors import build_index, search

    xb, xq = clustered(n_train, 2), clustered(n_query, 3)
    t = time.perf_counter()
    idx = build_index(xb, index="ivf")
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    r = search(xq, xb, 2, index=idx, target_recall=0.99, recall_sample=1000)
    t_search = time.perf_counter() - t
    t = time.perf_counter()
    e = search(xq, xb, 2, index="exact")
    t_exact = time.perf_counter() - t
    true_recall = float((r.D[:, 0] <= e.D[:, 0] + 1e-9).mean())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    return {
        "n_train": n_train,
        "n_query": n_query,
        "nlist": r.nlist,
        "nprobe": r.nprobe,
        "t_build_s": t_build,
        "t_search_s": t_search,
        "t_ivf_total_s": t_build + t_search,
        "t_exact_s": t_exact,
        "recall_at_1_estimate": r.recall_at_1,
        "recall_at_1_true": true_recall,
        "peak_rss_mib": peak,
        "data_mib": xb.nbytes / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-exact", type=int, default=100_000)
    ap.add_argument("--n-ivf", type=int, default=1_000_000)
    ap.add_argument("--n-query", type=int, default=10_000)
    ap.add_argument("--part", choices=["all", "exact", "ivf"], default="all")
    ap.add_argument("--threads", type=int, default=2, help="FAISS OpenMP and BLAS threads (both sides)")
    a = ap.parse_args()
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(a.threads)
    threadpool_limits(a.threads)
    if a.part == "ivf":  # child process: clean peak-memory measurement
        print(json.dumps(part_ivf(a.n_ivf, a.n_query)))
        return
    res = part_exact(a.n_exact, a.n_query)
    print(
        f"exact k-NN {res['n_train']} x 128, {res['n_query']} queries, k=2: diffaudit {res['t_diffaudit_s']:.2f} s, "
        f"sklearn brute {res['t_sklearn_s']:.2f} s -> {res['speedup']:.2f}x wall (target >= 2x), "
        f"CPU time {res['cpu_diffaudit_s']:.2f} vs {res['cpu_sklearn_s']:.2f} s -> {res['cpu_speedup']:.2f}x; "
        f"top-1 agreement {res['top1_agreement']:.4f}, max |d diff| {res['max_abs_dist_diff']:.2e}"
    )
    if a.part == "all":
        out = subprocess.run(
            [sys.executable, __file__, "--part", "ivf", "--n-ivf", str(a.n_ivf), "--n-query", str(a.n_query)]
            + ["--threads", str(a.threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"IVF+re-rank {r['n_train']} x 128, {r['n_query']} queries: nlist {r['nlist']}, nprobe {r['nprobe']}, "
            f"build {r['t_build_s']:.1f} s + search {r['t_search_s']:.1f} s = {r['t_ivf_total_s']:.1f} s "
            f"(exact search {r['t_exact_s']:.1f} s -> {r['t_exact_s'] / r['t_search_s']:.1f}x search speed-up); "
            f"recall@1 {r['recall_at_1_true']:.4f} (estimate {r['recall_at_1_estimate']:.4f}; target >= 0.99); "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB (data {r['data_mib']:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
