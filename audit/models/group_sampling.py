"""Sampling the trained networks of a sweep group together: the EDM Heun sampler (Karras et al. 2022,
Algorithm 1, ``diffaudit.models.sampler``) run for M networks of one architecture in one loop, with the
networks' forward passes vectorised over the models (``torch.func.vmap`` of ``functional_call`` on the
stacked weights, as the grouped trainer ``diffaudit.harness.vmap.train_many`` does).

Why: a small network leaves a GPU idle between kernel launches; sampling M cells' models one after another
launches M times the kernels of one model. Each model keeps its own sampler: its noise schedule scales with its
own ``sigma_data`` (``SamplerConfig.for_data``: models of one group were trained on different data), so the
schedule is a (M, N + 1) array of noise levels, and every model's ODE step uses its own t_i.

Numbers: ``sample_models(models, noises)[m]`` equals ``models[m].sample_from_noise(noises[m])`` up to float32
rounding of the network: the same operation order, the ODE state in float64, the network in float32 (the
single-model path passes sigma_data as a Python float, this one as a float32 tensor, so a coefficient may
differ in its last bit). Tested against the single-model path on the CPU.

What can be sampled together: unconditional ``CheckpointModel`` s of one network (same spec, same parameter
shapes) and sample shape, with the same number of sampler steps and rho; ``sample_models`` partitions its
input into such sets itself. A conditional checkpoint is refused (grouped training trains unconditional models
only; sample a conditional model on its own).
"""

from __future__ import annotations

import math

import numpy as np

from diffaudit.errors import DiffauditError
from diffaudit.harness.edm import EDMPrecond
from diffaudit.models.checkpoint import CheckpointModel
from diffaudit.models.sampler import karras_sigmas

# Device memory for one vectorised forward pass of all the models (float32 activations), MiB.
DEFAULT_BUDGET_MIB = 2048.0
# Activations kept alive at once in a no-grad forward pass, in multiples of the sum of every leaf module's
# output (``network_size``): a layer's input and output plus an elementwise temporary.
LIVE_ACTIVATION_FACTOR = 3


def _signature(m: CheckpointModel) -> tuple:
    """What two models must share to be sampled together: the network's class and spec (an option may change
    the forward pass without changing a parameter's shape), every parameter's shape and dtype, the sample
    shape, the sampler's steps and rho, and the device."""
    net = m.precond.net
    params = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in net.state_dict().items())
    cfg = m.sampler_config
    spec = (m.config or {}).get("model")
    return (type(net), spec, params, m.shape, int(cfg.num_steps), float(cfg.rho), str(m.device))


def _check(models) -> None:
    import torch

    for i, m in enumerate(models):
        if not isinstance(m, CheckpointModel):
            raise DiffauditError(
                f"model {i} ({getattr(m, 'name', type(m).__name__)}) is not a trained diffaudit checkpoint; "
                "only CheckpointModels can be sampled together: sample it on its own."
            )
        if m.conditioning is not None:
            raise DiffauditError(
                f"model {i} ({m.name}) is class-conditional; sample_models takes unconditional checkpoints: "
                "sample it on its own with its labels."
            )
        # the loop below re-implements EDMPrecond.forward on the raw network: a subclass may differ
        if type(m.precond) is not EDMPrecond:
            raise DiffauditError(
                f"model {i} ({m.name}) wraps its network in {type(m.precond).__name__}, not EDMPrecond; "
                "sample_models re-implements EDMPrecond's preconditioning: sample it on its own."
            )
        if float(m.precond.sigma_data) != float(m.sigma_data):
            raise DiffauditError(
                f"model {i} ({m.name}): its network is preconditioned with sigma_data {m.precond.sigma_data:g} "
                f"but its config says {m.sigma_data:g}; load the checkpoint with its own config."
            )
        for p in m.precond.net.parameters():
            if p.dtype != torch.float32 or p.device.type == "meta":
                raise DiffauditError(
                    f"model {i} ({m.name}) has {p.dtype} weights on {p.device.type}; sample_models runs float32 "
                    "networks with their weights loaded: sample it on its own."
                )


