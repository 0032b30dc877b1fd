"""`diffaudit train --dataset` then `diffaudit audit --model ckpt:` with the same --dataset/--n-train/--seed:
the audit must check the model against the very items it was trained on (train drew another set before)."""

import json
import subprocess
import sys


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "diffaudit", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_a_cli_trained_checkpoint_is_audited_against_its_own_training_set(tmp_path):
    ck = tmp_path / "ck"
    data = ["--dataset", "hidden-manifold:d=8,D=2", "--n-train", "64"]
    p = _run(
        "train",
        *data,
        "--model",
        "mlp:width=32,depth=2",
        "--steps",
        "30",
        "--seed",
        "1",
        "--out",
        ck,
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    trained_on = json.loads((ck / "config.json").read_text())["train_sha256"]
    audit = [
        "audit",
        "--model",
        f"ckpt:{ck}",
        *data,
        "--n-samples",
        "64",
        "--num-steps",
        "4",
        "--no-progress",
    ]
    p = _run(*audit, "--seed", "1", "--out", tmp_path / "same")
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "same" / "report.json").read_text())
    assert rep["inputs"]["hashes"]["train"] == trained_on
    assert not [w for w in rep["warnings"] if "different training set" in w]
    # audited against another draw (another --seed): said plainly, in the report and on the terminal
    p = _run(*audit, "--seed", "2", "--out", tmp_path / "other")
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "other" / "report.json").read_text())
    assert rep["inputs"]["hashes"]["train"] != trained_on
    assert [w for w in rep["warnings"] if "different training set" in w]
    assert "different training set" in p.stdout + p.stderr
