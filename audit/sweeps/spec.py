"""The sweep spec (TOML) and its expansion into cells.

A sweep trains (or fits) one model per cell ``(dataset, its parameters, n_train, seed, model)`` and audits
it. The spec, read with ``tomllib``::

    name = "quick"
    n = { min = 64, max = 8192, num = 8 }   # log-spaced, rounded to integers; or an explicit list [64, 128]
    seeds = [0]
    model = "mlp:width=256,depth=3"           # diffaudit.harness.networks spec string
    controls = ["gaussian"]                   # analytic controls fitted to each cell's training set
    reproducibility = false                   # train a second model on a disjoint set, shared sampling noise

    [[dataset]]
    name = "hidden-manifold"
    params = { d = [16, 32], D = 4 }          # a list is a grid axis; the cartesian product is swept

    [budget]                                   # training steps per cell, recorded in every cell
    rule = "steps"                             # "steps": fixed; "epochs": ceil(epochs n / batch);
    steps = 2000                               # "grow": clamp(ceil(epochs n / batch), min_steps, max_steps)

    [train]                                    # passed to diffaudit.harness.train.TrainConfig (batch, lr, ema, ...)
    batch = 256

    [sweep]                                    # how the sweep runs (the command's options win)
    group = "auto"                             # train cells together: "auto" (CUDA; CPU: small nets) | "on" | "off"
    group_mib = 8192                           # memory budget of one group (diffaudit.sweeps.groups)

    [audit]                                    # sweep-level audit options
    n_samples = 2000                           # generated samples per cell
    n_holdout = 2000                           # holdout draws per (dataset, seed)
    sampler_steps = 32                         # Heun steps
    options = {}                               # diffaudit.pipeline.config.AuditConfig fields, checked at load

Seeds. A cell's training set and holdout follow the audit's one data-seed rule
(``diffaudit.pipeline.setup.data_seeds``: ``sample(n_train, 3 seed + 1)``, ``sample(n_holdout, 3 seed + 2)``):
draws are nested, so a smaller n is a prefix of a larger one under the same seed (smooth curves). The
second (disjoint) training set of the reproducibility pair (and that second network's initialisation) and
the shared sampling noise of the pair come from seeds derived from ``seed`` and a label (``derive_seed``);
the network initialisation and minibatch order use ``seed`` at every n (common random numbers across the
curve). Nothing depends on the order in which cells run.

The cell id is a readable prefix plus a hash of the cell's full configuration (``Cell.config``), so the
same spec always expands to the same ids and any change to what a cell computes changes its id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from diffaudit.datasets.base import DATASET_MODULES, get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.harness.networks import parse_model_spec
from diffaudit.harness.train import TrainConfig
from diffaudit.hashing import params_sha256
from diffaudit.models.controls import CONTROLS
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.setup import data_seeds

SPEC_SCHEMA = "diffaudit.sweep/1"
CELL_SCHEMA = "diffaudit.sweep-cell/1"
BUDGET_RULES = ("steps", "epochs", "grow")
CONTROL_NAMES = tuple(c for c in CONTROLS if c != "oracle")  # the oracle needs no sweep
_TOP_KEYS = {
    "name",
    "n",
    "seeds",
    "model",
    "controls",
    "reproducibility",
    "dataset",
    "budget",
    "train",
    "audit",
    "device",
    "train_models",
    "sweep",
}
GROUP_MODES = ("auto", "on", "off")  # grouped training (diffaudit.sweeps.groups)
_SWEEP_KEYS = {"group", "group_mib"}
_AUDIT_KEYS = {"n_samples", "n_holdout", "sampler_steps", "options"}
_BUDGET_KEYS = {"rule", "steps", "epochs", "min_steps", "max_steps"}


def derive_seed(seed: int, label: str) -> int:
    """A seed for a named stream (``"holdout"``, ``"half-b"``, ``"floor"``) derived from a cell seed."""
    h = hashlib.sha256(f"diffaudit-sweep:{int(seed)}:{label}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Budget:
    """Training-steps rule. ``steps_for(n, batch)`` is what a cell trains for."""

    rule: str = "steps"  # "steps" | "epochs" | "grow"
    steps: int = 2000  # rule "steps"
    epochs: float = 0.0  # rules "epochs" and "grow": passes over the training set
    min_steps: int = 1  # rule "grow": floor
    max_steps: int = 0  # rule "grow": cap (0 = none)

    def steps_for(self, n: int, batch: int) -> int:
        if self.rule == "steps":
            return int(self.steps)
        s = max(1, math.ceil(self.epochs * n / batch))
        if self.rule == "grow":
            s = max(s, int(self.min_steps))
            if self.max_steps:
                s = min(s, int(self.max_steps))
        return int(s)

    def describe(self) -> dict:
        d = {"rule": self.rule}
        if self.rule == "steps":
            d["steps"] = self.steps
        else:
            d["epochs"] = self.epochs
        if self.rule == "grow":
            d.update(min_steps=self.min_steps, max_steps=self.max_steps)
        return d


@dataclass(frozen=True)
class DatasetGrid:
    name: str
    params: dict  # key -> list of values (a scalar in the TOML becomes a one-element list)
    model: str | None = None  # per-dataset network spec (e.g. a UNet for images); None = the sweep's

    def expand(self) -> list[dict]:
        keys = sorted(self.params)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(self.params[k] for k in keys))
        ]


@dataclass(frozen=True)
class SweepSpec:
    name: str
    datasets: tuple[DatasetGrid, ...]
    n_grid: tuple[int, ...]
    seeds: tuple[int, ...]
    model: str  # canonical network spec
    budget: Budget
    train: dict = field(default_factory=dict)  # TrainConfig overrides (batch, lr, ...)
    n_samples: int = 2000
    n_holdout: int = 2000
    sampler_steps: int = 32
    audit_options: dict = field(default_factory=dict)  # AuditConfig overrides
    controls: tuple[str, ...] = ()
    reproducibility: bool = False
    train_models: bool = True  # false: only the controls are audited (no training)
    # [sweep]: execution choices that change no cell's config (so no cell id): None = the command's default
    group: str | None = None  # grouped training: "auto" | "on" | "off"
    group_mib: float | None = None  # memory budget of one group, MiB
    raw: dict = field(default_factory=dict)  # the TOML as parsed (copied into sweep.json)

    @property
    def batch(self) -> int:
        return int(self.train.get("batch", 256))


@dataclass(frozen=True)
class Cell:
    """One unit of a sweep: a model (trained or a control) at one (dataset, params, n_train, seed)."""

    dataset: str
    params: dict
    n_train: int
    seed: int
    model: str  # network spec, or "control:gaussian" / "control:memorizer"
    steps: int  # training steps (0 for a control)
    budget: dict  # the rule that produced ``steps``
    train: dict
    n_samples: int
    n_holdout: int
    sampler_steps: int
    audit_options: dict
    reproducibility: bool

    @property
    def dataset_spec(self) -> str:
        return self.dataset + (
            ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items())) if self.params else ""
        )

    @property
    def is_control(self) -> bool:
        return self.model.startswith("control:")

    @property
    def model_label(self) -> str:
        """'model' for trained networks, the control's name otherwise (used to group curves)."""
        return self.model.split(":", 1)[1] if self.is_control else "model"

    @property
    def d(self) -> int | None:
        v = self.params.get("d")
        return int(v) if isinstance(v, int | float) else None

    @property
    def data_seeds(self) -> tuple[int, int]:
        """(train seed, holdout seed): the audit's one data-seed rule (``diffaudit.pipeline.setup``)."""
        return data_seeds(self.seed)

    @property
    def config(self) -> dict:
        """Everything that changes this cell's numbers (hashed into the id)."""
        return {
            "schema": CELL_SCHEMA,
            "dataset": self.dataset,
            "params": dict(sorted(self.params.items())),
            "n_train": self.n_train,
            "seed": self.seed,
            "model": self.model,
            "steps": self.steps,
            "train": dict(sorted(self.train.items())),
            "n_samples": self.n_samples,
            "n_holdout": self.n_holdout,
            "sampler_steps": self.sampler_steps,
            "audit_options": dict(sorted(self.audit_options.items())),
            "reproducibility": self.reproducibility,
        }

    @property
    def cell_id(self) -> str:
        ps = "_".join(f"{k}{v}" for k, v in sorted(self.params.items()))
        label = self.model_label
        prefix = f"{self.dataset}_{ps}_n{self.n_train:06d}_s{self.seed}_{label}"
        prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix)
        return f"{prefix}_{params_sha256(self.config)[:10]}"

    def record(self) -> dict:
        """The cell's JSON record (cell.json and sweep.json): config, id, budget, derived seeds."""
        return {
            "cell_id": self.cell_id,
            **self.config,
            "dataset_spec": self.dataset_spec,
            "d": self.d,
            "model_label": self.model_label,
            "budget": self.budget,
            "train_seed": self.data_seeds[0],
            "holdout_seed": self.data_seeds[1],
        }


