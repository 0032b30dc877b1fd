"""Noisy-neighbour benchmark: the same work idle and next to one busy process per CPU, in one run.

``python benchmarks/bench_load.py [--only train,knn,demo,quick,breakeven] [--max-busy-s 900]``

1. ``diffaudit train`` (3x256 MLP, batch 256, 400 steps, hidden-manifold d=32, 512 rows) as a subprocess;
2. exact k-NN (k = 2): ``diffaudit.probes.neighbors.knn`` against scikit-learn
   ``NearestNeighbors(algorithm="brute")``, 20k x 128 base, 2k queries, in a subprocess that applies the
   thread policy first (as the CLI does);
3. ``diffaudit demo`` end to end (default: not in ``--only``'s default list, it takes minutes);
4. a slice of ``diffaudit sweep --preset quick``: the preset's spec (model, budget, training and audit
   options) on its first dataset at its two smallest n, with the CLI's default workers and threads;
5. the single-thread break-even: MLPs of growing width trained 60 steps with 1 and with all threads, idle.

Loaded mode starts one ``while True: pass`` process per available CPU (each exits by itself after
``--max-busy-s`` and is killed when its section ends) and records the 1-minute load average. Prints a
JSON line per measurement and a summary of loaded/idle ratios (target <= 2.5x; a fair share alone is 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

from diffaudit.threads import available_cpus

BUSY = "import time\nt = time.time() + {s}\nwhile time.time() < t:\n    pass\n"

KNN = """
from diffaudit.threads import apply_thread_policy, resolve_threads
apply_thread_policy(resolve_threads())
import json, time
import numpy as np
from sklearn.neighbors import NearestNeighbors
from diffaudit.probes.neighbors import knn
rng = np.random.default_rng(0)
xb = rng.standard_normal((20000, 128)).astype(np.float32)
xq = rng.standard_normal((20000, 128)).astype(np.float32)
knn(xq[:50], xb, 2)
# 20k queries (~1 s a call idle) and the median of 3: a 0.1 s call swings 2x with where the scheduler puts
# the two threads next to the busy processes, which measures the scheduler's luck rather than the engine
t_knn, t_sk = [], []
nn = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(xb)
for _ in range(3):
    t = time.perf_counter(); D, I = knn(xq, xb, 2); t_knn.append(time.perf_counter() - t)
    t = time.perf_counter(); D2, I2 = nn.kneighbors(xq); t_sk.append(time.perf_counter() - t)
print(json.dumps({"knn_s": sorted(t_knn)[1], "sklearn_s": sorted(t_sk)[1],
                  "agree": float((I[:, 0] == I2[:, 0]).mean())}))
"""

BREAKEVEN = """
import json, sys, time
import numpy as np
import torch
import diffaudit.threads as th
from diffaudit.harness.train import TrainConfig, train
th.SINGLE_THREAD_BELOW_FLOPS = 0.0  # measure, do not apply, the policy
x = np.random.default_rng(0).standard_normal((512, 32)).astype(np.float32)
cpus = th.available_cpus()
for width in (256, 512, 1024, 2048):
    row = {"width": width}
    for n in sorted({1, cpus}):
        torch.set_num_threads(n)
        cfg = TrainConfig(steps=60, batch=256, device="cpu", log_every=60)
        t = time.perf_counter(); r = train(x, f"mlp:width={width},depth=3", cfg, progress=False)
        row[f"s_{n}thr"] = time.perf_counter() - t
    params = sum(p.numel() for p in r.net.parameters())
    row["flops_per_step"] = 6.0 * params * 256
    print(json.dumps(row), flush=True)
"""


@contextmanager
def busy(n: int, max_s: float):
    procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(s=max_s)]) for _ in range(n)]
    time.sleep(3.0)  # let the load average see them
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def timed(cmd: list[str], env=None) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return time.perf_counter() - t, out


def train_once(tmp: str) -> float:
    out = os.path.join(tmp, f"run{time.monotonic_ns()}")
    cmd = [sys.executable, "-m", "diffaudit", "train", "--dataset", "hidden-manifold:d=32"]
    cmd += ["--n-train", "512", "--model", "mlp:width=256,depth=3", "--steps", "400", "--device", "cpu"]
    return timed(cmd + ["--quiet", "--out", out])[0]


def demo_once(tmp: str) -> tuple[float, dict]:
    """The demo's wall time and, per report, its stage timings (``report.json`` ``timings``)."""
    out = os.path.join(tmp, f"demo{time.monotonic_ns()}")
    wall = timed([sys.executable, "-m", "diffaudit", "demo", "--out", out, "--no-progress"])[0]
    stages = {}
    with open(os.path.join(out, "index.json")) as f:
        for e in json.load(f):
            with open(os.path.join(out, e["report"])) as r:
                stages[e["name"]] = json.load(r).get("timings", {})
    return wall, stages


