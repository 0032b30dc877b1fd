"""Distributional-convergence metrics (threshold 1) between two sample sets (``diffaudit compare GEN REF``).

Loads both sets in the normal form (``diffaudit.datasets.loading.load_samples``), embeds them in one feature
space (``diffaudit.features``, cached on disk), runs the chosen probes of ``diffaudit.probes.convergence``,
and returns JSON-ready results and table rows; the command (``diffaudit.cli.compare``) prints and writes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffaudit import features as feats
from diffaudit.errors import DiffauditError
from diffaudit.probes import convergence as cv
from diffaudit.probes import moment_error as me

DEFAULT_METRICS = "e1,fd,kid,pr,dc,moments"


def parse_metrics(spec: str) -> list[str]:
    """``"fd,kid"`` -> ``["fd", "kid"]`` in table order; ``"all"`` -> every metric."""
    names = [s.strip().lower() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise DiffauditError(f"--metrics {spec!r} names no metric; choose from: all, {', '.join(METRICS)}.")
    if "all" in names:
        return list(METRICS)
    bad = [s for s in names if s not in METRICS]
    if bad:
        raise DiffauditError(f"--metrics: unknown metric {bad[0]!r}; choose from: all, {', '.join(METRICS)}.")
    return [m for m in METRICS if m in names]


def embed(
    x, spec: str, *, device: str, weights, random_init: bool, batch_size: int, cache: bool, progress: bool
):
    """Features of ``x`` in feature space ``spec`` (cached on disk unless ``cache`` is False)."""
    emb = feats.get_embedder(spec, device=device, weights=weights, random_init=random_init)
    if cache:
        f = feats.embed_cached(x, emb, progress=progress, batch_size=batch_size)
    else:
        f = emb.embed(x, batch_size=batch_size, progress=progress)
    return np.asarray(f), {"id": emb.id, "random_init": bool(getattr(emb, "random_init", False))}


def _ci(ci):
    return None if ci is None else [float(ci[0]), float(ci[1])]


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.6g}"


def _cis(c) -> str:
    return "" if c is None else f"[{_f(c[0])}, {_f(c[1])}]"


@dataclass(frozen=True)
class CompareMetric:
    """One metric of ``compare``: what it reports, how it is computed, and its table rows."""

    help: str
    compute: Callable[..., dict]  # (gen, ref, opts) -> JSON-ready dict
    rows: Callable[[dict], list[tuple[str, str, str, str]]]  # result -> (metric, value, 95% CI, notes) rows


def _fd(gen, ref, o):
    r = cv.frechet_distance(gen, ref, n_boot=o["n_boot"], seed=o["seed"])
    return {
        "value": r.value,
        "value_ci": _ci(r.value_ci),
        "mean_term": r.mean_term,
        "trace_term": r.trace_term,
        "neg_eig_mass": r.neg_eig_mass,
        "singular": r.singular,
    }


def _fd_rows(r):
    note = f"mean {_f(r['mean_term'])}, trace {_f(r['trace_term'])}"
    return [
        (
            "FD",
            _f(r["value"]),
            _cis(r["value_ci"]),
            note + ("; singular covariance (n <= D): biased, see fdinf" if r["singular"] else ""),
        )
    ]


def _fdinf(gen, ref, o):
    try:
        r = cv.fd_infinity(gen, ref, seed=o["seed"])
    except DiffauditError as e:  # too few samples for subsets >= 4 D: say so in the table, keep the rest
        return {"value": None, "slope": None, "r2": None, "sizes": [], "values": [], "warning": str(e)}
    return {
        "value": r.value,
        "slope": r.slope,
        "r2": r.r2,
        "sizes": r.sizes.tolist(),
        "values": r.values.tolist(),
        "warning": getattr(r, "warning", None),
    }


def _fdinf_rows(r):
    note = f"slope {_f(r['slope'])} / N, r2 {_f(r['r2'])}" + (f"; {r['warning']}" if r.get("warning") else "")
    return [("FD_inf", _f(r["value"]), "", note)]


def _e1(gen, ref, o):
    r = me.two_sample_moment_mmd(gen, ref, seed=o["seed"])
    return {
        "value": r.value,
        "value_ci": _ci(r.ci),
        "mean_part": r.mean_part,
        "whitening": r.whitening,
        "rank": int(r.rank),
    }


def _e1_rows(r):
    return [
        (
            "E1 (2nd moments)",
            _f(r["value"]),
            _cis(r["value_ci"]),
            f"whitened by REF ({r['whitening']}, rank {r['rank']}); threshold 1 passes at <= 0.1",
        )
    ]


def _kid(gen, ref, o):
    r = cv.kid(gen, ref, n_subsets=o["kid_subsets"], subset_size=o["kid_size"], seed=o["seed"])
    return {
        "value": r.value,
        "std": r.std,
        "value_ci": _ci(r.value_ci),
        "subset_size": r.subset_size,
        "n_subsets": len(r.values),
    }


def _kid_rows(r):
    return [
        (
            "KID",
            _f(r["value"]),
            _cis(r["value_ci"]),
            f"std {_f(r['std'])} over {r['n_subsets']} subsets of {r['subset_size']}",
        )
    ]


def _prdc(gen, ref, o):
    """precision/recall and density/coverage share their k-NN radii: computed once per run."""
    if "_prdc" not in o:
        o["_prdc"] = cv.prdc(ref, gen, budget_mib=o["budget_mib"])
    return o["_prdc"]


def _pr(gen, ref, o):
    pr = _prdc(gen, ref, o)[0]
    return {
        "precision": pr.precision,
        "precision_ci": _ci(pr.precision_ci),
        "recall": pr.recall,
        "recall_ci": _ci(pr.recall_ci),
        "k": pr.k,
    }


def _pr_rows(r):
    return [
        ("precision", _f(r["precision"]), _cis(r["precision_ci"]), f"k={r['k']}"),
        ("recall", _f(r["recall"]), _cis(r["recall_ci"]), f"k={r['k']}"),
    ]


def _dc(gen, ref, o):
    dc = _prdc(gen, ref, o)[1]
    return {"density": dc.density, "coverage": dc.coverage, "coverage_ci": _ci(dc.coverage_ci), "k": dc.k}


def _dc_rows(r):
    return [
        ("density", _f(r["density"]), "", f"k={r['k']}"),
        ("coverage", _f(r["coverage"]), _cis(r["coverage_ci"]), f"k={r['k']}"),
    ]


def _moments(gen, ref, o):
    r = cv.moments(gen, ref)
    return {
        "mean_error": r.mean_error,
        "cov_rel_error": r.cov_rel_error,
        "spectrum_rel_error": r.spectrum_rel_error,
        "kurtosis_error": r.kurtosis_error,
        "top_eig_gen": r.top_eig_a.tolist(),
        "top_eig_ref": r.top_eig_b.tolist(),
        "kurtosis_gen": r.kurtosis_a.tolist(),
        "kurtosis_ref": r.kurtosis_b.tolist(),
    }


def _moments_rows(r):
    return [
        ("mean error", _f(r["mean_error"]), "", "||mu_gen - mu_ref||"),
        ("cov rel. error", _f(r["cov_rel_error"]), "", "||S_gen - S_ref||_F / ||S_ref||_F"),
        ("spectrum rel. error", _f(r["spectrum_rel_error"]), "", "top-10 eigenvalues"),
        ("kurtosis error", _f(r["kurtosis_error"]), "", "max |excess kurtosis diff|, top-10 PCs of ref"),
    ]


def _kl(gen, ref, o):
    return {"value": cv.gaussian_kl(gen, ref, ridge=o["kl_ridge"]), "ridge": o["kl_ridge"]}


def _swd(gen, ref, o):
    return {"value": cv.sliced_wasserstein(gen, ref, seed=o["seed"]), "n_projections": 128, "p": 2}


# metric name -> its definition (the table's order). Add a metric: one entry here.
METRICS: dict[str, CompareMetric] = {
    "e1": CompareMetric(
        "whitened second-moment error E1 against REF (threshold 1's statistic)", _e1, _e1_rows
    ),
    "fd": CompareMetric("Frechet distance between fitted Gaussians (FID in Inception space)", _fd, _fd_rows),
    "fdinf": CompareMetric(
        "FD extrapolated to infinitely many samples (Chong & Forsyth 2020)", _fdinf, _fdinf_rows
    ),
    "kid": CompareMetric("unbiased MMD^2, cubic polynomial kernel (KID)", _kid, _kid_rows),
    "pr": CompareMetric("improved precision / recall, k=3 (Kynkaanniemi et al. 2019)", _pr, _pr_rows),
    "dc": CompareMetric("density / coverage, k=5 (Naeem et al. 2020)", _dc, _dc_rows),
    "moments": CompareMetric("mean, covariance, spectrum and kurtosis errors", _moments, _moments_rows),
    "kl": CompareMetric(
        "KL(N_gen || N_ref) between fitted Gaussians",
        _kl,
        lambda r: [("Gaussian KL", _f(r["value"]), "", f"nats, ridge {r['ridge']:g}")],
    ),
    "swd": CompareMetric(
        "sliced Wasserstein-2 distance (128 projections)",
        _swd,
        lambda r: [("sliced W2", _f(r["value"]), "", "128 projections")],
    ),
}


def run_metrics(
    gen,
    ref,
    metrics: list[str],
    *,
    seed: int = 0,
    n_boot: int = 0,
    kid_subsets: int = 100,
    kid_size: int = 1000,
    kl_ridge: float = 0.0,
    budget_mib: float = 512,
) -> dict[str, dict]:
    """Run the named metrics on features ``gen`` (n_gen, D) and ``ref`` (n_ref, D); JSON-ready dicts."""
    opts = {
        "seed": seed,
        "n_boot": n_boot,
        "kid_subsets": kid_subsets,
        "kid_size": kid_size,
        "kl_ridge": kl_ridge,
        "budget_mib": budget_mib,
    }
    return {name: METRICS[name].compute(gen, ref, opts) for name in metrics}


def rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """Table rows (metric, value, 95 % CI, notes) of ``run_metrics``' results."""
    return [row for name, r in results.items() for row in METRICS[name].rows(r)]
