"""``diffaudit demo``: the whole story on built-in synthetic data (logic in ``diffaudit.pipeline.demo``)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from diffaudit.fileio import check_out_dir
from diffaudit.pipeline.demo import run_demo
from diffaudit.report import schema


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out", metavar="DIR", help="output folder (default reports/demo-<timestamp>)")
@click.option("--no-progress", is_flag=True, help="no progress bars")
def demo_cmd(out, no_progress):
    """Audit the analytic controls on hidden-manifold and 16x16 sprites, then train and audit two small
    EDM models at n = 16 and n = 2048 (CPU, a few minutes).

    \b
    Example:
      diffaudit demo --out reports/demo
    """
    out_dir = Path(out) if out else Path("reports") / f"demo-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    if not (out_dir.is_dir() and not any(out_dir.iterdir())):
        check_out_dir(out_dir)
    con = Console()
    t0 = time.perf_counter()
    con.print(
        "diffaudit demo: auditing analytic controls on 2 datasets, then training 2 small EDM models",
        markup=False,
        highlight=False,
    )
    entries = run_demo(
        out_dir, progress=not no_progress, echo=lambda s: con.print(s, markup=False, highlight=False)
    )
    colour = {"pass": "green", "fail": "red"}
    t = Table(title=f"diffaudit demo ({time.perf_counter() - t0:.0f} s)")
    t.add_column("model", no_wrap=True)
    for c in ("threshold 1 (convergence)", "threshold 2 (generalization)", "memorization"):
        t.add_column(c)
    for e in entries:
        v = e["verdict"]
        t.add_row(e["name"], *(f"[{colour.get(v[k], 'yellow')}]{v[k]}[/]" for k in schema.VERDICTS))
    con.print(t)
    con.print("In plain words:", markup=False, highlight=False)
    for e in entries:
        con.print(
            f"  [{e['name'].split('/')[0]}] {e['summary']}", markup=False, highlight=False, soft_wrap=True
        )
    con.print(f"index: {out_dir / 'index.html'}", markup=False, highlight=False)
    return 0
