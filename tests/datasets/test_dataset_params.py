"""Dataset parameters are checked before any work (issue 15, section 3): non-finite or non-integer values
are refused by name, sizes beyond the memory available are refused with the size, and a damaged cached
sprites oracle is detected and rebuilt."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import diffaudit.datasets.base as base
import diffaudit.datasets.sprites as sp
from diffaudit.datasets.base import available_memory, check_memory, float_param, get_dataset, int_param
from diffaudit.errors import DiffauditError


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("mcm:beta_u=nan", r"^mcm: beta_u=nan is not a finite number >= 0"),
        ("mcm:beta_v=inf", r"^mcm: beta_v=inf is not a finite number"),
        ("mcm:beta_u=-1", r"^mcm: beta_u=-1 is not a finite number >= 0"),
        ("mcm:d=2.5", r"^mcm: d=2.5 is not an integer"),
        ("molrg:sigma=nan", r"^molrg: sigma=nan is not a finite number"),
        ("molrg:K=nan", r"^molrg: K=nan is not an integer"),
        ("hidden-manifold:d=nan", r"^hidden-manifold: d=nan is not an integer"),
        ("hidden-manifold:d=16.5", r"^hidden-manifold: d=16.5 is not an integer"),
        ("hidden-manifold:seed=-1", r"^hidden-manifold: seed=-1 is not an integer >= 0"),
        ("hidden-manifold:D=true", r"^hidden-manifold: D=True is not an integer"),
        ("digits:size=12", r"^digits: size=12 is not supported; use size=8, 16 or 32"),
        ("digits:size=nan", r"^digits: size=nan is not an integer"),
        ("digits:size=16.5", r"^digits: size=16.5 is not an integer"),
    ],
)
def test_bad_values_are_refused_by_name(spec, match):
    with pytest.raises(DiffauditError, match=match):
        get_dataset(spec)


def test_good_values_still_build_the_same_datasets():
    """The other side: finite values (and integral floats, as spec strings parse 1e3) are accepted."""
    a, b = get_dataset("hidden-manifold:d=1e3,D=4"), get_dataset("hidden-manifold", d=1000, D=4)
    assert a.d == 1000 and isinstance(a.d, int)
    np.testing.assert_array_equal(a.sample(5, seed=1)[0], b.sample(5, seed=1)[0])
    m = get_dataset("mcm:beta_u=0,beta_v=2.5,d=8")
    assert (m.beta_u, m.beta_v, m.d) == (0.0, 2.5, 8) and np.isfinite(m.sample(50)[0]).all()
    assert get_dataset("molrg:d=8,K=2,r=2,sigma=0.1").sigma == 0.1
    assert int_param(np.int64(3), "k", "t", 1) == 3 and float_param(np.float32(0.5), "b", "t") == 0.5


@pytest.mark.parametrize(
    ("spec", "nbytes"),
    [
        ("hidden-manifold:d=1e9", 6 * 8 * 10**9 * 4),  # 6 (d x D) float64 arrays, D = 4
        ("molrg:d=1e6", 4 * 8 * 10**12),  # 4 (d x d) float64 arrays
        ("mcm:d=1e12", 8 * 8 * 10**12),
    ],
)
def test_sizes_beyond_memory_are_refused_before_allocating(spec, nbytes, monkeypatch):
    # the estimate is compared with what is available: just below it is refused, just above it is built
    # (checked with the estimate's own function so the test does not allocate)
    calls = []

    def fake_check(n, what, dataset):
        calls.append(n)
        raise DiffauditError("refused")

    for mod in ("hidden_manifold", "molrg", "mcm"):
        monkeypatch.setattr(f"diffaudit.datasets.{mod}.check_memory", fake_check)
    with pytest.raises(DiffauditError, match="refused"):
        get_dataset(spec)
    assert calls == [nbytes]
    monkeypatch.setattr(base, "available_memory", lambda: nbytes - 1)
    with pytest.raises(DiffauditError, match=r"needs about .* of memory but .* is available"):
        check_memory(nbytes, "x", "t")
    monkeypatch.setattr(base, "available_memory", lambda: nbytes)
    check_memory(nbytes, "x", "t")  # exactly available: allowed


def test_the_real_memory_check_refuses_d_1e9_and_sampling_too_many_rows():
    assert 0 < available_memory() < 10**15  # the machine's, read from /proc/meminfo and the cgroup
    with pytest.raises(DiffauditError, match=r"^hidden-manifold: drawing the d=1000000000, D=4 .* 192.0 GB"):
        get_dataset("hidden-manifold:d=1e9")
    ds = get_dataset("hidden-manifold:d=64")
    with pytest.raises(DiffauditError, match=r"sampling n=10000000000000 rows"):
        ds.sample(10**13)
    with pytest.raises(DiffauditError, match=r"sampling n=10000000000000 rows"):
        get_dataset("mcm:d=16").sample(10**13)
    with pytest.raises(DiffauditError, match=r"sampling n=10000000000000 rows"):
        get_dataset("molrg:d=16").sample(10**13)


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        ("hidden-manifold:d=1e9", "mixing matrix needs about 192.0 GB"),
        ("mcm:beta_u=nan", "mcm: beta_u=nan is not a finite number"),
    ],
)
def test_cli_refuses_with_one_line(dataset, match, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffaudit",
            "audit",
            "--model",
            "control:gaussian",
            "--dataset",
            dataset,
            "--n-train",
            "100",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert not out.exists()


def _weights(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_damaged_cached_oracle_is_detected_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFAUDIT_CACHE_DIR", str(tmp_path))
    ds = get_dataset("sprites", size=16, oracle_steps=3)  # a 3-step oracle: the cache logic, not accuracy
    sp._ORACLES.pop(str(ds.oracle_path()), None)
    w0 = _weights(ds.oracle())
    path = ds.oracle_path()
    good = path.read_bytes()
    digest = path.with_name(path.name + ".sha256").read_text().strip()
    assert len(digest) == 64

    # an intact cache is loaded, not retrained
    def no_training(self, net):
        raise AssertionError("retrained an intact oracle")

    monkeypatch.setattr(sp.Sprites, "_train", no_training)
    sp._ORACLES.clear()
    for k, v in _weights(ds.oracle()).items():
        torch.testing.assert_close(v, w0[k], rtol=0, atol=0)
    monkeypatch.undo()
    monkeypatch.setenv("DIFFAUDIT_CACHE_DIR", str(tmp_path))

    # truncated, and same length with flipped bytes: both detected, retrained to the same weights, rewritten
    flipped = bytearray(good)
    flipped[-8:] = bytes(b ^ 0xFF for b in flipped[-8:])
    for damaged in (good[: len(good) // 2], bytes(flipped)):
        path.write_bytes(damaged)
        sp._ORACLES.clear()
        with pytest.warns(UserWarning, match="cached oracle .* is damaged"):
            w = _weights(ds.oracle())
        for k, v in w.items():
            torch.testing.assert_close(v, w0[k], rtol=0, atol=0)
        assert path.read_bytes() == good
    sp._ORACLES.clear()
