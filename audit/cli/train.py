"""``diffaudit train``: train an EDM denoiser into a checkpoint folder (logic in ``diffaudit.harness.train``)."""

from __future__ import annotations

from pathlib import Path

import click

from diffaudit.datasets.base import get_dataset
from diffaudit.datasets.loading import load_samples
from diffaudit.errors import DiffauditError
from diffaudit.harness.edm import PROPOSAL_STD_RANGE, SIGMA_SAMPLINGS
from diffaudit.harness.train import TrainConfig, train
from diffaudit.pipeline.setup import data_seeds


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
):
    """Train an EDM denoiser and write a checkpoint that `diffaudit audit ckpt:DIR` reads.

    \b
    Examples:
      diffaudit train --dataset hidden-manifold:d=32 --n-train 512 --steps 8000 --out runs/hm512
      diffaudit train --train my_samples.npy --model mlp:width=128,depth=3 --out runs/mine
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
    )
    cfg.check()  # before the data is drawn or loaded
    if (dataset_spec is None) == (train_path is None):
        raise DiffauditError("give exactly one of --dataset SPEC or --train PATH.")
    if dataset_spec is not None:
        if n_train is None:
            raise DiffauditError("--dataset needs --n-train N (the number of training samples to draw).")
        if n_train < 2:
            raise DiffauditError(f"--n-train must be >= 2, got {n_train}.")
        ds = get_dataset(dataset_spec)
        # the audit's training set for the same --seed (pipeline.setup.data_seeds), so that
        # `diffaudit audit --model ckpt:DIR --dataset SPEC --n-train N --seed S` checks the model against the
        # very items it was trained on (it drew sample(n, seed) before: a different set)
        x = ds.sample(int(n_train), data_seeds(seed)[0])[0]
        spec = ds.spec
    else:
        x = load_samples(train_path)
        if n_train is not None:
            if n_train < 2 or n_train > len(x):
                raise DiffauditError(
                    f"--n-train {n_train} must be between 2 and the {len(x)} samples in {train_path}."
                )
            x = x[:n_train]
        spec = f"file:{train_path}"
    res = train(x, model_spec, cfg, out_dir=out_dir, progress=not quiet, dataset_spec=spec)
    last = res.stats[-1]
    click.echo(
        f"trained {res.config['model']} on n={res.config['n_train']} for {last['step']} steps "
        f"(final loss {last['loss']:.4f}, {last['elapsed_s']:.1f}s); checkpoint in {out_dir}"
    )
