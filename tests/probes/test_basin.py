"""The basin-of-attraction probe against the analytic controls, the exact flow of a Gaussian, and bad input.

Data: anisotropic Gaussian vectors in d = 8 (std 0.3 ... 1.5 along a fixed rotation), as in test_membership.
The oracle is the data's own exact denoiser E[x0 | x0 + sigma n = x] (true covariance, no training data), whose
probability-flow ODE has a closed form: x0 = Q diag(sqrt(l / (l + sigma^2))) Q^T x_sigma for C = Q diag(l) Q^T.
"""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from diffaudit.errors import DiffauditError, ModelError
from diffaudit.models.contract import DenoiserModel
from diffaudit.models.controls import GaussianModel, MemorizerModel, OracleModel
from diffaudit.models.sampler import SamplerConfig, heun_from, heun_sample
from diffaudit.probes.basin import basin_of_attraction, calibrate

D = 8
A = np.linalg.qr(np.random.default_rng(0).standard_normal((D, D)))[0] * np.linspace(0.3, 1.5, D)
C = A @ A.T
LAM, Q = np.linalg.eigh(C)


def data(n, seed):
    return np.random.default_rng(seed).standard_normal((n, D)) @ A.T


def exact_flow(x, s):
    """The oracle's probability-flow ODE from noise level s to 0, in closed form."""
    return ((x @ Q) * np.sqrt(LAM / (LAM + s * s))) @ Q.T


class TrueGaussian(DenoiserModel):
    """The oracle as a white-box model: the exact denoiser of the data distribution itself."""

    name = "true-gaussian"

    def __init__(self):
        super().__init__((D,), sigma_data=float(np.sqrt(LAM.mean())))

    def denoise(self, x, sigma):
        return x @ np.linalg.solve(C + sigma * sigma * np.eye(D), C)


def overlap(a, b):
    return a[0] <= b[1] and b[0] <= a[1]


@pytest.fixture(scope="module")
def split():
    train, hold = data(500, 3), data(2000, 4)
    return train, hold, calibrate(train, hold)


# ------------------------------------------------------------------------------------ the reverse process


def test_reverse_from_matches_the_exact_gaussian_flow():
    # the Heun sampler started at sigma (Model.reverse_from) against the closed-form ODE of the fitted Gaussian
    train = data(1000, 3)
    m = GaussianModel(train)
    x0 = data(50, 9)
    for s in (0.1, 0.5, 2.0):
        xs = x0 + s * np.random.default_rng(1).standard_normal(x0.shape)
        shrink = np.sqrt(m.eigvals_ / (m.eigvals_ + s * s))
        ref = m.mu_ + ((xs - m.mu_) @ m.eigvecs_ * shrink) @ m.eigvecs_.T
        moved = np.abs(ref - xs).max()
        assert np.abs(m.reverse_from(xs, s, num_steps=32) - ref).max() < 5e-3 * moved
        assert np.abs(m.reverse_from(xs, s, num_steps=8) - ref).max() < 5e-2 * moved


def test_heun_from_is_the_one_sampler():
    m = GaussianModel(data(300, 3))
    cfg = SamplerConfig.for_data(m.sigma_data, num_steps=6)
    noise = np.random.default_rng(2).standard_normal((20, D))
    # started at sigma_max from noise * sigma_max it IS the sampler from pure noise
    np.testing.assert_allclose(
        heun_from(m.denoise, noise * cfg.sigma_max, cfg.sigma_max, cfg),
        heun_sample(m.denoise, noise, cfg),
        rtol=1e-12,
        atol=1e-12,
    )
    # at or below sigma_min: one Euler step to 0, x0 = D(x, sigma)
    x = data(5, 7)
    s = cfg.sigma_min / 2
    np.testing.assert_allclose(heun_from(m.denoise, x, s, cfg), m.denoise(x, s), rtol=1e-12)


# ------------------------------------------------------------------------------------ analytic controls


