"""The one progress display of diffaudit (leaf module: imports nothing of ours).

Feature extraction, the audit stages and sweeps all show the same rich columns on stderr, so that stdout
stays free for results a user pipes on, and a long step looks the same wherever it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_display(label: str | None = None, *, enabled: bool = True, transient: bool = True) -> Progress:
    """A rich ``Progress`` on stderr: spinner, name in bold, bar, done/total, elapsed, eta.

    The name is ``label`` when given (and each task's description then follows the bar as a note, e.g. the
    cell a sweep just finished), else each task's own description (one line per task, e.g. audit stages).
    ``enabled=False`` draws nothing, while ``.console.print`` still reaches stderr; ``transient=True``
    removes the bars when the display stops.
    """
    # str.format runs on a TextColumn's text before rich markup does: escape both
    name = "{task.description}" if label is None else escape(label).replace("{", "{{").replace("}", "}}")
    columns = [
        SpinnerColumn(),
        TextColumn(f"[bold]{name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    if label is not None:
        columns.append(TextColumn("{task.description}"))
    return Progress(*columns, console=Console(stderr=True), transient=transient, disable=not enabled)


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool, label: str) -> Iterator[Callable[[int], None] | None]:
    """One transient bar of ``total`` steps named ``label``; yields ``advance(k)``, or ``None`` when
    disabled (then nothing is built or drawn)."""
    if not enabled:
        yield None
        return
    with progress_display(label) as prog:
        task = prog.add_task("", total=total)
        yield lambda k: prog.advance(task, k)