def rows_per_model(models, budget_mib: float = DEFAULT_BUDGET_MIB) -> int:
    """Samples per model in one vectorised chunk: the models' float32 activations within ``budget_mib``
    (at least 1 row a model, at most each model's own ``batch_size``)."""
    from diffaudit.harness.vmap import network_size

    m0 = models[0]
    spec = (m0.config or {}).get("model")
    if spec is not None:
        _, acts = network_size(spec, m0.shape)
    else:  # a network without its spec: budget by the sample size alone
        acts = 16 * math.prod(m0.shape)
    per_row = 4.0 * LIVE_ACTIVATION_FACTOR * max(int(acts), 1)
    rows = int(float(budget_mib) * 2**20 // (per_row * len(models)))
    return max(1, min(rows, min(int(m.batch_size) for m in models)))


def _sample_set(models, noises, budget_mib: float) -> list[np.ndarray]:
    """One compatible set (same ``_signature``): the Heun loop over chunks of rows, all models at once."""
    import copy

    import torch
    from torch.func import functional_call, stack_module_state, vmap

    from diffaudit.harness.edm import precondition

    M = len(models)
    device = models[0].device
    nets = [m.precond.net for m in models]
    params, buffers = stack_module_state(nets)
    params = {k: v.detach() for k, v in params.items()}
    buffers = {k: v.detach() for k, v in buffers.items()}
    base = copy.deepcopy(nets[0]).to("meta")
    # per model: its own noise schedule (M, N + 1), float64 as ``heun_sample`` uses it (Python floats)
    t = np.stack([karras_sigmas(m.sampler_config) for m in models])
    t_dev = torch.from_numpy(t).to(device)
    sd = torch.tensor([m.precond.sigma_data for m in models], dtype=torch.float32, device=device)

    def one(p, b, x, sigma, s_d):
        def net_fn(x_in, c_noise):
            return functional_call(base, (p, b), (x_in, c_noise))

        return precondition(net_fn, x, sigma.expand(x.shape[0]), s_d)

    denoise_all = vmap(one, in_dims=(0, 0, 0, 0, 0))
    ns = [len(z) for z in noises]
    n_max = max(ns)
    shape = models[0].shape
    rows = rows_per_model(models, budget_mib)
    out = [np.empty((n, *shape), np.float32) for n in ns]
    view = (M, 1) + (1,) * len(shape)  # a (M,) per-model value against the state (M, rows, *shape)

    def D(x_state, k):
        sig = t_dev[:, k].to(torch.float32)
        return denoise_all(params, buffers, x_state.to(torch.float32), sig, sd).double()

    def chunk(i: int, c: int) -> np.ndarray:
        # models with fewer samples are padded with zeros (computed, then dropped)
        z = np.zeros((M, c, *shape), np.float64)
        for m, noise in enumerate(noises):
            part = noise[i : i + c]
            z[m, : len(part)] = part
        x = torch.from_numpy(z).to(device) * t_dev[:, 0].reshape(view)
        for k in range(t.shape[1] - 1):
            t_cur, t_next = t_dev[:, k].reshape(view), t_dev[:, k + 1].reshape(view)
            d = (x - D(x, k)) / t_cur
            x_next = x + (t_next - t_cur) * d
            if float(t[0, k + 1]) > 0:  # every model's schedule ends in 0 at the same step
                d2 = (x_next - D(x_next, k + 1)) / t_next
                x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
            x = x_next
        return x.cpu().numpy()

    i = 0
    with torch.no_grad():
        while i < n_max:
            c = min(rows, n_max - i)
            try:
                x = chunk(i, c)
            except torch.OutOfMemoryError:
                # the activation estimate missed something (functional ops): halve the chunk and redo it
                if rows == 1:
                    raise
                rows = max(1, rows // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            for m, n in enumerate(ns):
                if i < n:
                    out[m][i : min(n, i + c)] = x[m, : min(n, i + c) - i]
            i += c
    return out


def sample_models(models, noises, budget_mib: float = DEFAULT_BUDGET_MIB) -> list[np.ndarray]:
    """``[models[m].sample_from_noise(noises[m]) for m]``, computed together (module docstring).

    models: unconditional ``CheckpointModel`` s; noises: per model an (n_m, *shape) array of unit-variance
    noise (n_m may differ); budget_mib: device memory for one vectorised forward pass. Returns per model an
    (n_m, *shape) float32 array. Models that cannot share a loop (different networks, shapes, sampler steps
    or devices) are sampled in separate loops."""
    models, noises = list(models), list(noises)
    if len(models) != len(noises):
        raise DiffauditError(f"got {len(noises)} noise arrays for {len(models)} models; give one per model.")
    if not models:
        return []
    _check(models)
    arrs = []
    for m, (model, noise) in enumerate(zip(models, noises, strict=True)):
        z = np.asarray(noise, dtype=np.float64)
        if z.ndim < 1 or tuple(z.shape[1:]) != tuple(model.shape):
            raise DiffauditError(
                f"noise {m} has shape {z.shape}, model {m} makes samples of shape {model.shape}; "
                "pass (n, *shape) noise."
            )
        if not np.all(np.isfinite(z)):
            raise DiffauditError(f"noise {m} contains NaN or Inf; pass finite unit-variance noise.")
        arrs.append(z)
    out: list[np.ndarray | None] = [None] * len(models)
    sets: dict[tuple, list[int]] = {}
    for m, model in enumerate(models):
        sets.setdefault(_signature(model), []).append(m)
    for idx in sets.values():
        live = [m for m in idx if len(arrs[m])]
        for m in idx:
            if not len(arrs[m]):
                out[m] = np.zeros((0, *models[m].shape), np.float32)
        if live:
            res = _sample_set([models[m] for m in live], [arrs[m] for m in live], budget_mib)
            for m, x in zip(live, res, strict=True):
                out[m] = x
    return out