# ---------------------------------------------------------------------------------------------- parsing


def _err(where: str, msg: str) -> DiffauditError:
    return DiffauditError(f"sweep spec {where}: {msg}")


def _check_keys(table: dict, valid, name: str, where: str) -> None:
    """Refuse keys of the TOML table ``[name]`` outside ``valid``, naming the valid ones."""
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise _err(
            where, f"[{name}] has unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}."
        )


def _n_grid(v: Any, where: str) -> tuple[int, ...]:
    if isinstance(v, dict):
        unknown = set(v) - {"min", "max", "num"}
        if unknown or not {"min", "max", "num"} <= set(v):
            raise _err(
                where,
                "'n' as a table needs exactly min, max and num, e.g. n = {min = 64, max = 8192, num = 8}.",
            )
        lo, hi, num = v["min"], v["max"], v["num"]
        if (
            not all(isinstance(a, int) and not isinstance(a, bool) for a in (lo, hi, num))
            or lo < 2
            or hi < lo
            or num < 1
        ):
            raise _err(where, "'n' needs integers 2 <= min <= max and num >= 1.")
        if num == 1:
            vals = [lo]
        else:
            vals = [
                round(math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (num - 1)))
                for i in range(num)
            ]
        out = tuple(sorted(set(int(x) for x in vals)))
        if len(out) != num:
            raise _err(where, f"'n' = {v} rounds to repeated sizes; widen the range or lower num.")
        return out
    if (
        isinstance(v, list)
        and v
        and all(isinstance(a, int) and not isinstance(a, bool) and a >= 2 for a in v)
    ):
        if len(set(v)) != len(v):
            raise _err(where, "'n' has repeated sizes; list each training-set size once.")
        return tuple(sorted(v))
    raise _err(where, "'n' must be a list of integers >= 2 or a table {min, max, num} (log-spaced).")


