"""The one progress display (``diffaudit.progress``): stderr only, nothing when disabled."""

from __future__ import annotations

from diffaudit.features import base
from diffaudit.progress import progress_bar, progress_display


def test_progress_bar_disabled_builds_nothing(capfd):
    with progress_bar(10, False, "oracle") as adv:
        assert adv is None
    assert capfd.readouterr() == ("", "")


def test_progress_bar_enabled_leaves_stdout_alone(capfd):
    with progress_bar(5, True, "oracle") as adv:
        adv(2)
        adv(3)
    assert capfd.readouterr().out == ""
    assert base.progress_bar is progress_bar  # the extractors' import still reaches the one helper


def test_label_is_shown_as_given(capfd):
    """Braces (str.format) and brackets (rich markup) in a label are printed verbatim."""
    with progress_display("pix{els}[x]", transient=False) as prog:
        prog.advance(prog.add_task("", total=2), 2)
    assert "pix{els}[x]" in capfd.readouterr().err


def test_progress_display_sweep_style(capfd):
    """A kept (non-transient) bar ends on stderr with its label, the count and the last note."""
    with progress_display("sweep", transient=False) as prog:
        task = prog.add_task("", total=3)
        for cell in ("a", "b", "cell-c"):
            prog.update(task, advance=1, description=cell)
    out, err = capfd.readouterr()
    assert out == "" and "sweep" in err and "3/3" in err and "cell-c" in err
    # disabled: no bar, but messages printed through its console still reach stderr
    with progress_display("sweep", enabled=False) as prog:
        prog.add_task("", total=1)
        prog.console.print("cell x failed")
    out, err = capfd.readouterr()
    assert out == "" and "cell x failed" in err and "0/1" not in err
