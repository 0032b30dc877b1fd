"""A sweep group's audit samples drawn together (issue 13, ``run.run_group(sample_together=True)``, the CUDA
default): every cell's report equals the one its audit writes when it samples its own model, up to the
float32 rounding of the vectorised network; and ``run_audit(samples=...)`` checks what it is given."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_groups import _numbers_close  # the same report comparison as the grouped-training tests

from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.models.controls import GaussianModel
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit
from diffaudit.sweeps.groups import plan_units, sample_batches, should_sample_together
from diffaudit.sweeps.run import audit_draw, run_group
from diffaudit.sweeps.spec import expand, parse_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = {
    "name": "gs",
    "n": [32, 128],
    "seeds": [0, 1],
    "model": "mlp:width=32,depth=2,emb_dim=16",
    "dataset": [{"name": "hidden-manifold", "params": {"d": 8, "D": [2, 3]}}],
    "budget": {"rule": "grow", "epochs": 10, "min_steps": 1, "max_steps": 40},
    "train": {"batch": 32, "warmup_steps": 5},
    "audit": {
        "n_samples": 120,
        "n_holdout": 100,
        "sampler_steps": 8,
        "options": {"n_boot": 2, "kid_subsets": 5, "mia_n": 50, "mia_draws": 1, "extraction_budget": 200},
    },
}


def test_group_sampled_together_equals_each_cell_sampling_its_own_model(tmp_path):
    recs = [c.record() for c in expand(parse_spec(SPEC))]
    units = plan_units(recs, mode="on", device="cpu")
    (group,) = [u for u in units if u[0].get("group")]  # the 8 trained cells: one group
    assert len(group) == 8
    assert should_sample_together("cuda") and should_sample_together("cuda:1")
    assert not should_sample_together("cpu")  # measured slower on the CPU (groups.should_sample_together)
    st_own = run_group(group, str(tmp_path / "own"), "cpu", 1, sample_together=False)
    # a tiny host-memory limit: the cells are sampled in several batches, each audited before the next
    limit = 2.5 * 12 * 120 * 8 / 2**20  # float32 samples and their float64 noise, 120 x 8 a cell
    draws = {r["cell_id"]: audit_draw(r, "cpu")[0] for r in group}
    assert [len(b) for b in sample_batches(group, draws, limit)] == [2, 2, 2, 2]
    import diffaudit.sweeps.groups as g

    old = g.SAMPLE_BATCH_MIB
    g.SAMPLE_BATCH_MIB = limit
    try:
        st_tog = run_group(group, str(tmp_path / "tog"), "cpu", 1, sample_together=True)
    finally:
        g.SAMPLE_BATCH_MIB = old
    assert all(s["status"] == "done" for s in st_own + st_tog), st_own + st_tog
    for r in group:
        cid = r["cell_id"]
        a = json.loads((tmp_path / "tog" / "cells" / cid / "report.json").read_text())
        b = json.loads((tmp_path / "own" / "cells" / cid / "report.json").read_text())
        assert a["sweep"]["sampling"] == {"together": True, "error": None}
        assert b["sweep"]["sampling"] == {"together": False, "error": None}
        assert a["sweep"]["timings"]["group_sampling"] > 0 and "group_sampling" not in b["sweep"]["timings"]
        assert a["inputs"]["n_generated"] == audit_draw(r, "cpu")[0] == 120
        # the extraction stage continued the model's own stream past the pre-drawn 120 generations
        assert a["details"]["extraction"]["drawn_samples"] == 80
        _numbers_close(a, b, cid)


def test_run_audit_checks_presampled_shape_and_uses_them():
    ds = get_dataset("hidden-manifold", d=4, D=2)
    x = ds.sample(200, 0)[0]
    model = GaussianModel(x)
    cfg = AuditConfig(
        n_samples=50, seed=3, n_boot=2, kid_subsets=5, mia_n=20, mia_draws=1, extraction_budget=50
    )
    with pytest.raises(DiffauditError, match="pre-drawn samples have shape"):
        run_audit(model, train=x[:100], holdout=x[100:], config=cfg, samples=np.zeros((49, 4)))
    with pytest.raises(DiffauditError, match="not one numeric array"):
        run_audit(model, train=x[:100], holdout=x[100:], config=cfg, samples=[[0.0, 1.0], [0.0]])
    bad = model.sample(50, 3)
    bad[7, 1] = np.nan  # pre-drawn samples go through the generated samples' own checks
    with pytest.raises(DiffauditError, match="generated samples"):
        run_audit(model, train=x[:100], holdout=x[100:], config=cfg, samples=bad)
    own = run_audit(model, train=x[:100], holdout=x[100:], config=cfg)
    given = run_audit(model, train=x[:100], holdout=x[100:], config=cfg, samples=model.sample(50, 3))
    assert given["inputs"]["hashes"]["generated"] == own["inputs"]["hashes"]["generated"]
    # and what it is given is what it audits: other samples give another hash
    other = run_audit(model, train=x[:100], holdout=x[100:], config=cfg, samples=model.sample(50, 4))
    assert other["inputs"]["hashes"]["generated"] != own["inputs"]["hashes"]["generated"]


def test_failed_group_sampling_falls_back_to_each_cell_and_says_why(tmp_path, monkeypatch):
    recs = [c.record() for c in expand(parse_spec({**SPEC, "n": [32], "seeds": [0]}))]
    (group,) = [u for u in plan_units(recs, mode="on", device="cpu") if u[0].get("group")]
    import diffaudit.sweeps.run as run_mod

    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(run_mod, "sample_group", boom)
    st = run_group(group, str(tmp_path), "cpu", 1, sample_together=True)
    assert [s["status"] for s in st] == ["done"] * len(group)
    for r in group:
        rep = json.loads((tmp_path / "cells" / r["cell_id"] / "report.json").read_text())
        assert rep["sweep"]["sampling"] == {
            "together": False,
            "error": "RuntimeError: CUDA out of memory (simulated)",
        }
        assert rep["inputs"]["n_generated"] == 120


def test_estimate_times_the_group_sampler_where_groups_sample_together(monkeypatch):
    """On CUDA (simulated: ``should_sample_together`` forced on) the dry run's audit estimate of a group uses
    the vectorised sampler's measured cost at that group's size; elsewhere one model's forward pass."""
    import diffaudit.sweeps.groups as g

    recs = [c.record() for c in expand(parse_spec(SPEC))]
    units = plan_units(recs, mode="on", device="cpu")
    base = g.estimate(units, "cpu", 1, calibrate_s=0.05)
    assert all("group_forward_s_per_sample" not in c for c in base.calibration)
    monkeypatch.setattr(g, "should_sample_together", lambda device: True)
    est = g.estimate(units, "cpu", 1, calibrate_s=0.05)
    (line,) = est.calibration
    per = line["group_forward_s_per_sample"]
    assert list(per) == ["8"] and per["8"] > 0
    (i,) = [k for k, u in enumerate(units) if u[0].get("group")]
    evals = sum(int(c["n_samples"]) * (2 * int(c["sampler_steps"]) - 1) for c in units[i])
    # the probes' documented cost is the same on both; only the sampler's share changes
    got = est.audit_s[i] - evals * per["8"]
    ref = base.audit_s[i] - evals * base.calibration[0]["forward_s_per_sample"]
    assert got == pytest.approx(ref, rel=1e-9)


