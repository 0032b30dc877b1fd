"""decide(): the pass and the fail side of every verdict, at and around each tolerance, and n/a when the
measurement is missing. The rules are the module docstring of diffaudit.pipeline.verdicts."""

import pytest

from diffaudit.pipeline.config import AuditConfig
from diffaudit.pipeline.verdicts import decide


def m(v):
    return None if v is None else {"value": float(v), "ci": None}


def probes(e1=0.01, nv=0.9, validity=0.95, copy=0.0, auc=None, shift=0.01):
    return {
        "convergence": {"moment_error": m(e1), "mean_shift": m(shift)},
        "factors": {"novel_valid_rate": m(nv), "validity": m(validity)},
        "memorization": {"copy_rate": m(copy), "mia_auc": m(auc)},
    }


def details(recovered=True, factor_match=True, coverage_ok=True):
    return {
        "convergence": {"moment_error_reference": "the population"},
        "factors": {"recovered": recovered, "factor_match": factor_match, "coverage_ok": coverage_ok},
    }


CFG = AuditConfig()


@pytest.mark.parametrize(
    "e1, expected",
    [(0.0, "pass"), (-0.01, "pass"), (CFG.eps1, "pass"), (CFG.eps1 * 1.0001, "fail"), (2.5, "fail")],
)
def test_threshold1_is_e1_against_eps1(e1, expected):
    v, why = decide(probes(e1=e1), CFG, details())
    assert v["convergence"] == expected
    assert ("within" if expected == "pass" else "above") in why["convergence"]


@pytest.mark.parametrize(
    "shift, expected", [(0.0, "pass"), (CFG.eps1, "pass"), (CFG.eps1 * 1.0001, "fail"), (1.0, "fail")]
)
def test_threshold1_also_bounds_the_mean_shift(shift, expected):
    # a pure shift of one data std along one direction has E1 = 1/d (0.03 at d = 32) but |m|^2 = 1
    v, why = decide(probes(e1=1 / 32, shift=shift), CFG, details())
    assert v["convergence"] == expected and "mean shift" in why["convergence"]


def test_threshold1_na_without_a_reference():
    v, why = decide(probes(e1=None), CFG, {})
    assert v["convergence"] == "n/a" and "reference" in why["convergence"]


def test_threshold1_tolerance_is_the_config_value():
    assert decide(probes(e1=0.15), AuditConfig(eps1=0.2), details())[0]["convergence"] == "pass"
    assert decide(probes(e1=0.15), AuditConfig(eps1=0.1), details())[0]["convergence"] == "fail"


def test_threshold2_pass_needs_recovery_and_no_copies():
    assert decide(probes(), CFG, details())[0]["generalization"] == "pass"
    # each failure mode on its own fails threshold 2
    v, why = decide(probes(), CFG, details(recovered=False, factor_match=False))
    assert v["generalization"] == "fail" and "do not match" in why["generalization"]
    v, why = decide(probes(), CFG, details(recovered=False, coverage_ok=False))
    assert v["generalization"] == "fail" and "miss part of factor space" in why["generalization"]
    v, why = decide(probes(copy=0.5), CFG, details())
    assert v["generalization"] == "fail" and "copy rate" in why["generalization"]
    v, _ = decide(probes(copy=CFG.max_copy_rate), CFG, details())
    assert v["generalization"] == "pass"  # at the tolerance: pass


def test_threshold2_na_without_factors():
    v, why = decide(probes(nv=None), CFG, {})
    assert v["generalization"] == "n/a" and "synthetic dataset" in why["generalization"]


@pytest.mark.parametrize(
    "copy, auc, expected",
    [
        (0.0, None, "pass"),
        (0.02, None, "pass"),
        (0.0201, None, "fail"),
        (0.0, 0.6, "pass"),
        (0.0, 0.61, "fail"),
        (1.0, 1.0, "fail"),
    ],
)
def test_memorization(copy, auc, expected):
    assert decide(probes(copy=copy, auc=auc), CFG, details())[0]["memorization"] == expected


def test_memorization_na_without_copy_search():
    assert decide(probes(copy=None), CFG, details())[0]["memorization"] == "n/a"


def test_threshold2_never_passes_without_the_copy_search():
    # a missing copy rate counted as "no copies" before: a 100 % copier whose copy search did not run passed
    v, why = decide(probes(copy=None), CFG, details())
    assert v["generalization"] == "n/a" and "copy search did not run" in why["generalization"]
