"""The audit's extraction stage: it spends ``extraction_budget`` generations (the audit's own samples first, the
model's stream continued after them), reports ``memorization.unique_extracted`` / ``extraction_yield``, and
gates on them; ``sample_stream`` continues exactly the audit's sampling."""

import numpy as np
import pytest

from diffaudit.models.adapters import load_model
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit_on
from diffaudit.pipeline.setup import synthetic_data
from diffaudit.pipeline.stages import STAGES, draw_samples, sample_stream
from diffaudit.pipeline.verdicts import evaluate_gates, parse_gate
from diffaudit.probes.extraction import coupon_collector

FEW = tuple(s for s in STAGES if s.name in ("sample", "embed", "copies", "extraction"))


@pytest.fixture(scope="module")
def data():
    return synthetic_data("hidden-manifold:d=8,D=2", 100, 500, seed=0)


@pytest.mark.parametrize("spec", ["control:memorizer", "control:noisy-memorizer", "control:oracle"])
def test_stream_starts_with_the_audit_samples_and_continues_fresh(spec, data):
    model = load_model(spec, train=data.train, dataset=data.dataset, num_steps=8)
    gen = sample_stream(model, 3)
    first = draw_samples(model, 40, 3)
    np.testing.assert_array_equal(gen(0, 40), first)
    later = gen(40, 40)
    assert later.shape == first.shape and not np.array_equal(later, first)


def audit(model, data, budget, n_samples):
    cfg = AuditConfig(n_samples=n_samples, extraction_budget=budget)
    return run_audit_on(model, data, config=cfg, stages=FEW)


def test_stage_draws_past_the_audit_samples_and_gates(data):
    mem = load_model("control:memorizer", train=data.train, dataset=data.dataset, num_steps=16)
    rep = audit(mem, data, budget=200, n_samples=80)
    d = rep["details"]["extraction"]
    assert d["reused_samples"] == 80 and d["drawn_samples"] == 120 and d["curve"]["budget"][-1] == 200
    got = rep["probes"]["memorization"]["unique_extracted"]["value"]
    mean, var = coupon_collector(100, 200, 2)  # 59.4 +- 3.2
    assert abs(got - mean) < 4 * np.sqrt(var)
    assert rep["probes"]["memorization"]["extraction_yield"]["value"] == pytest.approx(got / 200)
    gate = [parse_gate("memorization.unique_extracted<=0")]
    assert not evaluate_gates(rep, gate)[0]["passed"]

    ora = load_model("control:oracle", train=data.train, dataset=data.dataset)
    rep = audit(ora, data, budget=200, n_samples=300)
    assert rep["details"]["extraction"]["drawn_samples"] == 0
    assert rep["probes"]["memorization"]["unique_extracted"]["value"] == 0
    assert evaluate_gates(rep, gate)[0]["passed"]


def test_a_sample_file_shorter_than_the_budget_skips_the_stage(data, tmp_path):
    np.save(tmp_path / "gen.npy", data.train[:50])
    model = load_model(f"samples:{tmp_path}/gen.npy", train=data.train)
    rep = audit(model, data, budget=100, n_samples=50)
    assert rep["probes"]["memorization"]["unique_extracted"] is None
    (why,) = [s["reason"] for s in rep["skipped"] if s["probe"] == "extraction"]
    assert "50 samples" in why and "extraction_budget" in why
