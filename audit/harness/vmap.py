"""Train M independent small EDM denoisers at once with ``torch.func`` (stacked parameters,
``functional_call``, ``vmap``), each with its own seed and its own training set.

Model m is meant to equal ``diffaudit.train.train(datasets[m], model_cfg, replace(train_cfg,
seed=seeds[m]))`` run on its own, up to float rounding. That holds because both paths

- initialise model m with ``init_network(model_cfg, shape, seeds[m])``;
- own one ``torch.Generator(seeds[m])`` per model on the training device and draw from it, each step, the batch indices
  (``BatchSampler`` over that model's n), then sigma and noise (``draw_sigma_noise``);
- use the same preconditioning, loss, warm-up, EMA schedule, per-model global-norm gradient clipping
  (``torch.nn.utils.clip_grad_norm_``'s formula) and AdamW update (``torch.optim.AdamW``'s
  formula), here written with ``torch._foreach_*`` ops on the stacked (M, ...) tensors.

The batch size and step count are shared; the training-set sizes n_m may differ.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError
from diffaudit.harness.checkpoint import save_checkpoint
from diffaudit.harness.edm import (
    EDMPrecond,
    draw_normals,
    edm_loss_from_draws,
    precondition,
    sigma_from_normal,
)
from diffaudit.harness.networks import build_network, parse_model_spec
from diffaudit.harness.train import (
    BatchSampler,
    LossWindow,
    TrainConfig,
    check_training_data,
    checkpoint_config,
    data_sigma,
    deterministic,
    ema_beta,
    init_network,
    lr_at,
    make_generator,
)
from diffaudit.hashing import array_sha256


@dataclass
class MultiTrainResult:
    ema_states: list[
        dict
    ]  # per model: the EMA raw-network state dict (CPU tensors), as save_checkpoint writes
    configs: list[
        dict
    ]  # per model: the checkpoint config.json content (with its own seed, n_train, sigma_data)
    stats: list[dict] = field(
        default_factory=list
    )  # lines like stats.jsonl, "loss"/"grad_norm" are lists of M
    model_spec: str = ""

    def precond(self, m: int):
        """Model m's EMA network as an ``EDMPrecond`` (eval mode, CPU)."""

        cfg = self.configs[m]
        net = build_network(self.model_spec, tuple(cfg["shape"]))
        net.load_state_dict(self.ema_states[m], strict=True)
        return EDMPrecond(net, cfg["sigma_data"]).eval()

    def save(self, m: int, out_dir) -> None:
        """Write model m as a normal checkpoint (``load_checkpoint``/``ckpt:`` read it)."""

        save_checkpoint(out_dir, self.precond(m), self.configs[m])


