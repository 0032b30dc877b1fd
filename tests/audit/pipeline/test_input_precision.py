"""The audit holds its inputs as float32 (the normal form); float64 data far from 0 relative to its spread loses
that spread in the cast, and the report says so (one warning per input) instead of auditing blurred data
silently. Ordinary data gets no such warning."""

from __future__ import annotations

import numpy as np

from diffaudit.models.controls import GaussianModel
from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.run import run_audit
from diffaudit.probes._checks import cast_precision_note

CFG = AuditConfig(n_samples=100, n_boot=2, kid_subsets=5, mia_n=20, mia_draws=1, extraction_budget=0)


def _precision(report) -> list[str]:
    return [w for w in report["warnings"] if "float32 cast" in w]


def test_far_from_zero_float64_inputs_are_named_in_the_report():
    rng = np.random.default_rng(0)
    x = 1e4 + 1e-4 * rng.normal(size=(400, 4))  # float32 spacing at 1e4 is ~1e-3: the spread is lost
    r = run_audit(GaussianModel(x[:200]), train=x[:200], holdout=x[200:], config=CFG)
    notes = _precision(r)
    assert [n.split(":")[0] for n in notes] == ["training set", "holdout set"]
    assert "centre the data" in notes[0]


def test_ordinary_and_float32_inputs_get_no_precision_warning():
    rng = np.random.default_rng(1)
    y = 3.0 + rng.normal(size=(400, 4))  # offset of the order of the spread: ~22 bits kept
    r = run_audit(GaussianModel(y[:200]), train=y[:200], holdout=y[200:], config=CFG)
    assert _precision(r) == []
    far32 = (1e4 + 1e-4 * rng.normal(size=(50, 4))).astype(np.float32)  # already float32: nothing is cast
    assert cast_precision_note(far32, far32, "x") is None


def test_the_note_counts_the_bits_the_cast_keeps():
    """Spread 2^-b relative to an offset of 1: float32 keeps about 24 - b bits of it."""
    rng = np.random.default_rng(2)
    for b, noted in ((4, False), (6, False), (12, True), (20, True)):
        x = 1.0 + 2.0**-b * rng.normal(size=(300, 3))
        note = cast_precision_note(x, x.astype(np.float32), "x")
        assert (note is not None) == noted, (b, note)
