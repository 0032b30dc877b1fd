"""Sweep specs refuse bad [train] and [audit] options at load (issue 15, section 3), not in every cell."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffaudit.errors import DiffauditError
from diffaudit.harness.train import TrainConfig
from diffaudit.pipeline.config import AuditConfig
from diffaudit.sweeps.spec import load_preset, parse_spec

BASE = {"n": [64, 128], "dataset": [{"name": "hidden-manifold", "params": {"d": 8, "D": 2}}]}
HEADER = 'n = [64, 128]\n[[dataset]]\nname = "hidden-manifold"\nparams = { d = 8, D = 2 }\n'


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"train": {"batch": 0}}, r"\[train\] .*batch=0"),
        ({"train": {"batch": -3}}, r"\[train\] .*batch=-3"),
        ({"train": {"lr": "abc"}}, r"\[train\] lr = 'abc' must be a finite number"),
        ({"train": {"lr": float("nan")}}, r"\[train\] lr = nan must be a finite number"),
        ({"train": {"lr": 0.0}}, r"\[train\] .*learning rate"),
        ({"train": {"batch": 2.5}}, r"\[train\] batch = 2.5 must be an integer"),
        ({"train": {"bf16": 1}}, r"\[train\] bf16 = 1 must be true or false"),
        ({"train": {"betas": [0.9]}}, r"\[train\] betas = \[0.9\] must be a list of 2 finite numbers"),
        ({"train": {"device": "tpu"}}, r"\[train\] .*'tpu'"),
        ({"train": {"log_every": 0}}, r"\[train\] .*log_every"),
        ({"audit": {"options": {"max_copy_rate": "x"}}}, r"max_copy_rate = 'x' must be a finite number"),
        ({"audit": {"options": {"max_copy_rate": 2.0}}}, r"max_copy_rate=2.0 is out of range"),
        ({"audit": {"options": {"eps1": True}}}, r"eps1 = True must be a finite number"),
        (
            {"audit": {"options": {"mia_sigmas": [0.1, "a"]}}},
            r"mia_sigmas .* must be a list of finite numbers",
        ),
        ({"audit": {"options": {"features": 3}}}, r"features = 3 must be a string"),
        ({"audit": {"options": {"n_boot": -1}}}, r"n_boot=-1 is out of range"),
    ],
)
def test_bad_values_are_refused_at_load(table, match):
    with pytest.raises(DiffauditError, match=match) as e:
        parse_spec({**BASE, **table}, where="s.toml")
    msg = str(e.value)
    assert msg.startswith("sweep spec s.toml: ") and "\n" not in msg


def test_good_values_load_and_reach_the_configs():
    """The other side: valid values pass and build the configs the cells will use."""
    train = {"batch": 64, "lr": 2e-4, "betas": [0.9, 0.99], "bf16": False, "grad_clip": 0, "device": "cpu"}
    opts = {"max_copy_rate": 0.05, "mia_sigmas": [0.1, 0.2], "eps1": 1, "features": "pixels"}
    spec = parse_spec({**BASE, "train": train, "audit": {"options": opts}})
    assert spec.batch == 64 and spec.train == train and spec.audit_options == opts
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.train.items()})
    assert cfg.betas == (0.9, 0.99) and cfg.lr == 2e-4
    assert AuditConfig.from_options(spec.audit_options).max_copy_rate == 0.05
    for preset in ("quick", "controls", "paper"):  # the shipped specs stay valid
        load_preset(preset, check_datasets=False)


@pytest.mark.parametrize(
    "body",
    ["[train]\nbatch = 0\n", '[train]\nlr = "abc"\n', '[audit]\noptions = { max_copy_rate = "x" }\n'],
)
def test_cli_refuses_before_any_cell(tmp_path, body):
    spec = tmp_path / "s.toml"
    spec.write_text(HEADER + body)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "diffaudit", "sweep", str(spec), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sweep spec ") and "Traceback" not in r.stderr
    assert not (out / "cells").exists()  # nothing trained or audited
