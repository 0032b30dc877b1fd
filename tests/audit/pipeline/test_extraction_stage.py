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
    assert "50 samples" in why and "--extraction-budget 50 or less" in why


def test_a_zero_budget_skips_the_stage_with_a_reason(data):
    mem = load_model("control:memorizer", train=data.train, dataset=data.dataset, num_steps=8)
    rep = audit(mem, data, budget=0, n_samples=40)
    assert rep["probes"]["memorization"]["unique_extracted"] is None
    (why,) = [s["reason"] for s in rep["skipped"] if s["probe"] == "extraction"]
    assert "--extraction-budget 0" in why


def test_extraction_excess_subtracts_the_chance_bound_and_passes_the_oracle_at_small_n():
    # at n = 10 and B = 1000 the oracle extracts an item or two by chance (bound min(n, B^2 q^2 / 2n) = 5):
    # unique_extracted<=0 failed it, extraction_excess<=0 (more than chance) does not; the memorizer still fails
    small = synthetic_data("hidden-manifold:d=8,D=2", 10, 1000, seed=1)
    gate = [parse_gate("memorization.extraction_excess<=0")]
    ora = load_model("control:oracle", train=small.train, dataset=small.dataset)
    rep = audit(ora, small, budget=1000, n_samples=1000)
    d, m = rep["details"]["extraction"], rep["probes"]["memorization"]
    assert d["expected_false_extractions"] == pytest.approx(1000 * 999 * 1e-4 / 20)
    assert m["extraction_excess"]["value"] == pytest.approx(
        m["unique_extracted"]["value"] - d["expected_false_extractions"]
    )
    assert evaluate_gates(rep, gate)[0]["passed"]
    mem = load_model("control:memorizer", train=small.train, dataset=small.dataset, num_steps=8)
    rep = audit(mem, small, budget=200, n_samples=100)
    assert rep["probes"]["memorization"]["extraction_excess"]["value"] > 5
    assert not evaluate_gates(rep, gate)[0]["passed"]


def test_shifted_copies_are_extracted_like_exact_ones(tmp_path):
    # the review's false pass: 1-px-shifted training images gave copy_rate 1.00 but unique_extracted 1
    sp = synthetic_data("sprites", 100, 1000, seed=0)
    src = np.random.default_rng(3).integers(0, 100, 300)
    got = {}
    for name, x in (("exact", sp.train), ("shift", np.roll(sp.train, 1, axis=3))):
        np.save(tmp_path / f"{name}.npy", x[src])
        model = load_model(f"samples:{tmp_path}/{name}.npy", train=sp.train)
        rep = audit(model, sp, budget=300, n_samples=300)
        got[name] = rep["probes"]["memorization"]["unique_extracted"]["value"]
        d = rep["details"]["extraction"]
        assert rep["probes"]["memorization"]["copy_rate"]["value"] == 1.0
        assert d["n_candidates_unverified"] == 0 and "shift(+1,+0)" in d["transforms"]
        want = "identity" if name == "exact" else "shift(+1,+0)"
        assert d["transform_counts"] == {want: got[name]} and all(e[2] == want for e in d["extracted"])
    mean, var = coupon_collector(100, 300, 2)  # 80.2 +- 3.0
    assert got["shift"] == got["exact"] and abs(got["shift"] - mean) < 4 * np.sqrt(var)
