"""``diffaudit compare GEN REF``: threshold-1 metrics between two sample sets (logic in ``pipeline.compare``)."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from diffaudit.datasets.loading import load_samples
from diffaudit.errors import DiffauditError
from diffaudit.fileio import atomic_write_json, jsonable
from diffaudit.pipeline.compare import DEFAULT_METRICS, METRICS, embed, parse_metrics, rows, run_metrics

EXAMPLES = """
\b
Examples:
  diffaudit compare samples.npz train.npy
  diffaudit compare gen_images/ ref_images/ --features pixels:16 --metrics fd,kid,pr,dc
  diffaudit compare gen.npy ref.npy --metrics all --json out/compare.json --seed 1
  DIFFAUDIT_INCEPTION_WEIGHTS=pt_inception-2015-12-05-6726825d.pth \\
    diffaudit compare gen/ ref/ --features inception --device cuda
"""


@click.command("compare", epilog=EXAMPLES)
@click.argument("gen", type=click.Path(path_type=Path))
@click.argument("ref", type=click.Path(path_type=Path))
@click.option(
    "--features",
    "feature_spec",
    default="pixels",
    show_default=True,
    help="Feature space: pixels, pixels:K, inception, clip:ARCH, dinov2.",
)
@click.option(
    "--metrics",
    "metrics_spec",
    default=DEFAULT_METRICS,
    show_default=True,
    help=f"Comma-separated metrics or 'all': {', '.join(METRICS)}.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write every number to this JSON file (atomically).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds subsets, bootstrap and projections."
)
@click.option("--gen-key", default=None, help="Array name inside GEN (.npz/.safetensors/.pt dict).")
@click.option("--ref-key", default=None, help="Array name inside REF.")
@click.option("--weights", default=None, help="Local weight file of the feature network.")
@click.option(
    "--random-init", is_flag=True, help="Randomly initialised feature network (plumbing tests only)."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write the on-disk feature cache.")
@click.option(
    "--bootstrap",
    "n_boot",
    type=int,
    default=0,
    show_default=True,
    help="Bootstrap resamples for an FD interval (each costs one FD).",
)
@click.option("--kid-subsets", type=int, default=100, show_default=True)
@click.option("--kid-size", type=int, default=1000, show_default=True, help="KID subset size (capped at n).")
@click.option(
    "--kl-ridge",
    type=float,
    default=0.0,
    show_default=True,
    help="Added to both covariance diagonals for 'kl' (needed when n <= D).",
)
@click.option(
    "--budget-mib",
    type=float,
    default=512,
    show_default=True,
    help="Memory budget of the blocked k-NN searches (pr, dc).",
)
@click.option("--quiet", is_flag=True, help="No table, no progress (use with --json).")
def compare_cmd(
    gen,
    ref,
    feature_spec,
    metrics_spec,
    json_out,
    seed,
    gen_key,
    ref_key,
    weights,
    random_init,
    device,
    batch_size,
    no_cache,
    n_boot,
    kid_subsets,
    kid_size,
    kl_ridge,
    budget_mib,
    quiet,
):
    """Distributional convergence (threshold 1) of generated samples GEN against reference samples REF.

    GEN and REF are .npy, .npz, .pt, .safetensors files or folders of PNG/JPEG images. Both are embedded
    in the same feature space, then compared with Frechet distance, KID, precision/recall,
    density/coverage, moment errors, Gaussian KL and sliced Wasserstein (pick with --metrics).
    """
    metrics = parse_metrics(metrics_spec)
    for opt, v, lo in (
        ("--batch-size", batch_size, 1),
        ("--kid-subsets", kid_subsets, 1),
        ("--kid-size", kid_size, 2),
        ("--bootstrap", n_boot, 0),
    ):
        if v < lo:
            raise DiffauditError(f"{opt} {v} is too small; pass a value >= {lo}.")
    if not (kl_ridge >= 0 and math.isfinite(kl_ridge)):
        raise DiffauditError(f"--kl-ridge {kl_ridge} must be a finite number >= 0.")
    if json_out is not None and json_out.is_dir():
        raise DiffauditError(
            f"--json {json_out} is a folder; pass a file path such as {json_out / 'compare.json'}."
        )
    x_gen = load_samples(gen, gen_key, name=f"GEN {gen}")
    x_ref = load_samples(ref, ref_key, name=f"REF {ref}")
    opts = dict(
        device=device,
        weights=weights,
        random_init=random_init,
        batch_size=batch_size,
        cache=not no_cache,
        progress=not quiet,
    )
    f_gen, emb = embed(x_gen, feature_spec, **opts)
    f_ref, _ = embed(x_ref, feature_spec, **opts)
    if f_gen.shape[1] != f_ref.shape[1]:
        raise DiffauditError(
            f"GEN samples {x_gen.shape[1:]} give {f_gen.shape[1]} features in {feature_spec!r} but REF samples "
            f"{x_ref.shape[1:]} give {f_ref.shape[1]}; compare samples of the same kind and size (resize images first)."
        )
    results = run_metrics(
        f_gen,
        f_ref,
        metrics,
        seed=seed,
        n_boot=n_boot,
        kid_subsets=kid_subsets,
        kid_size=kid_size,
        kl_ridge=kl_ridge,
        budget_mib=budget_mib,
    )
    doc = {
        "schema": "diffaudit.compare/1",
        "gen": str(gen),
        "ref": str(ref),
        "features": feature_spec,
        "embedder": emb["id"],
        "random_init": emb["random_init"],
        "n_gen": int(len(f_gen)),
        "n_ref": int(len(f_ref)),
        "dim": int(f_gen.shape[1]),
        "seed": seed,
        "metrics": jsonable(results),
    }
    if json_out is not None:
        atomic_write_json(json_out, doc)
    if not quiet:
        title = f"compare: {len(f_gen)} GEN vs {len(f_ref)} REF in {emb['id']} ({f_gen.shape[1]}-d)"
        if emb["random_init"]:
            title += " [RANDOM-INIT features: plumbing only]"
        table = Table(title=title)
        for col in ("metric", "value", "95% CI", "notes"):
            table.add_column(col, justify="right" if col == "value" else "left")
        for row in rows(results):
            table.add_row(*row)
        Console(width=120).print(table)
        if json_out is not None:
            click.echo(f"wrote {json_out}")