def _budget(v: Any, where: str) -> Budget:
    if v is None:
        return Budget()
    if not isinstance(v, dict):
        raise _err(where, '[budget] must be a table, e.g. [budget] rule = "steps", steps = 2000.')
    _check_keys(v, _BUDGET_KEYS, "budget", where)
    rule = v.get("rule", "steps")
    if rule not in BUDGET_RULES:
        raise _err(where, f"[budget] rule = {rule!r}; choose one of: {', '.join(BUDGET_RULES)}.")
    try:
        b = Budget(
            rule=rule,
            steps=int(v.get("steps", 2000)),
            epochs=float(v.get("epochs", 0.0)),
            min_steps=int(v.get("min_steps", 1)),
            max_steps=int(v.get("max_steps", 0)),
        )
    except (TypeError, ValueError):
        raise _err(where, "[budget] values must be numbers.") from None
    if rule == "steps" and b.steps < 1:
        raise _err(where, "[budget] steps must be >= 1.")
    if rule in ("epochs", "grow") and b.epochs <= 0:
        raise _err(where, f"[budget] rule = {rule!r} needs epochs > 0.")
    if rule == "grow" and b.max_steps and b.max_steps < b.min_steps:
        raise _err(where, "[budget] max_steps must be >= min_steps.")
    return b


def _check_dataset(name: str, params: dict, where: str) -> None:
    """Unknown dataset or parameter -> DiffauditError (constructs one instance per grid point)."""

    if name not in DATASET_MODULES:
        raise _err(where, f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASET_MODULES))}.")
    try:
        get_dataset(name, **params)
    except DiffauditError as e:
        raise _err(where, str(e)) from None
    except ImportError:
        raise _err(where, f"dataset {name!r} is not available in this installation.") from None


