"""An unwritable --out is refused before any work (one ``error:`` line, exit 2), not with a traceback after the
run; ``diffaudit audit --extraction-budget`` sets (or, at 0, skips) the extraction attack."""

import json
import os
import subprocess
import sys

import pytest


def run(cmd, *args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "diffaudit", cmd, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=cwd,
    )


ARGS = {
    "extract": ["--model", "control:memorizer", "--dataset", "sprites", "--n-train", "20", "--budget", "10"],
    "audit": ["--model", "control:memorizer", "--dataset", "sprites", "--n-train", "20", "--n-samples", "20",
              "--no-progress"],
}  # fmt: skip


@pytest.mark.parametrize("cmd", ["extract", "audit"])
@pytest.mark.parametrize("out", ["/proc/diffaudit-test/out", "/proc/diffaudit-test"])
def test_unwritable_out_is_one_error_line_before_any_work(cmd, out):
    r = run(cmd, *ARGS[cmd], "--out", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "cannot be created" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""  # nothing ran: no progress, no summary


def test_audit_extraction_budget_option(tmp_path):
    out = tmp_path / "r"
    small = [
        *ARGS["audit"],
        "--n-holdout",
        "100",
    ]  # the default 2,000 held-out sprites cost 10 s per audit here
    r = run("audit", *small, "--extraction-budget", "30", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    d = rep["details"]["extraction"]
    assert d["budget"] == 30 and d["reused_samples"] == 20 and d["drawn_samples"] == 10
    r = run("audit", *small, "--extraction-budget", "0", "--out", str(tmp_path / "r0"))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r0" / "report.json").read_text())
    (why,) = [s["reason"] for s in rep["skipped"] if s["probe"] == "extraction"]
    assert "--extraction-budget 0" in why and rep["probes"]["memorization"]["unique_extracted"] is None
    r = run("audit", *ARGS["audit"], "--extraction-budget", "-1", "--out", str(tmp_path / "r1"))
    assert r.returncode == 2 and "extraction-budget" in r.stderr
