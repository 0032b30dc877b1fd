"""Train M independent small EDM denoisers at once with ``torch.func`` (stacked parameters,
``functional_call``, ``vmap``), each with its own seed, its own training set and its own step budget.

Model m is meant to equal ``diffaudit.train.train(datasets[m], model_cfg, replace(train_cfg,
seed=seeds[m], steps=steps[m]))`` run on its own, up to float rounding. That holds because both paths

- initialise model m with ``init_network(model_cfg, shape, seeds[m])``;
- own one ``torch.Generator(seeds[m])`` per model on the training device and draw from it, each step, the
  batch indices (``BatchSampler`` over that model's n), then sigma and noise (``draw_sigma_noise``);
- use the same preconditioning, loss, warm-up, EMA schedule, per-model global-norm gradient clipping
  (``torch.nn.utils.clip_grad_norm_``'s formula) and AdamW update (``torch.optim.AdamW``'s
  formula), here written with ``torch._foreach_*`` ops on the stacked (M, ...) tensors.

The batch size and the training options are shared; the training-set sizes n_m and the step budgets
steps_m may differ. The lr warm-up (``lr_at``), the EMA decay (``ema_beta``) and Adam's bias correction
depend on the step index and the shared options only, never on the total number of steps, so at step t
every model still in the group uses the value its own run would use. A model whose budget is spent leaves
the group after its last step: its EMA weights are taken then, and the stacked tensors are cut down to the
models that go on (no compute is spent on finished models). Its stats lines are those its own run would
write (one every ``log_every`` steps and one at its last step).

Only the ``TrainConfig`` options in ``SUPPORTED_OPTIONS`` are implemented here; a config that sets any
other option away from its default (a training option added to ``train`` later) is refused by
``train_many`` and reported by ``unsupported_options``, so callers train such models one by one.
Class-conditional models (``train(..., labels=...)``) are not implemented here either: ``train_many`` refuses
``labels``, and every model it trains is unconditional.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields, replace

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
from diffaudit.harness.networks import SelfAttention, build_network, parse_model_spec
from diffaudit.harness.train import (
    BatchSampler,
    TrainConfig,
    check_step_memory,
    check_training_data,
    checkpoint_config,
    data_sigma,
    deterministic,
    draw_step,
    ema_beta,
    init_network,
    lr_at,
    make_generator,
)
from diffaudit.hashing import array_sha256
from diffaudit.threads import torch_threads, training_threads

# The TrainConfig fields this trainer implements exactly as ``train`` does. Any other field (an option added
# to ``train`` later) must keep its default for a model to be trained here.
SUPPORTED_OPTIONS = frozenset(
    {
        "steps",
        "batch",
        "lr",
        "weight_decay",
        "betas",
        "warmup_steps",
        "grad_clip",
        "ema_halflife_nimg",
        "ema_rampup",
        "seed",
        "device",
        "bf16",
        "log_every",
        # the lower-variance estimator's draws (``draw_training_sigma_noise``, called per model in its
        # generator's order as ``train`` calls it); ``grad_variance`` is not implemented here
        "noise_draws",
        "sigma_sampling",
        "sigma_proposal_std",
        # only read by class-conditional runs, which train_many refuses: its unconditional models draw and
        # compute the same numbers whatever the value, exactly as train's unconditional runs do
        "label_dropout",
    }
)


def _default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def unsupported_options(cfg: TrainConfig) -> list[str]:
    """The options of ``cfg`` that ``train_many`` does not implement and that differ from their default."""
    out = []
    for f in fields(cfg):
        if f.name in SUPPORTED_OPTIONS:
            continue
        d = _default(f)
        v = getattr(cfg, f.name)
        if d is MISSING or v != d:
            out.append(f.name)
    return out


@dataclass
class MultiTrainResult:
    # per model: the EMA raw-network state dict (CPU tensors), as save_checkpoint writes; None if it diverged
    ema_states: list[dict | None]
    # per model: the checkpoint config.json content (with its own seed, steps, n_train, sigma_data)
    configs: list[dict]
    # group lines every log_every steps: "loss"/"grad_norm" are lists of M (each model's latest line)
    stats: list[dict] = field(default_factory=list)
    model_spec: str = ""
    # per model: its stats.jsonl lines exactly as its own ``train`` run would log them (float loss)
    model_stats: list[list[dict]] = field(default_factory=list)
    errors: list[str | None] = field(
        default_factory=list
    )  # per model: why it was dropped (diverged), or None
    seconds: float = 0.0  # wall time of the whole group's training loop

    def precond(self, m: int):
        """Model m's EMA network as an ``EDMPrecond`` (eval mode, CPU)."""

        if self.ema_states[m] is None:
            raise DiffauditError(f"model {m} has no weights: {self.errors[m]}")
        cfg = self.configs[m]
        net = build_network(self.model_spec, tuple(cfg["shape"]))
        net.load_state_dict(self.ema_states[m], strict=True)
        return EDMPrecond(net, cfg["sigma_data"]).eval()

    def save(self, m: int, out_dir) -> None:
        """Write model m as a normal checkpoint (``load_checkpoint``/``ckpt:`` read it)."""

        save_checkpoint(out_dir, self.precond(m), self.configs[m])


