"""Cost of the transform-robust copy search (issue 12, part 1) against the plain copy search, same run.

Baseline: ``find_copies(gen, train, holdout)`` (one exact k-NN search of the generated and of the holdout
samples). Measured: ``find_copies(..., transforms="default")`` (one exact search per transform, 30 at 16 px,
42 at 32 px, with the holdout calibrated under the same transforms) and ``find_partial_copies`` (9 window
searches). Data: sprites (16 and 32 px), 2,000 generated (fresh) samples, 5,000 training and 2,000 holdout images:
the audit's defaults (n_samples 2,000, max_calibration 2,000). Prints wall and CPU seconds, the ratio to the
plain search and ``uptime`` (the machine's load: wall times on a shared machine are only comparable in-run).

    python benchmarks/bench_copies_transforms.py
    python benchmarks/bench_copies_transforms.py --sizes 16 --n-train 2000
"""

from __future__ import annotations

import argparse
import subprocess
import time

from diffaudit.datasets.base import get_dataset
from diffaudit.probes.memorization import find_copies
from diffaudit.probes.partial_copies import find_partial_copies


def timed(fn, *args, **kwargs):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-gen", type=int, default=2000)
    ap.add_argument("--n-holdout", type=int, default=2000)
    args = ap.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    for size in args.sizes:
        d = get_dataset(f"sprites:size={size}")
        train, hold, gen = (
            d.sample(n, s)[0] for n, s in ((args.n_train, 0), (args.n_holdout, 1), (args.n_gen, 2))
        )
        find_copies(gen[:50], train[:500], hold[:200])  # warm-up: FAISS and torch loaded
        plain, w0, c0 = timed(find_copies, gen, train, hold)
        robust, w1, c1 = timed(find_copies, gen, train, hold, transforms="default")
        part, w2, c2 = timed(find_partial_copies, gen, train, hold)
        print(
            f"sprites {size}px, train {len(train)}, generated {len(gen)}, holdout {len(hold)}, "
            f"{len(robust.transforms)} transforms"
        )
        print(
            f"  plain search        wall {w0:7.2f} s  cpu {c0:7.2f} s  1.0x   flagged {plain.copy_rate:.4f}"
        )
        print(
            f"  transform-min       wall {w1:7.2f} s  cpu {c1:7.2f} s  {w1 / w0:5.1f}x (cpu {c1 / c0:5.1f}x)  "
            f"flagged {robust.copy_rate:.4f}"
        )
        print(
            f"  partial (9 windows) wall {w2:7.2f} s  cpu {c2:7.2f} s  {w2 / w0:5.1f}x (cpu {c2 / c0:5.1f}x)  "
            f"flagged {part.rate:.4f}"
        )
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