def test_memorizer_returns_its_training_items_at_every_sigma(split):
    train, hold, cal = split
    grid = np.array([0.02, 0.05, 0.1, 0.2]) * cal.spacing  # inside the memorizer's basins (module docstring)
    xh = hold[:100]
    r = basin_of_attraction(MemorizerModel(train), train[:100], xh, grid, cal.radius, seed=1)
    assert (r.return_train == 1.0).all() and (r.return_train_ci[:, 0] > 0.96).all()
    # it lands exactly on the item it started from
    assert r.dist_train.max() < 1e-6 * cal.spacing
    # a held-out item lands on a training item, at least its nearest-neighbour distance away: it returns only
    # if that distance is within the radius (1 % of held-out items by the radius' definition)
    nn = np.sqrt(((xh[:, None, :] - train[None]) ** 2).sum(-1)).min(1)
    assert (r.dist_holdout >= nn[:, None] * (1 - 1e-9)).all()
    assert (r.return_holdout <= (nn <= cal.radius).mean()).all() and (r.return_holdout <= 0.03).all()
    assert (r.auc == 1.0).all() and r.auc_eval == 1.0 and r.auc_eval_ci[0] > 0.9
    assert r.return_train_eval == 1.0 and r.return_holdout_eval <= 0.04
    assert r.n_eval == (50, 50) and r.best_sigma in grid


def test_oracle_shows_no_gap_and_matches_its_closed_form(split):
    train, hold, cal = split
    grid = np.array([0.05, 0.1, 0.2, 0.5, 1.0]) * cal.spacing
    xt, xh = train[:200], hold[:200]
    r = basin_of_attraction(TrueGaussian(), xt, xh, grid, cal.radius, num_steps=32, seed=2)
    lo, hi = r.auc_eval_ci
    assert lo <= 0.5 <= hi
    for j in range(len(grid)):
        assert overlap(r.return_train_ci[j], r.return_holdout_ci[j]), j
        assert r.auc_ci[j][0] <= 0.5 <= r.auc_ci[j][1] or abs(r.auc[j] - 0.5) < 0.07, j
    # the grid crosses the transition: some sigma where the return rates are neither 0 nor 1
    assert ((r.return_train > 0.1) & (r.return_train < 0.9)).any()
    # the same seeds through the closed-form flow: the same distances (Heun error only)
    ref = basin_of_attraction(exact_flow, xt, xh, grid, cal.radius, seed=2)
    np.testing.assert_allclose(r.dist_train, ref.dist_train, rtol=0.02, atol=1e-3 * cal.spacing)
    np.testing.assert_allclose(r.dist_holdout, ref.dist_holdout, rtol=0.02, atol=1e-3 * cal.spacing)
    # known answer: x0 - x ~ N(0, diag((s_k - 1)^2 l_k + s_k^2 sigma^2)) in the eigenbasis, for both sets alike
    z = np.random.default_rng(0).standard_normal((400_000, D))
    for j, s in enumerate(grid):
        sk = np.sqrt(LAM / (LAM + s * s))
        p = (((z**2) * ((sk - 1) ** 2 * LAM + sk**2 * s * s)).sum(1) <= cal.radius**2).mean()
        tol = 4 * np.sqrt(p * (1 - p) / 200) + 1 / 200
        assert abs(ref.return_train[j] - p) <= tol and abs(ref.return_holdout[j] - p) <= tol, (j, p)


def test_gaussian_control_shows_no_gap(split):
    train, hold, _ = split
    big = data(4000, 5)  # fitted on n >> d: its membership signal (fitted covariance) is negligible
    cal = calibrate(big, hold)
    grid = np.array([0.05, 0.1, 0.2, 0.5, 1.0]) * cal.spacing
    r = basin_of_attraction(GaussianModel(big), big[:200], hold[:200], grid, cal.radius, seed=3)
    lo, hi = r.auc_eval_ci
    assert lo <= 0.5 <= hi
    assert overlap(r.return_train_eval_ci, r.return_holdout_eval_ci)
    for j in range(len(grid)):
        assert overlap(r.return_train_ci[j], r.return_holdout_ci[j]), j
        assert abs(r.auc[j] - 0.5) < 0.08, (j, r.auc[j])  # 3 x its standard error (~0.029)
    assert ((r.return_train > 0.1) & (r.return_train < 0.9)).any()


def test_oracle_of_a_finite_population_returns_both_sets_alike():
    # the "data" is a finite set of 300 points (like the 1,797 digits): its exact denoiser is the memorizer of
    # the whole population, which returns held-out members of the population exactly like training ones
    pop = data(300, 6)
    train, hold = pop[:150], pop[150:]
    cal = calibrate(train, hold)
    grid = np.array([0.02, 0.05, 0.1]) * cal.spacing
    r = basin_of_attraction(MemorizerModel(pop), train, hold, grid, cal.radius, seed=4)
    assert (r.return_train >= 0.97).all() and (r.return_holdout >= 0.97).all()
    assert r.auc_eval_ci[0] <= 0.5 <= r.auc_eval_ci[1]
    # while the memorizer of the training half alone separates them
    m = basin_of_attraction(MemorizerModel(train), train, hold, grid, cal.radius, seed=4)
    assert m.auc_eval > 0.95 and (m.return_holdout <= 0.05).all()