def network_size(model_cfg, shape) -> tuple[int, int]:
    """(parameters, activations per sample) of the raw network for samples of ``shape``: the activation
    count sums the outputs of every leaf module in one forward pass, run on the meta device (no compute), plus
    each self-attention's (hw x hw) logits and softmax (functional ops inside a non-leaf module)."""
    import torch

    model_cfg = parse_model_spec(model_cfg)
    with torch.device("meta"):
        net = build_network(model_cfg, tuple(shape))
    dev = "meta"
    if any(b.device.type != "meta" for b in net.buffers()):
        # a factory function escaped the meta context: after transformers 5 loads a model in this process,
        # torch.linspace ignores torch.device("meta") (measured with transformers 5.25 / torch 2.14), and the
        # forward pass below then mixes devices; build the network on the CPU instead (cheap for one sample)
        net, dev = build_network(model_cfg, tuple(shape)), "cpu"
    acts = [0]

    def hook(_mod, _inp, out):
        if torch.is_tensor(out) and out.ndim > 0:
            acts[0] += out[0].numel()

    def attention_hook(_mod, inp, _out):
        # a non-leaf module whose functional ops hold the (hw x hw) logits and their softmax, and the attended
        # values before the projection: invisible to the leaf hooks, and the largest tensors at small levels
        _, c, h, w = inp[0].shape
        acts[0] += 2 * (h * w) ** 2 + 2 * c * h * w

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    handles += [
        m.register_forward_hook(attention_hook) for m in net.modules() if isinstance(m, SelfAttention)
    ]
    try:
        with torch.no_grad():
            net(torch.zeros((1, *shape), device=dev), torch.zeros(1, device=dev))
    finally:
        for h in handles:
            h.remove()
    return sum(p.numel() for p in net.parameters()), int(acts[0])


def model_bytes(model_cfg, shape, batch: int, n_train: int = 0) -> int:
    """Estimated device memory one model takes in ``train_many`` (float32): parameters, gradients, Adam's two
    moments, the EMA and the update's temporary (6 x parameters), the activations kept for the backward pass
    (3 x the leaf-module outputs of a forward pass, per sample in the batch: inputs and outputs of every op
    are saved, plus the elementwise temporaries) and the model's training set on the device."""
    params, acts = network_size(model_cfg, shape)
    return int(4 * (6 * params + 3 * acts * int(batch) + int(n_train) * math.prod(shape)))


