"""Vectorised training of M small EDM denoisers (diffaudit.harness.vmap, torch.func vmap) against the
baseline of training them one after another with diffaudit.harness.train, in the same run.

Setup (issue 6 §2): M = 16 MLP denoisers (mlp:width=128,depth=3), d = 64, each on its own training
set of n = 1024 Gaussian-mixture vectors, batch 256. Prints model-steps per second for both paths
and their ratio (targets: >= 4x on CPU, >= 10x on one GPU). The sequential baseline runs fewer steps
(``--seq-steps``) since only its per-step rate matters. Rates come from the runs' own ``stats``
(``elapsed_s`` between the first and the last log line), so set-up and the first quarter of the steps
(warm-up) are excluded on both paths. Both trainers log a float per step (a device sync on GPU) alike.

On a CPU the vmap path removes per-model Python/dispatch overhead but not arithmetic: at batch 256
one model-step is ~75 MFLOP (forward + backward), so the ratio is bounded by how much of the
sequential step is overhead (measured ~2.2-2.4x on 2 unloaded cores; see benchmarks/README.md);
a smaller batch (``--batch 32``) is overhead-dominated and shows the larger ratio.

    python benchmarks/bench_harness.py                 # CPU, torch threads = --threads (default 2)
    python benchmarks/bench_harness.py --device cuda   # same on a GPU
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import replace

import numpy as np
import torch

from diffaudit.harness.train import TrainConfig, train
from diffaudit.harness.vmap import train_many


def make_sets(M: int, n: int, d: int) -> list[np.ndarray]:
    out = []
    for m in range(M):
        rng = np.random.default_rng(m)
        centers = rng.standard_normal((4, d))
        x = centers[rng.integers(0, 4, n)] + 0.3 * rng.standard_normal((n, d))
        out.append(x.astype(np.float32))
    return out


def check(device: str) -> None:
    """Correctness on ``device`` (for GPU runs): a 2-D Gaussian learnt in fp32 and bf16, and the vmap
    trainer against the sequential one (same tolerance as tests/test_harness.py)."""
    from diffaudit.harness.networks import build_network
    from diffaudit.models.checkpoint import CheckpointModel

    if device == "cuda":
        net = build_network("mlp:width=64,depth=2", (4,)).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            print("autocast: linear output dtype", net.layers[0](torch.randn(3, 4, device="cuda")).dtype)
    rng = np.random.default_rng(0)
    A, mu = np.array([[1.0, 0.0], [0.8, 0.5]]), np.array([1.0, -0.5])
    x = (rng.standard_normal((2000, 2)) @ A.T + mu).astype(np.float32)
    for bf16 in (False, True):
        cfg = TrainConfig(
            steps=300, batch=128, lr=2e-3, warmup_steps=20, log_every=100, device=device, bf16=bf16
        )
        r = train(x, "mlp:width=64,depth=3", cfg, progress=False)
        s = CheckpointModel(precond=r.ema, config=r.config, device=device).sample(4000, seed=1)
        cov_err = np.linalg.norm(np.cov(s.T) - A @ A.T) / np.linalg.norm(A @ A.T)
        print(
            f"bf16={bf16}: losses {[round(line['loss'], 5) for line in r.stats]}, "
            f"mean err {np.abs(s.mean(0) - mu).max():.4f}, rel cov err {cov_err:.4f}"
        )
    sets = [
        rng.standard_normal((n, 3)).astype(np.float32) * sd for n, sd in ((40, 1.0), (100, 0.5), (7, 2.0))
    ]
    cfg = TrainConfig(
        steps=50,
        batch=16,
        lr=2e-3,
        warmup_steps=10,
        weight_decay=0.01,
        grad_clip=0.5,
        log_every=10,
        device=device,
        bf16=False,
    )
    spec, seeds = "mlp:width=32,depth=2,emb_dim=16", [3, 5, 11]
    many = train_many(sets, spec, cfg, seeds)
    for m, seed in enumerate(seeds):
        one = train(sets[m], spec, replace(cfg, seed=seed), progress=False).ema.net.state_dict()
        diff = max(float((one[k] - many.ema_states[m][k]).abs().max()) for k in one)
        print(f"vmap vs sequential, model {m}: max |diff| {diff:.2e} (tolerance 1e-5)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--model", default="mlp:width=128,depth=3")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=80, help="vmap steps")
    ap.add_argument("--seq-steps", type=int, default=40, help="sequential steps per model")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument(
        "--bf16", action="store_true", help="bf16 autocast on CUDA (default off: fp32 on both paths)"
    )
    ap.add_argument("--check", action="store_true", help="run the correctness checks on --device and exit")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.check:
        check(a.device)
        return
    sets = make_sets(a.models, a.n, a.d)
    base = TrainConfig(batch=a.batch, lr=1e-3, warmup_steps=10, log_every=10**9, device=a.device, bf16=a.bf16)
    seeds = list(range(a.models))

    k = max(a.steps // 4, 1)  # steps excluded from the rate (warm-up); rates come from stats' elapsed_s
    cfg = replace(base, steps=a.steps, log_every=k)
    train_many(sets, a.model, replace(cfg, steps=2), seeds)  # warm-up (allocator, kernels)
    if a.device == "cuda":
        torch.cuda.synchronize()
    res = train_many(sets, a.model, cfg, seeds)
    dt_v = res.stats[-1]["elapsed_s"] - res.stats[0]["elapsed_s"]
    rate_v = a.models * (a.steps - k) / dt_v
    kq = max(a.seq_steps // 4, 1)
    dt_s = 0.0
    for m in range(a.models):
        r = train(
            sets[m], a.model, replace(cfg, steps=a.seq_steps, log_every=kq, seed=seeds[m]), progress=False
        )
        dt_s += r.stats[-1]["elapsed_s"] - r.stats[0]["elapsed_s"]
    rate_s = a.models * (a.seq_steps - kq) / dt_s
    dev = (
        torch.cuda.get_device_name(0)
        if a.device == "cuda"
        else f"{platform.processor() or platform.machine()} CPU"
    )
    print(f"device: {dev}; torch {torch.__version__}; torch threads: {torch.get_num_threads()}")
    print(f"M={a.models} {a.model} d={a.d} n={a.n} batch={a.batch} bf16={a.bf16 and a.device == 'cuda'}")
    print(f"sequential (diffaudit.harness.train, one model after another): {rate_s:8.1f} model-steps/s")
    print(f"vmap       (diffaudit.multitrain.train_many)          : {rate_v:8.1f} model-steps/s")
    target = 10 if a.device == "cuda" else 4
    print(f"speed-up vmap / sequential: {rate_v / rate_s:.2f}x (target >= {target}x)")


if __name__ == "__main__":
    main()
