"""``diffaudit thresholds SWEEP_DIR``: fit n1* and n2* of a sweep (logic in ``diffaudit.sweeps.thresholds``)."""

from __future__ import annotations

from pathlib import Path

import click

from diffaudit.fileio import atomic_write_json, atomic_write_text
from diffaudit.sweeps.thresholds import compute_thresholds, group_title, render_html


@click.command("thresholds")
@click.argument("sweep_dir", type=click.Path(path_type=Path))
@click.option(
    "--level",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Crossing level of the threshold-2 curves.",
)
@click.option(
    "--eps1",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Threshold-1 tolerance on E1 [default: the cells' audit value].",
)
@click.option(
    "--n-boot",
    type=click.IntRange(min=10),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the intervals.",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the bootstrap."
)
def thresholds_cmd(sweep_dir, level, eps1, n_boot, seed):
    """Fit n1* (threshold 1) and n2* (threshold 2) with intervals from a sweep folder.

    Writes DIR/thresholds.json and DIR/thresholds.html. A curve that does not cross inside the
    n grid is reported as such (exit 0); a folder with no complete cells is an error (exit 2).

    \b
    Example:
      diffaudit sweep --preset quick --out runs/quick && diffaudit thresholds runs/quick
    """
    doc = compute_thresholds(sweep_dir, level=level, eps1=eps1, n_boot=n_boot, seed=seed)
    atomic_write_json(Path(sweep_dir) / "thresholds.json", doc)
    atomic_write_text(Path(sweep_dir) / "thresholds.html", render_html(doc))
    for g in doc["groups"]:
        click.echo(group_title(g))
        for key, label in (("n1_star", "n1*"), ("n2_star", "n2*")):
            s = g.get(key)
            if s:
                click.echo(f"  {label}: {s['message']}")
        click.echo(f"  => {g['order']['statement']}")
    for e in doc["exponents"]:
        click.echo(f"{e['dataset']} {e['model']}: {e['message']}")
    for m, n in doc["cells_without"].items():
        if n:
            click.echo(f"skipped: {n} of {doc['n_cells']} cells have no {m}")
    click.echo(f"wrote {Path(sweep_dir) / 'thresholds.json'} and thresholds.html")
