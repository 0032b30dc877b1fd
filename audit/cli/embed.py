"""``diffaudit embed INPUT --out FILE``: precompute features (logic in ``diffaudit.features``)."""

from __future__ import annotations

import click

from diffaudit.datasets.base import get_dataset
from diffaudit.datasets.loading import load_samples, save_samples
from diffaudit.device import DEVICES
from diffaudit.features import embed_cached, get_embedder

EXAMPLES = """\b
Examples:
  diffaudit embed samples/ --features pixels:16 --out feats.npy
  diffaudit embed ref.npz --key x --features inception --weights pt_inception-2015-12-05-6726825d.pth --out ref_incep.npy
  DIFFAUDIT_DINOV2_WEIGHTS=dinov2_vitl14_pretrain.pth diffaudit embed gen.npy --features dinov2 --out gen_dino.npy
"""


@click.command("embed", epilog=EXAMPLES)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=str))
@click.option(
    "--features",
    "spec",
    default="pixels",
    show_default=True,
    help="Feature space: pixels, pixels:K, inception, clip:ARCH, dinov2[:ARCH], oracle.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Output .npy (or .npz) file for the (n, D) float32 features.",
)
@click.option("--key", default=None, help="Array name inside .npz/.pt/.safetensors inputs.")
@click.option(
    "--weights",
    default=None,
    type=click.Path(path_type=str),
    help="Local weight file (or an open_clip tag for clip); else the DIFFAUDIT_*_WEIGHTS env var.",
)
@click.option("--device", default="auto", type=click.Choice(DEVICES), show_default=True)
@click.option(
    "--batch-size",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples per forward pass (memory, not results).",
)
@click.option(
    "--dataset", "dataset_spec", default=None, help="Synthetic dataset spec, for --features oracle."
)
@click.option(
    "--cache-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="Feature cache folder [default: $DIFFAUDIT_CACHE_DIR or ~/.cache/diffaudit].",
)
@click.option("--no-cache", is_flag=True, help="Compute without reading or writing the feature cache.")
@click.option(
    "--random-init", is_flag=True, help="Random network weights: plumbing tests only, never for reports."
)
@click.option(
    "--allow-download", is_flag=True, help="Let clip fetch a missing pretrained tag (off by default)."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed_cmd(
    input_path,
    spec,
    out,
    key,
    weights,
    device,
    batch_size,
    dataset_spec,
    cache_dir,
    no_cache,
    random_init,
    allow_download,
    quiet,
):
    """Embed samples into a feature space and save the (n, D) float32 features (precompute for compare)."""
    dataset = get_dataset(dataset_spec) if dataset_spec is not None else None
    emb = get_embedder(
        spec,
        device=device,
        weights=weights,
        random_init=random_init,
        dataset=dataset,
        allow_download=allow_download,
    )
    x = load_samples(input_path, key=key, name=input_path, min_n=1)
    if no_cache:
        f = emb.embed(x, batch_size=batch_size, progress=not quiet)
    else:
        f = embed_cached(x, emb, cache_dir=cache_dir, progress=not quiet, batch_size=batch_size)
    save_samples(out, f)
    note = " (RANDOM weights: plumbing only)" if emb.random_init else ""
    click.echo(f"{input_path}: {f.shape[0]} samples -> {f.shape[1]}-d {emb.id}{note} -> {out}")
