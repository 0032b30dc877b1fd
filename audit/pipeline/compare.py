"""``diffaudit compare GEN REF``: distributional-convergence metrics (threshold 1) between two sample sets.

Loads both sets in the normal form (``diffaudit.datasets.loading.load_samples``), embeds them in one feature
space (``diffaudit.features``, cached on disk), runs the chosen probes of ``diffaudit.probes.convergence``,
prints a table and, with ``--json OUT``, writes every number atomically. Cheap to import: numpy, torch and
faiss are imported inside the command.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from diffaudit.errors import DiffauditError
from diffaudit.fileio import jsonable

# metric name -> what it reports (help text and the table's order)
METRICS: dict[str, str] = {
    "fd": "Frechet distance between fitted Gaussians (FID in Inception space)",
    "fdinf": "FD extrapolated to infinitely many samples (Chong & Forsyth 2020)",
    "kid": "unbiased MMD^2, cubic polynomial kernel (KID)",
    "pr": "improved precision / recall, k=3 (Kynkaanniemi et al. 2019)",
    "dc": "density / coverage, k=5 (Naeem et al. 2020)",
    "moments": "mean, covariance, spectrum and kurtosis errors",
    "kl": "KL(N_gen || N_ref) between fitted Gaussians",
    "swd": "sliced Wasserstein-2 distance (128 projections)",
}
DEFAULT_METRICS = "fd,kid,pr,dc,moments"

EXAMPLES = """
\b
Examples:
  diffaudit compare samples.npz train.npy
  diffaudit compare gen_images/ ref_images/ --features pixels:16 --metrics fd,kid,pr,dc
  diffaudit compare gen.npy ref.npy --metrics all --json out/compare.json --seed 1
  DIFFAUDIT_INCEPTION_WEIGHTS=pt_inception-2015-12-05-6726825d.pth \\
    diffaudit compare gen/ ref/ --features inception --device cuda