def train_many(
    datasets: Sequence[np.ndarray],
    model_cfg,
    train_cfg: TrainConfig | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
    *,
    dataset_specs: Sequence[str | None] | None = None,
    steps: Sequence[int] | None = None,
    on_diverge: str = "raise",
    labels: Sequence | None = None,
) -> MultiTrainResult:
    """Train ``len(datasets)`` models in one vectorised loop; model m uses ``seeds[m]`` (default
    ``train_cfg.seed + m``), trains on ``datasets[m]`` ((n_m, *shape) arrays, one shape) for ``steps[m]``
    steps (default ``train_cfg.steps`` for all).

    ``on_diverge``: "raise" (a non-finite loss at a stats line stops the group with a ``DiffauditError``) or
    "drop" (that model leaves the group with no weights and ``errors[m]`` says why; the others go on).

    ``labels``: not supported (class-conditional models train one by one with ``train``); anything other
    than None, or a list of Nones, is refused."""
    import torch
    from torch.func import functional_call, stack_module_state, vmap

    if labels is not None and any(y is not None for y in labels):
        raise DiffauditError(
            "train_many trains unconditional models only; train class-conditional models (labels) one by one "
            "with diffaudit.harness.train.train."
        )
    cfg = train_cfg or TrainConfig()
    cfg.check()
    bad_opts = unsupported_options(cfg)
    if bad_opts:
        raise DiffauditError(
            f"train_many does not implement the training option(s) {', '.join(bad_opts)}; "
            "train these models one by one with diffaudit.harness.train.train."
        )
    if on_diverge not in ("raise", "drop"):
        raise DiffauditError(f"on_diverge must be 'raise' or 'drop', got {on_diverge!r}.")
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
    budgets = [int(cfg.steps)] * M if steps is None else [int(s) for s in steps]
    if len(budgets) != M or min(budgets) < 1:
        raise DiffauditError(f"give one step budget >= 1 per training set; got {list(budgets)} for {M} sets.")
    specs = list(dataset_specs) if dataset_specs is not None else [None] * M
    device = resolve_device(cfg.device)
    check_step_memory(cfg, shape, device, models=M)
    use_bf16 = bool(cfg.bf16) and device.type == "cuda"
    sds = [data_sigma(x) for x in xs]
    configs = [
        checkpoint_config(
            model_cfg,
            shape,
            sds[m],
            len(xs[m]),
            replace(cfg, seed=seeds[m], steps=budgets[m]),
            specs[m],
            array_sha256(xs[m]),
        )
        for m in range(M)
    ]

    nets = [init_network(model_cfg, shape, s).to(device) for s in seeds]
    n_params = sum(p.numel() for p in nets[0].parameters())
    params, buffers = stack_module_state(nets)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.detach().clone() for k, v in buffers.items()}
    persistent = set(nets[0].state_dict().keys())
    base = init_network(model_cfg, shape, seeds[0]).to("meta")
    del nets

    def loss_fn(p, b, x, sigma, noise, sd, w):
        def net_fn(x_in, c_noise):
            return functional_call(base, (p, b), (x_in, c_noise))

        def denoise(x_noisy, s):
            return precondition(net_fn, x_noisy, s, sd)

        return edm_loss_from_draws(denoise, x, sigma, noise, sd, w)

    # vmap over models for the forward pass only; one backward of the summed losses then gives every
    # model its own gradient (the models share nothing), which is cheaper than vmap(grad(...)).
    losses_fn = vmap(loss_fn, in_dims=(0, 0, 0, 0, 0, 0, 0))
    # non-default estimator options: each model's draws come from ``draw_step`` (as in ``train``); with the
    # defaults the draws below are the same numbers, drawn in one batch for all models
    estimator = cfg.noise_draws != 1 or cfg.sigma_sampling != "lognormal" or bool(cfg.sigma_proposal_std)
    sdl = list(sds)  # per row, the model's sigma_data as ``train`` uses it (a Python float)

    X_all = torch.from_numpy(np.concatenate(xs)).to(device)  # all training sets, model m's at offsets[m]
    offsets = torch.tensor(np.cumsum([0] + [len(x) for x in xs[:-1]]), device=device)[:, None]
    sd_t = torch.tensor(sds, dtype=torch.float32, device=device)
    ones = torch.ones(cfg.batch, device=device)  # importance weights of the default draws (exactly 1)
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

    active = list(range(M))  # the model behind each row of the stacked tensors
    # per row: sums of the loss and the pre-clipping gradient norm since that model's last stats line, in
    # float64 on the device (as ``LossWindow``; rows are logged and reset at their own steps)
    loss_sum = torch.zeros(M, dtype=torch.float64, device=device)
    gn_sum = torch.zeros(M, dtype=torch.float64, device=device)
    window = [0] * M
    model_stats: list[list[dict]] = [[] for _ in range(M)]
    errors: list[str | None] = [None] * M
    ema_states: list[dict | None] = [None] * M
    stats: list[dict] = []
    total = max(budgets)

    def take_ema(r: int) -> dict:
        st = {k: e[r].detach().cpu().clone() for k, e in zip(keys, es, strict=True)}
        st.update({k: v[r].detach().cpu().clone() for k, v in buffers.items() if k in persistent})
        return st

    # below the measured FLOPs break-even one CPU thread is faster (``diffaudit.threads``); the group's step
    # does the arithmetic of all its models, ~6 FLOPs per parameter per sample (x pixels for images)
    pixels = math.prod(shape[1:]) if len(shape) == 3 else 1
    n_threads = torch.get_num_threads()
    if device.type == "cpu":
        n_threads = training_threads(6.0 * n_params * cfg.batch * cfg.noise_draws * pixels * M, n_threads)
    t0 = time.perf_counter()
    with deterministic(device.type == "cpu"), torch_threads(n_threads):
        for step in range(total):
            Ma = len(active)
            # Per model, in its generator's order: indices, then the normals of sigma and noise. The
            # elementwise work (sigma transform, gather) is then done once for all models.
            idx, rnd, nz, draws = [], [], [], []
            for r in range(Ma):
                idx.append(samplers[r].next())
                if estimator:
                    draws.append(draw_step(gens[r], cfg, shape, sdl[r]))
                else:
                    rn, n = draw_normals(gens[r], cfg.batch, shape)
                    rnd.append(rn)
                    nz.append(n)
            xb = X_all[torch.stack(idx) + offsets].reshape(Ma, cfg.batch, *shape)
            if estimator:  # B K evaluations: item j // K of each model's minibatch (the same for every model)
                xb = xb[:, draws[0].item.to(device)]
                sig = torch.stack([d.sigma for d in draws]).to(device)
                nz = torch.stack([d.noise for d in draws]).to(device)
                wt = torch.stack([d.weight for d in draws]).to(device)
            else:
                sig = sigma_from_normal(torch.stack(rnd), sd_t[:, None])
                nz = torch.stack(nz)
                wt = ones.expand(Ma, cfg.batch)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                loss = losses_fn(params, buffers, xb, sig, nz, sd_t, wt)
            gs = list(torch.autograd.grad(loss.sum(), ps))
            with torch.no_grad():
                # Per-model global norm, as clip_grad_norm_: the norm of the per-tensor norms.
                norms = torch.stack([torch.linalg.vector_norm(g.reshape(Ma, -1), dim=1) for g in gs])
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
                loss_sum += loss.detach().double()
                gn_sum += gn.detach().double()
            window = [k + 1 for k in window]
            logs = [r for r, m in enumerate(active) if t % cfg.log_every == 0 or t == budgets[m]]
            gone: set[int] = set()
            if logs:
                # one host sync per stats step, as ``train``
                ls, gns = loss_sum.cpu().tolist(), gn_sum.cpu().tolist()
                elapsed = round(time.perf_counter() - t0, 3)
                for r in logs:
                    m = active[r]
                    line = {
                        "step": t,
                        "nimg": t * cfg.batch,
                        "loss": ls[r] / window[r],
                        "lr": lr,
                        "grad_norm": gns[r] / window[r],
                        "ema_beta": beta,
                        "elapsed_s": elapsed,
                    }
                    model_stats[m].append(line)
                    loss_sum[r] = 0.0
                    gn_sum[r] = 0.0
                    window[r] = 0
                    if not math.isfinite(line["loss"]):
                        if on_diverge == "raise":
                            raise DiffauditError(
                                f"training diverged at step {t} for model(s) {[m]}; lower the lr."
                            )
                        errors[m] = (
                            f"training diverged at step {t} (loss {line['loss']}); "
                            "lower --lr or raise the warm-up."
                        )
                        gone.add(r)
                    elif t == budgets[m]:
                        ema_states[m] = take_ema(r)
                        gone.add(r)
            if t % cfg.log_every == 0 or t == total:
                line = {
                    "step": t,
                    "nimg": t * cfg.batch,
                    "loss": [s[-1]["loss"] if s else math.nan for s in model_stats],
                    "lr": lr,
                    "grad_norm": [s[-1]["grad_norm"] if s else math.nan for s in model_stats],
                    "ema_beta": beta,
                    "elapsed_s": round(time.perf_counter() - t0, 3),
                    "active": Ma,
                }
                stats.append(line)
                if progress:
                    print(
                        f"step {t}/{total}  models {Ma}  mean loss {float(np.nanmean(line['loss'])):.4f}  "
                        f"{line['elapsed_s']:.1f}s",
                        file=sys.stderr,
                    )
            if gone:
                keep = [r for r in range(Ma) if r not in gone]
                if not keep:
                    break
                # the finished models leave: every stacked tensor keeps the rows of the models that go on
                ki = torch.tensor(keep, device=device)
                for j, k in enumerate(keys):
                    ps[j] = params[k] = ps[j].detach()[ki].requires_grad_(True)
                ms = [v[ki] for v in ms]
                vs = [v[ki] for v in vs]
                es = [v[ki] for v in es]
                buffers = {k: v[ki] for k, v in buffers.items()}
                offsets, sd_t = offsets[ki], sd_t[ki]
                sdl = [sdl[r] for r in keep]
                loss_sum, gn_sum = loss_sum[ki], gn_sum[ki]
                gens = [gens[r] for r in keep]
                samplers = [samplers[r] for r in keep]
                window = [window[r] for r in keep]
                active = [active[r] for r in keep]

    return MultiTrainResult(
        ema_states=ema_states,
        configs=configs,
        stats=stats,
        model_spec=model_cfg.spec,
        model_stats=model_stats,
        errors=errors,
        seconds=time.perf_counter() - t0,
    )
