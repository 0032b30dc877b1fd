"""Train one EDM denoiser (Karras et al. 2022) on an array of samples: AdamW, warm-up, gradient
clipping, EMA of the weights, bf16 autocast on CUDA; a run directory in the style of NVlabs EDM's
``training_loop.py`` (``options.json`` before the first step, ``stats.jsonl`` during, the checkpoint
at the end).

Randomness, per run, all from ``TrainConfig.seed`` (which is what lets ``diffaudit.harness.vmap``
reproduce this loop model by model):

1. the network's initial weights: ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``;
2. one ``torch.Generator`` on the training device seeded with ``seed``; every step draws, in this
   order, the batch indices (``BatchSampler``: epochs of ``randperm``), then sigma and noise
   (``diffaudit.harness.edm.draw_training_sigma_noise``; with the default estimator options these are
   ``draw_sigma_noise``'s draws, sigma (B,) then noise (B, *shape)), then, in a class-conditional run with
   ``label_dropout`` > 0 only, the label-dropout uniforms (B,) (``diffaudit.harness.edm.drop_labels``), so
   an unconditional run draws what it drew before conditioning existed. On the device, so a GPU run never
   waits for host-side random numbers; a CPU run and a CUDA run of one seed therefore draw different numbers;
3. with ``grad_variance`` on, a second generator (``grad_variance_seed(seed)``) feeds the gradient-variance
   measurements of the logged steps, so measuring leaves the training trajectory bit for bit unchanged.

On CPU, with deterministic algorithms on and the same thread count, two runs are bitwise identical.

Class-conditional training: ``train(x, ..., labels=y)`` with one int label per item in [0, n_classes) trains
a network with a label embedding (``diffaudit.harness.networks``) on D(x, sigma, y), each item's label dropped
to the null label with probability ``TrainConfig.label_dropout`` (classifier-free guidance, Ho & Salimans
2022); the checkpoint records ``conditioning: "labels"``, ``n_classes`` and ``class_names``, which
``diffaudit.models.checkpoint.CheckpointModel`` reads.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from diffaudit import __version__
from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_write_json
from diffaudit.harness.checkpoint import save_checkpoint
from diffaudit.harness.edm import (
    EDMPrecond,
    check_estimator_options,
    check_label_dropout,
    draw_training_sigma_noise,
    drop_labels,
    edm_training_loss,
)
from diffaudit.harness.networks import build_network, check_n_classes, parse_model_spec
from diffaudit.hashing import array_sha256
from diffaudit.threads import torch_threads, training_threads

CHECKPOINT_FORMAT = "diffaudit.checkpoint/1"


@dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps
    batch: int = 256  # samples per step (drawn as epochs of random permutations of the training set)
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100  # lr ramps linearly from lr/warmup_steps to lr over these steps (0 = none)
    grad_clip: float = 1.0  # clip the global grad norm (of the mean per-coordinate loss) to this; 0 = off
    # EMA of the weights as in EDM: half-life measured in training samples, not steps, so it does not
    # change meaning with the batch size; beta = 0.5 ** (batch / half-life).
    ema_halflife_nimg: float = 50_000.0
    # EDM's EMA ramp-up: half-life = min(ema_halflife_nimg, ema_rampup * samples seen so far), so a
    # short run's EMA is not dominated by the random initialisation. 0 = no ramp-up.
    ema_rampup: float = 0.05
    seed: int = 0  # initial weights, batch order, sigma and noise draws
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda"
    bf16: bool = True  # bf16 autocast for the forward pass; only ever used on CUDA
    log_every: int = 100  # steps between stats.jsonl lines (the last step is always logged)
    # --- the loss estimator (diffaudit.harness.edm module doc); the defaults are EDM's plain draws ---
    # K (sigma, noise) draws per item and step: a step makes batch * K denoiser evaluations, so its compute
    # grows K-fold. The EMA half-life counts evaluations (batch 64 x K 4 averages like batch 256 at equal
    # compute); stats' nimg still counts items
    noise_draws: int = 1
    # "lognormal" (iid draws of ln(sigma)) | "stratified" (one draw per quantile stratum of the batch's draws)
    sigma_sampling: str = "lognormal"
    # 0 = off; else ln(sigma) is drawn with this std instead of P_std = 1.2 and each term is weighted by
    # p(sigma)/q(sigma) (importance sampling, unbiased); must exceed P_std/sqrt(2) = 0.849
    sigma_proposal_std: float = 0.0
    # 0 = off; R >= 2: at every logged step, the variance of the minibatch gradient over R extra minibatch
    # gradients (``minibatch_grad_variance``; R more forward/backward passes per logged step), as grad_var
    grad_variance: int = 0
    # class-conditional runs only (``train(..., labels=...)``): the probability that an item's label is replaced
    # by the null label at a step, which teaches the same network the unconditional denoiser that classifier-free
    # guidance needs (Ho & Salimans 2022 use 0.1-0.2); 0 = a purely conditional model, which cannot be sampled
    # or denoised without a label. Ignored (and no numbers drawn for it) without labels
    label_dropout: float = 0.1

    def check(self) -> None:
        self._check_types()
        if self.steps < 1 or self.batch < 1:
            raise DiffauditError(f"steps and batch must be >= 1, got steps={self.steps}, batch={self.batch}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DiffauditError(f"the learning rate must be a positive number, got lr={self.lr}.")
        if (
            self.weight_decay < 0
            or self.grad_clip < 0
            or self.warmup_steps < 0
            or self.ema_halflife_nimg <= 0
        ):
            raise DiffauditError(
                "weight_decay, grad_clip and warmup_steps must be >= 0 and ema_halflife_nimg > 0."
            )
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise DiffauditError(f"device {self.device!r} is not one of auto, cpu, cuda.")
        if self.log_every < 1:
            raise DiffauditError(f"log_every must be >= 1, got {self.log_every}.")
        if not all(0 <= b < 1 for b in self.betas):
            raise DiffauditError(
                f"betas must be two numbers in [0, 1), got {self.betas!r}; e.g. (0.9, 0.999)."
            )
        check_estimator_options(self.noise_draws, self.sigma_sampling, self.sigma_proposal_std)
        if self.grad_variance == 1 or self.grad_variance < 0:
            raise DiffauditError(
                f"grad_variance must be 0 (off) or a number of gradients >= 2, got {self.grad_variance}."
            )
        check_label_dropout(self.label_dropout)

    def _check_types(self) -> None:
        """Every field of the type it is declared with (a bool is not a number here), named in one sentence."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int):
                ok, want = (
                    isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_),
                    "a whole number",
                )
            elif f.type in ("float", float):
                ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(
                    v, bool | np.bool_
                )
                ok, want = ok and math.isfinite(v), "a finite number"
            elif f.type in ("bool", bool):
                ok, want = isinstance(v, bool | np.bool_), "true or false"
            elif f.type in ("str", str):
                ok, want = isinstance(v, str), "a string"
            else:  # betas
                ok = (
                    isinstance(v, tuple | list)
                    and len(v) == 2
                    and all(isinstance(b, int | float) and not isinstance(b, bool) for b in v)
                )
                want = "two numbers, e.g. (0.9, 0.999)"
            if not ok:
                raise DiffauditError(f"training option {f.name} must be {want}, got {v!r}.")


