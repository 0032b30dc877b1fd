"""Model adapters: "any model" enters the audit through ONE contract (``diffaudit.models.Model``).

``load_model(spec, train=..., dataset=..., device=...)`` turns a spec string into a ``Model``, the way
k-diffusion's ``external.py`` wraps foreign models into one ``D(x, sigma)``:

``samples:PATH``
    Pre-generated samples (black box; any format ``load_samples`` reads: .npy/.npz/.pt/.safetensors or
    an image folder). ``sample(n, seed)`` returns the FIRST ``n`` rows in file order and ignores
    ``seed`` (the samples are what they are; a seeded subset would silently make two audits of the same
    file differ). Asking for more rows than the file holds is an error. ``n_available`` tells callers
    how many there are.
``entry:pkg.module:factory``
    ``factory()`` (called with no arguments) returns an object with the contract (a ``sample(n, seed)``
    method, optionally ``denoise``/``shape``), or ``factory`` itself is a plain ``sample(n, seed)``
    function (it is wrapped). Import errors and a missing attribute are user errors.
``ckpt:PATH``
    A diffaudit checkpoint folder (``model.safetensors`` + ``config.json``, see ``diffaudit.models.checkpoint``).
``diffusers:PATH``
    A local diffusers pipeline folder (``model_index.json`` with ``unet/`` holding a ``UNet2DModel`` and
    ``scheduler/`` holding a DDPM-type scheduler with ``alphas_cumprod``), or a bare ``UNet2DModel``
    folder next to a ``scheduler`` folder. Wrapped to the EDM denoiser as k-diffusion's
    ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` do (``diffaudit.models.discrete``):
    sigma_t = sqrt((1 - abar_t) / abar_t); a continuous sigma maps to a fractional timestep by linear
    interpolation in log sigma; c_in = 1 / sqrt(1 + sigma^2); epsilon prediction: D = x - sigma * eps;
    v prediction: D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v; sample prediction: D = net output.
    Sampled with the shared EDM Heun sampler over the sigma range the scheduler covers.
    A Stable Diffusion 1.x/2.x folder (``model_index.json`` naming a ``StableDiffusion*`` pipeline or a
    ``UNet2DConditionModel`` unet; also needs ``vae/``, ``text_encoder/``, ``tokenizer/``) loads as a
    prompt-conditional ``TextToImageModel`` (``diffaudit.models.text_pipeline``): the same denoiser on VAE
    latents, with classifier-free guidance ``guidance`` (``LoadContext.guidance``, used as given).
``control:NAME[:key=value,...]``
    The analytic controls (``diffaudit.models.controls.CONTROLS``: oracle, gaussian, memorizer and the
    failure modes shrunk, collapsed, interpolator, noisy-memorizer, mode-dropper), with parameters as
    in ``control:shrunk:factor=0.3``; fitted to ``train`` (oracle and mode-dropper need ``dataset``). The
    gaussian is NOT clipped to [-1, 1] on images: it is the moments-only control, and clipping changes
    its mean and covariance (on 16 x 16 sprites: FD 4x the real-data floor instead of 1.4x).

Every form is one entry of ONE registry, ``ADAPTERS`` (spec prefix -> ``Adapter``): its form and
one-line description make the help text and the error messages (``FORMS``), its loader
``(ARG, ctx) -> Model`` builds the model, and its optional ``check(ARG)`` validates the argument
without loading anything (``check_spec``, which the CLI runs before it reads any data). Add a model
adapter: one class (a ``Model``) + one ``register_adapter`` call.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffaudit.datasets.loading import load_samples
from diffaudit.device import resolve_device
from diffaudit.errors import DiffauditError, ModelError
from diffaudit.models.checkpoint import CheckpointModel
from diffaudit.models.contract import DenoiserModel, Model
from diffaudit.models.controls import (
    CONTROLS,
    DENOISER_CONTROLS,
    make_conditional_control,
    make_control,
)
from diffaudit.models.discrete import DiscreteSchedule, scalar_sigma
from diffaudit.models.text_pipeline import TextToImageModel, is_text_to_image

__all__ = [
    "ADAPTERS",
    "FORMS",
    "Adapter",
    "LoadContext",
    "register_adapter",
    "check_spec",
    "load_model",
    "adapters_help",
    "as_model",
    "model_name",
    "SamplesModel",
    "FunctionModel",
    "DiffusersModel",
    "TextToImageModel",
]


# --------------------------------------------------------------------------------------------- registry


def _as_is(arg: str) -> str:
    return arg


@dataclass(frozen=True)
class LoadContext:
    """What a loader may use besides its spec argument; each loader checks the parts it needs."""

    train: np.ndarray | None = None  # the training set in the normal form (controls are fitted to it)
    dataset: object | None = None  # the synthetic dataset (the oracle and mode-dropper controls sample it)
    device: str = "auto"  # "auto" | "cpu" | "cuda", resolved by the loader that runs a network
    num_steps: int | None = None  # Heun steps for denoiser models; None keeps each model's own default
    # class-conditional audits: the training set's labels (int64 (n,)) and the number of classes; the
    # analytic controls then fit one model per class (``--condition labels``)
    train_labels: np.ndarray | None = None
    n_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    guidance: float = (
        1.0  # classifier-free guidance scale of conditional networks (1 = the plain conditional)
    )

    def sampler_kwargs(self) -> dict:
        """``num_steps`` as keyword arguments: empty when unset, so each model keeps its default."""
        return {} if self.num_steps is None else {"num_steps": int(self.num_steps)}


@dataclass(frozen=True)
class Adapter:
    """One spec form ``NAME:ARG``: how it reads in help text and how it becomes a ``Model``."""

    name: str  # the spec prefix before the first ':' (lower case)
    form: str  # the form as help text shows it, e.g. "ckpt:PATH"
    description: str  # one line for help text
    load: Callable[[str, LoadContext], Model]  # (ARG, ctx) -> Model; a user mistake raises DiffauditError
    # a check of ARG that loads nothing (the CLI runs it before reading data, so a typo fails in a second)
    check: Callable[[str], None] | None = None
    label: Callable[[str], str] = _as_is  # ARG -> the short tail of report folder names (see model_name)


ADAPTERS: dict[str, Adapter] = {}  # spec prefix -> adapter, in help-text order; filled by register_adapter
FORMS: tuple[str, ...] = ()  # the registered forms, in order (rebuilt by register_adapter)

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def register_adapter(
    name: str,
    *,
    form: str,
    description: str,
    load: Callable[[str, LoadContext], Model],
    check: Callable[[str], None] | None = None,
    label: Callable[[str], str] = _as_is,
    replace: bool = False,
) -> Adapter:
    """Make ``NAME:ARG`` specs load through ``load(ARG, ctx)`` (see ``Adapter`` for the fields).

    A name already registered is refused unless ``replace=True`` (a silent override would change what
    every existing spec of that form loads).
    """
    if not name or not set(name) <= _NAME_CHARS:
        raise DiffauditError(
            f"model adapter name {name!r} is invalid; use lower-case letters, digits, '-' or '_'."
        )
    if not str(form).startswith(f"{name}:"):
        raise DiffauditError(
            f"model adapter {name!r}: form {form!r} must start with '{name}:', e.g. '{name}:PATH'."
        )
    if not str(description).strip() or "\n" in str(description):
        raise DiffauditError(f"model adapter {name!r}: pass a description of one non-empty line.")
    if not callable(load) or (check is not None and not callable(check)) or not callable(label):
        raise DiffauditError(
            f"model adapter {name!r}: load, check and label must be callables (check may be None)."
        )
    if name in ADAPTERS and not replace:
        raise DiffauditError(
            f"model adapter {name!r} is already registered; pick another name or pass replace=True."
        )
    adapter = Adapter(
        name=name, form=str(form), description=str(description).strip(), load=load, check=check, label=label
    )
    ADAPTERS[name] = adapter
    global FORMS
    FORMS = tuple(a.form for a in ADAPTERS.values())
    return adapter


def _forms() -> str:
    return ", ".join(a.form for a in ADAPTERS.values())


def adapters_help() -> str:
    """One line per registered form, ``FORM  description``, for help text."""
    width = max(len(a.form) for a in ADAPTERS.values())
    return "\n".join(f"{a.form:<{width}}  {a.description}" for a in ADAPTERS.values())


def check_spec(spec: str) -> tuple[Adapter, str]:
    """The registered adapter of ``spec`` and its argument, after the adapter's cheap check; loads nothing.

    A spec without an argument, or of an unregistered form -> ``DiffauditError`` listing the forms.
    """
    spec = str(spec).strip()
    kind, sep, rest = spec.partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if not sep or not rest:
        raise DiffauditError(f"model spec {spec!r} is not understood; use one of: {_forms()}.")
    adapter = ADAPTERS.get(kind)
    if adapter is None:
        raise DiffauditError(f"model spec {spec!r} has unknown form {kind!r}; use one of: {_forms()}.")
    if adapter.check is not None:
        adapter.check(rest)
    return adapter, rest


def load_model(
    spec: str,
    *,
    train=None,
    dataset=None,
    device: str = "auto",
    num_steps: int | None = None,
    train_labels=None,
    n_classes: int | None = None,
    class_names=None,
    guidance: float = 1.0,
) -> Model:
    """Build a ``Model`` from ``spec`` (forms in the module docstring). Unknown form -> ``DiffauditError``.

    ``train``: the training set in the normal form (controls are fitted to it); ``dataset``: the
    synthetic dataset (the oracle control samples it); ``num_steps``: Heun steps for denoiser models.
    """
    adapter, rest = check_spec(spec)
    ctx = LoadContext(
        train=train,
        dataset=dataset,
        device=device,
        num_steps=num_steps,
        train_labels=None if train_labels is None else np.asarray(train_labels, dtype=np.int64),
        n_classes=None if n_classes is None else int(n_classes),
        class_names=None if class_names is None else tuple(class_names),
        guidance=float(guidance),
    )
    return adapter.load(rest, ctx)


def model_name(spec: str) -> str:
    """A short, file-name-safe name for a spec (used in default report folder names)."""
    kind, _, rest = str(spec).partition(":")
    adapter = ADAPTERS.get(kind.strip().lower())
    tail = adapter.label(rest) if adapter is not None else rest
    raw = f"{kind}-{tail}" if tail else kind
    safe = "".join(c if (c.isalnum() or c in "-_.") else "-" for c in raw).strip("-.")
    return (safe or "model")[:60]


def _path_tail(arg: str) -> str:
    return Path(arg.rstrip("/\\")).name


def _entry_tail(arg: str) -> str:
    return arg.split(":")[-1]


def as_model(obj, name: str | None = None) -> Model:
    """Any Python model behind the contract: a ``Model``, an object with ``sample(n, seed)`` (and maybe
    ``denoise``), or a ``sample(n, seed)`` function (the Python API's counterpart of ``entry:``)."""
    if isinstance(obj, Model):
        return obj
    label = name or getattr(obj, "name", None) or type(obj).__name__
    if callable(getattr(obj, "sample", None)):
        return _ObjectModel(obj, label)
    if callable(obj) and _is_sample_function(obj):
        return FunctionModel(obj, getattr(obj, "__name__", label))
    raise DiffauditError(
        f"model {label!r} has no sample(n, seed) method; pass a spec string, an object with "
        "sample(n, seed), or a sample(n, seed) function."
    )


# --------------------------------------------------------------------------------------------- samples


class SamplesModel(Model):
    """Pre-generated samples as a black-box model: ``sample(n, seed)`` = the first n rows (seed ignored)."""

    def __init__(self, path, key: str | None = None):
        self.path = str(path)
        self.x = load_samples(path, key=key, name=f"generated samples {path}")
        self.shape = tuple(self.x.shape[1:])
        self.name = f"samples:{path}"

    @property
    def n_available(self) -> int:
        return len(self.x)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        n = int(n)
        if n > len(self.x):
            raise DiffauditError(
                f"generated samples {self.path} hold {len(self.x)} samples but {n} were requested; "
                f"pass --n-samples {len(self.x)} or less, or generate more."
            )
        return self.x[:n]


# --------------------------------------------------------------------------------------------- entry


class FunctionModel(Model):
    """A plain ``sample(n, seed)`` function as a model (black box; the shape is learnt on first call)."""

    def __init__(self, fn, name: str):
        self.fn = fn
        self.name = name
        self.shape = ()

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        x = _user_array(_call_user(self.fn, self.name, _SAMPLE, int(n), int(seed)), self.name, _SAMPLE)
        self.shape = tuple(x.shape[1:])
        return x


class _ObjectModel(Model):
    """An object with a ``sample`` method (and maybe ``denoise``) behind the contract."""

    def __init__(self, obj, name: str):
        self.obj = obj
        self.name = name
        self.shape = tuple(getattr(obj, "shape", ()) or ())
        for attr in ("conditioning", "n_classes", "class_names", "latent_shape"):  # a conditional object's
            if getattr(obj, attr, None) is not None:
                setattr(self, attr, getattr(obj, attr))
        if callable(getattr(obj, "denoise", None)):
            self.denoise = self._denoise  # instance attribute: has_denoiser looks at the type
            self._white_box = True
        else:
            self._white_box = False
        if callable(getattr(obj, "sample_from_noise", None)):
            self.sample_from_noise = _guarded(obj.sample_from_noise, name, _FROM_NOISE)

    @property
    def has_denoiser(self) -> bool:
        return self._white_box

    def _denoise(self, x, sigma, cond=None):
        args = (x, sigma) if cond is None else (x, sigma, cond)
        return _user_denoised(_call_user(self.obj.denoise, self.name, _DENOISE, *args), x, self.name)

    def sample(self, n: int, seed: int = 0, cond=None) -> np.ndarray:
        args = (int(n), int(seed)) if cond is None else (int(n), int(seed), cond)
        x = _user_array(_call_user(self.obj.sample, self.name, _SAMPLE, *args), self.name, _SAMPLE)
        self.shape = tuple(x.shape[1:])
        return x


# The calls into the audited model's own code, as error messages name them.
_SAMPLE, _DENOISE, _FROM_NOISE = "sample(n, seed)", "denoise(x, sigma)", "sample_from_noise(noise)"


def _one_line(text, limit: int = 300) -> str:
    """``text`` as one line of at most ``limit`` characters (an exception message may span pages)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _call_user(fn, name: str, what: str, *args):
    """``fn(*args)``, a call into the audited model's own code.

    Arguments that do not even bind to ``fn``'s signature are a user mistake (``DiffauditError``: the entry
    point has the wrong form). Anything the call itself raises, ``SystemExit`` included, is the model's
    failure (``ModelError``): a model that exits must never look like a finished audit (exit 0).
    """
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as e:
        raise DiffauditError(
            f"model {name}: {what} cannot be called with {len(args)} argument(s) ({e}); "
            f"the entry point must accept {what}."
        ) from None
    except ValueError:  # no signature to inspect (a builtin or C extension): just call it
        pass
    try:
        return fn(*args)
    except (DiffauditError, ModelError):
        raise
    except SystemExit as e:
        raise ModelError(
            f"model {name}: {what} called sys.exit({e.code!r}) instead of returning; a model must not exit."
        ) from e
    except Exception as e:
        raise ModelError(f"model {name}: {what} raised {type(e).__name__}: {_one_line(e)}") from e


def _user_array(out, name: str, what: str) -> np.ndarray:
    """The model's output as a real, finite numeric array; anything else is the model's failure.

    Complex output is refused outright: casting it to float would silently drop the imaginary part.
    """
    try:
        x = np.asarray(out)
    except Exception as e:  # ragged nested lists (numpy >= 1.24), a CUDA tensor, ...
        raise ModelError(
            f"model {name}: {what} returned a {type(out).__name__} that is not one array "
            f"({type(e).__name__}: {_one_line(e, 160)}); return an array of shape (n, ...)."
        ) from e
    if x.dtype == object:
        raise ModelError(
            f"model {name}: {what} returned ragged or mixed values (an object array of shape {x.shape}); "
            "return one numeric array of shape (n, ...)."
        )
    if np.iscomplexobj(x):
        raise ModelError(
            f"model {name}: {what} returned complex values (dtype {x.dtype}); return real samples "
            "(an imaginary part is never dropped silently)."
        )
    if not np.issubdtype(x.dtype, np.number):
        raise ModelError(
            f"model {name}: {what} returned dtype {x.dtype}; return real-valued numeric samples."
        )
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite.reshape(len(x), -1)).any(1).sum()) if x.ndim >= 1 and len(x) else 1
        raise ModelError(f"model {name}: {what} returned NaN or Inf in {bad} of {max(len(x), 1)} row(s).")
    return x


def _user_denoised(out, x, name: str) -> np.ndarray:
    """``denoise``'s output: a real finite float64 array of the input's shape, else the model's failure."""
    d = _user_array(out, name, _DENOISE)
    if d.shape != np.shape(x):
        raise ModelError(
            f"model {name}: {_DENOISE} returned shape {d.shape} for an input of shape {np.shape(x)}."
        )
    return d.astype(np.float64, copy=False)


