"""``diffaudit sweep``: train and audit one model per cell of a sweep spec (logic in ``diffaudit.sweeps.run``;
grouped training and the dry run's estimate in ``diffaudit.sweeps.groups``)."""

from __future__ import annotations

from pathlib import Path

import click

from diffaudit.errors import DiffauditError
from diffaudit.sweeps.executors import EXECUTORS, executors_help
from diffaudit.sweeps.groups import describe_units, fmt_seconds
from diffaudit.sweeps.run import DryRun, run_sweep
from diffaudit.sweeps.run import dry_run as plan_dry_run
from diffaudit.sweeps.spec import GROUP_MODES, PRESETS, load_preset, load_spec


@click.command("sweep")
@click.argument("spec_path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default=None,
    help="A built-in spec instead of SPEC: quick (CPU, minutes), controls (the gaussian control over d, no training) or paper (GPU-sized).",
)
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(path_type=Path),
    help="Sweep folder (DIR/cells/<id>/...); required unless --dry-run.",
)
@click.option(
    "--executor",
    type=click.Choice(sorted(EXECUTORS)),
    default="local",
    show_default=True,
    help="Where units (cells, or groups of cells trained together) run: " + executors_help(),
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
@click.option(
    "--group",
    type=click.Choice(GROUP_MODES),
    default=None,
    help="Train cells of one network and sample shape together in one vectorised loop: auto (default, or the "
    "spec's [sweep] group) groups on CUDA, and on CPU only networks below the measured break-even (see "
    "diffaudit.sweeps.groups); on groups every network, off none.",
)
@click.option(
    "--group-mib",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Memory budget of one group in MiB (estimated per model: weights, Adam state, EMA, activations, "
    "data); default 8192 on CUDA, 2048 on CPU.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the cells, the groups, the training steps and a time estimate from a short calibration "
    "here; write nothing.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sweep_cmd(
    spec_path,
    preset,
    out,
    executor,
    ray_address,
    resume,
    workers,
    threads,
    device,
    group,
    group_mib,
    dry_run,
    quiet,
):
    """Train and audit one model per (dataset, d, n, seed) cell of a sweep spec.

    \b
    Examples:
      diffaudit sweep --preset quick --out runs/quick
      diffaudit sweep my_sweep.toml --out runs/big --executor ray --ray-address auto
      diffaudit sweep my_sweep.toml --out runs/big --resume      # after an interruption
      diffaudit sweep my_sweep.toml --dry-run --device cuda      # cells, groups, steps, estimated time
      diffaudit thresholds runs/quick
    """
    if (spec_path is None) == (preset is None):
        raise DiffauditError(f"give exactly one of SPEC.toml or --preset {'|'.join(PRESETS)}.")
    spec = load_preset(preset) if preset else load_spec(spec_path)
    if dry_run:
        plan = plan_dry_run(
            spec, out, workers=workers, device=device, threads=threads, group=group, group_mib=group_mib
        )
        _print_plan(plan)
        return 0
    if out is None:
        raise DiffauditError("--out is required: pass the sweep folder, e.g. --out runs/my_sweep.")
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
        group=group,
        group_mib=group_mib,
    )
    k = sum(len(g["cells"]) for g in res.groups)
    grouped = f" ({k} cell(s) trained in {len(res.groups)} vectorised group(s))" if res.groups else ""
    click.echo(
        f"sweep {spec.name}: {res.n_cells} cells, {res.already_complete} already complete, "
        f"{len(res.done)} computed{grouped} in {res.seconds:.1f}s, {len(res.failed)} failed; results in {out}"
    )
    if res.failed:
        for f in res.failed[:5]:
            click.echo(f"  failed {f['cell_id']}: {f['error']}", err=True)
        click.echo(f"rerun with --resume to retry the {len(res.failed)} failed cell(s).", err=True)
        return 1
    return 0


def _print_plan(plan: DryRun) -> None:
    """The dry run in plain text: cells, groups, steps, and the estimate with what it was calibrated on."""
    units = describe_units(plan.units)
    pending = plan.pending
    n_groups = sum(1 for u in units if u["group"])
    mode = f"--group {plan.group}: " + ("groups" if plan.grouping else "one by one")
    click.echo(
        f"sweep {plan.name} (dry run: nothing is written): {plan.n_cells} cells, "
        f"{plan.already_complete} already complete, {len(pending)} to compute"
    )
    click.echo(
        f"device {plan.device}, {plan.workers} worker(s) x {plan.threads} thread(s); {mode} "
        f"({n_groups} group(s), {len(units) - n_groups} cell(s) alone)"
    )
    click.echo("cells:")
    where = {cid: u["group"] or "-" for u in units for cid in u["cells"]}
    for r in pending:
        click.echo(
            f"  {r['cell_id']:64s} n={r['n_train']:<7d} steps={r['steps']:<6d} group={where[r['cell_id']]}"
        )
    if n_groups:
        click.echo("groups:")
        for u in units:
            if u["group"]:
                lo, hi = min(u["steps"]), max(u["steps"])
                steps = f"{lo}" if lo == hi else f"{lo}..{hi}"
                click.echo(
                    f"  {u['group']}: {len(u['cells'])} cells, {u['models']} models, {u['model']} on "
                    f"shape {tuple(u['shape'])}, steps {steps}"
                )
    click.echo(
        f"training steps: {plan.train_steps:,} (every model's steps; a reproducibility cell trains two)"
    )
    est = plan.estimate
    if est is None:
        return
    for c in est.calibration:
        rates = ", ".join(f"{m} model(s) {1000 * s:.2f} ms/step" for m, s in c["step_s"].items())
        click.echo(
            f"calibration: {c['model']} on {tuple(c['shape'])}, batch {c['batch']}: {rates}; "
            f"sampler {1e6 * c['forward_s_per_sample']:.2f} us per sample and step"
            + "".join(
                f"; {m} models sampled together {1e6 * v:.2f} us"
                for m, v in c.get("group_forward_s_per_sample", {}).items()
            )
        )
    click.echo(
        f"estimate: training {fmt_seconds(sum(est.train_s))}, audits {fmt_seconds(sum(est.audit_s))} "
        f"(probes at the documented rate of diffaudit.sweeps.groups), about {fmt_seconds(est.wall_s)} "
        f"wall on {plan.workers} worker(s); calibration took {est.calibration_s:.1f} s"
    )
