"""Benchmarks of the convergence probes against named baselines measured in the same run.

(a) Frechet distance at D = 2048 from statistics: ours (eigh + eigvalsh on the symmetric form) vs
    pytorch-fid's recipe (scipy.linalg.sqrtm(S1 S2)). Target: >= 4x faster, agreement <= 1e-6 relative.
(b) precision/recall/density/coverage on 10k x 10k, D = 2048: ours (``prdc``: FAISS k-NN radii + one blocked
    ball pass) vs the reference algorithm of Naeem et al.'s ``prdc`` package with scikit-learn
    ``NearestNeighbors(algorithm="brute")`` radii and a chunked sklearn pairwise-distance membership test.
    Target: >= 2x faster.
(c) peak RSS of ``prdc`` on N x N, D = 2048 in a fresh subprocess (``resource.getrusage``), minus nothing:
    the number includes the two input arrays (2 x N x D x 4 bytes). Target at N = 50k: <= 4 GB.
    Default N = 20k (a few minutes on 2 cores); ``--large`` runs N = 50k.

Usage: python benchmarks/bench_convergence.py [--parts abc] [--large] [--n-pr 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

D = 2048


def fd_sqrtm_recipe(mu1, s1, mu2, s2):
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if isinstance(covmean, tuple):
        covmean = covmean[0]
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def bench_fd(n: int = 6000, repeats: int = 3) -> dict:
    from diffaudit.probes import convergence as cv

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, D), dtype=np.float32)
    b = (rng.standard_normal((n, D), dtype=np.float32) * 1.1 + 0.05).astype(np.float32)
    mu1, s1 = cv.gaussian_stats(a)
    mu2, s2 = cv.gaussian_stats(b)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = cv.frechet_distance_from_stats(mu1, s1, mu2, s2).value
        t.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = fd_sqrtm_recipe(mu1, s1, mu2, s2)
    t_ref = time.perf_counter() - t0
    return {
        "n": n,
        "D": D,
        "ours_s": min(t),
        "sqrtm_s": t_ref,
        "speedup": t_ref / min(t),
        "fd_ours": ours,
        "fd_sqrtm": ref,
        "rel_diff": abs(ours - ref) / abs(ref),
    }


def sklearn_prdc(real, fake, k_pr=3, k_dc=5):
    """Naeem et al.'s prdc algorithm with sklearn brute-force k-NN; ties: <= (our convention)."""
    from sklearn.metrics import pairwise_distances_chunked
    from sklearn.neighbors import NearestNeighbors

    def radii(x, k):
        nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x)
        d, _ = nn.kneighbors(x)
        return d  # column 0 is the point itself, column j its j-th neighbour

    dr = radii(real, max(k_pr, k_dc))
    rr_pr, rr = dr[:, k_pr], dr[:, k_dc]
    rf = radii(fake, k_pr)[:, k_pr]
    n, m = len(real), len(fake)
    fake_in = np.zeros(m, bool)
    count = np.zeros(m, np.int64)
    real_in = np.zeros(n, bool)
    covered = np.zeros(n, bool)
    start = 0
    for chunk in pairwise_distances_chunked(real, fake, working_memory=512):  # (rows of real, m)
        s = slice(start, start + len(chunk))
        fake_in |= (chunk <= rr_pr[s, None]).any(0)
        inside = chunk <= rr[s, None]
        count += inside.sum(0)
        covered[s] = inside.any(1)
        real_in[s] = (chunk <= rf[None, :]).any(1)
        start += len(chunk)
    return fake_in.mean(), real_in.mean(), count.sum() / (k_dc * m), covered.mean()


def bench_prdc(n: int) -> dict:
    from diffaudit.probes import convergence as cv

    rng = np.random.default_rng(1)
    real = rng.standard_normal((n, D), dtype=np.float32)
    fake = (rng.standard_normal((n, D), dtype=np.float32) * 1.05).astype(np.float32)
    t0 = time.perf_counter()
    pr, dc = cv.prdc(real, fake)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = sklearn_prdc(real, fake)
    t_ref = time.perf_counter() - t0
    ours = (pr.precision, pr.recall, dc.density, dc.coverage)
    return {
        "n": n,
        "D": D,
        "ours_s": t_ours,
        "sklearn_s": t_ref,
        "speedup": t_ref / t_ours,
        "ours": ours,
        "sklearn": tuple(float(x) for x in ref),
        "max_abs_diff": float(np.max(np.abs(np.array(ours) - np.array(ref)))),
    }


CHILD = r"""
import resource, sys, time, json
import numpy as np
from diffaudit.probes import convergence as cv
n, d = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(2)
real = rng.standard_normal((n, d), dtype=np.float32)
fake = rng.standard_normal((n, d), dtype=np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
pr, dc = cv.prdc(real, fake)
t = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "D": d, "seconds": t, "peak_rss_gib": peak / 2**20, "rss_before_gib": base / 2**20,
                  "inputs_gib": 2 * n * d * 4 / 2**30, "precision": pr.precision, "recall": pr.recall,
                  "density": dc.density, "coverage": dc.coverage}))
"""


def bench_memory(n: int) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(D)], capture_output=True, text=True, check=True
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="abc")
    ap.add_argument("--large", action="store_true", help="(c) at 50k x 50k instead of 20k x 20k")
    ap.add_argument("--n-pr", type=int, default=10_000)
    args = ap.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    if "a" in args.parts:
        r = bench_fd()
        print(
            f"(a) FD D={D}: ours {r['ours_s']:.2f} s, sqrtm recipe {r['sqrtm_s']:.2f} s -> {r['speedup']:.1f}x "
            f"(target >= 4x); FD {r['fd_ours']:.6f} vs {r['fd_sqrtm']:.6f}, rel diff {r['rel_diff']:.1e}"
        )
    if "b" in args.parts:
        r = bench_prdc(args.n_pr)
        print(
            f"(b) P/R/D/C {r['n']}x{r['n']} D={D}: ours {r['ours_s']:.1f} s, sklearn brute {r['sklearn_s']:.1f} s "
            f"-> {r['speedup']:.1f}x (target >= 2x); ours {np.round(r['ours'], 4).tolist()} "
            f"sklearn {np.round(r['sklearn'], 4).tolist()} (max |diff| {r['max_abs_diff']:.1e})"
        )
    if "c" in args.parts:
        n = 50_000 if args.large else 20_000
        r = bench_memory(n)
        print(
            f"(c) P/R/D/C {n}x{n} D={D}: peak RSS {r['peak_rss_gib']:.2f} GiB (inputs {r['inputs_gib']:.2f} GiB, "
            f"before the call {r['rss_before_gib']:.2f} GiB), {r['seconds']:.0f} s (target <= 4 GB at 50k)"
        )


if __name__ == "__main__":
    main()