def _guarded(method, name: str, what: str):
    """``method`` with its failures and unusable outputs reported as the model's (``ModelError``); a conditional
    model's ``cond`` (keyword or third positional argument) is passed on positionally, only when given."""

    def call(*args, cond=None):
        args = args if cond is None else (*args, cond)
        out = _call_user(method, name, what, *args)
        return _user_denoised(out, args[0], name) if what == _DENOISE else _user_array(out, name, what)

    return call


def _guard_model(model: Model, name: str) -> Model:
    """A user-defined ``Model`` (from an ``entry:``) with its own methods guarded by ``_guarded``.

    The guards are instance attributes, so ``has_denoiser`` and the sampler dispatch (which look at the
    type) are unchanged, and a ``DenoiserModel``'s own Heun loop calls the guarded ``denoise``.
    """
    for attr, what in (("sample", _SAMPLE), ("sample_from_noise", _FROM_NOISE), ("denoise", _DENOISE)):
        if getattr(type(model), attr, None) is getattr(Model, attr):
            continue  # the contract's placeholder: nothing of the user's to call
        try:
            setattr(model, attr, _guarded(getattr(model, attr), name, what))
        except AttributeError:  # __slots__ or a read-only property: leave that method as it is
            pass
    return model


def _check_entry(target: str) -> None:
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise DiffauditError(f"model spec 'entry:{target}' needs the form entry:pkg.module:factory.")


