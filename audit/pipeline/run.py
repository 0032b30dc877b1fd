"""Audit orchestration: sample a model, embed, run every probe that applies, decide verdicts, write a report.

``run_audit(model, train=..., holdout=..., dataset=..., config=AuditConfig(...), out_dir=...)`` returns the
report dict (schema ``diffaudit.report/1``, see ``diffaudit.report.writer``) and, when ``out_dir`` is given,
writes the report directory atomically (temp name, renamed when complete).

Stages (each timed, seconds in ``report["timings"]``): ``sample`` (the model's samples), ``embed``
(features of generated / train / holdout), ``convergence`` (FD, KID, P/R/D/C and the noise floor),
``factors`` (manifold validity, factor fidelity, novel-valid rate: only with a synthetic ``dataset``),
``memorization`` (copy search over the WHOLE training set, C_T and AuthPct with a holdout),
``membership`` (loss-based membership inference: only for white-box models with a holdout), ``report``.

Verdicts ("pass" | "fail" | "n/a"), thresholds in ``AuditConfig`` (documented defaults, all overridable):

- ``convergence`` (threshold 1): FD(generated, holdout) at n_eq = min(n_generated, n_train) samples is
  at most max(upper end of the noise floor's bootstrap interval, ``convergence_factor`` x the floor),
  the floor being FD(train subset of n_eq, holdout): what real data scores against real data at the
  same n (bootstrap interval: ``n_boot`` resamples, only up to ``boot_max_dim`` feature dimensions; above
  it the factor alone decides). "n/a" without a holdout set (no floor to compare with).
  Why a factor of 3: FD's finite-sample bias depends on the distribution, not only on n. Real data on a
  low-dimensional manifold fluctuates less in its sample covariance than a full-rank Gaussian with the
  same mean and covariance, so exact draws from that Gaussian score 2-3.3x the real-vs-real floor on
  hidden-manifold d = 32 at n = 1000-2000 (measured), although their population FD to the data's
  Gaussian fit is zero. A tighter factor fails models that match the bulk statistics exactly.
- ``generalization`` (threshold 2): novel-valid rate (valid on the data manifold and not a training
  copy) >= ``min_novel_valid_rate`` AND copy rate <= ``max_copy_rate``. "n/a" without a synthetic
  dataset (validity needs the true generator).
- ``memorization``: copy rate <= ``max_copy_rate`` AND, when membership inference ran, its best AUC
  <= ``max_mia_auc``. Always decided (the copy search needs only the training set).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.errors import DiffauditError

DEFAULT_N_SAMPLES = 2000


@dataclass
class AuditConfig:
    features: str = "pixels"  # feature space spec (diffaudit.features): pixels, pixels:16, inception, clip:ARCH, dinov2, oracle
    n_samples: int | None = None  # generated samples; None = all pre-generated samples, else DEFAULT_N_SAMPLES
    seed: int = 0  # sampling seed of the model (and of every probe's resampling)
    holdout_fraction: float = 0.0  # with --train only: share of train split off as holdout (0 = no holdout; only
    # safe when the model never saw that share)
    device: str = "auto"
    weights: str | None = None  # feature network weights file (inception/clip/dinov2)
    random_init: bool = False  # random feature-network weights: plumbing tests only, reports say so
    # --- convergence
    n_boot: int = 10  # bootstrap resamples of the noise floor FD(train, holdout) (each one FD)
    boot_max_dim: int = 1024  # above this feature dimension (e.g. inception's 2048): no floor bootstrap and no
    # FD(generated, train), each FD being an eigh of D x D; threshold 1 then uses the stated factor alone
    convergence_factor: float = 3.0  # threshold 1 passes when FD <= max(floor CI high, factor x floor); see above
    kid_subsets: int = 20  # KID subsets (of kid_subset_size rows each)
    kid_subset_size: int = 1000
    # --- factors / generalization
    min_novel_valid_rate: float = 0.5  # threshold 2: at least half of the samples valid AND novel
    # --- memorization
    max_copy_rate: float = 0.02  # copies (find_copies' default rule) tolerated before memorization fails
    max_mia_auc: float = 0.6  # membership-inference AUC above this = the model leaks membership
    mia_n: int = 500  # members and non-members used for membership inference (subsampled)
    mia_sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)  # x the data std
    mia_draws: int = 2
    max_calibration: int = 2000  # holdout rows that calibrate the copy rule's distance quantile (seeded subsample)
    max_ct_samples: int = 2000  # C_T and AuthPct use at most this many generated / holdout rows (seeded
    # subsample; each still searches the WHOLE training set). The copy search itself always uses all.
    n_copies_shown: int = 16  # top copies stored as image pairs / shown in the HTML
    progress: bool = False  # rich progress bars on stderr
    extra: dict = field(default_factory=dict)  # free-form: recorded in report.inputs.config

    def thresholds(self) -> dict[str, float]:
        return {"convergence_factor": self.convergence_factor, "min_novel_valid_rate": self.min_novel_valid_rate,
                "max_copy_rate": self.max_copy_rate, "max_mia_auc": self.max_mia_auc}


# --------------------------------------------------------------------------------------------- progress


class _Stages:
    """Timings per stage + optional rich progress display on stderr."""

    def __init__(self, enabled: bool):
        self.timings: dict[str, float] = {}
        self.enabled = enabled
        self._prog = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._prog = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True), transient=True)

    def __enter__(self):
        if self._prog is not None:
            self._prog.start()
        return self

    def __exit__(self, *exc):
        if self._prog is not None:
            self._prog.stop()

    @contextlib.contextmanager
    def stage(self, name: str, label: str | None = None, total: int | None = None):
        t0 = time.perf_counter()
        task = None
        if self._prog is not None:
            task = self._prog.add_task(label or name, total=total)

        def advance(k: int = 1):
            if task is not None:
                self._prog.advance(task, k)

        try:
            yield advance
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            if task is not None:
                self._prog.remove_task(task)


# --------------------------------------------------------------------------------------------- helpers


def _m(value, ci=None) -> dict | None:
    """A metric object ``{"value": float, "ci": [lo, hi] | None}``; None for a missing / non-finite value."""
    if value is None:
        return None
    v = float(value)
    if not np.isfinite(v):
        return None
    c = None
    if ci is not None:
        lo, hi = float(ci[0]), float(ci[1])
        if np.isfinite(lo) and np.isfinite(hi):
            c = [lo, hi]
    return {"value": v, "ci": c}


def _check_array(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or len(x) < 2:
        raise DiffauditError(f"{name}: needs at least 2 samples of shape (n, ...), got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.number):
        raise DiffauditError(f"{name}: has dtype {x.dtype}; pass numeric samples.")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(1).sum())
        raise DiffauditError(f"{name}: {bad} sample(s) contain NaN or Inf; fix the model or remove those samples.")
    return np.ascontiguousarray(x, dtype=np.float32)


def draw_samples(model, n: int, seed: int, advance=None, chunk: int = 256) -> np.ndarray:
    """``model.sample(n, seed)``; for denoiser models in chunks of per-sample seeds (same result, with progress)."""
    from diffaudit.models.contract import DenoiserModel
    from diffaudit.models.sampler import noise_from_seeds

    if isinstance(model, DenoiserModel) and type(model).sample is DenoiserModel.sample:
        out = []
        for i in range(0, n, chunk):
            noise = noise_from_seeds(range(i, min(n, i + chunk)), model.shape, base_seed=seed)
            out.append(np.asarray(model.sample_from_noise(noise)))
            if advance:
                advance(len(noise))
        return np.concatenate(out) if out else np.zeros((0, *model.shape), np.float32)
    x = model.sample(n, seed)
    if advance:
        advance(n)
    return np.asarray(x)


def split_holdout(train: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``train`` into (train, holdout) with ``fraction`` of the rows held out."""
    if not 0 < fraction < 1:
        raise DiffauditError(f"holdout fraction {fraction} must be between 0 and 1 (exclusive), e.g. 0.2.")
    n = len(train)
    k = int(round(n * fraction))
    if k < 2 or n - k < 2:
        raise DiffauditError(f"holdout fraction {fraction} of {n} training samples leaves fewer than 2 on a side; pass more data.")
    perm = np.random.default_rng([0x401D, int(seed)]).permutation(n)
    return train[np.sort(perm[k:])], train[np.sort(perm[:k])]