def parse_spec(data: dict, *, where: str = "<dict>", check_datasets: bool = True) -> SweepSpec:
    """Validate a parsed TOML dict into a ``SweepSpec`` (every mistake is a one-sentence DiffauditError)."""
    if not isinstance(data, dict):
        raise _err(where, "must be a TOML table.")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _err(where, f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_TOP_KEYS))}.")
    dsets = data.get("dataset")
    if not isinstance(dsets, list) or not dsets:
        raise _err(
            where,
            'needs at least one [[dataset]] table with a name, e.g. [[dataset]] name = "hidden-manifold".',
        )
    grids = []
    for i, ds in enumerate(dsets):
        if not isinstance(ds, dict) or not isinstance(ds.get("name"), str):
            raise _err(where, f'[[dataset]] #{i + 1} needs name = "...".')
        extra = sorted(set(ds) - {"name", "params", "model"})
        if extra:
            raise _err(
                where,
                f"[[dataset]] {ds['name']!r} has unknown key(s) {', '.join(extra)}; use name, params, model.",
            )
        ds_model = ds.get("model")
        if ds_model is not None:
            if not isinstance(ds_model, str):
                raise _err(where, f"[[dataset]] {ds['name']!r}: model must be a spec string.")
            ds_model = _canonical_model(ds_model, where)
        params = ds.get("params", {})
        if not isinstance(params, dict):
            raise _err(
                where, f"[[dataset]] {ds['name']!r}: params must be a table, e.g. params = {{d = [16, 32]}}."
            )
        grid = {}
        for k, v in params.items():
            vals = v if isinstance(v, list) else [v]
            if not vals or any(isinstance(a, dict | list) for a in vals):
                raise _err(
                    where,
                    f"[[dataset]] {ds['name']!r}: params.{k} must be a value or a non-empty list of values.",
                )
            grid[k] = list(vals)
        g = DatasetGrid(ds["name"], grid, ds_model)
        if check_datasets:
            for p in g.expand():
                _check_dataset(g.name, p, where)
        grids.append(g)
    if "n" not in data:
        raise _err(where, "needs the training-set sizes 'n', e.g. n = {min = 64, max = 8192, num = 8}.")
    n_grid = _n_grid(data["n"], where)
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise _err(where, "'seeds' must be a list of distinct non-negative integers, e.g. seeds = [0, 1, 2].")
    train_models = data.get("train_models", True)
    if not isinstance(train_models, bool):
        raise _err(where, "'train_models' must be true or false.")
    model = data.get("model", "mlp:width=256,depth=3")
    if not isinstance(model, str):
        raise _err(where, "'model' must be a spec string, e.g. model = \"mlp:width=256,depth=3\".")
    if train_models:
        model = _canonical_model(model, where)
    controls = data.get("controls", [])
    if not isinstance(controls, list) or any(c not in CONTROL_NAMES for c in controls):
        raise _err(
            where,
            f"'controls' must be a list drawn from {', '.join(CONTROL_NAMES)} (the oracle needs no sweep).",
        )
    if not train_models and not controls:
        raise _err(where, 'train_models = false needs at least one control, e.g. controls = ["gaussian"].')
    rep = data.get("reproducibility", False)
    if not isinstance(rep, bool):
        raise _err(where, "'reproducibility' must be true or false.")
    train = data.get("train", {})
    if not isinstance(train, dict):
        raise _err(where, "[train] must be a table of TrainConfig fields, e.g. batch = 256, lr = 1e-3.")
    _check_train(train, where)
    audit = data.get("audit", {})
    if not isinstance(audit, dict):
        raise _err(where, "[audit] must be a table (n_samples, n_holdout, sampler_steps, options).")
    _check_keys(audit, _AUDIT_KEYS, "audit", where)
    ints = {}
    for k, default in (("n_samples", 2000), ("n_holdout", 2000), ("sampler_steps", 32)):
        v = audit.get(k, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 2:
            raise _err(where, f"[audit] {k} must be an integer >= 2.")
        ints[k] = v
    opts = audit.get("options", {})
    if not isinstance(opts, dict):
        raise _err(where, "[audit] options must be a table of AuditConfig fields.")
    # checked in full now, before the first cell pays for its training (n_samples etc. come per cell)
    _check_types(AuditConfig, opts, "[audit] options", where)
    try:
        AuditConfig.from_options({k: v for k, v in opts.items()}, where=f"{where}: [audit.options]")
    except DiffauditError as e:
        raise _err(where, f"[audit] options: {e}") from None
    sweep = data.get("sweep", {})
    if not isinstance(sweep, dict):
        raise _err(where, '[sweep] must be a table, e.g. [sweep] group = "auto".')
    _check_keys(sweep, _SWEEP_KEYS, "sweep", where)
    group = sweep.get("group")
    if group is not None and group not in GROUP_MODES:
        raise _err(where, f"[sweep] group = {group!r}; choose one of: {', '.join(GROUP_MODES)}.")
    group_mib = sweep.get("group_mib")
    if group_mib is not None and (
        not isinstance(group_mib, int | float) or isinstance(group_mib, bool) or not 0 < group_mib < math.inf
    ):
        raise _err(where, f"[sweep] group_mib = {group_mib!r} must be a number of MiB > 0.")
    name = data.get("name", Path(where).stem if where != "<dict>" else "sweep")
    return SweepSpec(
        name=str(name),
        datasets=tuple(grids),
        n_grid=n_grid,
        seeds=tuple(int(s) for s in seeds),
        model=model,
        budget=_budget(data.get("budget"), where),
        train=dict(train),
        audit_options=dict(opts),
        controls=tuple(controls),
        reproducibility=rep,
        train_models=train_models,
        group=group,
        group_mib=None if group_mib is None else float(group_mib),
        raw=data,
        **ints,
    )


def _canonical_model(model: str, where: str) -> str:
    try:
        return parse_model_spec(model).spec
    except DiffauditError as e:
        raise _err(where, str(e)) from None


def _check_train(train: dict, where: str) -> None:
    """Refuse what ``TrainConfig`` would refuse, now rather than in every cell: keys, types and ranges."""
    _check_keys(train, {f.name for f in dataclasses.fields(TrainConfig)}, "train", where)
    _check_types(TrainConfig, train, "[train]", where)
    try:
        TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in train.items()}).check()
    except DiffauditError as e:
        raise _err(where, f"[train] {e}") from None