def _import_entry(module_name: str, name: str):
    """Import the entry's module: a module that is not there is a user mistake; one that fails is the model's."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise DiffauditError(
                f"model spec {name!r}: cannot import {module_name!r} ({type(e).__name__}: {e}); "
                "check the module path and PYTHONPATH."
            ) from None
        raise ModelError(
            f"model {name}: importing {module_name!r} raised {type(e).__name__}: {_one_line(e)}"
        ) from e
    except SystemExit as e:
        raise ModelError(f"model {name}: importing {module_name!r} called sys.exit({e.code!r}).") from e
    except Exception as e:  # the module raising while it is imported: the model's own code failed
        raise ModelError(
            f"model {name}: importing {module_name!r} raised {type(e).__name__}: {_one_line(e)}"
        ) from e


def _load_entry(target: str, ctx: LoadContext) -> Model:
    """``factory()`` or a ``sample(n, seed)`` function; ``ctx`` is unused (a factory takes no arguments)."""
    module_name, _, attr = target.rpartition(":")
    name = f"entry:{target}"
    obj = _import_entry(module_name, name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DiffauditError(f"model spec {name!r}: module {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if isinstance(obj, Model):
        return _guard_model(obj, name)  # errors name the spec the user passed
    if not callable(obj):
        raise DiffauditError(
            f"model spec {name!r}: {attr!r} is not callable; point to a factory or a sample(n, seed) function."
        )
    if _is_sample_function(obj):
        return FunctionModel(obj, name)
    made = _call_user(obj, name, f"{attr}()")  # a raising factory is the model's failure
    if isinstance(made, Model):
        if getattr(made, "name", None) in (None, "", Model.name):  # unnamed: the spec names it
            made.name = name
        return _guard_model(made, name)
    if callable(getattr(made, "sample", None)):
        return _ObjectModel(made, name)
    raise DiffauditError(
        f"model spec {name!r}: {attr}() returned {type(made).__name__}, which has no sample(n, seed) method."
    )


def _is_sample_function(fn) -> bool:
    """A function taking (n, seed) [two positional parameters] is a sampler; a zero-argument one a factory."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    if inspect.isclass(fn):
        return False
    req = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(req) >= 1


