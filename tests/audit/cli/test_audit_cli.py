"""`diffaudit audit` end to end as a subprocess: the bad-input table of issue 5 and the gate exit codes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest


def _cmd(*args):
    return [sys.executable, "-m", "diffaudit", "audit", "--no-progress", *args]


def _env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


class _Evil:
    """Unpickling this would create the marker file (it must never run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    np.save(d / "train.npy", rng.standard_normal((60, 8)).astype(np.float32))
    np.save(d / "holdout.npy", rng.standard_normal((40, 8)).astype(np.float32))
    np.save(d / "gen.npy", rng.standard_normal((40, 8)).astype(np.float32))
    np.save(d / "empty.npy", np.zeros((0, 8), np.float32))
    nan = rng.standard_normal((40, 8)).astype(np.float32)
    nan[5, 3] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "gen6.npy", rng.standard_normal((40, 6)).astype(np.float32))
    np.save(d / "one.npy", rng.standard_normal((1, 8)).astype(np.float32))
    # float32 squared distances overflow: the memorizer's copies got ratio NaN and passed as 0 % copies
    np.save(d / "huge.npy", (rng.standard_normal((40, 8)) * 1e20).astype(np.float32))
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    marker = d / "PWNED"
    with open(d / "evil.pt", "wb") as f:
        torch.save({"x": torch.zeros(3, 8), "payload": _Evil(str(marker))}, f)
    (d / "file.txt").write_text("a regular file")
    return d


BAD = {
    "missing file": ["--model", "samples:{d}/nope.npy", "--train", "{d}/train.npy"],
    "empty array": ["--model", "samples:{d}/empty.npy", "--train", "{d}/train.npy"],
    "NaN samples": ["--model", "samples:{d}/nan.npy", "--train", "{d}/train.npy"],
    "dimension mismatch": ["--model", "samples:{d}/gen6.npy", "--train", "{d}/train.npy"],
    "single sample": ["--model", "samples:{d}/one.npy", "--train", "{d}/train.npy"],
    "values of 1e20": ["--model", "samples:{d}/huge.npy", "--train", "{d}/train.npy"],
    "training set of 1e20": ["--model", "samples:{d}/gen.npy", "--train", "{d}/huge.npy"],
    "unknown model spec": ["--model", "gan:{d}/gen.npy", "--train", "{d}/train.npy"],
    "unknown dataset": ["--model", "control:oracle", "--dataset", "no-such-data", "--n-train", "100"],
    "malformed gate": [
        "--model",
        "samples:{d}/gen.npy",
        "--train",
        "{d}/train.npy",
        "--gate",
        "copy_rate=<0.1",
    ],
    "gate on unknown key": [
        "--model",
        "samples:{d}/gen.npy",
        "--train",
        "{d}/train.npy",
        "--gate",
        "memorization.nope<=0.1",
    ],
    "corrupt npz": ["--model", "samples:{d}/corrupt.npz", "--train", "{d}/train.npy"],
    "pickled code in .pt": ["--model", "samples:{d}/evil.pt", "--train", "{d}/train.npy"],
    "unwritable output dir": [
        "--model",
        "samples:{d}/gen.npy",
        "--train",
        "{d}/train.npy",
        "--out",
        "{d}/file.txt/sub/report",
    ],
    "no training data": ["--model", "samples:{d}/gen.npy"],
    # numeric options out of range: checked at entry, before any work
    "zero sampler steps": [
        "--model",
        "control:gaussian",
        "--dataset",
        "hidden-manifold",
        "--n-train",
        "50",
        "--num-steps",
        "0",
    ],
    "one training sample": ["--model", "control:oracle", "--dataset", "hidden-manifold", "--n-train", "1"],
    "holdout fraction 1": [
        "--model",
        "samples:{d}/gen.npy",
        "--train",
        "{d}/train.npy",
        "--holdout-fraction",
        "1",
    ],
    "negative seed": ["--model", "samples:{d}/gen.npy", "--train", "{d}/train.npy", "--seed", "-1"],
    "one generated sample": [
        "--model",
        "samples:{d}/gen.npy",
        "--train",
        "{d}/train.npy",
        "--n-samples",
        "1",
    ],
}


def test_bad_inputs_exit_2_one_line_no_report(files, tmp_path):
    # run every case at once (each is its own process) to keep the wall time down
    procs = {}
    for name, args in BAD.items():
        work = tmp_path / name.replace(" ", "_").replace(".", "")
        work.mkdir()
        argv = [a.format(d=files) for a in args]
        if "--out" not in argv:
            argv += ["--out", str(work / "report")]
        procs[name] = (
            work,
            subprocess.Popen(
                _cmd(*argv), cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
        )
    for name, (work, p) in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, (name, out, err)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert "Traceback" not in err + out, name
        assert list(work.iterdir()) == [], (name, list(work.iterdir()))  # no report (nor reports/) left
    assert not (files / "PWNED").exists()  # the pickled payload never ran
    assert not (files / "file.txt" / "sub").exists()


def test_gate_exit_codes_and_report(files, tmp_path):
    base = [
        "--model",
        f"samples:{files}/gen.npy",
        "--train",
        f"{files}/train.npy",
        "--holdout",
        f"{files}/holdout.npy",
    ]
    ok = subprocess.run(
        _cmd(
            *base,
            "--gate",
            "memorization.copy_rate<=0.5",
            "--gate",
            "convergence.precision>=0",
            "--out",
            str(tmp_path / "a"),
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["schema"] == "diffaudit.report/1" and rep["inputs"]["n_generated"] == 40
    assert rep["verdict"]["generalization"] == "n/a"  # no synthetic dataset
    assert "verdicts" in ok.stdout
    bad = subprocess.run(
        _cmd(*base, "--gate", "memorization.copy_rate>=0.5", "--out", str(tmp_path / "b")),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1, bad.stderr
    assert (tmp_path / "b" / "report.json").is_file()  # a failed gate still writes the report
    assert "gates failed" in bad.stderr
    again = subprocess.run(
        _cmd(*base, "--out", str(tmp_path / "a")), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 2 and "already exists" in again.stderr