def train_many(
    datasets: Sequence[np.ndarray],
    model_cfg,
    train_cfg: TrainConfig | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
    *,
    dataset_specs: Sequence[str | None] | None = None,
) -> MultiTrainResult:
    """Train ``len(datasets)`` models in one vectorised loop; model m uses ``seeds[m]``
    (default ``train_cfg.seed + m``) and trains on ``datasets[m]`` ((n_m, *shape) arrays, one shape)."""
    import torch
    from torch.func import functional_call, stack_module_state, vmap

    cfg = train_cfg or TrainConfig()
    cfg.check()
    model_cfg = parse_model_spec(model_cfg)
    M = len(datasets)
    if M < 1:
        raise DiffauditError("train_many needs at least one training set.")
    xs = [check_training_data(x, f"training set {m}") for m, x in enumerate(datasets)]
    shape = tuple(xs[0].shape[1:])
    for m, x in enumerate(xs):
        if tuple(x.shape[1:]) != shape:
            raise DiffauditError(
                f"training set {m} has samples of shape {x.shape[1:]}, set 0 has {shape}; "
                "models trained together must share the sample shape."
            )
    seeds = [cfg.seed + m for m in range(M)] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != M:
        raise DiffauditError(f"got {len(seeds)} seeds for {M} training sets; give one seed per set.")
    specs = list(dataset_specs) if dataset_specs is not None else [None] * M
    device = resolve_device(cfg.device)
    use_bf16 = bool(cfg.bf16) and device.type == "cuda"
    sds = [data_sigma(x) for x in xs]
    configs = [
        checkpoint_config(
            model_cfg, shape, sds[m], len(xs[m]), replace(cfg, seed=seeds[m]), specs[m], array_sha256(xs[m])
        )
        for m in range(M)
    ]

    nets = [init_network(model_cfg, shape, s).to(device) for s in seeds]
    params, buffers = stack_module_state(nets)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.detach().clone() for k, v in buffers.items()}
    persistent = set(nets[0].state_dict().keys())
    base = init_network(model_cfg, shape, seeds[0]).to("meta")
    del nets

    def loss_fn(p, b, x, sigma, noise, sd):
        def net_fn(x_in, c_noise):
            return functional_call(base, (p, b), (x_in, c_noise))

        def denoise(x_noisy, s):
            return precondition(net_fn, x_noisy, s, sd)

        return edm_loss_from_draws(denoise, x, sigma, noise, sd)

    # vmap over models for the forward pass only; one backward of the summed losses then gives every
    # model its own gradient (the models share nothing), which is cheaper than vmap(grad(...)).
    losses_fn = vmap(loss_fn, in_dims=(0, 0, 0, 0, 0, 0))

    X_all = torch.from_numpy(np.concatenate(xs)).to(device)  # all training sets, model m's at offsets[m]
    offsets = torch.tensor(np.cumsum([0] + [len(x) for x in xs[:-1]]), device=device)[:, None]
    sd_t = torch.tensor(sds, dtype=torch.float32, device=device)
    gens = [make_generator(s, device) for s in seeds]
    samplers = [BatchSampler(len(x), cfg.batch, g) for x, g in zip(xs, gens, strict=True)]
    keys = list(params)
    ps = [params[k] for k in keys]  # updated in place; ``params`` sees the same tensors
    ms = [torch.zeros_like(p) for p in ps]  # AdamW first moments
    vs = [torch.zeros_like(p) for p in ps]  # AdamW second moments
    es = [p.clone() for p in ps]  # EMA of the weights
    beta1, beta2 = cfg.betas
    eps = 1e-8

    def expand(t, like):  # (M,) -> (M, 1, ..., 1) broadcastable against ``like``
        return t.reshape(-1, *([1] * (like.ndim - 1)))

    stats: list[dict] = []
    t0 = time.perf_counter()
    window = LossWindow(M, device)
    with deterministic(device.type == "cpu"):
        for step in range(cfg.steps):
            # Per model, in its generator's order: indices, then the normals of sigma and noise. The
            # elementwise work (sigma transform, gather) is then done once for all models.
            idx, rnd, nz = [], [], []
            for m in range(M):
                idx.append(samplers[m].next())
                r, n = draw_normals(gens[m], cfg.batch, shape)
                rnd.append(r)
                nz.append(n)
            xb = X_all[torch.stack(idx) + offsets].reshape(M, cfg.batch, *shape)
            sig = sigma_from_normal(torch.stack(rnd), sd_t[:, None])
            nz = torch.stack(nz)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                loss = losses_fn(params, buffers, xb, sig, nz, sd_t)
            gs = list(torch.autograd.grad(loss.sum(), ps))
            with torch.no_grad():
                # Per-model global norm, as clip_grad_norm_: the norm of the per-tensor norms.
                norms = torch.stack([torch.linalg.vector_norm(g.reshape(M, -1), dim=1) for g in gs])
                gn = torch.linalg.vector_norm(norms, dim=0)
                if cfg.grad_clip > 0:
                    coef = torch.clamp(cfg.grad_clip / (gn + 1e-6), max=1.0)
                    torch._foreach_mul_(gs, [expand(coef, g) for g in gs])
                lr = lr_at(step, cfg)
                t = step + 1
                bc1 = 1 - beta1**t
                bc2_sqrt = (1 - beta2**t) ** 0.5
                beta = ema_beta(step, cfg)
                # torch.optim.AdamW (decoupled weight decay, bias-corrected moments), on all models at once.
                torch._foreach_mul_(ps, 1 - lr * cfg.weight_decay)
                torch._foreach_lerp_(ms, gs, 1 - beta1)
                torch._foreach_mul_(vs, beta2)
                torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
                denom = torch._foreach_sqrt(vs)
                torch._foreach_div_(denom, bc2_sqrt)
                torch._foreach_add_(denom, eps)
                torch._foreach_addcdiv_(ps, ms, denom, value=-lr / bc1)
                torch._foreach_lerp_(es, ps, 1.0 - beta)  # EMA, as in diffaudit.harness.train
            window.add(loss, gn)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                line = window.line(step, cfg, lr, beta, t0)
                stats.append(line)
                if progress:
                    print(
                        f"step {line['step']}/{cfg.steps}  mean loss {float(np.mean(line['loss'])):.4f}  "
                        f"{line['elapsed_s']:.1f}s",
                        file=sys.stderr,
                    )
                bad = [m for m, v in enumerate(line["loss"]) if not math.isfinite(v)]
                if bad:
                    raise DiffauditError(
                        f"training diverged at step {step + 1} for model(s) {bad}; lower the lr."
                    )

    ema_states = []
    for m in range(M):
        st = {k: e[m].detach().cpu().clone() for k, e in zip(keys, es, strict=True)}
        st.update({k: v[m].detach().cpu().clone() for k, v in buffers.items() if k in persistent})
        ema_states.append(st)
    return MultiTrainResult(ema_states=ema_states, configs=configs, stats=stats, model_spec=model_cfg.spec)
