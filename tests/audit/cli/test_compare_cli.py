"""``diffaudit compare``: run as a subprocess like a user; numbers checked against the probes called directly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffaudit.errors import DiffauditError
from diffaudit.probes import convergence as cv
from diffaudit.probes import moment_error as me


def run_cli(*args, cwd=None):
    env = dict(os.environ, COLUMNS="160")
    return subprocess.run(
        [sys.executable, "-m", "diffaudit", "compare", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture
def files(tmp_path):
    r = np.random.default_rng(0)
    gen = r.standard_normal((120, 6)).astype(np.float32)
    ref = (r.standard_normal((150, 6)) + 0.3).astype(np.float32)
    np.save(tmp_path / "gen.npy", gen)
    np.savez(tmp_path / "ref.npz", x=ref)
    return tmp_path, gen, ref


def test_compare_json_matches_probes(files):
    tmp, gen, ref = files
    out = tmp / "res" / "compare.json"
    p = run_cli(
        tmp / "gen.npy",
        tmp / "ref.npz",
        "--metrics",
        "all",
        "--json",
        out,
        "--seed",
        3,
        "--kid-subsets",
        10,
        "--kid-size",
        50,
        "--no-cache",
    )
    assert p.returncode == 0, p.stderr
    assert "FD" in p.stdout and "precision" in p.stdout and "coverage" in p.stdout
    doc = json.loads(out.read_text())
    assert [f for f in os.listdir(out.parent)] == ["compare.json"]  # atomic write: no temp file left
    assert doc["n_gen"] == 120 and doc["n_ref"] == 150 and doc["dim"] == 6 and doc["embedder"] == "pixels"
    m = doc["metrics"]
    assert list(m) == ["e1", "fd", "fdinf", "kid", "pr", "dc", "moments", "kl", "swd"]
    np.testing.assert_allclose(m["e1"]["value"], me.two_sample_moment_mmd(gen, ref, seed=3).value, rtol=1e-12)
    np.testing.assert_allclose(m["fd"]["value"], cv.frechet_distance(gen, ref).value, rtol=1e-12)
    np.testing.assert_allclose(m["kid"]["value"], cv.kid(gen, ref, 10, 50, seed=3).value, rtol=1e-12)
    pr = cv.precision_recall(ref, gen)
    dc = cv.density_coverage(ref, gen)
    assert (m["pr"]["precision"], m["pr"]["recall"]) == (pr.precision, pr.recall)
    assert (m["dc"]["density"], m["dc"]["coverage"]) == (dc.density, dc.coverage)
    np.testing.assert_allclose(m["kl"]["value"], cv.gaussian_kl(gen, ref), rtol=1e-12)
    np.testing.assert_allclose(m["swd"]["value"], cv.sliced_wasserstein(gen, ref, seed=3), rtol=1e-12)
    np.testing.assert_allclose(m["fdinf"]["value"], cv.fd_infinity(gen, ref, seed=3).value, rtol=1e-12)


def test_compare_images_and_pixels_downsampling(tmp_path):
    r = np.random.default_rng(1)
    imgs = r.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)  # NHWC uint8, as image dumps are
    np.save(tmp_path / "a.npy", imgs[:10])
    np.save(tmp_path / "b.npy", imgs[10:])
    out = tmp_path / "o.json"
    p = run_cli(
        tmp_path / "a.npy",
        tmp_path / "b.npy",
        "--features",
        "pixels:4",
        "--metrics",
        "fd,swd",
        "--json",
        out,
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["dim"] == 3 * 4 * 4 and p.stdout == ""
    assert doc["metrics"]["fd"]["singular"] is True  # 10 samples in 48 dimensions


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "no such file"),
        ("metric", "unknown metric 'foo'"),
        ("width", "same kind and size"),
        ("nan", "NaN"),
        ("one", "at least 2"),
        ("kid", "--kid-size"),
        ("features", "unknown feature space"),
    ],
)
def test_compare_user_mistakes_exit_2(files, case, needle):
    tmp, gen, ref = files
    g, rf, extra = tmp / "gen.npy", tmp / "ref.npz", []
    if case == "missing":
        g = tmp / "nope.npy"
    elif case == "metric":
        extra = ["--metrics", "fd,foo"]
    elif case == "width":
        np.save(tmp / "w.npy", ref[:, :5])
        rf = tmp / "w.npy"
    elif case == "nan":
        bad = gen.copy()
        bad[4, 2] = np.nan
        np.save(tmp / "nan.npy", bad)
        g = tmp / "nan.npy"
    elif case == "one":
        np.save(tmp / "one.npy", gen[:1])
        g = tmp / "one.npy"
    elif case == "kid":
        extra = ["--kid-size", "1"]
    elif case == "features":
        extra = ["--features", "nonsense"]
    p = run_cli(g, rf, *extra)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_compare_help_has_examples():
    p = run_cli("--help")
    assert p.returncode == 0
    assert (
        "Examples:" in p.stdout
        and "diffaudit compare gen.npy ref.npy" in p.stdout
        and "--metrics" in p.stdout
    )


def test_parse_metrics():
    from diffaudit.pipeline.compare import METRICS, parse_metrics

    assert parse_metrics("kid, FD") == ["fd", "kid"]
    assert parse_metrics("all") == list(METRICS)
    with pytest.raises(DiffauditError):
        parse_metrics(" , ")


@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_extreme_magnitudes_are_refused_not_reported(tmp_path, scale):
    # At 1e20 float32 squared distances overflow: compare printed precision/recall 1, density 30 and a KID
    # of 4e117 with exit 0; at 1e-20 they underflow to 0. Both are refused with the fix, and nothing written.
    r = np.random.default_rng(1)
    np.save(tmp_path / "gen.npy", (r.standard_normal((200, 8)) * scale).astype(np.float32))
    np.save(tmp_path / "ref.npy", (r.standard_normal((200, 8)) * scale).astype(np.float32))
    out = tmp_path / "res" / "compare.json"
    p = run_cli(tmp_path / "gen.npy", tmp_path / "ref.npy", "--json", out, "--no-cache")
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: GEN") and "divide every set by one common scale" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not out.parent.exists()
    # inside the range, the same data (rescaled into it by the user) works
    np.save(tmp_path / "gen.npy", (r.standard_normal((200, 8)) * 1e10).astype(np.float32))
    np.save(tmp_path / "ref.npy", (r.standard_normal((200, 8)) * 1e10).astype(np.float32))
    assert (
        run_cli(tmp_path / "gen.npy", tmp_path / "ref.npy", "--metrics", "fd,pr", "--no-cache").returncode
        == 0
    )