# --------------------------------------------------------------------------------------------- diffusers


def _find_parts(path: Path) -> tuple[Path, Path]:
    if not path.is_dir():
        raise DiffauditError(
            f"diffusers model {path}: no such folder; pass a pipeline folder saved with save_pretrained."
        )
    candidates = [
        (path / "unet", path / "scheduler"),
        (path, path / "scheduler"),
        (path, path.parent / "scheduler"),
    ]
    for unet, sched in candidates:
        if (unet / "config.json").is_file() and (sched / "scheduler_config.json").is_file():
            return unet, sched
    raise DiffauditError(
        f"diffusers model {path}: expected unet/config.json and scheduler/scheduler_config.json inside; "
        "save the pipeline with pipeline.save_pretrained(PATH)."
    )


class DiffusersModel(DenoiserModel):
    """A diffusers ``UNet2DModel`` + DDPM-type scheduler as an EDM denoiser D(x, sigma) (k-diffusion style).

    ``sigmas_`` (T,) = sqrt((1 - alphas_cumprod) / alphas_cumprod) ascending with t; a sigma between
    two of them maps to the fractional timestep interpolated linearly in log sigma (k-diffusion
    ``DiscreteSchedule.sigma_to_t``), clamped to the covered range (``diffaudit.models.discrete``).
    """

    def __init__(
        self,
        path,
        *,
        device: str = "auto",
        num_steps: int = 32,
        batch_size: int = 256,
        sigma_data: float = 0.5,
    ):
        try:
            import diffusers
        except ImportError:
            raise DiffauditError(
                "the diffusers: adapter needs the optional 'diffusers' package; pip install 'diffaudit[diffusers]'."
            ) from None

        path = Path(os.fspath(path)).expanduser()
        unet_dir, sched_dir = _find_parts(path)
        try:
            unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=None)
        except Exception as e:
            raise DiffauditError(
                f"diffusers model {path}: cannot load it ({type(e).__name__}: {str(e)[:160]}); is it a UNet2DModel pipeline?"
            ) from None
        self.schedule = DiscreteSchedule.from_folder(sched_dir, f"diffusers model {path}")
        self.prediction_type = self.schedule.prediction_type
        self.sigmas_ = self.schedule.sigmas
        self.log_sigmas_ = self.schedule.log_sigmas
        self.device = resolve_device(device)
        self.unet = unet.to(self.device).eval()
        for p in self.unet.parameters():
            p.requires_grad_(False)
        c = int(unet.config.in_channels)
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(
            (c, int(h), int(w)), sigma_data=sigma_data, num_steps=num_steps, batch_size=batch_size
        )
        self.sampler_config = self.schedule.sampler_config(num_steps, sigma_data)
        self.name = f"diffusers:{path}"

    def sigma_to_t(self, sigma: float) -> float:
        """Fractional timestep of ``sigma`` (interpolated in log sigma; clamped to the schedule)."""
        return self.schedule.sigma_to_t(sigma)

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        import torch

        x = np.asarray(x, dtype=np.float64)
        if tuple(x.shape[1:]) != self.shape:
            raise DiffauditError(
                f"diffusers model: input of shape {x.shape} does not match its sample shape {self.shape}."
            )
        sigma = scalar_sigma(sigma)
        t = self.sigma_to_t(sigma)
        c_in = self.schedule.c_in(sigma)
        out = np.empty_like(x)
        with torch.no_grad():
            for i in range(0, len(x), self.batch_size):
                xb = x[i : i + self.batch_size]
                inp = torch.from_numpy((xb * c_in).astype(np.float32)).to(self.device)
                tt = torch.full((len(xb),), t, dtype=torch.float32, device=self.device)
                y = self.unet(inp, tt).sample.double().cpu().numpy()
                out[i : i + len(xb)] = self.schedule.denoised(xb, sigma, y)
        return out