def test_presampled_samples_are_refused_by_a_conditional_audit():
    from diffaudit.models.adapters import load_model
    from diffaudit.pipeline.run import run_audit_on
    from diffaudit.pipeline.setup import audit_data

    d = audit_data("molrg:d=6,K=3,r=2", 300, 300, seed=0, n_samples=60)
    m = load_model("control:gaussian", train=d.train, train_labels=d.train_labels, n_classes=3)
    cfg = AuditConfig(condition="labels", n_samples=60, extraction_budget=0)
    with pytest.raises(DiffauditError, match="conditional audit"):
        run_audit_on(m, d, config=cfg, samples=np.zeros((60, 6)))


def test_audit_options_without_n_samples_sample_the_default_count_together(tmp_path):
    """``[audit] options.n_samples = None`` (accepted by the config: the audit's default count) is what the
    joint sampling draws too (the review found it crashed the group before its cells were audited)."""
    from diffaudit.pipeline.config import DEFAULT_N_SAMPLES

    spec = {**SPEC, "n": [32], "seeds": [0]}
    spec["audit"] = {**SPEC["audit"], "options": {**SPEC["audit"]["options"], "n_samples": None}}
    recs = [c.record() for c in expand(parse_spec(spec))]
    (group,) = [u for u in plan_units(recs, mode="on", device="cpu") if u[0].get("group")]
    assert audit_draw(group[0], "cpu")[0] == DEFAULT_N_SAMPLES
    st = run_group(group, str(tmp_path), "cpu", 1, sample_together=True)
    assert [s["status"] for s in st] == ["done"] * len(group), st
    for r in group:
        rep = json.loads((tmp_path / "cells" / r["cell_id"] / "report.json").read_text())
        assert rep["sweep"]["sampling"] == {"together": True, "error": None}
        assert rep["inputs"]["n_generated"] == DEFAULT_N_SAMPLES
