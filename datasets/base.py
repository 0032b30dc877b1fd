"""The synthetic-dataset contract and the registry of datasets with known latent factors.

Every dataset is a class whose parameters are set in ``__init__`` (sklearn-style) and whose fixed
random structure (mixing matrices, hidden directions) comes from its own ``seed``. It exposes:

- ``sample(n, seed) -> (x, z)``: ``x`` in the normal form ((n, d) float32 vectors or (n, c, h, w)
  float32 images in [-1, 1]) and ``z`` (n, n_factors) float64 true latent factors;
- ``generate(z) -> x``: the generator applied to given factors;
- ``project(x) -> (z_hat, residual)``: the oracle inversion; ``residual`` (n,) float64 distance to
  the data manifold in the units documented by the dataset;
- ``factors``: a tuple of ``Factor`` specs (name, kind, range/categories);
- ``n_population``: None for a generator (unlimited fresh draws); for a FINITE set of real items (digits)
  the number of distinct items. ``sample`` then never returns more, draws of different seeds overlap, and
  the dataset also has ``split(n_train, n_holdout, seed) -> ((x, z), (x, z))``: disjoint training and
  holdout sets from one seeded permutation (train = ``sample(n_train, seed)``, so nested in n_train;
  holdout nested in n_holdout), refusing n_train + n_holdout > n_population.

Spec strings ``name:key=value,...`` build a dataset through ``get_dataset``.
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass, field

import numpy as np

from diffaudit.errors import DiffauditError


@dataclass(frozen=True)
class Factor:
    name: str
    kind: str = "continuous"  # "continuous" | "categorical"
    low: float | None = None  # support of a continuous factor (None = unbounded)
    high: float | None = None
    categories: tuple[str, ...] = field(default_factory=tuple)  # for categorical factors, coded 0..K-1


class Dataset(abc.ABC):
    name: str = ""
    kind: str = "vector"  # "vector" | "image"
    n_population: int | None = None  # items of a finite real set (which then has split()); None: a generator

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (d,) or (c, h, w)."""

    @property
    @abc.abstractmethod
    def factors(self) -> tuple[Factor, ...]: ...

    @abc.abstractmethod
    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]: ...

    @abc.abstractmethod
    def generate(self, z: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def params(self) -> dict:
        """Constructor parameters (for specs, cache keys and reports)."""
        return dict(getattr(self, "_params", {}))

    @property
    def spec(self) -> str:
        p = self.params()
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in p.items()) if p else "")

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.factors)


_REGISTRY: dict[str, type[Dataset]] = {}


def register(cls: type[Dataset]) -> type[Dataset]:
    _REGISTRY[cls.name] = cls
    return cls


