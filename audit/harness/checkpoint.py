"""diffaudit checkpoint files: ``model.safetensors`` (the EMA weights of the raw network F) + ``config.json``
(format ``diffaudit.checkpoint/1``: model spec, sample shape, sigma_data, dataset spec, n_train, train
config, diffaudit version; a class-conditional checkpoint adds ``conditioning: "labels"``, ``n_classes``,
``class_names`` and ``label_dropout``). ``diffaudit train`` writes them; ``diffaudit.models.checkpoint`` wraps a loaded
one as a model for audits.

Weights are read with ``safetensors`` only (no pickle). ``config.json`` is written last, each file
atomically, so a folder with a ``config.json`` holds a complete checkpoint. torch and safetensors are
imported inside the functions that need them (heavy optional imports).
"""

from __future__ import annotations

import json
from pathlib import Path

from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_path, atomic_write_json
from diffaudit.harness.edm import EDMPrecond
from diffaudit.harness.networks import build_network, check_n_classes, parse_model_spec

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(dir, net, config: dict) -> Path:
    """Write ``net``'s raw-network weights (an ``EDMPrecond`` or the bare F) and ``config`` to ``dir``."""
    from safetensors.torch import save_file

    inner = getattr(net, "net", net)
    state = {k: v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": str(config.get("format", ""))})
    atomic_write_json(dir / CONFIG, config)
    return dir


def read_config(dir) -> dict:
    dir = Path(dir)
    if not dir.is_dir():
        raise DiffauditError(f"checkpoint {dir} is not a folder; give the --out folder of 'diffaudit train'.")
    path = dir / CONFIG
    if not path.is_file():
        raise DiffauditError(
            f"checkpoint {dir} has no {CONFIG}; it is not a (complete) diffaudit checkpoint."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffauditError(
            f"checkpoint config {path} cannot be read ({e}); re-run training to rewrite it."
        ) from None
    missing = (
        [k for k in ("model", "shape", "sigma_data") if k not in config]
        if isinstance(config, dict)
        else ["all"]
    )
    if missing:
        raise DiffauditError(
            f"checkpoint config {path} lacks {', '.join(missing)}; it was not written by diffaudit train."
        )
    return config


def config_n_classes(config: dict) -> int | None:
    """The number of classes of a checkpoint config: None for an unconditional network; a conditioning other
    than "labels", or a "labels" one without a valid ``n_classes`` -> DiffauditError."""
    kind = config.get("conditioning")
    if kind is None:
        return None
    if kind != "labels":
        raise DiffauditError(
            f"checkpoint conditioning {kind!r} is not one diffaudit networks have; expected 'labels' or none."
        )
    try:
        return check_n_classes(config.get("n_classes"))
    except DiffauditError:
        raise DiffauditError(
            f"checkpoint config has conditioning 'labels' but n_classes={config.get('n_classes')!r}; "
            "it needs the whole number of classes (>= 2) the network was trained with."
        ) from None


def load_checkpoint(dir, device: str = "cpu"):
    """-> (EDMPrecond in eval mode on ``device``, config dict). Bad or missing files -> DiffauditError."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    dir = Path(dir)
    config = read_config(dir)
    wpath = dir / WEIGHTS
    if not wpath.is_file():
        raise DiffauditError(f"checkpoint {dir} has no {WEIGHTS}; it is not a complete diffaudit checkpoint.")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise DiffauditError(
            f"checkpoint weights {wpath} cannot be read ({e}); the file is corrupt."
        ) from None
    net = build_network(parse_model_spec(config["model"]), tuple(config["shape"]), config_n_classes(config))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise DiffauditError(
            f"checkpoint weights {wpath} do not match model {config['model']!r} ({first})."
        ) from None
    precond = EDMPrecond(net, float(config["sigma_data"])).to(torch.device(device)).eval()
    for p in precond.parameters():
        p.requires_grad_(False)
    return precond, config
