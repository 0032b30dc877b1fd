"""``run_audit``: sample a model, run the audit's stages, decide verdicts, write the report folder.

``run_audit(model, train=..., holdout=..., dataset=..., config=AuditConfig(...), out_dir=...)`` returns the
report (a dict with the keys of ``report.json``, schema ``diffaudit.report/1``) and, when ``out_dir`` is
given, writes the report directory atomically (temp name, renamed when complete). The stages are in
``diffaudit.pipeline.stages``, the verdict rules in ``diffaudit.pipeline.verdicts``, the metric rows in
``diffaudit.report.schema``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import diffaudit
from diffaudit.errors import DiffauditError
from diffaudit.features import get_embedder
from diffaudit.hashing import array_sha256
from diffaudit.pipeline.condition_stage import CONDITION_STAGE
from diffaudit.pipeline.conditions import label_conditions, prompt_conditions, split_labels
from diffaudit.pipeline.config import DEFAULT_N_SAMPLES, MIN_RELIABLE_SAMPLES, AuditConfig
from diffaudit.pipeline.setup import AuditData, split_holdout
from diffaudit.pipeline.stages import STAGES, Context, check_array, run_stages
from diffaudit.pipeline.verdicts import decide
from diffaudit.report.writer import build_report, write_report_dir
from diffaudit.threads import available_cpus


class Report(dict):
    """The report: a dict with the keys of ``report.json``, plus attribute access to its main parts."""

    @property
    def verdict(self) -> dict:
        return self["verdict"]

    @property
    def probes(self) -> dict:
        return self["probes"]

    def value(self, key: str) -> float | None:
        """The value of metric ``group.name`` (None when not measured)."""
        g, _, k = key.partition(".")
        m = self["probes"].get(g, {}).get(k)
        return None if m is None else m["value"]


def _versions() -> dict[str, str]:
    out = {"diffaudit": diffaudit.__version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "faiss", "scipy", "sklearn"):
        with contextlib.suppress(Exception):
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


def _threads() -> dict:
    """The thread settings the audit ran with (``diffaudit.threads``), for reproducing its timings."""
    out = {"cpus_available": available_cpus(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = int(torch.get_num_threads())
    faiss = sys.modules.get("faiss")
    if faiss is not None and hasattr(faiss, "omp_get_max_threads"):
        out["faiss"] = int(faiss.omp_get_max_threads())
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        blas = [i["num_threads"] for i in threadpool_info() if i.get("threading_layer") == "pthreads"]
        if blas:
            out["numpy_blas"] = int(max(blas))
    return out


def sample_size_warnings(n_gen: int, n_holdout: int | None) -> list[str]:
    """Plain sentences when the audit is too small for its verdicts to be reliable (``MIN_RELIABLE_SAMPLES``)."""
    out = []
    for what, n in (("generated samples", n_gen), ("held-out samples", n_holdout)):
        if n is not None and n < MIN_RELIABLE_SAMPLES:
            out.append(
                f"only {n} {what}: below {MIN_RELIABLE_SAMPLES} the verdicts of even the true generator fail "
                f"in 4-50 % of audits (copy-rule and moment-estimate noise); pass --n-samples / a holdout of "
                f"{MIN_RELIABLE_SAMPLES} or more."
            )
    return out


def run_audit(
    model,
    *,
    train,
    holdout=None,
    dataset=None,
    config: AuditConfig | None = None,
    out_dir=None,
    model_spec: str | None = None,
    inputs: dict | None = None,
    train_z=None,
    holdout_z=None,
    timings: dict | None = None,
    overwrite: bool = False,
    stages=STAGES,
    html_plotly: str = "inline",
    train_labels=None,
    holdout_labels=None,
    sample_labels=None,
    class_names=None,
    prompts=None,
    samples=None,
) -> Report:
    """Audit ``model`` against ``train`` (and ``holdout``); returns the report, writes ``out_dir``.

    ``train`` / ``holdout``: samples in the normal form; ``dataset``: the synthetic dataset behind them
    (factor probes, the population reference of threshold 1 and the ``oracle`` feature space need it);
    ``train_z`` / ``holdout_z``: their true factors; ``inputs``: extra provenance for the report;
    ``timings``: stages already timed by the caller (e.g. ``load``); ``html_plotly``: "inline" (one
    self-contained report.html) or a relative path to a shared plotly.min.js (sweeps).
    ``samples``: the model's generations for this audit, drawn already ((n_samples, *shape): generation i is
    what the ``sample`` stage would draw, from noise seed (cfg.seed, i) for a denoiser model); the later
    stages that need more of the model's stream (extraction) continue it at generation n_samples. For a caller
    that sampled several models together (``diffaudit.sweeps.run.run_group``); None: the audit samples.
    """
    cfg = (config or AuditConfig()).check()
    check_conditioning(model, cfg)
    t_start = time.perf_counter()
    if out_dir is not None and Path(out_dir).exists() and not overwrite:
        raise DiffauditError(f"output folder {out_dir} already exists; pass another --out or remove it.")
    notes: list[str] = []
    train = check_array(train, "training set", notes)
    if holdout is not None:
        holdout = check_array(holdout, "holdout set", notes)
        if holdout.shape[1:] != train.shape[1:]:
            raise DiffauditError(
                f"holdout samples have shape {holdout.shape[1:]} but training samples "
                f"{train.shape[1:]}; pass the same kind of data."
            )
    elif cfg.holdout_fraction > 0:
        if train_labels is not None:
            train_labels, holdout_labels = split_labels(
                train_labels, len(train), cfg.holdout_fraction, cfg.seed
            )
        train, holdout = split_holdout(train, cfg.holdout_fraction, cfg.seed)
    shape = tuple(train.shape[1:])
    mshape = tuple(getattr(model, "shape", ()) or ())
    if mshape and mshape != shape:
        raise DiffauditError(
            f"the model makes samples of shape {mshape} but the training set has shape {shape}; "
            "audit the model against its own kind of data."
        )
    n_avail = getattr(model, "n_available", None)
    n_gen = (
        int(cfg.n_samples)
        if cfg.n_samples is not None
        else (
            int(n_avail)
            if n_avail is not None
            else (len(sample_labels) if sample_labels is not None else DEFAULT_N_SAMPLES)
        )
    )
    if n_avail is not None and n_gen > n_avail:
        raise DiffauditError(
            f"the model's sample file holds {n_avail} samples but --n-samples is {n_gen}; "
            f"pass --n-samples {n_avail} or less."
        )
    if dataset is not None and tuple(dataset.shape) != shape:
        raise DiffauditError(
            f"dataset {dataset.spec!r} makes samples of shape {tuple(dataset.shape)} but the "
            f"training set has shape {shape}."
        )
    conditions = None
    if cfg.condition == "labels":
        conditions = label_conditions(model, n_gen, train_labels, holdout_labels, sample_labels, class_names)
        check_labels_rows(conditions, len(train), None if holdout is None else len(holdout))
    elif cfg.condition == "prompts":
        if prompts is None:
            raise DiffauditError("--condition prompts needs --prompts FILE (one prompt per line, or JSONL).")
        conditions = prompt_conditions(model, n_gen, prompts, train_labels)
    if samples is not None:
        if conditions is not None:
            raise DiffauditError(
                "pre-drawn samples cannot be given to a conditional audit (their conditions are unknown); "
                "let the audit sample the model."
            )
        try:
            samples = np.asarray(samples)
        except (ValueError, TypeError):
            raise DiffauditError(
                "the pre-drawn samples are not one numeric array (ragged rows?); pass an (n_samples, *shape) array."
            ) from None
        if samples.shape != (n_gen, *shape):
            raise DiffauditError(
                f"the pre-drawn samples have shape {samples.shape}, but this audit draws {n_gen} samples of shape "
                f"{shape}; pass (n_samples, *shape) samples, or none to let the audit sample the model."
            )
    embedder = get_embedder(
        cfg.features, device=cfg.device, weights=cfg.weights, random_init=cfg.random_init, dataset=dataset
    )
    ctx = Context(
        model=model,
        cfg=cfg,
        train=train,
        holdout=holdout,
        dataset=dataset,
        train_z=None if train_z is None else np.asarray(train_z, dtype=np.float64),
        holdout_z=None if holdout_z is None else np.asarray(holdout_z, dtype=np.float64),
        embedder=embedder,
        n_gen=n_gen,
        conditions=conditions,
        presampled=samples,
        notes=notes,
    )
    stage_times = run_stages(ctx, tuple(stages) + ((CONDITION_STAGE,) if conditions is not None else ()))
    timings = {**(timings or {}), **stage_times}
    verdict, reasons = decide(ctx.probes, cfg, ctx.details)

    hashes = {"generated": array_sha256(ctx.gen), "train": array_sha256(train)}
    if holdout is not None:
        hashes["holdout"] = array_sha256(holdout)
    inputs_out = {
        "model": model_spec or getattr(model, "name", type(model).__name__),
        "dataset": getattr(dataset, "spec", None),
        "n_generated": int(len(ctx.gen)),
        "n_train": int(len(train)),
        "n_holdout": None if holdout is None else int(len(holdout)),
        "sample_shape": list(shape),
        "hashes": hashes,
        "seeds": {"sample": cfg.seed, "probes": cfg.seed},
        "features": {
            "id": embedder.id,
            "random_init": bool(embedder.random_init),
            "dim": int(ctx.fg.shape[1]),
        },
        "white_box": ctx.white_box,
        "versions": _versions(),
        "threads": _threads(),
        "config": cfg.as_dict(),
        **(inputs or {}),
    }
    report = Report(
        build_report(
            probes=ctx.probes,
            verdict=verdict,
            reasons=reasons,
            thresholds=cfg.thresholds(),
            timings=timings,
            inputs=inputs_out,
            skipped=ctx.skipped,
            details=ctx.details,
        )
    )
    report["warnings"] = sample_size_warnings(n_gen, None if holdout is None else len(holdout)) + ctx.notes
    if conditions is not None:
        report["inputs"]["condition"] = {**conditions.summary(), "guidance": cfg.guidance}
        report["conditions"] = ctx.condition_results or []
        per = min(int((conditions.gen == j).sum()) for j in range(len(conditions)))
        if per < MIN_RELIABLE_SAMPLES:
            report["warnings"].append(
                f"{per} generated samples per condition (the fewest): per-condition threshold verdicts are noisier "
                f"than the overall ones below {MIN_RELIABLE_SAMPLES} (the per-condition copy and membership rules "
                "account for it: significantly above the tolerance); pass --n-samples "
                f"{MIN_RELIABLE_SAMPLES * len(conditions)} for {MIN_RELIABLE_SAMPLES} each."
            )
    trained_on = (getattr(model, "config", None) or {}).get("train_sha256")
    if trained_on and trained_on != hashes["train"]:
        report["warnings"].append(
            "the checkpoint was trained on a different training set than the one audited (its train_sha256 "
            f"{trained_on[:12]}... vs {hashes['train'][:12]}...): the memorization probes compare against the "
            "wrong items; audit with the checkpoint's own --train file, or the same --dataset, --n-train and --seed."
        )
    if out_dir is not None:
        t0 = time.perf_counter()
        art = {
            **ctx.art,
            "gen": ctx.gen,
            "train": train,
            "holdout": holdout,
            "fg": ctx.fg,
            "ft": ctx.ft,
            "fh": ctx.fh,
            "dataset": dataset,
            "cfg": cfg,
            "plotly": html_plotly,
            "conditions": conditions,
        }
        report["timings"]["report"] = 0.0
        report["timings"]["total"] = round(time.perf_counter() - t_start + timings.get("load", 0.0), 4)
        write_report_dir(Path(out_dir), report, art, overwrite=overwrite, t_report_start=t0)
    else:
        report["timings"]["total"] = round(time.perf_counter() - t_start + timings.get("load", 0.0), 4)
    return report


def check_conditioning(model, cfg: AuditConfig) -> None:
    """A conditional audit of an unconditional model, or the reverse, is a user mistake (one sentence)."""
    kind = getattr(model, "conditioning", None)
    name = getattr(model, "name", type(model).__name__)
    if cfg.condition is None and kind is not None:
        raise DiffauditError(
            f"model {name} is conditional on {kind}; audit it with --condition {kind}"
            + (" (and --prompts FILE)." if kind == "prompts" else ".")
        )
    if cfg.condition is not None and kind != cfg.condition:
        what = "unconditional" if kind is None else f"conditional on {kind}"
        raise DiffauditError(
            f"--condition {cfg.condition}: model {name} is {what}; "
            + ("drop --condition." if kind is None else f"pass --condition {kind}.")
        )


def check_labels_rows(conditions, n_train: int, n_holdout: int | None) -> None:
    if len(conditions.train) != n_train:
        raise DiffauditError(
            f"training labels: {len(conditions.train)} labels for {n_train} training samples; pass one per sample."
        )
    if conditions.holdout is not None and n_holdout is not None and len(conditions.holdout) != n_holdout:
        raise DiffauditError(
            f"holdout labels: {len(conditions.holdout)} labels for {n_holdout} held-out samples; pass one per sample."
        )


def run_audit_on(model, data: AuditData, *, inputs: dict | None = None, **kw) -> Report:
    """``run_audit`` on the data of ``diffaudit.pipeline.setup`` (its arrays, dataset and true factors);
    ``inputs``: the report's provenance (default: the data's own); ``kw``: the other ``run_audit`` options."""
    return run_audit(
        model,
        train=data.train,
        holdout=data.holdout,
        dataset=data.dataset,
        train_z=data.train_z,
        holdout_z=data.holdout_z,
        inputs=data.provenance if inputs is None else inputs,
        train_labels=data.train_labels,
        holdout_labels=data.holdout_labels,
        class_names=data.class_names,
        prompts=data.prompts,
        **kw,
    )