def data_seeds(seed: int) -> tuple[int, int]:
    """(train seed, holdout seed) of the synthetic data streams for audit seed ``seed``.

    The model samples with ``seed`` itself; the data use 3 seed + 1 and 3 seed + 2, so for every
    seed >= 0 the three streams differ (the oracle control never draws its own training set).
    """
    return 3 * int(seed) + 1, 3 * int(seed) + 2


def dataset_split(dataset, n_train: int, n_holdout: int, seed: int):
    """(train x, train z, holdout x, holdout z) drawn from ``dataset``: train and holdout come from
    two different seeds (``data_seeds``), i.e. disjoint random streams of the same distribution."""
    if int(n_train) < 2:
        raise DiffauditError(f"--n-train {n_train}: needs at least 2 training samples.")
    if int(seed) < 0:
        raise DiffauditError(f"--seed {seed}: pass a non-negative seed.")
    s_train, s_hold = data_seeds(seed)
    xt, zt = dataset.sample(int(n_train), s_train)
    xh, zh = dataset.sample(int(n_holdout), s_hold)
    return xt, zt, xh, zh


def _versions() -> dict[str, str]:
    import platform

    import diffaudit

    out = {"diffaudit": diffaudit.__version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "faiss", "scipy", "sklearn"):
        with contextlib.suppress(Exception):
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "?"))
    return out


