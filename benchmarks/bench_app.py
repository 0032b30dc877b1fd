"""App data layer: the Overview over 1,000 sweep cells (target < 2 s).

Builds a real sweep cell with the CLI (one tiny ``diffaudit sweep`` cell), then 1,000 synthetic cells on
disk by copying its folder and perturbing its report.json (metric values, n, d, seed, model label, ids),
so every file follows the real schema. Timed, in the same run and on the same files:

- ``diffaudit.app.data``: scan (walk the roots + stat every report.json = the cache key) and the
  overview (ONE DuckDB query: read_text + json_extract_string over every report.json, then pandas);
- baseline: ``glob`` + a per-file ``json.load`` loop building the same columns in Python + pandas;
- the Overview page end to end through ``streamlit.testing.v1.AppTest`` (first run, and a rerun that
  hits ``st.cache_data``).

    python benchmarks/bench_app.py [--cells 1000] [--repeats 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPEC = """
name = "bench-app"
n = [64]
seeds = [0]
model = "mlp:width=16,depth=2"

[[dataset]]
name = "hidden-manifold"
params = { d = 8, D = 2 }

[budget]
rule = "steps"
steps = 10

[audit]
n_samples = 100
n_holdout = 100
sampler_steps = 4
options = { n_boot = 2, kid_subsets = 3, mia_n = 30, mia_draws = 1 }
"""


def real_cell(work: Path) -> Path:
    spec = work / "spec.toml"
    spec.write_text(SPEC)
    out = work / "seed-sweep"
    subprocess.run(
        [sys.executable, "-m", "diffaudit", "sweep", str(spec), "--out", str(out), "--quiet"],
        check=True,
        capture_output=True,
    )
    return next((out / "cells").iterdir())


def synthesize(template: Path, root: Path, n_cells: int, seed: int = 0) -> None:
    """``n_cells`` cell folders under root/sweep/cells, each a perturbed copy of ``template``."""
    rng = np.random.default_rng(seed)
    rep0 = json.loads((template / "report.json").read_text())
    cells = root / "sweep" / "cells"
    cells.mkdir(parents=True)
    (root / "sweep" / "sweep.json").write_text(json.dumps({"schema": "diffaudit.sweep/1", "name": "bench"}))
    ns = [int(v) for v in np.unique(np.round(np.logspace(4, 14, 10, base=2)))]
    grid = [
        (n, d, s, m)
        for m in ("model", "gaussian", "memorizer", "mlp-wide", "mlp-deep")
        for d in (8, 16, 32, 64)
        for s in range(5)
        for n in ns
    ]
    for k in range(n_cells):
        n, d, s, m = grid[k % len(grid)]
        cid = f"hidden-manifold_D2_d{d}_n{n:06d}_s{s}_{m}_{k:05d}"
        dst = cells / cid
        dst.mkdir()
        for f in ("metrics.parquet", "copies.parquet", "cell.json", "pca.parquet"):
            if (template / f).is_file():
                shutil.copyfile(template / f, dst / f)
        rep = json.loads(json.dumps(rep0))
        for grp in rep["probes"].values():
            for v in grp.values():
                if isinstance(v, dict) and v.get("value") is not None:
                    f = float(rng.uniform(0.5, 1.5))
                    v["value"] = v["value"] * f
                    if v.get("ci"):
                        v["ci"] = [v["ci"][0] * f, v["ci"][1] * f]
        rep["verdict"] = {v: str(rng.choice(["pass", "fail", "n/a"])) for v in rep["verdict"]}
        rep["sweep"]["cell_id"] = cid
        rep["sweep"]["cell"].update(
            d=d,
            n_train=n,
            seed=s,
            model_label=m,
            params={"D": 2, "d": d},
            dataset_spec=f"hidden-manifold:D=2,d={d}",
        )
        (dst / "report.json").write_text(json.dumps(rep, indent=2))


def baseline(root: Path):
    """The obvious implementation: glob + json.load per file + a Python dict per row + pandas."""
    import pandas as pd

    from diffaudit.app.data import METRICS

    rows = []
    for f in sorted(root.glob("**/report.json")):
        try:
            with open(f, encoding="utf-8") as fh:
                rep = json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue
        cell = (rep.get("sweep") or {}).get("cell") or {}
        inp = rep.get("inputs") or {}
        row = {
            "path": str(f.parent),
            "model": cell.get("model_label", inp.get("model")),
            "dataset": cell.get("dataset", inp.get("dataset")),
            "d": cell.get("d"),
            "n_train": cell.get("n_train", inp.get("n_train")),
            "seed": cell.get("seed"),
            **{f"v_{k}": v for k, v in (rep.get("verdict") or {}).items()},
        }
        for g, k in METRICS:
            m = (rep.get("probes") or {}).get(g, {}).get(k)
            ci = (m or {}).get("ci") or [None, None]
            row[f"{g}.{k}"] = None if m is None else m.get("value")
            row[f"{g}.{k}.lo"], row[f"{g}.{k}.hi"] = ci[0], ci[1]
        rows.append(row)
    return pd.DataFrame(rows)


def timeit(fn, repeats: int) -> tuple[float, float, object]:
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="build the cells here and keep them")
    ap.add_argument("--no-page", action="store_true", help="skip the AppTest page timing")
    args = ap.parse_args()

    from diffaudit.app import data

    work = Path(tempfile.mkdtemp(prefix="bench-app-"))
    try:
        t = time.perf_counter()
        template = real_cell(work)
        t_cell = time.perf_counter() - t
        root = args.keep or (work / "results")
        t = time.perf_counter()
        synthesize(template, root, args.cells)
        t_syn = time.perf_counter() - t
        size = sum(f.stat().st_size for f in root.rglob("report.json"))
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"real template cell: {t_cell:.1f} s; {args.cells} synthetic cells written in {t_syn:.1f} s "
            f"({size / args.cells / 1024:.1f} KiB report.json each)"
        )

        roots = [root]
        baseline(root)  # warm the OS file cache the same way for both
        t_scan, t_scan_min, s = timeit(lambda: data.scan(roots), args.repeats)

        def layer():
            con = data.connect()
            try:
                return data.load_overview(data.scan(roots), roots, con)
            finally:
                con.close()

        t_dl, t_dl_min, (df, problems) = timeit(layer, args.repeats)
        t_bl, t_bl_min, bdf = timeit(lambda: baseline(root), args.repeats)
        assert len(df) == len(bdf) == args.cells and not problems, (len(df), len(bdf), problems)
        a = df.set_index("path")["memorization.copy_rate"].sort_index().to_numpy()
        b = (
            bdf.assign(path=[str(Path(p).resolve()) for p in bdf["path"]])
            .set_index("path")["memorization.copy_rate"]
            .sort_index()
            .to_numpy()
        )
        np.testing.assert_allclose(a, b)
        print(f"\n{'step':58s} {'median':>8s} {'best':>8s}")
        print(f"{'scan (walk + stat, = cache key on every rerun)':58s} {t_scan:8.3f} {t_scan_min:8.3f}")
        print(f"{'data layer: scan + DuckDB overview query + pandas':58s} {t_dl:8.3f} {t_dl_min:8.3f}")
        print(f"{'baseline: glob + json.load loop + pandas':58s} {t_bl:8.3f} {t_bl_min:8.3f}")
        print(
            f"ratio baseline / data layer (median): {t_bl / t_dl:.2f}x; target < 2 s: "
            f"{'met' if t_dl < 2 else 'MISSED'} ({t_dl:.2f} s)"
        )

        if not args.no_page:
            from streamlit.testing.v1 import AppTest

            os.environ[data.ENV_RESULTS] = str(root)
            page = Path(data.__file__).resolve().parent / "pages" / "1_Overview.py"
            at = AppTest.from_file(str(page), default_timeout=120)
            t = time.perf_counter()
            at.run()
            t_first = time.perf_counter() - t
            assert not at.exception, at.exception
            t = time.perf_counter()
            at.run()
            t_rerun = time.perf_counter() - t
            print(
                f"Overview page (AppTest, {at.metric[0].value} runs): first run {t_first:.2f} s, "
                f"cached rerun {t_rerun:.2f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
