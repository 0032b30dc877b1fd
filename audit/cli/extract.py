"""``diffaudit extract``: Carlini et al. 2023's extraction attack against a budget (logic in ``pipeline.extraction``)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from diffaudit.errors import DiffauditError
from diffaudit.fileio import check_out_dir
from diffaudit.models.adapters import FORMS, check_spec, load_model, model_name
from diffaudit.pipeline.extraction import check_extraction_inputs, extract_to_dir
from diffaudit.pipeline.setup import audit_data


@click.command("extract", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_spec", required=True, metavar="SPEC", help="the model: " + " | ".join(FORMS))
@click.option(
    "--dataset", "dataset_spec", metavar="SPEC", help="synthetic dataset, e.g. sprites (with --n-train)"
)
@click.option(
    "--n-train", type=click.IntRange(min=2), help="training-set size drawn from --dataset (seed --seed)"
)
@click.option(
    "--train", "train_path", metavar="PATH", help="training samples (.npy/.npz/.pt/.safetensors or folder)"
)
@click.option(
    "--holdout",
    "holdout_path",
    metavar="PATH",
    help="held-out real samples (calibrate the copy distance; without one the ratio rule alone decides)",
)
@click.option(
    "--n-holdout", type=click.IntRange(min=2), help="holdout size drawn from --dataset (default 2000)"
)
@click.option("--budget", type=click.IntRange(min=1), required=True, help="generations the attack may spend")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="sampling seed")
@click.option(
    "--num-steps", type=click.IntRange(min=1), help="Heun sampler steps for denoiser models (default 32)"
)
@click.option(
    "--out", "out", metavar="DIR", help="output folder (default reports/<timestamp>-extract-<model>)"
)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
def extract_cmd(
    model_spec,
    dataset_spec,
    n_train,
    train_path,
    holdout_path,
    n_holdout,
    budget,
    seed,
    num_steps,
    out,
    device,
):
    """Extract training items from a model: generate --budget samples, link near-identical ones, verify.

    \b
    Writes DIR/extraction.json (unique training items extracted, the yield curve against the budget, the
    cost per item, the candidates with their training matches) and, for images, DIR/gallery.png.
    \b
    Examples:
      diffaudit extract --model control:memorizer --dataset sprites --n-train 200 --budget 400
      diffaudit extract --model ckpt:runs/unet --train train.npy --holdout test.npy --budget 20000
    """
    t0 = time.perf_counter()
    if train_path is None and (dataset_spec is None or n_train is None):
        raise DiffauditError(
            "pass the training data: --dataset SPEC --n-train N, or --train PATH [--holdout PATH]."
        )
    if train_path is not None and n_train is not None:
        raise DiffauditError("pass either --dataset SPEC --n-train N or --train PATH, not both.")
    if holdout_path and train_path is None:
        raise DiffauditError(
            "--holdout goes with --train PATH; with --dataset the holdout is drawn from the dataset."
        )
    check_spec(model_spec)
    out_dir = check_out_dir(
        Path(out)
        if out
        else Path("reports") / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-extract-"
        f"{model_name(model_spec)}"
    )
    data = audit_data(dataset_spec, n_train, n_holdout, train_path, holdout_path, seed=seed)
    model = load_model(model_spec, train=data.train, dataset=data.dataset, device=device, num_steps=num_steps)
    check_extraction_inputs(model, data, budget)
    s, r = extract_to_dir(model, data, budget, out_dir, model_spec=model_spec, seed=seed)
    ref_mean, ref_sd = s["memorizer_reference"]["unique_train_extracted"]
    cost = (
        f"{r.cost_per_item:.3g} generations per item"
        if math.isfinite(r.cost_per_item)
        else "no item extracted"
    )
    click.echo(
        f"extracted {r.unique_train_extracted} of {r.n_train} training items from {r.budget} generations ({cost}; "
        f"clusters of >= {r.min_cluster}, {r.n_candidates_unverified} unverified)"
    )
    click.echo(
        f"every generation checked: {r.unique_train_copied} items copied by {r.n_copies} generations"
        f"{' (plain distance; candidate leaders also under small edits)' if len(r.transforms) > 1 else ''}; "
        f"a model drawing its training items uniformly would give {ref_mean:.1f} +- {ref_sd:.1f} extracted"
    )
    if not r.exact_linking:
        click.echo(
            f"note: {r.n_evicted_open} open clusters left the bounded store; the count is a lower bound"
        )
    click.echo(f"wrote {out_dir / 'extraction.json'} ({time.perf_counter() - t0:.1f}s)")
    return 0