# ------------------------------------------------------------------------------------ the statistics


def test_distances_rates_and_auc_match_a_brute_force_reference():
    seen = []

    def reverse(x, s):  # shrink halfway to the origin, record what the probe passed
        seen.append((x.copy(), s))
        return 0.5 * x

    train, hold = data(60, 1), data(70, 2)
    radius = 1.0
    r = basin_of_attraction(reverse, train, hold, [0.3, 0.8], radius, seed=5, batch_size=25)
    # per sigma: train in 3 batches, then holdout in 3; rows in order
    starts = [np.concatenate([x for x, s in seen[k : k + 3]]) for k in (0, 3, 6, 9)]
    for j, (st, sh) in enumerate(((starts[0], starts[1]), (starts[2], starts[3]))):
        s = r.sigmas[j]
        assert all(v == s for _, v in seen[6 * j : 6 * j + 6])
        eps_t, eps_h = (st - train) / s, (sh - hold) / s
        assert abs(eps_t.std() - 1) < 0.1 and abs(eps_h.std() - 1) < 0.1
        dt = np.linalg.norm(0.5 * st - train, axis=1)
        dh = np.linalg.norm(0.5 * sh - hold, axis=1)
        np.testing.assert_allclose(r.dist_train[:, j], dt, rtol=1e-12)
        np.testing.assert_allclose(r.dist_holdout[:, j], dh, rtol=1e-12)
        assert r.return_train[j] == (dt <= radius).mean() and r.return_holdout[j] == (dh <= radius).mean()
        y = np.r_[np.ones(60), np.zeros(70)]
        assert r.auc[j] == pytest.approx(roc_auc_score(y, -np.r_[dt, dh]), rel=1e-12)
    # train and holdout see independent noise
    assert not np.allclose(starts[0] - train, starts[1][:60] - hold[:60])
    b = list(r.sigmas).index(r.best_sigma)
    assert r.auc_select[b] == r.auc_select.max()
    y = np.r_[np.ones(r.n_eval[0]), np.zeros(r.n_eval[1])]
    ev = -np.r_[r.dist_train[r.eval_train, b], r.dist_holdout[r.eval_holdout, b]]
    assert r.auc_eval == pytest.approx(roc_auc_score(y, ev), rel=1e-12)
    assert r.return_train_eval == (r.dist_train[r.eval_train, b] <= radius).mean()
    # one sigma: nothing to choose, all items evaluated
    one = basin_of_attraction(lambda x, s: 0.5 * x, train, hold, [0.3], radius)
    assert one.n_eval == (60, 70) and one.auc_eval == one.auc[0]