"""


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


def _embed(x, spec: str, *, device: str, weights, random_init: bool, batch_size: int, cache: bool, progress: bool):
    import numpy as np

    try:
        from diffaudit import features as feats
    except ImportError:  # the feature registry is optional only for plain pixels
        if spec != "pixels":
            raise DiffauditError(f"feature space {spec!r} is not available in this install; use --features pixels.") from None
        return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32), {"id": "pixels", "random_init": False}
    emb = feats.get_embedder(spec, device=device, weights=weights, random_init=random_init)
    if cache:
        f = feats.embed_cached(x, emb, progress=progress, batch_size=batch_size)
    else:
        f = emb.embed(x, batch_size=batch_size, progress=progress)
    return f, {"id": emb.id, "random_init": bool(getattr(emb, "random_init", False))}


def _ci(ci):
    return None if ci is None else [float(ci[0]), float(ci[1])]


def run_metrics(gen, ref, metrics: list[str], *, seed: int = 0, n_boot: int = 0, kid_subsets: int = 100,
                kid_size: int = 1000, kl_ridge: float = 0.0, budget_mib: float = 512) -> dict[str, dict]:
    """Run the named probes on features ``gen`` (n_gen, D) and ``ref`` (n_ref, D); JSON-ready dicts."""
    from diffaudit.probes import convergence as cv

    out: dict[str, dict] = {}
    for name in metrics:
        if name == "fd":
            r = cv.frechet_distance(gen, ref, n_boot=n_boot, seed=seed)
            out[name] = {"value": r.value, "value_ci": _ci(r.value_ci), "mean_term": r.mean_term,
                         "trace_term": r.trace_term, "neg_eig_mass": r.neg_eig_mass, "singular": r.singular}
        elif name == "fdinf":
            r = cv.fd_infinity(gen, ref, seed=seed)
            out[name] = {"value": r.value, "slope": r.slope, "r2": r.r2, "sizes": r.sizes.tolist(),
                         "values": r.values.tolist()}
        elif name == "kid":
            r = cv.kid(gen, ref, n_subsets=kid_subsets, subset_size=kid_size, seed=seed)
            out[name] = {"value": r.value, "std": r.std, "value_ci": _ci(r.value_ci), "subset_size": r.subset_size,
                         "n_subsets": len(r.values)}
        elif name in ("pr", "dc"):
            if "pr" in out or "dc" in out:
                continue
            pr, dc = cv.prdc(ref, gen, budget_mib=budget_mib)
            if "pr" in metrics:
                out["pr"] = {"precision": pr.precision, "precision_ci": _ci(pr.precision_ci), "recall": pr.recall,
                             "recall_ci": _ci(pr.recall_ci), "k": pr.k}
            if "dc" in metrics:
                out["dc"] = {"density": dc.density, "coverage": dc.coverage, "coverage_ci": _ci(dc.coverage_ci),
                             "k": dc.k}
        elif name == "moments":
            r = cv.moments(gen, ref)
            out[name] = {"mean_error": r.mean_error, "cov_rel_error": r.cov_rel_error,
                         "spectrum_rel_error": r.spectrum_rel_error, "kurtosis_error": r.kurtosis_error,
                         "top_eig_gen": r.top_eig_a.tolist(), "top_eig_ref": r.top_eig_b.tolist(),
                         "kurtosis_gen": r.kurtosis_a.tolist(), "kurtosis_ref": r.kurtosis_b.tolist()}
        elif name == "kl":
            out[name] = {"value": cv.gaussian_kl(gen, ref, ridge=kl_ridge), "ridge": kl_ridge}
        elif name == "swd":
            out[name] = {"value": cv.sliced_wasserstein(gen, ref, seed=seed), "n_projections": 128, "p": 2}
    return {m: out[m] for m in metrics if m in out}




def _rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    def f(x):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.6g}"

    def ci(c):
        return "" if c is None else f"[{f(c[0])}, {f(c[1])}]"

    rows = []
    for name, r in results.items():
        if name == "fd":
            rows.append(("FD", f(r["value"]), ci(r["value_ci"]),
                         f"mean {f(r['mean_term'])}, trace {f(r['trace_term'])}"
                         + ("; singular covariance (n <= D): biased, see fdinf" if r["singular"] else "")))
        elif name == "fdinf":
            rows.append(("FD_inf", f(r["value"]), "", f"slope {f(r['slope'])} / N, r2 {f(r['r2'])}"))
        elif name == "kid":
            rows.append(("KID", f(r["value"]), ci(r["value_ci"]),
                         f"std {f(r['std'])} over {r['n_subsets']} subsets of {r['subset_size']}"))
        elif name == "pr":
            rows.append(("precision", f(r["precision"]), ci(r["precision_ci"]), f"k={r['k']}"))
            rows.append(("recall", f(r["recall"]), ci(r["recall_ci"]), f"k={r['k']}"))
        elif name == "dc":
            rows.append(("density", f(r["density"]), "", f"k={r['k']}"))
            rows.append(("coverage", f(r["coverage"]), ci(r["coverage_ci"]), f"k={r['k']}"))
        elif name == "moments":
            rows.append(("mean error", f(r["mean_error"]), "", "||mu_gen - mu_ref||"))
            rows.append(("cov rel. error", f(r["cov_rel_error"]), "", "||S_gen - S_ref||_F / ||S_ref||_F"))
            rows.append(("spectrum rel. error", f(r["spectrum_rel_error"]), "", "top-10 eigenvalues"))
            rows.append(("kurtosis error", f(r["kurtosis_error"]), "", "max |excess kurtosis diff|, top-10 PCs of ref"))
        elif name == "kl":
            rows.append(("Gaussian KL", f(r["value"]), "", f"nats, ridge {r['ridge']:g}"))
        elif name == "swd":
            rows.append(("sliced W2", f(r["value"]), "", "128 projections"))
    return rows


@click.command("compare", epilog=EXAMPLES)
@click.argument("gen", type=click.Path(path_type=Path))
@click.argument("ref", type=click.Path(path_type=Path))
@click.option("--features", "feature_spec", default="pixels", show_default=True,
              help="Feature space: pixels, pixels:K, inception, clip:ARCH, dinov2.")
@click.option("--metrics", "metrics_spec", default=DEFAULT_METRICS, show_default=True,
              help=f"Comma-separated metrics or 'all': {', '.join(METRICS)}.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write every number to this JSON file (atomically).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds subsets, bootstrap and projections.")
@click.option("--gen-key", default=None, help="Array name inside GEN (.npz/.safetensors/.pt dict).")
@click.option("--ref-key", default=None, help="Array name inside REF.")
@click.option("--weights", default=None, help="Local weight file of the feature network.")
@click.option("--random-init", is_flag=True, help="Randomly initialised feature network (plumbing tests only).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the on-disk feature cache.")
@click.option("--bootstrap", "n_boot", type=int, default=0, show_default=True,
              help="Bootstrap resamples for an FD interval (each costs one FD).")
@click.option("--kid-subsets", type=int, default=100, show_default=True)
@click.option("--kid-size", type=int, default=1000, show_default=True, help="KID subset size (capped at n).")
@click.option("--kl-ridge", type=float, default=0.0, show_default=True,
              help="Added to both covariance diagonals for 'kl' (needed when n <= D).")
@click.option("--budget-mib", type=float, default=512, show_default=True,
              help="Memory budget of the blocked k-NN searches (pr, dc).")
@click.option("--quiet", is_flag=True, help="No table, no progress (use with --json).")
def compare_cmd(gen, ref, feature_spec, metrics_spec, json_out, seed, gen_key, ref_key, weights, random_init, device,
                batch_size, no_cache, n_boot, kid_subsets, kid_size, kl_ridge, budget_mib, quiet):
    """Distributional convergence (threshold 1) of generated samples GEN against reference samples REF.

    GEN and REF are .npy, .npz, .pt, .safetensors files or folders of PNG/JPEG images. Both are embedded
    in the same feature space, then compared with Frechet distance, KID, precision/recall,
    density/coverage, moment errors, Gaussian KL and sliced Wasserstein (pick with --metrics).
    """
    from diffaudit.datasets.loading import load_samples

    metrics = parse_metrics(metrics_spec)
    for opt, v, lo in (("--batch-size", batch_size, 1), ("--kid-subsets", kid_subsets, 1), ("--kid-size", kid_size, 2),
                       ("--bootstrap", n_boot, 0)):
        if v < lo:
            raise DiffauditError(f"{opt} {v} is too small; pass a value >= {lo}.")
    if not (kl_ridge >= 0 and math.isfinite(kl_ridge)):
        raise DiffauditError(f"--kl-ridge {kl_ridge} must be a finite number >= 0.")
    if json_out is not None and json_out.is_dir():
        raise DiffauditError(f"--json {json_out} is a folder; pass a file path such as {json_out / 'compare.json'}.")
    x_gen = load_samples(gen, gen_key, name=f"GEN {gen}")
    x_ref = load_samples(ref, ref_key, name=f"REF {ref}")
    opts = dict(device=device, weights=weights, random_init=random_init, batch_size=batch_size,
                cache=not no_cache, progress=not quiet)
    f_gen, emb = _embed(x_gen, feature_spec, **opts)
    f_ref, _ = _embed(x_ref, feature_spec, **opts)
    if f_gen.shape[1] != f_ref.shape[1]:
        raise DiffauditError(
            f"GEN samples {x_gen.shape[1:]} give {f_gen.shape[1]} features in {feature_spec!r} but REF samples "
            f"{x_ref.shape[1:]} give {f_ref.shape[1]}; compare samples of the same kind and size (resize images first)."
        )
    results = run_metrics(f_gen, f_ref, metrics, seed=seed, n_boot=n_boot, kid_subsets=kid_subsets,
                          kid_size=kid_size, kl_ridge=kl_ridge, budget_mib=budget_mib)
    doc = {"schema": "diffaudit.compare/1", "gen": str(gen), "ref": str(ref), "features": feature_spec,
           "embedder": emb["id"], "random_init": emb["random_init"], "n_gen": int(len(f_gen)),
           "n_ref": int(len(f_ref)), "dim": int(f_gen.shape[1]), "seed": seed, "metrics": jsonable(results)}
    if json_out is not None:
        from diffaudit.fileio import atomic_write_json

        atomic_write_json(json_out, doc)
    if not quiet:
        from rich.console import Console
        from rich.table import Table

        title = f"compare: {len(f_gen)} GEN vs {len(f_ref)} REF in {emb['id']} ({f_gen.shape[1]}-d)"
        if emb["random_init"]:
            title += " [RANDOM-INIT features: plumbing only]"
        table = Table(title=title)
        for col in ("metric", "value", "95% CI", "notes"):
            table.add_column(col, justify="right" if col == "value" else "left")
        for row in _rows(results):
            table.add_row(*row)
        Console(width=120).print(table)
        if json_out is not None:
            click.echo(f"wrote {json_out}")