# --------------------------------------------------------------------------------------------- loaders


def _load_samples(path: str, ctx: LoadContext) -> Model:
    return SamplesModel(path)


def _load_ckpt(path: str, ctx: LoadContext) -> Model:
    m = CheckpointModel(
        path, device=str(resolve_device(ctx.device)), guidance=ctx.guidance, **ctx.sampler_kwargs()
    )
    m.name = f"ckpt:{path}"
    return m


def _load_diffusers(path: str, ctx: LoadContext) -> Model:
    """A Stable-Diffusion-family folder -> ``TextToImageModel`` guided by ``ctx.guidance`` as given (the CLI
    passes 7.5, Stable Diffusion's default, for prompt models unless --guidance is set); else the unconditional
    ``DiffusersModel``."""
    if is_text_to_image(path):
        return TextToImageModel(path, device=ctx.device, guidance=ctx.guidance, **ctx.sampler_kwargs())
    return DiffusersModel(path, device=ctx.device, **ctx.sampler_kwargs())


def _check_control(arg: str) -> None:
    name = arg.partition(":")[0].strip().lower()
    if name not in CONTROLS:
        raise DiffauditError(
            f"unknown control {name!r} in model spec 'control:{arg}'; "
            f"use control:NAME with NAME one of: {', '.join(CONTROLS)}."
        )


