"""``diffaudit audit``: audit one model before release; exit code for CI gates."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from diffaudit.datasets.prompts import load_prompts
from diffaudit.errors import DiffauditError
from diffaudit.fileio import check_out_dir
from diffaudit.models.adapters import FORMS, check_spec, load_model, model_name
from diffaudit.models.controls import CONTROLS
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit_on
from diffaudit.pipeline.setup import audit_data, load_labels, n_classes_of, prompt_data
from diffaudit.pipeline.verdicts import evaluate_gates, parse_gate
from diffaudit.report import schema


def print_summary(report: dict, gate_results: list[dict], out_dir: Path | None) -> None:
    con = Console()
    colour = {"pass": "green", "fail": "red"}
    t = Table(title="diffaudit verdicts", show_lines=False)
    t.add_column("threshold")
    t.add_column("verdict")
    t.add_column("why")
    for k in schema.VERDICTS:
        v = report["verdict"][k]
        t.add_row(
            k,
            f"[{colour.get(v, 'yellow')}]{v}[/]",
            report["reasons"].get(k, ""),
        )
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
            g.add_row(
                r["gate"],
                "n/a" if r["value"] is None else f"{r['value']:.4g}",
                "[green]pass[/]" if r["passed"] else "[red]FAIL[/]",
            )
        con.print(g)
    if report.get("conditions"):
        c = Table(title=f"per {report['inputs']['condition']['kind'].rstrip('s')}")
        for col in ("condition", "n train", "n gen", *schema.VERDICTS, "copy rate"):
            c.add_column(col, justify="right" if col.startswith(("n ", "copy")) else "left")
        for e in report["conditions"]:
            cr = e["metrics"].get("memorization.copy_rate")
            c.add_row(
                str(e["condition"])[:40],
                str(e["n_train"]),
                str(e["n_generated"]),
                *(f"[{colour.get(e['verdict'][k], 'yellow')}]{e['verdict'][k]}[/]" for k in schema.VERDICTS),
                "" if cr is None else f"{cr['value']:.3f}",
            )
        con.print(c)
    for w in report.get("warnings", []):
        con.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    tm = report["timings"]
    con.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in tm.items()), markup=False, highlight=False)
    if out_dir is not None:
        con.print(f"report: {out_dir / 'report.html'}", markup=False, highlight=False)


@click.command("audit", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    "model_spec",
    required=True,
    metavar="SPEC",
    help="the model: " + " | ".join(FORMS) + " (control NAME: " + ", ".join(CONTROLS) + ")",
)
@click.option(
    "--dataset",
    "dataset_spec",
    metavar="SPEC",
    help="synthetic dataset, e.g. hidden-manifold:d=32 (with --n-train, or to add factor probes to --train data)",
)
@click.option(
    "--n-train", type=click.IntRange(min=2), help="training-set size drawn from --dataset (seed --seed)"
)
@click.option(
    "--train",
    "train_path",
    metavar="PATH",
    help="training samples (.npy/.npz/.pt/.safetensors or image folder)",
)
@click.option(
    "--holdout", "holdout_path", metavar="PATH", help="held-out real samples never used in training"
)
@click.option(
    "--holdout-fraction",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="with --train and no --holdout: split this share off as holdout (only if the model never saw it)",
)
@click.option(
    "--n-holdout",
    type=click.IntRange(min=2),
    help="holdout size drawn from --dataset (default: max(--n-samples, 2000))",
)
@click.option(
    "--features",
    default="pixels",
    show_default=True,
    help="pixels | pixels:K | inception | clip:ARCH | dinov2 | oracle",
)
@click.option("--weights", metavar="PATH", help="feature-network weights file (inception/clip/dinov2)")
@click.option(
    "--n-samples",
    type=click.IntRange(min=2),
    help="generated samples (default: all pre-generated samples, else 2000)",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="model sampling seed (data: 3 seed + 1, 3 seed + 2)",
)
@click.option(
    "--num-steps", type=click.IntRange(min=1), help="Heun sampler steps for denoiser models (default 32)"
)
@click.option(
    "--n-boot",
    type=click.IntRange(min=0),
    help="bootstrap resamples of the train-vs-holdout FD floor "
    "(default 10, skipped above 1024 feature dims; an explicit value applies at any dimension)",
)
@click.option(
    "--extraction-budget",
    type=click.IntRange(min=0),
    help="generations the extraction attack spends: the audit's samples first, more drawn if it has fewer "
    "(default 1000; 0 skips the attack)",
)
@click.option(
    "--gate",
    "gates",
    multiple=True,
    metavar="EXPR",
    help="release gate, e.g. 'memorization.copy_rate<=0.001' (repeatable)",
)
@click.option(
    "--condition",
    type=click.Choice(["labels", "prompts"]),
    help="audit a conditional model per condition: 'labels' (class-conditional; labels from the dataset's "
    "discrete factor or --train-labels) or 'prompts' (text-to-image; --prompts FILE)",
)
@click.option(
    "--train-labels", metavar="PATH", help="class label of each --train row (.npy or one integer per line)"
)
@click.option(
    "--holdout-labels",
    metavar="PATH",
    help="class label of each --holdout row (.npy or one integer per line)",
)
@click.option(
    "--sample-labels",
    metavar="PATH",
    help="the class of each generated sample (default: balanced, sample i gets class i mod K)",
)
@click.option(
    "--prompts",
    "prompts_path",
    metavar="PATH",
    help="prompts of a text-to-image audit: one per line, or JSONL with prompt, optional image and memorized",
)
@click.option(
    "--guidance",
    type=click.FloatRange(min=0.0),
    help="classifier-free guidance scale of a conditional model (default 1 = the plain conditional model for "
    "labels, 7.5 for prompts)",
)
@click.option("--out", "out", metavar="DIR", help="report folder (default reports/<timestamp>-<model>)")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--no-progress", is_flag=True, help="no progress bars")
def audit_cmd(
    model_spec,
    dataset_spec,
    n_train,
    train_path,
    holdout_path,
    holdout_fraction,
    n_holdout,
    features,
    weights,
    n_samples,
    seed,
    num_steps,
    n_boot,
    extraction_budget,
    gates,
    condition,
    train_labels,
    holdout_labels,
    sample_labels,
    prompts_path,
    guidance,
    out,
    device,
    no_progress,
):
    """Audit a model for both thresholds and memorization; write a report folder.

    \b
    Examples:
      diffaudit audit --model control:gaussian --dataset hidden-manifold --n-train 2000
      diffaudit audit --model samples:gen.npy --train train.npy --holdout test.npy \\
          --gate 'memorization.copy_rate<=0.001' --gate 'convergence.fd<=5'
      diffaudit audit --model ckpt:runs/mlp --dataset hidden-manifold --n-train 4096

    Exit status: 0 all gates pass (report written), 1 a gate fails, 2 a user mistake, 3 the model's own code
    failed (it raised, exited or returned bad samples; DIFFAUDIT_DEBUG=1 shows its traceback).
    """
    t0 = time.perf_counter()
    parsed = [parse_gate(g) for g in gates]  # before anything runs
    check_condition_options(
        condition,
        train_path,
        holdout_path,
        train_labels,
        holdout_labels,
        prompts_path,
        sample_labels,
        n_train,
    )
    if train_path is None and (dataset_spec is None or n_train is None) and condition != "prompts":
        raise DiffauditError(
            "pass the training data: --dataset SPEC --n-train N, or --train PATH [--holdout PATH]."
        )
    if train_path is not None and n_train is not None:
        raise DiffauditError(
            "pass either --dataset SPEC --n-train N or --train PATH, not both "
            "(--dataset with --train adds factor probes; drop --n-train)."
        )
    if holdout_path and train_path is None and condition != "prompts":
        raise DiffauditError(
            "--holdout goes with --train PATH; with --dataset the holdout is drawn from the dataset."
        )
    check_spec(model_spec)  # before any data are read: a mistyped spec fails at once
    cfg = AuditConfig(
        features=features,
        n_samples=n_samples,
        seed=seed,
        holdout_fraction=holdout_fraction,
        device=device,
        weights=weights,
        progress=not no_progress,
        condition=condition,
        guidance=guidance,
        **({} if extraction_budget is None else {"extraction_budget": extraction_budget}),
    ).check()
    if guidance is None and condition is not None:
        cfg.guidance = DEFAULT_GUIDANCE[condition]
    if n_boot is not None:
        cfg.n_boot, cfg.boot_max_dim = n_boot, 1 << 30
    out_dir = check_out_dir(Path(out) if out else default_out_dir(model_spec))
    if condition == "prompts":
        data = prompt_data(load_prompts(prompts_path), train_path, holdout_path, dataset_spec)
    else:
        data = audit_data(
            dataset_spec,
            n_train,
            n_holdout,
            train_path,
            holdout_path,
            n_samples=n_samples,
            seed=seed,
            train_labels=train_labels,
            holdout_labels=holdout_labels,
        )
    labels = data.train_labels if condition == "labels" else None
    if condition == "labels" and labels is None:
        raise DiffauditError(
            f"--condition labels: the training data have no class labels; use a --dataset with a discrete factor "
            f"(sprites, digits, molrg) or pass --train-labels FILE{'' if data.dataset is None else ' (' + data.dataset.spec + ' has none)'}."
        )
    sample_lab = None if sample_labels is None else load_labels(sample_labels, n_samples, "--sample-labels")
    model = load_model(
        model_spec,
        train=data.train,
        dataset=data.dataset,
        device=device,
        num_steps=num_steps,
        train_labels=labels,
        n_classes=None if labels is None else n_classes_of(data),
        class_names=data.class_names,
        guidance=1.0 if cfg.guidance is None else cfg.guidance,
    )
    report = run_audit_on(
        model,
        data,
        config=cfg,
        out_dir=out_dir,
        model_spec=model_spec,
        timings={"load": round(time.perf_counter() - t0, 4)},
        sample_labels=sample_lab,
    )
    results = evaluate_gates(report, parsed)
    print_summary(report, results, out_dir)
    if any(not r["passed"] for r in results):
        click.echo(f"gates failed: {', '.join(r['gate'] for r in results if not r['passed'])}", err=True)
        return 1
    return 0


DEFAULT_GUIDANCE = {"labels": 1.0, "prompts": 7.5}  # the plain conditional model; Stable Diffusion's default


def check_condition_options(
    condition,
    train_path,
    holdout_path,
    train_labels,
    holdout_labels,
    prompts_path,
    sample_labels=None,
    n_train=None,
):
    """The conditional options that go together, checked before any data are read (one sentence each)."""
    if condition != "labels":
        for flag, v in (("--train-labels", train_labels), ("--holdout-labels", holdout_labels)):
            if v is not None:
                raise DiffauditError(f"{flag} goes with --condition labels; add it or drop {flag}.")
    if condition != "prompts" and prompts_path is not None:
        raise DiffauditError("--prompts goes with --condition prompts; add it or drop --prompts.")
    if condition == "prompts" and prompts_path is None:
        raise DiffauditError("--condition prompts needs --prompts FILE (one prompt per line, or JSONL).")
    if condition == "prompts" and n_train is not None:
        raise DiffauditError(
            "--n-train draws a synthetic training set; a prompt audit's training images come from the prompts "
            "file (and --train PATH): drop --n-train."
        )
    if train_labels is not None and train_path is None:
        raise DiffauditError(
            "--train-labels goes with --train PATH; with --dataset the labels come from its discrete factor."
        )
    if holdout_labels is not None and holdout_path is None:
        raise DiffauditError("--holdout-labels goes with --holdout PATH; pass the held-out samples too.")


def default_out_dir(model_spec: str, root: str = "reports") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(root) / f"{stamp}-{model_name(model_spec)}"