@dataclass
class TrainResult:
    ema: object  # EDMPrecond with the EMA weights (eval mode, on CPU): what gets saved and audited
    net: object  # EDMPrecond with the raw final weights (on CPU)
    stats: list[dict] = field(default_factory=list)  # the stats.jsonl lines
    sigma_data: float = 0.0
    config: dict = field(default_factory=dict)  # the checkpoint's config.json content
    out_dir: Path | None = None


def check_training_data(x, name: str = "training data") -> np.ndarray:
    """(n, d) or (n, c, h, w) finite float array with n >= 2 and non-zero spread -> float32."""
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise DiffauditError(
            f"{name} is not a numeric array; pass (n, d) vectors or (n, c, h, w) images."
        ) from None
    if x.ndim not in (2, 4):
        raise DiffauditError(f"{name} has shape {x.shape}; expected (n, d) vectors or (n, c, h, w) images.")
    if x.shape[0] < 2:
        raise DiffauditError(f"{name} has {x.shape[0]} sample(s); training needs n >= 2.")
    if not np.isfinite(x).all():
        raise DiffauditError(f"{name} contains NaN or Inf values; clean it before training.")
    if float(x.std(dtype=np.float64)) == 0.0:
        raise DiffauditError(f"{name} is constant (std 0); there is nothing to learn.")
    return x


def data_sigma(x: np.ndarray) -> float:
    """sigma_data: the training data's standard deviation over all coordinates (float64)."""
    return float(np.asarray(x).std(dtype=np.float64))