# --------------------------------------------------------------------------------------------- audit


def run_audit(model, *, train, holdout=None, dataset=None, config: AuditConfig | None = None, out_dir=None,
              model_spec: str | None = None, inputs: dict | None = None, train_z=None, holdout_z=None,
              timings: dict | None = None, overwrite: bool = False) -> dict:
    """Audit ``model`` against ``train`` (and ``holdout``); returns the report dict, writes ``out_dir``.

    ``train`` / ``holdout``: samples in the normal form; ``dataset``: the synthetic dataset behind them
    (factor probes and the ``oracle`` feature space need it); ``train_z``: true factors of ``train``
    (adds the factor-space copy test to the novel-valid rate); ``inputs``: extra provenance for the
    report (specs, paths); ``timings``: stages already timed by the caller (e.g. ``load``).
    """
    from diffaudit.hashing import array_sha256

    cfg = config or AuditConfig()
    t_start = time.perf_counter()
    if out_dir is not None and Path(out_dir).exists() and not overwrite:
        raise DiffauditError(f"output folder {out_dir} already exists; pass another --out or remove it.")
    train = _check_array(train, "training set")
    if holdout is not None:
        holdout = _check_array(holdout, "holdout set")
        if holdout.shape[1:] != train.shape[1:]:
            raise DiffauditError(
                f"holdout samples have shape {holdout.shape[1:]} but training samples {train.shape[1:]}; pass the same kind of data.")
    elif cfg.holdout_fraction > 0:
        train, holdout = split_holdout(train, cfg.holdout_fraction, cfg.seed)
    shape = tuple(train.shape[1:])
    mshape = tuple(getattr(model, "shape", ()) or ())
    if mshape and mshape != shape:
        raise DiffauditError(
            f"the model makes samples of shape {mshape} but the training set has shape {shape}; audit the model against its own kind of data.")
    n_avail = getattr(model, "n_available", None)
    n_gen = int(cfg.n_samples) if cfg.n_samples is not None else (int(n_avail) if n_avail is not None else DEFAULT_N_SAMPLES)
    if n_gen < 2:
        raise DiffauditError(f"--n-samples {n_gen}: needs at least 2 generated samples.")
    if n_avail is not None and n_gen > n_avail:
        raise DiffauditError(f"the model's sample file holds {n_avail} samples but --n-samples is {n_gen}; pass --n-samples {n_avail} or less.")
    if dataset is not None and tuple(dataset.shape) != shape:
        raise DiffauditError(f"dataset {dataset.spec!r} makes samples of shape {tuple(dataset.shape)} but the training set has shape {shape}.")

    from diffaudit.features import embed_cached, get_embedder

    embedder = get_embedder(cfg.features, device=cfg.device, weights=cfg.weights, random_init=cfg.random_init,
                            dataset=dataset)
    skipped: list[dict[str, str]] = []
    details: dict[str, Any] = {}
    art: dict[str, Any] = {}  # arrays for the report writer

    with _Stages(cfg.progress) as st:
        # ---------------------------------------------------------------- sample
        with st.stage("sample", "sampling", total=n_gen) as adv:
            gen = draw_samples(model, n_gen, cfg.seed, adv)
        gen = _check_array(gen, "generated samples")
        if len(gen) != n_gen:
            raise DiffauditError(f"the model returned {len(gen)} samples when asked for {n_gen}; its sample(n, seed) must return n rows.")
        if gen.shape[1:] != shape:
            raise DiffauditError(
                f"generated samples have shape {gen.shape[1:]} but the training set has shape {shape}; audit the model against its own kind of data.")

        # ---------------------------------------------------------------- embed
        def embed(x, label):
            with st.stage("embed", f"embedding {label} ({embedder.id})", total=len(x)) as a:
                if embedder.name == "pixels":  # identity-like: caching would only copy bytes to disk
                    f = embedder.embed(x)
                else:
                    f = embed_cached(x, embedder, progress=False)
                a(len(x))
                return f

        fg = embed(gen, "generated")
        ft = embed(train, "train")
        fh = embed(holdout, "holdout") if holdout is not None else None

        # ---------------------------------------------------------------- convergence
        from diffaudit.probes import convergence as cv

        conv: dict[str, Any] = dict.fromkeys(
            ("fd", "fd_train_holdout", "kid", "precision", "recall", "density", "coverage"))
        n_eq = min(len(fg), len(ft))
        rng = np.random.default_rng([0xC0, cfg.seed])
        with st.stage("convergence", "convergence probes", total=5 if fh is not None else 1) as a:
            big = fg.shape[1] > cfg.boot_max_dim
            if big:
                skipped.append({"probe": "convergence.fd_gen_train / floor bootstrap", "reason": f"{fg.shape[1]} feature "
                                f"dimensions > boot_max_dim={cfg.boot_max_dim}: each extra FD costs an eigh of D x D, so the "
                                f"floor has no bootstrap interval and threshold 1 uses {cfg.convergence_factor:g} x the floor."})
            else:
                fd_gt = cv.frechet_distance(fg, ft)
                conv["fd_gen_train"] = _m(fd_gt.value)
            a()
            if fh is not None:
                fd = cv.frechet_distance(fg, fh)
                conv["fd"] = _m(fd.value)
                g_eq = fg if n_eq == len(fg) else fg[np.sort(rng.choice(len(fg), n_eq, replace=False))]
                t_eq = ft if n_eq == len(ft) else ft[np.sort(rng.choice(len(ft), n_eq, replace=False))]
                fd_eq = fd if n_eq == len(fg) else cv.frechet_distance(g_eq, fh)
                conv["fd_equal_n"] = _m(fd_eq.value)
                a()
                floor = cv.frechet_distance(t_eq, fh, n_boot=0 if big else cfg.n_boot, seed=cfg.seed)
                conv["fd_train_holdout"] = _m(floor.value, floor.value_ci)
                a()
                m_kid = int(min(cfg.kid_subset_size, max(2, min(len(fg), len(fh)) // 2)))  # subsets must differ
                k = cv.kid(fg, fh, n_subsets=cfg.kid_subsets, subset_size=m_kid, seed=cfg.seed)
                conv["kid"] = _m(k.value, k.value_ci)
                a()
                pr, dc = cv.prdc(fh, fg)
                conv["precision"] = _m(pr.precision, pr.precision_ci)
                conv["recall"] = _m(pr.recall, pr.recall_ci)
                conv["density"] = _m(dc.density)
                conv["coverage"] = _m(dc.coverage, dc.coverage_ci)
                a()
                details["convergence"] = {"n_equal": int(n_eq), "fd_singular": bool(fd.singular or floor.singular),
                                          "floor_ci": list(floor.value_ci) if floor.value_ci else None}
            else:
                skipped.append({"probe": "convergence", "reason": "no holdout set: FD/KID/precision/recall against "
                                "held-out data and the train-vs-holdout noise floor need one (pass --holdout)."})

        # ---------------------------------------------------------------- memorization (copies first: factors reuse them)
        from diffaudit.probes import memorization as mem

        memo: dict[str, Any] = {"copy_rate": None, "unique_train_copied": None}
        with st.stage("memorization", f"copy search over {len(ft)} training items", total=3 if fh is not None else 1) as a:
            r3 = np.random.default_rng([0xC7, cfg.seed])

            def sub(f, k):
                k = min(len(f), k)
                return f if k == len(f) else f[np.sort(r3.choice(len(f), k, replace=False))]

            # every generated sample against the WHOLE training set; the holdout only calibrates a 1 %
            # distance quantile, for which a few thousand rows suffice
            fh_cal = None if fh is None else sub(fh, cfg.max_calibration)
            copies = mem.find_copies(fg, ft, fh_cal, seed=cfg.seed)
            memo["copy_rate"] = _m(copies.copy_rate, copies.copy_rate_ci)
            memo["unique_train_copied"] = _m(copies.unique_train_copied)
            memo["n_copies"] = _m(copies.n_copies)
            for rule, rate in copies.rule_rates.items():
                memo[f"copy_rate_{rule}"] = _m(rate)
            a()
            details["memorization"] = {"rule": copies.rule, "ratio_threshold": copies.ratio_threshold,
                                       "holdout_threshold": copies.holdout_threshold,
                                       "most_copied": copies.most_copied[:20].tolist(),
                                       "index_method": copies.index_method,
                                       "n_calibration": None if fh_cal is None else int(len(fh_cal))}
            if fh is not None:
                fg_s, fh_s = sub(fg, cfg.max_ct_samples), sub(fh, cfg.max_ct_samples)
                ct = mem.ct_test(fg_s, ft, fh_s, seed=cfg.seed, max_kmeans_fit=20_000)
                memo["ct"] = _m(ct.c_t)
                a()
                au = mem.authenticity(fg_s, ft)
                memo["auth_pct"] = _m(au.auth_pct, au.auth_pct_ci)
                details["memorization"]["ct_auth_n"] = [int(len(fg_s)), int(len(fh_s))]
                a()
            else:
                skipped.append({"probe": "memorization.ct / auth_pct", "reason": "no holdout set: the C_T test compares "
                                "against held-out data; copies use the ratio rule alone."})
        art["copies"] = copies

        # ---------------------------------------------------------------- membership inference (white box)
        if getattr(model, "has_denoiser", False) and holdout is not None:
            from diffaudit.probes.membership import membership_inference

            with st.stage("membership", "membership inference", total=1) as a:
                m_n = int(min(cfg.mia_n, len(train), len(holdout)))
                r2 = np.random.default_rng([0x31A, cfg.seed])
                xt_m = train[np.sort(r2.choice(len(train), m_n, replace=False))]
                xh_m = holdout[np.sort(r2.choice(len(holdout), m_n, replace=False))]
                scale = float(np.sqrt(train.reshape(len(train), -1).astype(np.float64).var(0).mean()))
                sigmas = [s * scale for s in cfg.mia_sigmas]
                mia = membership_inference(model, xt_m, xh_m, sigmas, n_draws=cfg.mia_draws, seed=cfg.seed)
                memo["mia_auc"] = _m(mia.best_auc, mia.auc_ci)
                memo["mia_tpr_at_1pct"] = _m(mia.best_tpr_at_1pct)
                details["membership"] = {"sigmas": mia.sigmas.tolist(), "auc": mia.auc.tolist(),
                                         "loss_gap": mia.loss_gap.tolist(), "best_sigma": mia.best_sigma, "n": m_n,
                                         "roc": _mia_roc(mia)}
                a()
        else:
            why = "the model is a black box (no denoise(x, sigma))" if not getattr(model, "has_denoiser", False) \
                else "no holdout set (non-members are needed)"
            skipped.append({"probe": "memorization.mia_auc", "reason": f"membership inference skipped: {why}."})

        # ---------------------------------------------------------------- factors
        fac: dict[str, Any] = {"validity": None, "novel_valid_rate": None}
        if dataset is not None:
            from diffaudit.probes import factors as fp

            with st.stage("factors", "factor probes (oracle projection)", total=3) as a:
                ref = holdout if holdout is not None else None
                n_ref = 2000
                ref_x = ref[:n_ref] if ref is not None else None
                val = fp.manifold_validity(dataset, gen, reference=ref_x, seed=cfg.seed + 12345)
                fac["validity"] = _m(val.valid_rate, val.valid_rate_ci)
                fac["residual_median"] = _m(val.median)
                a()
                zt = None if train_z is None else np.asarray(train_z, dtype=np.float64)
                nov = fp.novelty(gen, train, val.valid, is_copy=copies.is_copy,
                                 z_gen=val.z_hat if zt is not None else None, z_train=zt)
                fac["novel_valid_rate"] = _m(nov.novel_valid_rate, nov.novel_valid_rate_ci)
                fac["novel_rate_among_valid"] = _m(nov.novel_rate_among_valid, nov.novel_rate_among_valid_ci)
                a()
                z_true = np.asarray(holdout_z, dtype=np.float64) if holdout_z is not None else dataset.sample(2000, cfg.seed + 4242)[1]
                fid = fp.factor_fidelity(val.z_hat[val.valid], z_true, dataset.factors, seed=cfg.seed)
                fac["factor_coverage"] = _m(fid.coverage)
                for name in fid.names:
                    fac[f"w1_{name}"] = _m(fid.wasserstein_rel[name])
                a()
                details["factors"] = {
                    "tau": val.tau, "tau_floor": val.tau_floor, "tau_reference": val.tau_reference, "scale": val.scale,
                    "residual_quantiles": {str(k): v for k, v in val.quantiles.items()},
                    "factor_names": list(fid.names), "wasserstein_rel": fid.wasserstein_rel, "ks": fid.ks,
                    "reference_coverage": fid.reference_coverage,
                    "factor_copy_rate": None if nov.factor_is_copy is None else float(nov.factor_is_copy.mean()),
                }
                art["validity"] = val
                art["z_true"] = z_true
                art["novelty"] = nov
        else:
            skipped.append({"probe": "factors", "reason": "no synthetic dataset: manifold validity and the novel-valid "
                            "rate need the true generator (pass --dataset SPEC)."})

    timings = {**(timings or {}), **{k: round(v, 4) for k, v in st.timings.items()}}
    probes = {"convergence": conv, "factors": fac, "memorization": memo}
    verdict, reasons = decide(probes, cfg)

    fd_res = None
    hashes = {"generated": array_sha256(gen), "train": array_sha256(train)}
    if holdout is not None:
        hashes["holdout"] = array_sha256(holdout)
    cfg_dict = asdict(cfg)
    cfg_dict["mia_sigmas"] = list(cfg.mia_sigmas)
    inputs_out = {
        "model": model_spec or getattr(model, "name", type(model).__name__),
        "dataset": getattr(dataset, "spec", None),
        "n_generated": int(len(gen)), "n_train": int(len(train)), "n_holdout": None if holdout is None else int(len(holdout)),
        "sample_shape": list(shape), "hashes": hashes, "seeds": {"sample": cfg.seed, "probes": cfg.seed},
        "features": {"id": embedder.id, "random_init": bool(embedder.random_init), "dim": int(fg.shape[1])},
        "white_box": bool(getattr(model, "has_denoiser", False)), "versions": _versions(), "config": cfg_dict,
        **(inputs or {}),
    }
    from diffaudit.report.writer import build_report, write_report_dir

    report = build_report(probes=probes, verdict=verdict, reasons=reasons, thresholds=cfg.thresholds(),
                          timings=timings, inputs=inputs_out, skipped=skipped, details=details)
    del fd_res
    if out_dir is not None:
        t0 = time.perf_counter()
        art.update(gen=gen, train=train, holdout=holdout, fg=fg, ft=ft, fh=fh, dataset=dataset, cfg=cfg)
        report["timings"]["report"] = 0.0
        report["timings"]["total"] = round(time.perf_counter() - t_start + timings.get("load", 0.0), 4)
        write_report_dir(Path(out_dir), report, art, overwrite=overwrite, t_report_start=t0)
    else:
        report["timings"]["total"] = round(time.perf_counter() - t_start + timings.get("load", 0.0), 4)
    return report


def decide(probes: dict, cfg: AuditConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Verdicts and one plain-words reason each (see the module docstring for the rules)."""
    conv, fac, memo = probes["convergence"], probes["factors"], probes["memorization"]
    verdict, why = {}, {}

    def val(d, k):
        return None if d.get(k) is None else d[k]["value"]

    fd = val(conv, "fd_equal_n") if conv.get("fd_equal_n") else val(conv, "fd")
    floor = conv.get("fd_train_holdout")
    if fd is None or floor is None:
        verdict["convergence"] = "n/a"
        why["convergence"] = "no holdout set, so no real-data noise floor to compare the FD with"
    else:
        hi = floor["ci"][1] if floor["ci"] else floor["value"]
        limit = max(hi, cfg.convergence_factor * floor["value"])
        ok = fd <= limit
        verdict["convergence"] = "pass" if ok else "fail"
        ratio = fd / floor["value"] if floor["value"] > 0 else float("inf")
        why["convergence"] = (f"FD {fd:.4g} is {ratio:.2g}x real data's own FD {floor['value']:.4g} "
                              f"({'within' if ok else 'above'} the limit {limit:.4g})")

    cr = val(memo, "copy_rate")
    nv = val(fac, "novel_valid_rate")
    vv = val(fac, "validity")
    if nv is None:
        verdict["generalization"] = "n/a"
        why["generalization"] = "no synthetic dataset, so manifold validity cannot be measured"
    else:
        ok = nv >= cfg.min_novel_valid_rate and (cr is None or cr <= cfg.max_copy_rate)
        verdict["generalization"] = "pass" if ok else "fail"
        why["generalization"] = (f"{100 * vv:.0f} % of samples lie on the data manifold, {100 * nv:.0f} % are valid and novel "
                                 f"(needs >= {100 * cfg.min_novel_valid_rate:.0f} %), copy rate {100 * (cr or 0):.1f} %")

    auc = val(memo, "mia_auc")
    if cr is None:
        verdict["memorization"] = "n/a"
        why["memorization"] = "copy search did not run"
    else:
        ok = cr <= cfg.max_copy_rate and (auc is None or auc <= cfg.max_mia_auc)
        verdict["memorization"] = "pass" if ok else "fail"
        s = f"{100 * cr:.1f} % of samples are training copies (limit {100 * cfg.max_copy_rate:.1f} %)"
        if auc is not None:
            s += f", membership-inference AUC {auc:.2f} (limit {cfg.max_mia_auc:.2f})"
        why["memorization"] = s
    return verdict, why


def _mia_roc(mia, max_points: int = 200) -> dict:
    """ROC curve of the loss attack at the best sigma (members = training items, lower loss = member),
    thinned to at most ``max_points`` points for the report."""
    from sklearn.metrics import roc_curve

    j = int(np.argmin(np.abs(np.asarray(mia.sigmas) - mia.best_sigma)))
    y = np.r_[np.ones(len(mia.loss_train)), np.zeros(len(mia.loss_holdout))]
    score = -np.r_[mia.loss_train[:, j], mia.loss_holdout[:, j]]
    fpr, tpr, _ = roc_curve(y, score)
    if len(fpr) > max_points:
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, max_points).round().astype(int), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"sigma": float(mia.sigmas[j]), "fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist()}
