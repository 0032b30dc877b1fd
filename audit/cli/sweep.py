"""``diffaudit sweep``: train and audit one model per cell of a sweep spec (logic in ``diffaudit.sweeps.run``)."""

from __future__ import annotations

from pathlib import Path

import click

from diffaudit.errors import DiffauditError
from diffaudit.sweeps.executors import EXECUTORS, executors_help
from diffaudit.sweeps.run import run_sweep
from diffaudit.sweeps.spec import PRESETS, load_preset, load_spec


@click.command("sweep")
@click.argument("spec_path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default=None,
    help="A built-in spec instead of SPEC: quick (CPU, minutes), controls (the gaussian control over d, no training) or paper (GPU-sized).",
)
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path), help="Sweep folder (DIR/cells/<id>/...)."
)
@click.option(
    "--executor",
    type=click.Choice(sorted(EXECUTORS)),
    default="local",
    show_default=True,
    help="Where cells run: " + executors_help(),
)
@click.option(
    "--ray-address", default=None, help="Address of a running Ray cluster (default: start a local one)."
)
@click.option(
    "--resume", is_flag=True, help="Finish a sweep in an existing --out (completed cells are kept)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel cells (default: CPU cores, or GPUs on CUDA).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch threads per worker (default: CPU cores / workers). Keep it fixed when resuming.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sweep_cmd(spec_path, preset, out, executor, ray_address, resume, workers, threads, device, quiet):
    """Train and audit one model per (dataset, d, n, seed) cell of a sweep spec.

    \b
    Examples:
      diffaudit sweep --preset quick --out runs/quick
      diffaudit sweep my_sweep.toml --out runs/big --executor ray --ray-address auto
      diffaudit sweep my_sweep.toml --out runs/big --resume      # after an interruption
      diffaudit thresholds runs/quick
    """
    if (spec_path is None) == (preset is None):
        raise DiffauditError(f"give exactly one of SPEC.toml or --preset {'|'.join(PRESETS)}.")
    spec = load_preset(preset) if preset else load_spec(spec_path)
    res = run_sweep(
        spec,
        out,
        executor=executor,
        workers=workers,
        resume=resume,
        ray_address=ray_address,
        device=device,
        progress=not quiet,
        threads=threads,
    )
    click.echo(
        f"sweep {spec.name}: {res.n_cells} cells, {res.already_complete} already complete, "
        f"{len(res.done)} computed in {res.seconds:.1f}s, {len(res.failed)} failed; results in {out}"
    )
    if res.failed:
        for f in res.failed[:5]:
            click.echo(f"  failed {f['cell_id']}: {f['error']}", err=True)
        click.echo(f"rerun with --resume to retry the {len(res.failed)} failed cell(s).", err=True)
        return 1
    return 0
