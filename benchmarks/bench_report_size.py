"""Bytes of a sweep cell's report.html: one shared plotly.min.js per sweep folder vs plotly.js inlined per cell.

    python benchmarks/bench_report_size.py [--cells 100]

Audits two small cells through ``run_audit`` (the code path of a sweep cell), each twice with the same seed:
once with ``html_plotly="inline"`` (the baseline: every page self-contained) and once with the relative path
to the sweep's ``plotly.min.js`` (``write_shared_plotly`` + ``shared_plotly_src``). Prints the bytes of
report.html and of the whole cell folder, their ratio against the inline baseline, and the projected size
of a sweep of ``--cells`` such cells (shared: plus one plotly.min.js). Vector data: hidden-manifold (d = 8);
image data: sprites (16 px, sample grids and copy pairs embedded as PNG data URIs).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

from diffaudit.datasets.base import get_dataset
from diffaudit.models.adapters import load_model
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit
from diffaudit.pipeline.setup import dataset_split
from diffaudit.report.html import shared_plotly_src, write_shared_plotly

CELLS = {  # name: (dataset spec, n_train, n_generated, sampler steps)
    "vector (hidden-manifold d=8)": ("hidden-manifold:d=8", 256, 256, 8),
    "image (sprites 16 px)": ("sprites:oracle_steps=30", 64, 64, 6),
}


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def audit_cell(spec: str, n_train: int, n_gen: int, steps: int, out: Path, plotly: str) -> None:
    ds = get_dataset(spec)
    xt, zt, xh, zh = dataset_split(ds, n_train, n_gen, seed=0)
    model = load_model("control:memorizer", train=xt, dataset=ds, num_steps=steps)
    cfg = AuditConfig(n_samples=n_gen, seed=0, n_boot=2, kid_subsets=3)
    run_audit(
        model,
        train=xt,
        holdout=xh,
        dataset=ds,
        config=cfg,
        out_dir=out,
        model_spec="control:memorizer",
        train_z=zt,
        holdout_z=zh,
        html_plotly=plotly,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100, help="cells of the projected sweep")
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {platform.system()}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sweep"
        js = write_shared_plotly(root).stat().st_size
        print(f"shared plotly.min.js: {js:,} bytes (written once per sweep folder)\n")
        print(
            f"{'cell':<30} {'html inline':>12} {'html shared':>12} {'ratio':>7} {'folder inline':>14} "
            f"{'folder shared':>14} {'ratio':>7} {f'sweep of {args.cells} (MB)':>22}"
        )
        for name, (spec, n_train, n_gen, steps) in CELLS.items():
            size = {}
            for mode in ("inline", "shared"):
                out = root / "cells" / f"{spec.split(':')[0]}-{mode}"
                audit_cell(
                    spec,
                    n_train,
                    n_gen,
                    steps,
                    out,
                    "inline" if mode == "inline" else shared_plotly_src(out, root),
                )
                size[mode] = ((out / "report.html").stat().st_size, folder_bytes(out))
            (hi, fi), (hs, fs) = size["inline"], size["shared"]
            sweep_inline, sweep_shared = args.cells * fi / 1e6, (args.cells * fs + js) / 1e6
            print(
                f"{name:<30} {hi:>12,} {hs:>12,} {hs / hi:>7.4f} {fi:>14,} {fs:>14,} {fs / fi:>7.4f} "
                f"{sweep_inline:>9.1f} -> {sweep_shared:>6.1f} ({sweep_shared / sweep_inline:.3f}x)"
            )


if __name__ == "__main__":
    main()