def _value_fits(v: Any, hint: Any) -> bool:
    """Whether a TOML value fits a dataclass field's annotation (bool is not a number, floats are finite)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_value_fits(v, a) for a in typing.get_args(hint))
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if hint is str:
        return isinstance(v, str)
    if hint is dict or origin is dict:
        return isinstance(v, dict)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(v, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_value_fits(a, args[0]) for a in v)
        return len(v) == len(args) and all(_value_fits(a, t) for a, t in zip(v, args, strict=True))
    return True  # a type TOML cannot spell (none today): left to the class's own check


def _describe(hint: Any) -> str:
    """A type annotation in words, for the error message."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(_describe(a) for a in parts) + (" (or left out)" if len(parts) == 1 else "")
    if origin is tuple:
        args = typing.get_args(hint)
        n = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"a list of {n}{_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    return words.get(hint, "a table" if hint is dict or origin is dict else str(hint))


def _check_types(cls: type, table: dict, name: str, where: str) -> None:
    """Refuse a value of the TOML table ``name`` whose type does not fit field ``cls.<key>``."""
    hints = typing.get_type_hints(cls)
    for k, v in table.items():
        if k in hints and not _value_fits(v, hints[k]):
            raise _err(where, f"{name} {k} = {v!r} must be {_describe(hints[k])}; fix the value.")


def load_spec(path: str | Path, *, check_datasets: bool = True) -> SweepSpec:
    """Read and validate a sweep TOML file."""
    p = Path(path)
    if not p.is_file():
        raise DiffauditError(
            f"sweep spec {str(p)!r} does not exist; pass a TOML file or --preset quick|paper."
        )
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise DiffauditError(f"sweep spec {str(p)!r} is not valid TOML ({e}); fix the syntax.") from None
    except UnicodeDecodeError:
        raise DiffauditError(f"sweep spec {str(p)!r} is not UTF-8 text; pass a TOML file.") from None
    return parse_spec(data, where=str(p), check_datasets=check_datasets)


PRESETS = ("quick", "controls", "paper")  # files in presets/


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise DiffauditError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return Path(__file__).parent / "presets" / f"{name}.toml"


def load_preset(name: str, *, check_datasets: bool = True) -> SweepSpec:
    return load_spec(preset_path(name), check_datasets=check_datasets)


# -------------------------------------------------------------------------------------------- expansion


def expand(spec: SweepSpec) -> list[Cell]:
    """All cells of a sweep, in a fixed order (dataset grid, seed, model, n ascending)."""
    cells = []
    for g in spec.datasets:
        models = ([g.model or spec.model] if spec.train_models else []) + [
            f"control:{c}" for c in spec.controls
        ]
        for params in g.expand():
            for seed in spec.seeds:
                for model in models:
                    for n in spec.n_grid:
                        control = model.startswith("control:")
                        steps = 0 if control else spec.budget.steps_for(n, spec.batch)
                        cells.append(
                            Cell(
                                dataset=g.name,
                                params=params,
                                n_train=n,
                                seed=seed,
                                model=model,
                                steps=steps,
                                budget={"rule": "none"}
                                if control
                                else {**spec.budget.describe(), "steps": steps},
                                train={} if control else dict(spec.train),
                                n_samples=spec.n_samples,
                                n_holdout=spec.n_holdout,
                                sampler_steps=spec.sampler_steps,
                                audit_options=dict(spec.audit_options),
                                reproducibility=spec.reproducibility and not control,
                            )
                        )
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        raise DiffauditError("sweep spec expands to duplicate cells; list each dataset parameter value once.")
    return cells
