"""Dataset benchmarks: sprites renderer throughput and oracle projection throughput.

Baseline for the renderer, measured in the same run: a per-image loop drawing each sprite with
PIL ImageDraw at 4x resolution and box-downsampling (the usual way to get antialiased shapes).
Projection: samples/s of ``project`` on 2,000 true samples of every dataset (sprites: CNN +
render-and-compare refinement; its oracle training time is reported separately, once per cache).

    python benchmarks/bench_datasets.py [--n-render 20000] [--n-project 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def pil_render(z: np.ndarray, size: int, ss: int = 4) -> np.ndarray:
    """Naive baseline: one PIL drawing per image (polygon / 64-gon ellipse) at ss x, box-downsampled."""
    from PIL import Image, ImageDraw

    from diffaudit.datasets import sprites as sp

    out = np.empty((len(z), 1, size, size), np.float32)
    big = size * ss
    for i, (s, scale, th, px, py) in enumerate(z):
        R = sp.R_MAX * scale * big
        cx, cy = (sp.MARGIN + (1 - 2 * sp.MARGIN) * px) * big, (sp.MARGIN + (1 - 2 * sp.MARGIN) * py) * big
        if s == 0:
            t = th + np.pi / 4 + np.arange(4) * np.pi / 2
            pts = np.stack([R * np.cos(t), R * np.sin(t)], 1)
        elif s == 1:
            t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
            e = np.stack([R * np.cos(t), sp.ELLIPSE_ASPECT * R * np.sin(t)], 1)
            pts = e @ np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
        else:
            t = th - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
            pts = np.stack([R * np.cos(t), R * np.sin(t)], 1)
        img = Image.new("L", (big, big), 0)
        ImageDraw.Draw(img).polygon([(cx + a, cy + b) for a, b in pts], fill=255)
        img = img.resize((size, size), Image.Resampling.BOX)
        out[i, 0] = np.asarray(img, np.float32) / 127.5 - 1
    return out


def timeit(fn, repeat: int = 3) -> float:
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-render", type=int, default=20000)
    ap.add_argument("--n-baseline", type=int, default=2000)
    ap.add_argument("--n-project", type=int, default=2000)
    args = ap.parse_args()

    from diffaudit.datasets import sprites as sp
    from diffaudit.datasets.base import get_dataset

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    print("\n## renderer (images/s)")
    print("| size | vectorised numpy | PIL ImageDraw loop (4x ss) | ratio |")
    print("|---|---|---|---|")
    for size in (16, 32):
        _, z = get_dataset("sprites", size=size, split="all").sample(args.n_render, seed=0)
        sp.render(z[:256], size)  # warm-up
        t_vec = timeit(lambda z=z, size=size: sp.render(z, size))
        zb = z[: args.n_baseline]
        t_pil = timeit(lambda zb=zb, size=size: pil_render(zb, size), repeat=1)
        r_vec, r_pil = len(z) / t_vec, len(zb) / t_pil
        print(f"| {size} | {r_vec:,.0f} | {r_pil:,.0f} | {r_vec / r_pil:.1f}x |")

    print(f"\n## oracle projection (samples/s, n = {args.n_project} true samples)")
    print("| dataset | samples/s | median residual | note |")
    print("|---|---|---|---|")
    for spec in ("hidden-manifold", "mcm", "molrg", "sprites:size=16", "sprites:size=32", "digits"):
        ds = get_dataset(spec)
        note = ""
        if spec.startswith("sprites"):
            t = time.perf_counter()
            ds.oracle()
            note = f"oracle train/load {time.perf_counter() - t:.1f} s (once per cache)"
        x, _ = ds.sample(min(args.n_project, 1797) if spec == "digits" else args.n_project, seed=1)
        ds.project(x[:16])  # warm-up
        res: dict = {}
        t = timeit(
            lambda ds=ds, x=x, res=res: res.__setitem__("r", ds.project(x)[1]),
            repeat=1 if "sprites" in spec else 3,
        )
        print(f"| {spec} | {len(x) / t:,.0f} | {np.median(res['r']):.2e} | {note} |")


if __name__ == "__main__":
    main()