def check_labels(labels, n: int, n_classes=None, class_names=None):
    """Training labels for ``n`` items -> (int64 labels (n,), n_classes, class_names or None).

    One whole number per item in [0, n_classes); ``n_classes`` defaults to the largest label + 1 and must be
    >= 2; ``class_names``, when given, one per class. Anything else is a one-sentence ``DiffauditError``."""
    try:
        raw = np.asarray(labels)
    except (TypeError, ValueError):
        raw = np.asarray(None)
    if raw.ndim != 1 or len(raw) != int(n):
        raise DiffauditError(
            f"training labels: need one class label per training item ({int(n)}), got shape {raw.shape}."
        )
    if raw.dtype.kind == "f" and np.isfinite(raw).all() and (raw == np.round(raw)).all():
        raw = raw.astype(np.int64)
    if raw.dtype.kind not in "iu":
        raise DiffauditError(f"training labels must be whole numbers (class indices), got dtype {raw.dtype}.")
    y = raw.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DiffauditError(
            f"training label {int(y.min())} is outside the classes (0 or more); labels must be class indices "
            "in [0, n_classes)."
        )
    if n_classes is None:
        n_classes = int(y.max()) + 1 if len(y) else 0
        if n_classes < 2:
            raise DiffauditError(
                f"training labels hold {max(n_classes, 1)} class; a class-conditional model needs >= 2."
            )
    n_classes = check_n_classes(n_classes)
    bad = y[(y < 0) | (y >= n_classes)]
    if len(bad):
        raise DiffauditError(
            f"training label {int(bad[0])} is outside the classes 0..{n_classes - 1}; "
            "labels must be class indices in [0, n_classes)."
        )
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) != n_classes:
            raise DiffauditError(
                f"got {len(class_names)} class names for {n_classes} classes; give one per class."
            )
    return y, n_classes, class_names


def init_network(model_cfg, shape, seed: int, n_classes: int | None = None):
    """The raw network F with initial weights from ``seed`` (global torch RNG left untouched); with
    ``n_classes`` a class-conditional one, whose other parameters equal the unconditional network's."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_network(model_cfg, shape, n_classes=n_classes)


class BatchSampler:
    """Indices of the next batch: consecutive slices of random permutations of range(n), one
    permutation per epoch, all drawn from ``generator`` (so the draws interleave with sigma/noise)."""

    def __init__(self, n: int, batch: int, generator):
        self.n, self.batch, self.generator = int(n), int(batch), generator
        self._perm = None
        self._pos = 0

    def next(self):
        import torch

        parts, need = [], self.batch
        while need > 0:
            if self._perm is None or self._pos >= self.n:
                self._perm = torch.randperm(self.n, generator=self.generator, device=self.generator.device)
                self._pos = 0
            take = min(need, self.n - self._pos)
            parts.append(self._perm[self._pos : self._pos + take])
            self._pos += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def make_generator(seed: int, device):
    """The run's one random stream, on the training device (see the module docstring)."""
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))


def grad_variance_seed(seed: int) -> int:
    """The seed of the gradient-variance generator: a stream independent of the training one."""
    return int(np.random.SeedSequence([int(seed), 0x67726176]).generate_state(1)[0])  # "grav"


def draw_step(generator, cfg: TrainConfig, shape, sigma_data: float):
    """One step's sigma/noise draws under ``cfg``'s estimator options (``draw_training_sigma_noise``)."""
    return draw_training_sigma_noise(
        generator,
        cfg.batch,
        shape,
        sigma_data,
        noise_draws=cfg.noise_draws,
        sigma_sampling=cfg.sigma_sampling,
        proposal_std=cfg.sigma_proposal_std,
    )


def step_labels(Y, idx, n_classes, cfg: TrainConfig, generator):
    """A step's class labels: the batch items' labels ``Y[idx]``, dropped to the null label with probability
    ``cfg.label_dropout`` (``drop_labels``, drawn after the step's sigma and noise); None without labels."""
    if Y is None:
        return None
    return drop_labels(Y[idx], n_classes, cfg.label_dropout, generator)