def test_intervals_cover_at_the_nominal_rate():
    # The oracle cannot leak: its population AUC is exactly 0.5 and both return rates equal p(sigma) (known by
    # Monte Carlo). Over fresh draws the evaluation-split AUC interval covers 0.5 and the Wilson intervals cover
    # p at about the nominal 95 %, while the max over sigma of the AUC on all items is biased upward. Measured
    # (these seeds, 300 draws of 100 + 100 items, p = 0.548): AUC coverage 0.937, Wilson 0.93 / 0.94 (each
    # +- 0.013), mean split AUC 0.4996 +- 0.0034, mean max-over-sigma AUC 0.549 +- 0.002.
    grid = np.array([0.1, 0.2, 0.4, 0.7, 1.5])
    radius = 1.0
    s = grid[2]
    sk = np.sqrt(LAM / (LAM + s * s))
    z = np.random.default_rng(0).standard_normal((400_000, D))
    p = (((z**2) * ((sk - 1) ** 2 * LAM + sk**2 * s * s)).sum(1) <= radius**2).mean()
    assert 0.2 < p < 0.8
    reps, hit, hit_t, hit_h, ev, mx = 300, 0, 0, 0, [], []
    rng = np.random.default_rng(11)
    for k in range(reps):
        xt, xh = rng.standard_normal((100, D)) @ A.T, rng.standard_normal((100, D)) @ A.T
        r = basin_of_attraction(exact_flow, xt, xh, grid, radius, seed=k)
        hit += r.auc_eval_ci[0] <= 0.5 <= r.auc_eval_ci[1]
        hit_t += r.return_train_ci[2][0] <= p <= r.return_train_ci[2][1]
        hit_h += r.return_holdout_ci[2][0] <= p <= r.return_holdout_ci[2][1]
        ev.append(r.auc_eval)
        mx.append(r.auc.max())
    for h in (hit, hit_t, hit_h):
        assert 0.92 <= h / reps <= 0.985, (hit, hit_t, hit_h)
    assert abs(np.mean(ev) - 0.5) < 3 * np.std(ev) / np.sqrt(reps)
    assert np.mean(mx) - 0.5 > 10 * np.std(mx) / np.sqrt(reps)


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_clear_sentence(split):
    train, hold, cal = split
    f = lambda x, s: x  # noqa: E731

    class _DS:
        shape = (D,)

        def sample(self, n, seed):
            return data(n, seed), None

    cases = [
        (lambda: basin_of_attraction(OracleModel(_DS()), train, hold, [0.1], 1.0), "black box"),
        (lambda: basin_of_attraction(f, np.zeros((0, D)), hold, [0.1], 1.0), "training set"),
        (lambda: basin_of_attraction(f, train, np.zeros((0, D)), [0.1], 1.0), "holdout"),
        (lambda: basin_of_attraction(f, train, hold, [0.1, 0.0], 1.0), "sigmas"),
        (lambda: basin_of_attraction(f, train, hold, [-0.1], 1.0), "sigmas"),
        (lambda: basin_of_attraction(f, train, hold, [], 1.0), "sigmas"),
        (lambda: basin_of_attraction(f, train, hold, [0.1], 0.0), "radius"),
        (lambda: basin_of_attraction(f, train, hold[:, :3], [0.1], 1.0), "shape"),
        (lambda: basin_of_attraction(f, train, hold, [0.1], 1.0, num_steps=0), "num_steps"),
        (lambda: basin_of_attraction(lambda x, s: x[:, :2], train, hold, [0.1], 1.0), "shape"),
        (lambda: calibrate(train, np.zeros((0, D))), "holdout"),
        (lambda: calibrate(train, hold, quantile=0.0), "quantile"),
        (lambda: calibrate(train, np.concatenate([train[:50], hold[:50]])), "duplicate"),
    ]
    for call, word in cases:
        with pytest.raises(DiffauditError, match=word) as e:
            call()
        msg = str(e.value)
        assert msg.replace("e.g. ", "").count(". ") == 0 and msg.endswith(".") and "\n" not in msg, msg
    bad = train.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DiffauditError, match="NaN"):
        basin_of_attraction(f, bad, hold, [0.1], 1.0)
    with pytest.raises(ModelError, match="NaN"):
        basin_of_attraction(lambda x, s: x * np.nan, train, hold, [0.1], 1.0)


def test_calibration_is_the_holdout_nn_quantile(split):
    train, hold, cal = split
    nn = np.sqrt(((hold[:, None, :] - train[None]) ** 2).sum(-1)).min(1)
    # (the search reads float32 features, as every k-NN of the probes)
    assert cal.radius == pytest.approx(np.quantile(nn, 0.01), rel=1e-6)
    assert cal.spacing == pytest.approx(np.median(nn), rel=1e-6) and cal.n_holdout == len(hold)
    assert stats.percentileofscore(nn, cal.radius, kind="weak") == pytest.approx(1.0, abs=0.1)


def test_evaluation_halves_below_ten_items_are_refused(split):
    train, hold, cal = split
    f = lambda x, s: x  # noqa: E731
    # 3 vs 3 evaluated items gave AUC 1.0 [1.0, 1.0]: refused before any reverse run, with the size it needs
    for nt, sig, ok in ((6, [0.1, 0.2], False), (19, [0.1, 0.2], False), (20, [0.1, 0.2], True), (9, [0.1], False),
                        (10, [0.1], True)):  # fmt: skip
        call = lambda nt=nt, sig=sig: basin_of_attraction(f, train[:nt], hold[:40], sig, cal.radius)  # noqa: E731
        if ok:
            assert min(call().n_eval) >= 10
        else:
            with pytest.raises(DiffauditError, match="at least 10 of each") as e:
                call()
            assert "\n" not in str(e.value)
