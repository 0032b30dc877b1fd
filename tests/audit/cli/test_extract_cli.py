"""`diffaudit extract` end to end as a subprocess: the written folder, and the bad-input table of issue 12
(one ``error:`` line, exit 2, no output folder left behind)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffaudit.probes.extraction import coupon_collector


def run(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "diffaudit", "extract", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    train = rng.standard_normal((40, 8)).astype(np.float32)
    np.save(d / "train.npy", train)
    np.save(d / "holdout.npy", rng.standard_normal((200, 8)).astype(np.float32))
    np.save(d / "gen.npy", train[rng.integers(0, 40, 30)])  # 30 pre-generated copies
    np.save(d / "gen6.npy", rng.standard_normal((100, 6)).astype(np.float32))
    return d


def test_memorizer_images_write_json_and_gallery(tmp_path):
    out = tmp_path / "ex"
    r = run("--model", "control:memorizer", "--dataset", "sprites:size=16", "--n-train", "50", "--budget", "100",
            "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "extracted" in r.stdout and "extraction.json" in r.stdout
    s = json.loads((out / "extraction.json").read_text())
    assert s["budget"] == 100 and s["n_train"] == 50
    mean, var = coupon_collector(50, 100, 2)
    assert abs(s["unique_train_extracted"] - mean) < 4 * np.sqrt(var)
    assert s["cost_per_item"] == pytest.approx(100 / s["unique_train_extracted"])
    curve = s["yield_curve"]
    assert curve[-1] == {
        "budget": 100,
        "extracted": s["unique_train_extracted"],
        "copied": s["unique_train_copied"],
    }
    assert all(a["extracted"] <= b["extracted"] for a, b in zip(curve, curve[1:], strict=False))
    assert s["gallery_png"] == "gallery.png" and (out / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    assert len(s["gallery"]) == min(16, s["unique_train_extracted"])
    assert {e["train_index"] for e in s["extracted"]} >= {g["train_index"] for g in s["gallery"]}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_pre_generated_samples_and_vectors_give_a_table(files, tmp_path):
    out = tmp_path / "ex"
    r = run("--model", f"samples:{files}/gen.npy", "--train", f"{files}/train.npy", "--holdout",
            f"{files}/holdout.npy", "--budget", "30", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "extraction.json").read_text())
    # 30 draws of 40 items: the items drawn twice are extracted, the ones drawn at least once copied
    gen, train = np.load(files / "gen.npy"), np.load(files / "train.npy")
    src = [int(np.argmin(((train - g) ** 2).sum(1))) for g in gen]
    counts = np.bincount(src, minlength=40)
    assert s["unique_train_extracted"] == int((counts >= 2).sum())
    assert s["unique_train_copied"] == int((counts >= 1).sum())
    assert s["gallery_png"] is None and not (out / "gallery.png").exists()
    assert s["calibration"]["rule"] == "ratio_and_holdout"


def test_oracle_extracts_nothing(tmp_path):
    out = tmp_path / "ex"
    r = run("--model", "control:oracle", "--dataset", "hidden-manifold:d=16", "--n-train", "100", "--budget",
            "400", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "extraction.json").read_text())
    assert s["unique_train_extracted"] == 0 and s["cost_per_item"] is None  # bound B^2 q^2 / 2n = 0.08


BAD = {
    "budget 0": (["--model", "control:memorizer", "--dataset", "sprites", "--n-train", "20", "--budget", "0"],
                 "budget"),
    "negative budget": (["--model", "control:memorizer", "--dataset", "sprites", "--n-train", "20", "--budget",
                         "-5"], "budget"),
    "file shorter than budget": (["--model", "samples:{d}/gen.npy", "--train", "{d}/train.npy", "--budget", "31"],
                                 "30 samples"),
    "shape mismatch": (["--model", "samples:{d}/gen6.npy", "--train", "{d}/train.npy", "--budget", "10"],
                       "shape"),
    "no training data": (["--model", "control:memorizer", "--budget", "10"], "training data"),
    "unknown model": (["--model", "control:nope", "--dataset", "sprites", "--n-train", "20", "--budget", "10"],
                      "unknown control"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line_and_no_folder(case, files, tmp_path):
    args, needle = BAD[case]
    out = tmp_path / "ex"
    r = run(*[a.format(d=files) for a in args], "--out", str(out))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # no output folder, no temp folder


def test_existing_out_folder_is_refused(files, tmp_path):
    out = tmp_path / "ex"
    out.mkdir()
    r = run("--model", f"samples:{files}/gen.npy", "--train", f"{files}/train.npy", "--budget", "10", "--out",
            str(out))  # fmt: skip
    assert r.returncode == 2 and "already exists" in r.stderr and list(out.iterdir()) == []
