"""``diffaudit audit``: audit one model before release; exit code for CI gates (cheap to import)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import click

from diffaudit.errors import DiffauditError

GATE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def parse_gate(expr: str) -> tuple[str, str, float]:
    """``'memorization.copy_rate<=0.001'`` -> ``("memorization.copy_rate", "<=", 0.001)``; checks the key."""
    from diffaudit.report.writer import gate_keys

    m = GATE_RE.match(str(expr))
    if not m:
        raise DiffauditError(
            f"gate {expr!r} is malformed; write GROUP.METRIC OP NUMBER with OP one of < <= > >=, "
            "e.g. 'memorization.copy_rate<=0.001'.")
    key = f"{m.group(1)}.{m.group(2)}"
    valid = gate_keys()
    if key not in valid and not re.fullmatch(r"factors\.w1_[A-Za-z0-9_]+", key):
        raise DiffauditError(f"gate {expr!r} names unknown metric {key!r}; valid keys: {', '.join(valid)}.")
    return key, m.group(3), float(m.group(4))


def evaluate_gates(report: dict, gates: list[tuple[str, str, float]]) -> list[dict]:
    """Each gate -> {"gate", "value", "passed"}. A gate on a metric that was not measured fails."""
    from diffaudit.report.writer import lookup

    out = []
    for key, op, thr in gates:
        v = lookup(report, key)
        ok = v is not None and OPS[op](v, thr)
        out.append({"gate": f"{key}{op}{thr:g}", "key": key, "value": v, "passed": bool(ok)})
    return out


def check_out_dir(out: Path) -> None:
    """Fail early (before any work) when ``out`` exists or cannot be created."""
    if out.exists():
        raise DiffauditError(f"output folder {out} already exists; pass another --out or remove it.")
    p = out.parent
    while not p.exists():
        if p == p.parent:
            break
        p = p.parent
    if not p.is_dir():
        raise DiffauditError(f"output folder {out} cannot be created: {p} is a file, not a folder; pass a writable --out.")
    if not os.access(p, os.W_OK | os.X_OK):
        raise DiffauditError(f"output folder {out} cannot be created: {p} is not writable; pass a writable --out.")


def print_summary(report: dict, gate_results: list[dict], out_dir: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    colour = {"pass": "green", "fail": "red"}
    t = Table(title="diffaudit verdicts", show_lines=False)
    t.add_column("threshold")
    t.add_column("verdict")
    t.add_column("why")
    for k in ("convergence", "generalization", "memorization"):
        v = report["verdict"][k]
        t.add_row(k, f"[{colour.get(v, 'yellow')}]{v}[/]", report["reasons"].get(k, ""), )
    con.print(t)
    m = Table(title="key metrics")
    m.add_column("metric")
    m.add_column("value", justify="right")
    m.add_column("95 % interval", justify="right")
    for g, grp in report["probes"].items():
        for k, v in grp.items():
            if v is None:
                continue
            ci = f"[{v['ci'][0]:.4g}, {v['ci'][1]:.4g}]" if v.get("ci") else ""
            m.add_row(f"{g}.{k}", f"{v['value']:.4g}", ci)
    con.print(m)
    if gate_results:
        g = Table(title="gates")
        g.add_column("gate")
        g.add_column("value", justify="right")
        g.add_column("result")
        for r in gate_results:
            g.add_row(r["gate"], "n/a" if r["value"] is None else f"{r['value']:.4g}",
                      "[green]pass[/]" if r["passed"] else "[red]FAIL[/]")
        con.print(g)
    tm = report["timings"]
    con.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in tm.items()), markup=False, highlight=False)
    if out_dir is not None:
        con.print(f"report: {out_dir / 'report.html'}", markup=False, highlight=False)


@click.command("audit", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_spec", required=True, metavar="SPEC",
              help="samples:PATH | entry:pkg.module:factory | ckpt:PATH | diffusers:PATH | control:oracle|gaussian|memorizer")
@click.option("--dataset", "dataset_spec", metavar="SPEC", help="synthetic dataset, e.g. hidden-manifold:d=32 (with --n-train, or to add factor probes to --train data)")
@click.option("--n-train", type=int, help="training-set size drawn from --dataset (seed --seed)")
@click.option("--train", "train_path", metavar="PATH", help="training samples (.npy/.npz/.pt/.safetensors or image folder)")
@click.option("--holdout", "holdout_path", metavar="PATH", help="held-out real samples never used in training")
@click.option("--holdout-fraction", type=float, default=0.0, show_default=True,
              help="with --train and no --holdout: split this share off as holdout (only if the model never saw it)")
@click.option("--n-holdout", type=int, help="holdout size drawn from --dataset (default: --n-samples)")
@click.option("--features", default="pixels", show_default=True, help="pixels | pixels:K | inception | clip:ARCH | dinov2 | oracle")
@click.option("--weights", metavar="PATH", help="feature-network weights file (inception/clip/dinov2)")
@click.option("--n-samples", type=int, help="generated samples (default: all pre-generated samples, else 2000)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="model sampling seed (data: 3 seed + 1, 3 seed + 2)")
@click.option("--num-steps", type=int, help="Heun sampler steps for denoiser models (default 32)")
@click.option("--n-boot", type=click.IntRange(min=0), help="bootstrap resamples of the train-vs-holdout FD floor "
              "(default 10, skipped above 1024 feature dims; an explicit value applies at any dimension)")
@click.option("--gate", "gates", multiple=True, metavar="EXPR", help="release gate, e.g. 'memorization.copy_rate<=0.001' (repeatable)")
@click.option("--out", "out", metavar="DIR", help="report folder (default reports/<timestamp>-<model>)")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--no-progress", is_flag=True, help="no progress bars")
def audit_cmd(model_spec, dataset_spec, n_train, train_path, holdout_path, holdout_fraction, n_holdout, features,
              weights, n_samples, seed, num_steps, n_boot, gates, out, device, no_progress):
    """Audit a model for both thresholds and memorization; write a report folder.

    \b
    Examples:
      diffaudit audit --model control:gaussian --dataset hidden-manifold --n-train 2000
      diffaudit audit --model samples:gen.npy --train train.npy --holdout test.npy \\
          --gate 'memorization.copy_rate<=0.001' --gate 'convergence.fd<=5'
      diffaudit audit --model ckpt:runs/mlp --dataset hidden-manifold --n-train 4096

    Exit status: 0 all gates pass, 1 a gate fails, 2 a user mistake.
    """
    t0 = time.perf_counter()
    parsed = [parse_gate(g) for g in gates]  # before anything runs
    if train_path is None and (dataset_spec is None or n_train is None):
        raise DiffauditError("pass the training data: --dataset SPEC --n-train N, or --train PATH [--holdout PATH].")
    if train_path is not None and n_train is not None:
        raise DiffauditError("pass either --dataset SPEC --n-train N or --train PATH, not both (--dataset with --train adds factor probes; drop --n-train).")
    if holdout_path and train_path is None:
        raise DiffauditError("--holdout goes with --train PATH; with --dataset the holdout is drawn from the dataset.")
    kind = model_spec.partition(":")[0].strip().lower()
    if kind not in ("samples", "entry", "ckpt", "diffusers", "control") or not model_spec.partition(":")[2].strip():
        from diffaudit.models.adapters import FORMS

        raise DiffauditError(f"model spec {model_spec!r} is not understood; use one of: {', '.join(FORMS)}.")
    for name, v in (("--n-samples", n_samples), ("--n-train", n_train), ("--n-holdout", n_holdout)):
        if v is not None and v < 2:
            raise DiffauditError(f"{name} {v}: needs at least 2 samples.")
    from diffaudit.features import get_embedder  # noqa: F401  (fail fast on a broken install)
    from diffaudit.report.writer import default_out_dir

    out_dir = Path(out) if out else default_out_dir(model_spec)
    check_out_dir(out_dir)

    from diffaudit.models.adapters import load_model
    from diffaudit.pipeline.run import AuditConfig, data_seeds, dataset_split, run_audit

    dataset = None
    if dataset_spec:
        from diffaudit.datasets.base import get_dataset

        dataset = get_dataset(dataset_spec)
    cfg = AuditConfig(features=features, n_samples=n_samples, seed=seed, holdout_fraction=holdout_fraction,
                      device=device, weights=weights, progress=not no_progress)
    if n_boot is not None:
        cfg.n_boot, cfg.boot_max_dim = n_boot, 1 << 30
    train_z = holdout_z = None
    if train_path:
        from diffaudit.datasets.loading import load_samples

        train = load_samples(train_path, name=f"training set {train_path}")
        holdout = load_samples(holdout_path, name=f"holdout set {holdout_path}") if holdout_path else None
        provenance = {"train": str(train_path), "holdout": None if holdout_path is None else str(holdout_path)}
    else:
        nh = n_holdout or n_samples or 2000
        train, train_z, holdout, holdout_z = dataset_split(dataset, n_train, nh, seed)
        s_train, s_hold = data_seeds(seed)
        provenance = {"train": f"{dataset.spec} n={n_train} seed={s_train}", "holdout": f"{dataset.spec} n={nh} seed={s_hold}"}
    model = load_model(model_spec, train=train, dataset=dataset, device=device, num_steps=num_steps)
    report = run_audit(model, train=train, holdout=holdout, dataset=dataset, config=cfg, out_dir=out_dir,
                       model_spec=model_spec, inputs=provenance, train_z=train_z, holdout_z=holdout_z,
                       timings={"load": round(time.perf_counter() - t0, 4)})
    results = evaluate_gates(report, parsed)
    print_summary(report, results, out_dir)
    if any(not r["passed"] for r in results):
        click.echo(f"gates failed: {', '.join(r['gate'] for r in results if not r['passed'])}", err=True)
        return 1
    return 0