def _load_control(arg: str, ctx: LoadContext) -> Model:
    name = arg.partition(":")[0].strip().lower()
    if name in ("oracle", "mode-dropper") and ctx.dataset is None:
        raise DiffauditError(
            f"model control:{name} samples the true generator, so it needs --dataset SPEC (synthetic data)."
        )
    kw = ctx.sampler_kwargs() if name in DENOISER_CONTROLS else {}  # the others are black boxes: no sampler
    if name == "gaussian":
        kw["clip"] = (
            None  # keep the training mean/covariance exactly (clipping images to [-1, 1] changes both)
        )
    if ctx.train_labels is not None:  # --condition labels: a control per class, the plain one for None
        m = make_conditional_control(
            arg,
            train=ctx.train,
            labels=ctx.train_labels,
            n_classes=ctx.n_classes,
            dataset=ctx.dataset,
            class_names=ctx.class_names,
            **kw,
        )
    else:
        m = make_control(arg, train=ctx.train, dataset=ctx.dataset, **kw)
    tail = arg.partition(":")[2].strip()
    m.name = f"control:{name}:{tail}" if tail else f"control:{name}"
    return m


# The built-in forms, in help-text order (each documented in the module docstring).
register_adapter(
    "samples",
    form="samples:PATH",
    description="pre-generated samples (.npy/.npz/.pt/.safetensors or an image folder); black box, first n rows",
    load=_load_samples,
    label=_path_tail,
)
register_adapter(
    "entry",
    form="entry:pkg.module:factory",
    description="a Python factory returning an object with sample(n, seed), or a sample(n, seed) function",
    load=_load_entry,
    check=_check_entry,
    label=_entry_tail,
)
register_adapter(
    "ckpt",
    form="ckpt:PATH",
    description="a diffaudit checkpoint folder (model.safetensors + config.json); white box",
    load=_load_ckpt,
    label=_path_tail,
)
register_adapter(
    "diffusers",
    form="diffusers:PATH",
    description="a local diffusers pipeline folder: a UNet2DModel + DDPM-type scheduler, or a Stable Diffusion "
    "1.x/2.x text-to-image pipeline (prompts); white box",
    load=_load_diffusers,
    label=_path_tail,
)
register_adapter(
    "control",
    form="control:NAME[:key=value,...]",
    description=f"an analytic control fitted to the training data; NAME one of {', '.join(CONTROLS)}",
    load=_load_control,
    check=_check_control,
)