def minibatch_grad_variance(
    precond, X, cfg: TrainConfig, generator, repeats: int, *, use_bf16: bool = False, Y=None
) -> float:
    """Variance of the minibatch gradient estimate at ``precond``'s current parameters, at the compute of
    one training step.

    R = ``repeats`` independent minibatch gradients g_r of the loss (unclipped), each on fresh items (the
    first batch of a fresh ``BatchSampler``: ``cfg.batch`` items drawn uniformly without replacement while
    batch <= n) and fresh sigma/noise (``draw_training_sigma_noise`` with ``cfg``'s estimator options), all
    from ``generator``; then

        grad_var = 1/(R - 1) sum_r |g_r - g_bar|^2,   |.|^2 summed over every coordinate of every parameter,

    the unbiased estimate of tr Cov(g), the sum over parameters of each coordinate's variance (the 1/(R - 1)
    rather than a mean over r keeps small R from shrinking it by (R - 1)/R). Streamed in float64 against g_1
    as a shift (no R x P matrix). ``X``: the training set (n, *shape) on the model's device; ``Y``: its class
    labels (n,) for a conditional model (dropped as in training, from ``generator``). Parameter ``.grad``
    fields, optimizer state and every other generator are left untouched.
    """
    import torch

    if int(repeats) < 2:
        raise DiffauditError(f"a gradient variance needs repeats >= 2 gradients, got {repeats}.")
    params = [p for p in precond.parameters() if p.requires_grad]
    n, shape = X.shape[0], tuple(X.shape[1:])
    shift = total = None
    sq = 0.0
    for _ in range(int(repeats)):
        idx = BatchSampler(n, cfg.batch, generator).next()
        draws = draw_step(generator, cfg, shape, precond.sigma_data)
        yb = step_labels(Y, idx, precond.n_classes, cfg, generator)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = edm_training_loss(precond, X[idx], draws, precond.sigma_data, yb)
        grads = torch.autograd.grad(loss, params, materialize_grads=True)  # an unused parameter: zeros
        g = torch.cat([t.reshape(-1) for t in grads]).double()
        if shift is None:
            shift, total = g, torch.zeros_like(g)
            continue
        d = g - shift
        total += d
        sq += float(d @ d)
    R = int(repeats)
    return (sq - float(total @ total) / R) / (R - 1)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` (step counts from 0)."""
    if cfg.warmup_steps > 0:
        return cfg.lr * min((step + 1) / cfg.warmup_steps, 1.0)
    return cfg.lr


def ema_beta(step: int, cfg: TrainConfig) -> float:
    """EMA decay after ``step`` (0-based) steps, from a half-life in samples (EDM, training_loop.py); a
    sample is one denoiser evaluation, so ``noise_draws`` K counts each item K times (see the comment on
    ``TrainConfig.noise_draws``)."""
    per_step = cfg.batch * cfg.noise_draws
    halflife = cfg.ema_halflife_nimg
    if cfg.ema_rampup > 0:
        halflife = min(halflife, (step + 1) * per_step * cfg.ema_rampup)
    return 0.5 ** (per_step / max(halflife, 1e-8))


@contextlib.contextmanager
def deterministic(enabled: bool):
    """torch.use_deterministic_algorithms for the block, restored after."""
    import torch

    old = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)


class LossWindow:
    """Sums of the loss and the pre-clipping gradient norm since the last stats line, in float64 on the
    device: no host sync per step (on a GPU, only stats lines sync). ``shape`` () for one model, (M,) for
    the M models trained at once by ``diffaudit.harness.vmap``."""

    def __init__(self, shape, device):
        import torch

        self.loss = torch.zeros(shape, dtype=torch.float64, device=device)
        self.grad_norm = torch.zeros(shape, dtype=torch.float64, device=device)
        self.k = 0

    def add(self, loss, grad_norm) -> None:
        self.loss += loss.detach().double()
        self.grad_norm += grad_norm.detach().double()
        self.k += 1

    def line(self, step: int, cfg: TrainConfig, lr: float, beta: float, t0: float) -> dict:
        """The stats line after ``step`` (loss and grad_norm: means over the window, a float for one model,
        a list for M), then an empty window."""
        line = {
            "step": step + 1,
            "nimg": (step + 1) * cfg.batch,
            "loss": (self.loss / self.k).cpu().tolist(),
            "lr": lr,
            "grad_norm": (self.grad_norm / self.k).cpu().tolist(),
            "ema_beta": beta,
            "elapsed_s": round(time.perf_counter() - t0, 3),
        }
        self.loss.zero_()
        self.grad_norm.zero_()
        self.k = 0
        return line


def _stats_writer(out_dir: Path | None):
    if out_dir is None:
        return None
    f = open(out_dir / "stats.jsonl", "w", encoding="utf-8")  # a fresh log for this run
    return f


def prepare_out_dir(out_dir, overwrite: bool) -> Path | None:
    if out_dir is None:
        return None
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DiffauditError(f"--out {out_dir} is a file; give a folder for the run.")
    if (out_dir / "config.json").exists() and not overwrite:
        raise DiffauditError(
            f"--out {out_dir} already holds a finished checkpoint; choose a new folder or delete it."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def checkpoint_config(
    model_cfg,
    shape,
    sigma_data,
    n_train,
    train_cfg: TrainConfig,
    dataset_spec,
    data_sha256,
    *,
    n_classes: int | None = None,
    class_names=None,
    labels_sha256: str | None = None,
):
    """The checkpoint's ``config.json``; a class-conditional run (``n_classes`` given) adds ``conditioning:
    "labels"``, ``n_classes``, ``class_names`` (when known), ``label_dropout`` and the labels' hash."""
    config = {
        "format": CHECKPOINT_FORMAT,
        "model": model_cfg.spec,
        "shape": [int(s) for s in shape],
        "sigma_data": float(sigma_data),
        "dataset": dataset_spec,
        "n_train": int(n_train),
        "train_sha256": data_sha256,
        "train": asdict(train_cfg),
        "diffaudit_version": __version__,
    }
    if n_classes is not None:
        config["conditioning"] = "labels"
        config["n_classes"] = int(n_classes)
        if class_names is not None:
            config["class_names"] = [str(c) for c in class_names]
        # top level as well as in "train": whether the checkpoint has an unconditional (null-label) mode
        config["label_dropout"] = float(train_cfg.label_dropout)
        config["train_labels_sha256"] = labels_sha256
    return config


def free_memory_bytes(device) -> int | None:
    """Memory this process could still take on ``device``: free GPU memory on CUDA, ``MemAvailable`` of
    /proc/meminfo on the CPU; None where it cannot be read."""
    import torch

    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError, IndexError):
        return None
    return None


def check_step_memory(cfg: TrainConfig, shape, device, models: int = 1) -> None:
    """Refuse, before any work, a step whose draws alone do not fit: batch x noise_draws evaluations (per
    model) each hold the noise, the noised input, the gathered item and the denoiser output (4 float32 arrays
    of ``shape``), before any activation of the network is counted."""
    evals = int(cfg.batch) * int(cfg.noise_draws) * int(models)
    need = 16 * evals * math.prod(shape)
    free = free_memory_bytes(device)
    if free is not None and need > free:
        raise DiffauditError(
            f"batch {cfg.batch} x noise_draws {cfg.noise_draws} = {cfg.batch * cfg.noise_draws:,} denoiser "
            f"evaluations a step{f' for each of {models} models' if models > 1 else ''} need "
            f"{need / 2**30:.1f} GiB for their draws alone, and {device} has {free / 2**30:.1f} GiB free; "
            "lower --noise-draws or --batch."
        )


def train(
    dataset_x: np.ndarray,
    model_cfg,
    train_cfg: TrainConfig | None = None,
    out_dir=None,
    progress: bool = True,
    *,
    dataset_spec: str | None = None,
    callback: Callable[[dict], None] | None = None,
    overwrite: bool = False,
    labels=None,
    n_classes: int | None = None,
    class_names=None,
) -> TrainResult:
    """Train an EDM denoiser on ``dataset_x`` ((n, d) or (n, c, h, w) float32) and return its EMA.

    ``model_cfg``: a ``ModelConfig`` or spec string ("mlp:width=256,depth=4"). With ``out_dir``, writes
    ``options.json`` before the first step, ``stats.jsonl`` every ``log_every`` steps, and the checkpoint
    (``model.safetensors`` + ``config.json``, see ``diffaudit.models.checkpoint``) at the end. ``callback(line)``
    is called after each stats line is written.

    ``labels`` (n,): one class index per item, for a class-conditional model (``check_labels``: ``n_classes``
    defaults to the largest label + 1, ``class_names`` are optional); None trains an unconditional one, with
    exactly the numbers it drew before conditioning existed.
    """
    import torch

    cfg = train_cfg or TrainConfig()
    cfg.check()
    model_cfg = parse_model_spec(model_cfg)
    x_np = check_training_data(dataset_x)
    device = resolve_device(cfg.device)
    n, shape = x_np.shape[0], tuple(x_np.shape[1:])
    if labels is not None:
        y_np, n_classes, class_names = check_labels(labels, n, n_classes, class_names)
    elif n_classes is not None or class_names is not None:
        raise DiffauditError("n_classes and class_names need labels (one class index per training item).")
    else:
        y_np = None
    sigma_data = data_sigma(x_np)
    # validates model vs. shape before any file is written
    net = init_network(model_cfg, shape, cfg.seed, n_classes)
    check_step_memory(cfg, shape, device)
    config = checkpoint_config(
        model_cfg,
        shape,
        sigma_data,
        n,
        cfg,
        dataset_spec,
        array_sha256(x_np),
        n_classes=n_classes,
        class_names=class_names,
        labels_sha256=None if y_np is None else array_sha256(y_np),
    )
    out_dir = prepare_out_dir(out_dir, overwrite)
    if out_dir is not None:
        atomic_write_json(
            out_dir / "options.json", {**config, "device": str(device), "out_dir": str(out_dir)}
        )

    precond = EDMPrecond(net, sigma_data).to(device).train()
    ema = EDMPrecond(init_network(model_cfg, shape, cfg.seed, n_classes), sigma_data).to(device).eval()
    ema.load_state_dict(precond.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(
        precond.parameters(),
        lr=lr_at(0, cfg),
        betas=tuple(cfg.betas),
        eps=1e-8,
        weight_decay=cfg.weight_decay,
    )
    X = torch.from_numpy(x_np).to(device)
    Y = None if y_np is None else torch.from_numpy(y_np).to(device)
    gen = make_generator(cfg.seed, device)
    sampler = BatchSampler(n, cfg.batch, gen)
    gv_gen = make_generator(grad_variance_seed(cfg.seed), device) if cfg.grad_variance else None
    use_bf16 = bool(cfg.bf16) and device.type == "cuda"
    params = list(precond.parameters())
    ema_params = list(ema.parameters())

    stats: list[dict] = []
    f = _stats_writer(out_dir)
    t0 = time.perf_counter()
    window = LossWindow((), device)
    try:
        # small CPU models train single-threaded: below the measured FLOPs break-even a second thread's
        # fork/join costs more than it saves, and next to busy processes it costs many times more
        # ~6 FLOPs per parameter per sample (forward + backward); a conv layer reuses its weights at every
        # pixel, so for images this counts every parameter at full resolution: an overestimate, which only
        # keeps more models multi-threaded as before
        pixels = math.prod(shape[1:]) if len(shape) == 3 else 1
        flops_per_step = 6.0 * sum(p.numel() for p in params) * cfg.batch * cfg.noise_draws * pixels
        n_threads = torch.get_num_threads()
        if device.type == "cpu":
            n_threads = training_threads(flops_per_step, n_threads)
        with deterministic(device.type == "cpu"), torch_threads(n_threads):
            for step in range(cfg.steps):
                idx = sampler.next()
                draws = draw_step(gen, cfg, shape, sigma_data)
                yb = step_labels(Y, idx, n_classes, cfg, gen)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                    loss = edm_training_loss(precond, X[idx], draws, sigma_data, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                else:
                    gn = torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
                    )
                lr = lr_at(step, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.step()
                beta = ema_beta(step, cfg)
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, params, 1.0 - beta)  # ema += (1 - beta) (p - ema)
                window.add(loss, gn)
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    line = window.line(step, cfg, lr, beta, t0)
                    if gv_gen is not None:  # at the weights after this step; costs R gradients
                        line["grad_var"] = minibatch_grad_variance(
                            precond, X, cfg, gv_gen, cfg.grad_variance, use_bf16=use_bf16, Y=Y
                        )
                    stats.append(line)
                    if f is not None:
                        f.write(json.dumps(line) + "\n")
                        f.flush()
                    if progress:
                        gv = f"  grad_var {line['grad_var']:.3e}" if "grad_var" in line else ""
                        print(
                            f"step {line['step']}/{cfg.steps}  loss {line['loss']:.4f}  lr {lr:.2e}  "
                            f"grad {line['grad_norm']:.3f}{gv}  {line['elapsed_s']:.1f}s",
                            file=sys.stderr,
                        )
                    if callback is not None:
                        callback(line)
                    if not math.isfinite(line["loss"]):
                        raise DiffauditError(
                            f"training diverged at step {step + 1} (loss {line['loss']}); "
                            "lower --lr or raise the warm-up."
                        )
    finally:
        if f is not None:
            f.close()

    ema = ema.cpu().eval()
    net_out = precond.cpu().eval()
    if out_dir is not None:
        save_checkpoint(out_dir, ema, config)
    return TrainResult(
        ema=ema, net=net_out, stats=stats, sigma_data=sigma_data, config=config, out_dir=out_dir
    )


# --- CLI ---------------------------------------------------------------------------------------
