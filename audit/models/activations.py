"""Hidden activations of a named layer of a torch denoiser, for the representation probe.

A forward hook (``torch.nn.Module.register_forward_hook``) on ``module.get_submodule(layer_name)``
records the layer's output while the network denoises ``x`` at noise level ``sigma``; the output is
flattened to (n, F) float32. The network is called as ``module(x, sigma)`` with ``sigma`` a tensor of
shape (n,) (the EDM preconditioned-denoiser convention), or through ``forward(module, x, sigma)``.

The caller decides what ``x`` is: for the probe of DESIGN.md, clean true samples (``add_noise=False``)
or true samples noised at ``sigma`` with per-sample seeded noise (``add_noise=True``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffaudit.errors import DiffauditError


def layer_names(module) -> list[str]:
    """Names of every submodule (``""`` excluded), in registration order."""
    return [name for name, _ in module.named_modules() if name]


def layer_activations(
    module,
    x,
    sigma: float,
    layer_name: str,
    *,
    batch_size: int = 512,
    add_noise: bool = False,
    seed: int = 0,
    forward: Callable | None = None,
    device=None,
) -> np.ndarray:
    """Activations (n, F) float32 of ``layer_name`` while ``module`` denoises ``x`` (n, *shape) at ``sigma``.

    ``add_noise``: feed x + sigma * N(0, I) (seeded) instead of x. ``forward(module, xb, sigmab)``
    overrides the call. The module's train/eval mode is restored afterwards; gradients are off.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise DiffauditError(
            f"activations need a torch.nn.Module, got {type(module).__name__}; pass the network itself."
        )
    try:
        layer = module.get_submodule(layer_name)
    except AttributeError:
        names = layer_names(module)
        shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
        raise DiffauditError(f"layer {layer_name!r} is not in the network; choose one of: {shown}.") from None
    xa = np.asarray(x, dtype=np.float32)
    if xa.ndim < 2 or len(xa) < 1:
        raise DiffauditError(f"samples: expected (n, ...) with n >= 1, got shape {xa.shape}.")
    if not np.isfinite(xa).all():
        raise DiffauditError("samples: contain NaN or Inf; pass finite inputs to the network.")
    if add_noise:
        xa = xa + float(sigma) * np.random.default_rng(seed).standard_normal(xa.shape).astype(np.float32)
    if device is None:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    dtype = next((p.dtype for p in module.parameters()), torch.float32)

    captured: list = []

    def hook(_mod, _inp, out):
        if isinstance(out, (tuple, list)):
            out = out[0]
        captured.append(out.detach().reshape(out.shape[0], -1).float().cpu().numpy())

    handle = layer.register_forward_hook(hook)
    was_training = module.training
    module.eval()
    chunks = []
    try:
        with torch.no_grad():
            for i in range(0, len(xa), batch_size):
                xb = torch.from_numpy(xa[i : i + batch_size]).to(device=device, dtype=dtype)
                sb = torch.full((len(xb),), float(sigma), device=device, dtype=dtype)
                captured.clear()
                if forward is None:
                    module(xb, sb)
                else:
                    forward(module, xb, sb)
                if not captured:
                    raise DiffauditError(
                        f"layer {layer_name!r} was not called in the forward pass; pick a layer the network uses."
                    )
                chunks.append(captured[0])  # the first call of the layer in this forward pass
    finally:
        handle.remove()
        module.train(was_training)
    return np.ascontiguousarray(np.concatenate(chunks, 0), dtype=np.float32)
