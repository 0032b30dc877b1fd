"""Atomic writes (diffaudit.fileio): leftovers of a writer killed with SIGKILL are removed by the next write."""

import os
import signal
import subprocess
import sys
import textwrap

from diffaudit.fileio import atomic_directory, atomic_write_text, clean_stale

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from diffaudit.fileio import atomic_directory
    with atomic_directory(sys.argv[1]) as tmp:
        (tmp / "report.json").write_text("{}")  # half-way through the report...
        os.kill(os.getpid(), signal.SIGKILL)  # ...kill -9: no finally/except runs
    """
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_writer_killed_mid_write_leaves_a_temp_folder_that_the_next_write_removes(tmp_path):
    out = tmp_path / "reports"
    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out / "run1")], capture_output=True)
    assert p.returncode == -signal.SIGKILL
    stale = _leftovers(out)
    assert len(stale) == 1 and stale[0].startswith(".run1.") and stale[0].endswith(".tmp")
    assert not (out / "run1").exists()  # never a half-written result under the final name
    with atomic_directory(out / "run2") as tmp:  # any later write into the same folder cleans up
        (tmp / "report.json").write_text("{}")
    assert _leftovers(out) == [] and (out / "run2" / "report.json").exists()


def test_temp_names_of_live_processes_and_foreign_names_are_kept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        )
        dead_pid = int(dead.stdout)
        from diffaudit.fileio import _host

        names = {
            f".a.{_host()}-{live.pid}.abcd1234.tmp": True,  # a live writer: kept
            f".b.{_host()}-{os.getpid()}.abcd1234.tmp": True,  # this process: kept
            f".c.otherhost-{dead_pid}.abcd1234.tmp": True,  # another host (network filesystem): kept
            f".d.{_host()}-{dead_pid}.abcd1234.tmp": False,  # gone on this host: removed
            f".e.{_host()}-{dead_pid}.abcd1234.tmp.parquet": False,  # an atomic_path file: removed
            f".f.{_host()}-{dead_pid}.abcd1234.old": False,  # an overwrite's moved-aside folder: removed
            ".g.1234.tmp": True,  # not our naming: kept
            f"h.{_host()}-{dead_pid}.abcd1234.tmp": True,  # not hidden: not ours, kept
        }
        for name in names:
            if name.endswith(".parquet"):
                (tmp_path / name).write_bytes(b"x")
            else:
                (tmp_path / name).mkdir()
                (tmp_path / name / "f").write_text("x")
        removed = {p.name for p in clean_stale(tmp_path)}
        assert removed == {n for n, keep in names.items() if not keep}
        assert {p.name for p in tmp_path.iterdir()} == {n for n, keep in names.items() if keep}
        atomic_write_text(tmp_path / "x.json", "{}")  # a file write cleans too, and leaves nothing of its own
        assert {p.name for p in tmp_path.iterdir()} == {n for n, keep in names.items() if keep} | {"x.json"}
    finally:
        live.kill()
        live.wait()
