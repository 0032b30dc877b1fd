"""Threshold 1 on the gaussian control, end to end: the control is N(mu_hat, S_hat) fitted to its training set, so
its population E1 against the data population is known exactly; the audit's estimate (sampled through the Heun
sampler, estimated by the U-statistic) must agree with it at 500, 2,000 and 8,000 generated samples, and its
expectation must not move with that number. Known answers, not tuned numbers."""

import numpy as np
import pytest

import diffaudit
from diffaudit.datasets.base import get_dataset
from diffaudit.datasets.moments import population_moments
from diffaudit.models.adapters import load_model

D_SPEC = "molrg:d=8,K=2,r=2,sigma=0.1"  # analytic population moments


def _exact_e1(model, mu, sigma, delta):
    """||W (S_hat + (mu_hat - mu)(mu_hat - mu)^T) W - W sigma W||_F^2 / d, W = (sigma + delta I)^(-1/2)."""
    lam, Q = np.linalg.eigh(sigma + delta * np.eye(len(mu)))
    W = Q @ np.diag(lam**-0.5) @ Q.T
    m = model.mu_ - mu
    M = W @ (model.cov_ + np.outer(m, m)) @ W
    return float(np.sum((M - W @ sigma @ W) ** 2) / len(mu))


@pytest.fixture(scope="module")
def setting():
    ds = get_dataset(D_SPEC)
    mu, sigma, _ = population_moments(ds)
    train = ds.sample(60, 1)[0]  # a small training set: E1 ~ (d + kappa)/n ~ 0.15, clearly non-zero
    return ds, mu, sigma, train


@pytest.mark.parametrize("n_gen", [500, 2000, 8000])
def test_gaussian_control_e1_matches_its_exact_value(setting, n_gen):
    ds, mu, sigma, train = setting
    rep = diffaudit.audit(
        "control:gaussian", dataset=ds, train=train, n_samples=n_gen, seed=3, kid_subsets=4, n_boot=0
    )
    model = load_model("control:gaussian", train=train, dataset=ds)
    delta = rep["details"]["convergence"]["moment_error_delta"]
    exact = _exact_e1(model, mu, sigma, delta)
    m = rep["probes"]["convergence"]["moment_error"]
    lo, hi = m["ci"]
    half = (hi - lo) / 2
    # within the reported interval widened to 3 standard errors (a 99.7 % statement: this test must not flake)
    assert abs(m["value"] - exact) <= 1.53 * half, (n_gen, m, exact)
    assert exact > 0.05  # the learner is visibly imperfect: the check has teeth


def test_e1_expectation_does_not_move_with_the_audit_size(setting):
    ds, mu, sigma, train = setting
    means = {}
    for n_gen in (300, 3000):
        vals = [
            diffaudit.audit(
                "control:gaussian", dataset=ds, train=train, n_samples=n_gen, seed=s, kid_subsets=4, n_boot=0
            ).value("convergence.moment_error")
            for s in range(6)
        ]
        means[n_gen] = (np.mean(vals), np.std(vals, ddof=1) / np.sqrt(len(vals)))
    (m1, s1), (m2, s2) = means[300], means[3000]
    assert abs(m1 - m2) <= 3 * np.hypot(s1, s2), means
