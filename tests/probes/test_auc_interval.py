"""The AUC interval when DeLong's variance is 0 (perfect separation): the exact bound A >= (alpha/2)^(1/k),
k = min(m, n) disjoint pairs, instead of the point interval [1, 1]; its coverage by simulation."""

import numpy as np
import pytest
from scipy import stats as st

from diffaudit.probes.stats import auc_delong


def test_perfect_separation_gets_the_exact_bound_not_a_point():
    auc, ci, se = auc_delong([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert auc == 1.0 and se == 0.0
    assert ci == pytest.approx((0.025 ** (1 / 3), 1.0))  # [0.292, 1], was [1, 1]
    auc, ci, _ = auc_delong([1.0, 2.0], [3.0, 4.0, 5.0, 6.0, 7.0])
    assert auc == 0.0 and ci == pytest.approx((0.0, 1 - 0.025 ** (1 / 2)))
    _, ci, _ = auc_delong(np.arange(10.0) + 100, np.arange(40.0), confidence=0.9)
    assert ci == pytest.approx((0.05 ** (1 / 10), 1.0))
    assert auc_delong([1.0, 1.0], [1.0, 1.0])[1] == (0.0, 1.0)  # every score tied: no information
    a, ci, se = auc_delong([1.0, 3.0, 5.0], [2.0, 4.0, 0.0])  # the Wald interval as before
    assert se > 0 and ci[0] < a < ci[1]


def test_the_bound_is_nearly_exact_when_its_pairs_carry_all_the_evidence():
    # negatives sit at -10; a positive is at +10 with probability A, else at -30: P(pos > neg) = A exactly, and
    # the observed AUC is 1 iff all m positives landed high, probability A^m. With A just below (0.025)^(1/m)
    # the bound must miss about 2.5 % of the time and never more; a 0.05 bound would miss 5 %. (Only draws with
    # perfect separation count: the others get DeLong's Wald interval, which this bimodal case does not suit.)
    m, n, reps = 8, 12, 20_000
    A = 0.97 * 0.025 ** (1 / m)
    rng = np.random.default_rng(0)
    neg = -10 + rng.standard_normal(n)
    miss = 0
    for _ in range(reps):
        pos = np.where(rng.random(m) < A, 10.0, -30.0) + rng.standard_normal(m)
        auc, (lo, hi), _ = auc_delong(pos, neg)
        miss += auc == 1.0 and not lo <= A <= hi
    rate, sd = miss / reps, np.sqrt(0.025 * 0.975 / reps)
    print(f"A = {A:.3f}: miss rate {rate:.4f} (A^m = {A**m:.4f})")
    assert rate <= 0.025 + 3 * sd and rate >= 0.015


def test_coverage_with_a_true_auc_near_one():
    # normal scores with AUC = Phi(delta / sqrt 2) = 0.97, 6 vs 6 items: perfect separation is common (the old
    # interval [1, 1] then missed every time); the exact bound's misses stay below 2.5 % of all draws
    delta = np.sqrt(2) * st.norm.ppf(0.97)
    rng = np.random.default_rng(1)
    reps, perfect, miss_perfect = 4000, 0, 0
    for _ in range(reps):
        pos, neg = delta + rng.standard_normal(6), rng.standard_normal(6)
        auc, (lo, hi), _ = auc_delong(pos, neg)
        if auc == 1.0:
            perfect += 1
            miss_perfect += not lo <= 0.97 <= hi
    print(f"perfect separation in {perfect / reps:.2f} of draws, missed {miss_perfect}")
    assert perfect / reps > 0.3 and miss_perfect / reps <= 0.025
