"""``diffaudit train``: train an EDM denoiser into a checkpoint folder (logic in ``diffaudit.harness.train``)."""

from __future__ import annotations

from pathlib import Path

import click

from diffaudit.datasets.base import get_dataset
from diffaudit.datasets.labels import label_factor, labels_from_factors
from diffaudit.datasets.loading import load_samples
from diffaudit.errors import DiffauditError
from diffaudit.harness.edm import PROPOSAL_STD_RANGE, SIGMA_SAMPLINGS
from diffaudit.harness.train import TrainConfig, train
from diffaudit.pipeline.setup import data_seeds, load_labels


@click.command("train")
@click.option(
    "--dataset", "dataset_spec", default=None, help="Dataset spec, e.g. 'hidden-manifold:d=32' or 'mcm:d=16'."
)
@click.option(
    "--train",
    "train_path",
    default=None,
    type=click.Path(path_type=Path),
    help="Train on samples from a file/folder (.npy, .npz, .pt, .safetensors, images) instead of --dataset.",
)
@click.option(
    "--n-train",
    type=click.IntRange(min=2),
    default=None,
    help="Number of training samples (required with --dataset).",
)
@click.option(
    "--model",
    "model_spec",
    default="mlp:width=256,depth=4",
    show_default=True,
    help="Network spec: 'mlp:width=256,depth=4' or 'unet:channels=32,levels=3,attention=true'.",
)
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, show_default=True)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seeds the training set draw, init, batches and noise.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Run folder for the checkpoint."
)
@click.option(
    "--noise-draws",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="K (sigma, noise) draws per training item and step: each step makes batch x K denoiser "
    "evaluations, so its compute grows K-fold.",
)
@click.option(
    "--sigma-sampling",
    type=click.Choice(SIGMA_SAMPLINGS),
    default="lognormal",
    show_default=True,
    help="How a step's noise levels are drawn from EDM's log-normal: iid, or stratified (one draw per "
    "quantile stratum of batch x K, shuffled over the items).",
)
@click.option(
    "--sigma-proposal-std",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Importance sampling: draw ln(sigma) with this std instead of EDM's 1.2 and weight each term by "
    f"p/q (unbiased); 0 = off, else in ({PROPOSAL_STD_RANGE[0]:.3f}, {PROPOSAL_STD_RANGE[1]:.1f}].",
)
@click.option(
    "--grad-variance",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="R >= 2: at every logged step, measure the minibatch gradient's variance from R extra gradients "
    "(grad_var in stats.jsonl; R more forward/backward passes per log line, training unchanged); 0 = off.",
)
@click.option(
    "--condition",
    type=click.Choice(["labels"]),
    default=None,
    help="Train a class-conditional model: 'labels' takes the class labels from the dataset's first "
    "discrete factor (sprites: shape, digits: label, molrg: component), or from --train-labels.",
)
@click.option(
    "--train-labels",
    "train_labels_path",
    default=None,
    type=click.Path(path_type=Path),
    help="With --train and --condition labels: the class label of each training sample (.npy of whole numbers "
    "or text with one integer per line), as `diffaudit audit --train-labels` reads it.",
)
@click.option(
    "--label-dropout",
    type=float,
    default=None,
    help="With --condition labels: probability that a training item's label is replaced by the null label, "
    "which teaches the unconditional model classifier-free guidance needs; in [0, 1), default 0.1.",
)
@click.option("--quiet", is_flag=True, help="No per-log progress lines.")
def train_cmd(
    dataset_spec,
    train_path,
    n_train,
    model_spec,
    steps,
    batch,
    lr,
    seed,
    device,
    out_dir,
    quiet,
    noise_draws,
    sigma_sampling,
    sigma_proposal_std,
    grad_variance,
    condition,
    train_labels_path,
    label_dropout,
):
    """Train an EDM denoiser and write a checkpoint that `diffaudit audit ckpt:DIR` reads.

    \b
    Examples:
      diffaudit train --dataset hidden-manifold:d=32 --n-train 512 --steps 8000 --out runs/hm512
      diffaudit train --train my_samples.npy --model mlp:width=128,depth=3 --out runs/mine
      diffaudit train --dataset molrg:d=8,K=3,r=1 --n-train 600 --condition labels --out runs/cond
      diffaudit train --train x.npy --train-labels y.npy --condition labels --out runs/mine-cond
    """
    cfg = TrainConfig(
        steps=steps,
        batch=batch,
        lr=lr,
        seed=seed,
        device=device,
        noise_draws=noise_draws,
        sigma_sampling=sigma_sampling,
        sigma_proposal_std=sigma_proposal_std,
        grad_variance=grad_variance,
        **({} if label_dropout is None else {"label_dropout": label_dropout}),
    )
    cfg.check()  # before the data is drawn or loaded
    if (dataset_spec is None) == (train_path is None):
        raise DiffauditError("give exactly one of --dataset SPEC or --train PATH.")
    if condition is None and (train_labels_path is not None or label_dropout is not None):
        given = "--train-labels" if train_labels_path is not None else "--label-dropout"
        raise DiffauditError(f"{given} only applies to a class-conditional model; add --condition labels.")
    if train_labels_path is not None and dataset_spec is not None:
        raise DiffauditError(
            "--train-labels goes with --train FILE; with --dataset the labels come from the dataset's factors."
        )
    if condition == "labels" and train_path is not None and train_labels_path is None:
        raise DiffauditError(
            "--condition labels with --train FILE needs --train-labels FILE (one label per sample)."
        )
    labels = class_names = None
    if dataset_spec is not None:
        if n_train is None:
            raise DiffauditError("--dataset needs --n-train N (the number of training samples to draw).")
        if n_train < 2:
            raise DiffauditError(f"--n-train must be >= 2, got {n_train}.")
        ds = get_dataset(dataset_spec)
        if condition == "labels":
            class_names = label_factor(ds)[
                1
            ]  # a dataset without a discrete factor fails here, before drawing
        # the audit's training set for the same --seed (pipeline.setup.data_seeds), so that
        # `diffaudit audit --model ckpt:DIR --dataset SPEC --n-train N --seed S` checks the model against the
        # very items it was trained on (it drew sample(n, seed) before: a different set)
        x, z = ds.sample(int(n_train), data_seeds(seed)[0])
        if condition == "labels":
            labels = labels_from_factors(ds, z)
        spec = ds.spec
    else:
        x = load_samples(train_path)
        if train_labels_path is not None:  # read as `diffaudit audit --train-labels` reads it
            labels = load_labels(train_labels_path, len(x), "--train-labels")
        if n_train is not None:
            if n_train < 2 or n_train > len(x):
                raise DiffauditError(
                    f"--n-train {n_train} must be between 2 and the {len(x)} samples in {train_path}."
                )
            x = x[:n_train]
            labels = None if labels is None else labels[:n_train]
        spec = f"file:{train_path}"
    n_classes = None if class_names is None else len(class_names)
    res = train(
        x,
        model_spec,
        cfg,
        out_dir=out_dir,
        progress=not quiet,
        dataset_spec=spec,
        labels=labels,
        n_classes=n_classes,
        class_names=class_names,
    )
    last = res.stats[-1]
    classes = f" with {res.config['n_classes']} classes" if "n_classes" in res.config else ""
    click.echo(
        f"trained {res.config['model']}{classes} on n={res.config['n_train']} for {last['step']} steps "
        f"(final loss {last['loss']:.4f}, {last['elapsed_s']:.1f}s); checkpoint in {out_dir}"
    )