def stage_ratios(idle: dict, loaded: dict) -> dict:
    """Loaded/idle seconds summed over the demo's reports, per stage (where the loaded time goes)."""
    tot_i, tot_l = {}, {}
    for name, t in idle.items():
        for k, v in t.items():
            tot_i[k] = tot_i.get(k, 0.0) + v
            tot_l[k] = tot_l.get(k, 0.0) + loaded.get(name, {}).get(k, 0.0)
    return {
        k: {"idle_s": tot_i[k], "loaded_s": tot_l[k], "ratio": tot_l[k] / max(tot_i[k], 1e-9)} for k in tot_i
    }


def quick_slice_spec(tmp: str) -> str:
    """The quick preset's spec, cut to its first dataset and its two smallest n (the same n grid points)."""
    from importlib import resources

    import tomllib

    from diffaudit.sweeps.spec import _n_grid

    spec = tomllib.loads((resources.files("diffaudit.sweeps") / "presets" / "quick.toml").read_text())
    spec["name"] = "quick-slice"
    spec["n"] = list(_n_grid(spec["n"], "quick preset")[:2])
    spec["dataset"] = spec["dataset"][:1]
    path = os.path.join(tmp, "quick-slice.toml")
    with open(path, "w") as f:
        f.write(_toml(spec))
    return path


def _toml(d: dict) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append(f"[{k}]\n" + "".join(f"{kk} = {val(x)}\n" for kk, x in v.items()))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                tables.append(f"[[{k}]]\n" + "".join(f"{kk} = {val(x)}\n" for kk, x in item.items()))
        else:
            lines.append(f"{k} = {val(v)}\n")
    return "".join(lines) + "\n" + "\n".join(tables)


def quick_once(tmp: str, spec: str) -> float:
    out = os.path.join(tmp, f"quick{time.monotonic_ns()}")
    return timed([sys.executable, "-m", "diffaudit", "sweep", spec, "--out", out, "--quiet"])[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="train,knn,breakeven")
    ap.add_argument("--max-busy-s", type=float, default=900.0)
    args = ap.parse_args()
    parts = args.only.split(",")
    cpus = available_cpus()
    summary = {"cpus": cpus, "os_cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        if "train" in parts:
            idle = train_once(tmp)
            with busy(cpus, args.max_busy_s):
                load = os.getloadavg()[0]
                loaded = train_once(tmp)
            summary["train"] = {"idle_s": idle, "loaded_s": loaded, "ratio": loaded / idle, "load": load}
            print(json.dumps({"train": summary["train"]}), flush=True)
        if "knn" in parts:
            idle = json.loads(timed([sys.executable, "-c", KNN])[1])
            with busy(cpus, args.max_busy_s):
                load = os.getloadavg()[0]
                loaded = json.loads(timed([sys.executable, "-c", KNN])[1])
            summary["knn"] = {
                "idle": idle,
                "loaded": loaded,
                "load": load,
                "knn_ratio": loaded["knn_s"] / idle["knn_s"],
                "sklearn_over_knn_idle": idle["sklearn_s"] / idle["knn_s"],
                "sklearn_over_knn_loaded": loaded["sklearn_s"] / loaded["knn_s"],
            }
            print(json.dumps({"knn": summary["knn"]}), flush=True)
        for part, once in (("demo", demo_once), ("quick", None)):
            if part not in parts:
                continue
            if once is None:
                spec = quick_slice_spec(tmp)
                once = lambda t, spec=spec: quick_once(t, spec)  # noqa: E731
            idle = once(tmp)
            with busy(cpus, args.max_busy_s):
                load = os.getloadavg()[0]
                loaded = once(tmp)
            extra = {}
            if part == "demo":
                (idle, st_i), (loaded, st_l) = idle, loaded
                extra = {"stages": stage_ratios(st_i, st_l)}
            summary[part] = {
                "idle_s": idle,
                "loaded_s": loaded,
                "ratio": loaded / idle,
                "load": load,
                **extra,
            }
            print(json.dumps({part: summary[part]}), flush=True)
        if "breakeven" in parts:
            print(timed([sys.executable, "-c", BREAKEVEN])[1], end="", flush=True)
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