def _parse_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"name:key=value,key=value"`` -> ``("name", {key: value})`` (values typed int/float/bool/str)."""
    name, _, rest = spec.strip().partition(":")
    params: dict = {}
    if rest:
        for part in rest.split(","):
            if not part.strip():
                continue
            key, eq, val = part.partition("=")
            if not eq or not key.strip():
                raise DiffauditError(
                    f"dataset spec {spec!r}: {part!r} is not key=value; write e.g. 'mcm:d=16,beta_v=4'."
                )
            params[key.strip().replace("-", "_")] = _parse_value(val.strip())
    return name.strip(), params


# name -> module that defines and registers it (imported on first use, so importing one dataset
# does not import them all).
DATASET_MODULES: dict[str, str] = {
    "hidden-manifold": "diffaudit.datasets.hidden_manifold",
    "mcm": "diffaudit.datasets.mcm",
    "molrg": "diffaudit.datasets.molrg",
    "sprites": "diffaudit.datasets.sprites",
    "digits": "diffaudit.datasets.digits",
}


def available_datasets() -> list[str]:
    return sorted(DATASET_MODULES)


def get_dataset(spec: str, **params) -> Dataset:
    """Build a dataset from ``"name"`` plus keyword params, or from a spec ``"name:key=value,..."``.

    An unknown name or parameter is a ``DiffauditError`` that lists the valid ones.
    """
    import importlib
    import inspect

    name, spec_params = parse_spec(spec)
    spec_params.update(params)
    if name not in DATASET_MODULES:
        raise DiffauditError(f"unknown dataset {name!r}; choose one of: {', '.join(available_datasets())}.")
    if name not in _REGISTRY:
        importlib.import_module(DATASET_MODULES[name])
    cls = _REGISTRY[name]
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p != "self"]
    unknown = sorted(set(spec_params) - set(valid))
    if unknown:
        raise DiffauditError(
            f"dataset {name!r} has no parameter {', '.join(map(repr, unknown))}; valid parameters: {', '.join(valid)}."
        )
    try:
        return cls(**spec_params)
    except (TypeError, ValueError) as e:
        raise DiffauditError(f"dataset {spec!r}: {e}") from None


def check_samples(x, shape: tuple[int, ...], dataset: str) -> np.ndarray:
    """Validate samples handed to ``project``: (n, *shape), finite -> float64 array."""
    a = np.asarray(x)
    if a.ndim == len(shape) and tuple(a.shape) == tuple(shape):
        a = a[None]
    if tuple(a.shape[1:]) != tuple(shape):
        raise DiffauditError(
            f"{dataset}: samples have shape {tuple(a.shape)}, expected (n, {', '.join(map(str, shape))}); pass samples of this dataset."
        )
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise DiffauditError(f"{dataset}: samples contain NaN or Inf; remove or fix them before projecting.")
    return a


def check_n(n, dataset: str) -> int:
    """``n`` for ``sample``: a non-negative integer."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DiffauditError(f"{dataset}: n={n!r} is not a non-negative integer; pass the number of samples.")
    return int(n)


# ------------------------------------------------------------------------------------- parameter checks


def int_param(value, name: str, dataset: str, low: int = 0) -> int:
    """A dataset parameter that must be an integer >= ``low`` (an integral float such as 1e3 is accepted,
    since spec strings parse ``1e3`` as a float); anything else is a one-sentence ``DiffauditError``."""
    ok = (
        not isinstance(value, bool | np.bool_)
        and isinstance(value, int | float | np.integer | np.floating)
        and math.isfinite(value)
        and value == int(value)
        and value >= low
    )
    if not ok:
        raise DiffauditError(f"{dataset}: {name}={value!r} is not an integer >= {low}; pass a whole number.")
    return int(value)


def float_param(value, name: str, dataset: str, low: float = 0.0) -> float:
    """A dataset parameter that must be a finite number >= ``low`` (NaN and Inf are refused here, by name,
    rather than surfacing later as NaN in the generated data)."""
    ok = (
        not isinstance(value, bool | np.bool_)
        and isinstance(value, int | float | np.integer | np.floating)
        and math.isfinite(value)
        and value >= low
    )
    if not ok:
        raise DiffauditError(f"{dataset}: {name}={value!r} is not a finite number >= {low:g}; pass one.")
    return float(value)


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable of /proc/meminfo, capped by a cgroup (v2 or v1)
    memory limit; the physical memory size where /proc is absent."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 2**63 - 1  # unknown platform: do not refuse
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit, encoding="ascii") as f:
                lim = f.read().strip()
            if lim.isdigit():
                with open(usage, encoding="ascii") as f:
                    avail = min(avail, int(lim) - int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return max(int(avail), 0)


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""  # unreachable


def check_memory(nbytes: float, what: str, dataset: str) -> None:
    """Refuse, before allocating, work whose estimated peak ``nbytes`` exceeds the memory available now,
    naming the size (a MemoryError mid-way, or the OOM killer, tells the user nothing)."""
    avail = available_memory()
    if nbytes > avail:
        raise DiffauditError(
            f"{dataset}: {what} needs about {_size(nbytes)} of memory but {_size(avail)} is available; "
            "lower the dimension or the number of samples."
        )
