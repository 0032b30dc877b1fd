"""The conditional-memorization detector (Wen et al. 2024) on an analytic class-conditional model.

Condition k of ``Clusters`` is a Gaussian cluster N(m_k, s_k^2 I) with the exact denoiser
m_k + s_k^2 / (s_k^2 + sigma^2) (x - m_k), or, with s_k = 0, a MEMORIZED condition tied to one training
point (D = m_k). The null condition is the posterior mean of the uniform label mixture: softmax weights
w_k ~ N(x; m_k, (s_k^2 + sigma^2) I) over the clusters' denoisers. Generalizing clusters have means
m_k ~ N(0, b^2 I) and spread s; a memorized condition's point is one draw of the population (m_j + s z).

First level (x = sigma_max z, sigma_max = 160 sigma_data): D_k -> m_k and the weights -> 1/K up to terms of
relative size b / sigma_max and s^2 / sigma_max^2, so the score -> ||m_c - mean_k m_k|| / (sigma_max sqrt(P)):
about b for a generalizing condition and sqrt(b^2 + s^2) for a memorized one (3.5x at b = 0.3, s = 1).
"""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from diffaudit.errors import DiffauditError
from diffaudit.models.contract import DenoiserModel, Model, check_cond
from diffaudit.models.controls import GaussianModel, make_conditional_control
from diffaudit.models.sampler import heun_sample, karras_sigmas, noise_from_seeds
from diffaudit.probes import cond_memorization as cm
from diffaudit.probes.cond_memorization import (
    MIN_CONDITIONS,
    condition_scores,
    detection_auc,
    flag_memorized,
    null_threshold,
)

P = 16


class Clusters(DenoiserModel):
    """Condition k: N(m_k, s_k^2 I), s_k = 0 a memorized point; null: the uniform mixture's posterior mean."""

    conditioning = "labels"

    def __init__(self, means, spreads, sigma_data=1.0, num_steps=32):
        self.m = np.asarray(means, np.float64)
        self.s2 = np.asarray(spreads, np.float64) ** 2
        self.n_classes = len(self.m)
        super().__init__((self.m.shape[1],), sigma_data=sigma_data, num_steps=num_steps)

    def denoise(self, x, sigma, cond=None):
        x = np.asarray(x, np.float64)
        flat = x.reshape(len(x), -1)
        if cond is None:
            v = self.s2 + sigma**2
            d2 = ((flat[:, None, :] - self.m[None]) ** 2).sum(-1)
            w = softmax(-0.5 * flat.shape[1] * np.log(v)[None] - d2 / (2 * v[None]), axis=1)
            Dk = self.m[None] + (self.s2 / v)[None, :, None] * (flat[:, None, :] - self.m[None])
            return np.einsum("nk,nkp->np", w, Dk).reshape(x.shape)
        k = check_cond(self, cond, len(x))
        a = self.s2[k] / (self.s2[k] + sigma**2)
        return (self.m[k] + a[:, None] * (flat - self.m[k])).reshape(x.shape)


def clusters(K=30, n_mem=3, b=0.3, s=1.0, seed=0, dim=P):
    """K conditions, ``n_mem`` of them memorized (random ones); returns (model, memorized mask)."""
    rng = np.random.default_rng(seed)
    mu = b * rng.standard_normal((K, dim))
    spreads = np.full(K, s)
    mem = np.zeros(K, bool)
    mem[rng.choice(K, n_mem, replace=False)] = True
    for k in np.flatnonzero(mem):
        mu[k] = mu[rng.integers(K)] + s * rng.standard_normal(dim)
        spreads[k] = 0.0
    return Clusters(mu, spreads), mem


def first_level_limit(model) -> np.ndarray:
    sigma_max = model.sampler_config.sigma_max
    return np.linalg.norm(model.m - model.m.mean(0), axis=1) / (sigma_max * np.sqrt(model.m.shape[1]))


def test_first_level_score_is_the_analytic_limit_and_memorized_conditions_score_higher():
    model, mem = clusters()
    r = condition_scores(model, np.arange(30))
    assert r.score.shape == (30,) and r.per_generation.shape == (30, 4) and r.per_level.shape == (30, 4, 1)
    assert r.sigmas == pytest.approx([160.0])  # sigma_max = 80 sigma_data / 0.5
    # corrections are O(b / sigma_max) = 0.002 relative: 1 % is a wide margin
    np.testing.assert_allclose(r.score, first_level_limit(model), rtol=0.01)
    assert r.score[mem].min() > r.score[~mem].max()
    # at sigma_max the noise barely moves the magnitude: the spread over generations is < 2 % of the score
    assert (r.score_sd / r.score < 0.02).all()
    assert ((r.score_ci[:, 0] <= r.score) & (r.score <= r.score_ci[:, 1])).all()
    # the same conditions and seed give the same numbers; another seed other noise
    np.testing.assert_array_equal(condition_scores(model, np.arange(30)).per_level, r.per_level)
    assert not np.array_equal(condition_scores(model, np.arange(30), seed=1).per_generation, r.per_generation)
    one = condition_scores(model, np.arange(30), n_gen=1)
    assert np.isnan(one.score_sd).all() and np.isnan(one.score_ci).all()
    np.testing.assert_array_equal(
        one.per_generation[:, 0], r.per_generation[:, 0]
    )  # generation j: seed (0, j)


def test_per_level_magnitudes_follow_the_models_own_heun_trajectory():
    # brute force: heun_sample with the conditional denoiser, its states recorded by the callback
    model, _ = clusters(K=12, n_mem=2, seed=3)
    labels = np.array([0, 5, 11])
    r = condition_scores(model, labels, n_gen=2, n_steps=6, seed=7)
    t = karras_sigmas(model.sampler_config)
    noise = noise_from_seeds(range(2), (P,), base_seed=7)
    for i, c in enumerate(labels):
        cond = np.full(2, c)
        states = [noise * t[0]]
        heun_sample(
            lambda x, s, cond=cond: model.denoise(x, s, cond),
            noise,
            model.sampler_config,
            callback=lambda j, s, x, states=states: states.append(x.copy()),
        )
        for j in range(6):
            x = states[j]
            diff = model.denoise(x, t[j], None) - model.denoise(x, t[j], cond)
            np.testing.assert_allclose(
                r.per_level[i, :, j], np.linalg.norm(diff, axis=1) / (t[j] * np.sqrt(P)), rtol=1e-9
            )
    np.testing.assert_allclose(r.score, r.per_level.mean((1, 2)))


def test_auc_is_one_on_memorized_conditions_and_a_half_on_random_labels():
    model, mem = clusters(K=40, n_mem=8, seed=2)
    r = condition_scores(model, np.arange(40))
    a = detection_auc(r, mem)
    assert a.auc == 1.0 and (a.n_memorized, a.n_other) == (8, 32)
    assert a.auc_ci == pytest.approx((0.025 ** (1 / 8), 1.0))  # perfect separation: the exact bound
    # random labels on a model with no memorized condition: nothing to detect
    null, _ = clusters(K=200, n_mem=0, seed=4)
    rn = condition_scores(null, np.arange(200), n_gen=2)
    y = np.random.default_rng(5).random(200) < 0.5
    an = detection_auc(rn.score, y)
    assert an.auc == pytest.approx(roc_auc_score(y, rn.score))  # the reference implementation
    assert an.auc_ci[0] <= 0.5 <= an.auc_ci[1] and abs(an.auc - 0.5) < 0.15


def test_flagging_on_null_audits_and_on_planted_memorized_conditions():
    # null: 30 generalizing conditions per audit; the rule's meaning is P(any flag) <= alpha = 0.05
    n_audits = 300
    any_flag = sum(
        flag_memorized(
            condition_scores(clusters(n_mem=0, seed=1000 + a)[0], np.arange(30), n_gen=2)
        ).n_flagged
        > 0
        for a in range(n_audits)
    )
    sd = np.sqrt(0.05 * 0.95 / n_audits)
    print(f"null audits with a flag: {any_flag / n_audits:.3f}")
    assert any_flag / n_audits <= 0.05 + 3 * sd
    # planted: 3 memorized of 30 per audit
    hits = false = 0
    for a in range(150):
        model, mem = clusters(seed=5000 + a)
        f = flag_memorized(condition_scores(model, np.arange(30), n_gen=2))
        hits += int((f.flagged & mem).sum())
        false += int((f.flagged & ~mem).sum())
    print(f"planted memorized flagged: {hits / 450:.3f}; generalizing flagged: {false / (27 * 150):.4f}")
    assert hits / 450 >= 0.9 and false / (27 * 150) <= 0.01


def test_flagging_fails_where_a_memorized_image_sits_no_farther_than_class_means():
    # diverse class means (b = 1) and tight classes (s = 0.3): a memorized point is as far from the mean as a
    # generalizing condition's mean, the first-level magnitude cannot tell them apart (the method's blind spot)
    hits = 0
    for a in range(40):
        model, mem = clusters(b=1.0, s=0.3, seed=9000 + a)
        hits += int((flag_memorized(condition_scores(model, np.arange(30), n_gen=1)).flagged & mem).sum())
    assert hits / 120 < 0.1


def test_threshold_meaning_on_exactly_lognormal_scores():
    # the rule's null exactly: m i.i.d. lognormal scores; an audit flags anything with probability alpha
    rng = np.random.default_rng(11)
    for m, alpha in ((12, 0.05), (50, 0.1)):
        n = 1500
        rate = np.mean(
            [flag_memorized(np.exp(rng.standard_normal(m)), alpha=alpha).n_flagged > 0 for _ in range(n)]
        )
        assert abs(rate - alpha) < 3 * np.sqrt(alpha * (1 - alpha) / n) + 0.005, (m, rate)
    # k decreases toward its large-m level; every score scaled by a constant flags the same
    assert null_threshold(10) > null_threshold(30)
    s = np.exp(rng.standard_normal(20))
    s[3] = np.exp(6.0)  # six standard deviations above the bulk
    f = flag_memorized(s)
    assert f.flagged[3] and f.n_flagged == 1
    np.testing.assert_array_equal(flag_memorized(7.0 * s).flagged, f.flagged)


def test_scores_are_per_coordinate_and_use_the_latent_shape():
    model, mem = clusters(seed=6)
    r = condition_scores(model, np.arange(30))
    # the same conditions on 4x the coordinates (each repeated): the per-coordinate score is unchanged
    big = Clusters(np.repeat(model.m, 4, axis=1), np.sqrt(model.s2))
    np.testing.assert_allclose(condition_scores(big, np.arange(30)).score, r.score, rtol=0.01)
    # a latent model: denoise acts on latents of latent_shape, shape is the decoded image
    latent = Clusters(model.m, np.sqrt(model.s2))
    latent.latent_shape, latent.shape = (P,), (3, 8, 8)
    np.testing.assert_array_equal(condition_scores(latent, np.arange(30)).per_level, r.per_level)


class Prompts(Model):
    """A text-conditional wrapper: prompt -> a cluster of ``Clusters``; denoise goes through it."""

    conditioning = "prompts"

    def __init__(self, inner, prompts):
        self.inner, self.index = inner, {p: i for i, p in enumerate(prompts)}
        self.shape, self.sampler_config, self.batch_size = inner.shape, inner.sampler_config, 5

    def denoise(self, x, sigma, cond=None):
        if cond is None:
            return self.inner.denoise(x, sigma)
        return self.inner.denoise(x, sigma, np.array([self.index[p] for p in check_cond(self, cond, len(x))]))


def test_prompts_duplicates_and_batches():
    model, mem = clusters(K=12, n_mem=2, seed=8)
    names = [f"prompt {k}" for k in range(12)]
    wrapped = Prompts(model, names)
    conds = [names[3], names[0], names[3], names[11]]  # a repeated prompt is computed once, reported twice
    r = condition_scores(wrapped, conds, n_gen=3)
    ref = condition_scores(model, np.array([3, 0, 3, 11]), n_gen=3)
    np.testing.assert_allclose(r.per_level, ref.per_level, rtol=1e-12)
    assert r.conds == conds and r.score[0] == r.score[2]
    assert [row["condition"] for row in r.rows()] == conds


def test_the_conditional_memorizer_of_a_single_item_class_is_flagged():
    # Task B's control: classes of random labels on one Gaussian population have means near the overall mean,
    # the class the memorizer holds ONE item of has that item as its mean: flagged, and only it
    rng = np.random.default_rng(12)
    y = np.concatenate([[0], np.repeat(np.arange(1, 12), 30)])
    train = rng.standard_normal((len(y), 8))
    model = make_conditional_control("memorizer", train, y, 12)
    f = flag_memorized(condition_scores(model, np.arange(12)))
    assert f.flagged[0] and f.n_flagged == 1


def test_first_level_sees_condition_means_only_memorizer_and_gaussian_agree():
    # the conditional memorizer and gaussian of the same classes (30 items each) share each class's mean, and at
    # sigma_max both denoisers are that mean up to O(1 / sigma_max^2): same scores. Copying many items of a class
    # is the copy search's job (probes.memorization), not this detector's; it sees conditions pinned to one item
    rng = np.random.default_rng(13)
    y = np.repeat(np.arange(10), 30)
    train = rng.standard_normal((300, 8)) + 0.5 * rng.standard_normal((10, 8))[y]
    mem = condition_scores(make_conditional_control("memorizer", train, y, 10), np.arange(10))
    gau = condition_scores(make_conditional_control("gaussian", train, y, 10), np.arange(10))
    np.testing.assert_allclose(mem.score, gau.score, rtol=1e-3)
    sigma_max = mem.sigmas[0]
    limit = np.linalg.norm(np.stack([train[y == c].mean(0) for c in range(10)]) - train.mean(0), axis=1) / (
        sigma_max * np.sqrt(8)
    )
    np.testing.assert_allclose(mem.score, limit, rtol=0.01)


class NoNull(Clusters):
    def denoise(self, x, sigma, cond=None):
        if cond is None:
            raise DiffauditError("this model was trained without condition dropout.")
        return super().denoise(x, sigma, cond)


class BlackBox(Model):
    conditioning = "labels"
    n_classes = 3
    shape = (P,)

    def sample(self, n, seed=0, cond=None):
        return np.zeros((n, P), np.float32)


def test_bad_input():
    model, mem = clusters(K=12, n_mem=2)
    with pytest.raises(DiffauditError, match="unconditional"):
        condition_scores(GaussianModel(np.random.default_rng(0).standard_normal((20, P))), [0, 1])
    with pytest.raises(DiffauditError, match="black box"):
        condition_scores(BlackBox(), [0, 1])
    with pytest.raises(DiffauditError, match="no null condition"):
        condition_scores(NoNull(model.m, np.sqrt(model.s2)), [0, 1])
    with pytest.raises(DiffauditError, match="no conditions"):
        condition_scores(model, [])
    with pytest.raises(DiffauditError, match="a sequence of conditions"):
        condition_scores(model, 3)
    with pytest.raises(DiffauditError, match="whole numbers"):
        condition_scores(model, "a prompt")  # a prompt for a labels model
    with pytest.raises(DiffauditError, match="outside the model's classes"):
        condition_scores(model, [0, 12])
    with pytest.raises(DiffauditError, match="n_steps"):
        condition_scores(model, [0, 1], n_steps=33)
    with pytest.raises(DiffauditError, match="n_gen"):
        condition_scores(model, [0, 1], n_gen=0)
    r = condition_scores(model, np.arange(12))
    with pytest.raises(DiffauditError, match="one True/False per condition"):
        detection_auc(r, mem[:-1])
    with pytest.raises(DiffauditError, match="at least one of each"):
        detection_auc(r, np.zeros(12, bool))
    with pytest.raises(DiffauditError, match=f"at least {MIN_CONDITIONS}"):
        flag_memorized(r.score[:9])
    with pytest.raises(DiffauditError, match="MAD 0"):
        flag_memorized(np.ones(12))
    with pytest.raises(DiffauditError, match="finite"):
        flag_memorized(np.r_[r.score[:11], np.nan])


def test_flags_need_an_effect_not_only_a_robust_outlier():
    """A bulk of near-identical scores (conditions whose means sit equally far from the mean) has a tiny MAD: a
    condition 0.5 % above it is a robust outlier, but not a memorized condition (MIN_RATIO); 2x the median is."""
    rng = np.random.default_rng(0)
    bulk = 1.0 + 1e-4 * rng.standard_normal(15)
    s = np.r_[bulk, 1.005]
    r = cm.flag_memorized(s)
    assert r.robust_z[-1] > r.threshold and r.n_flagged == 0
    r = cm.flag_memorized(np.r_[bulk, 2.0])
    assert r.n_flagged == 1 and r.flagged[-1]
    assert cm.flag_memorized(np.r_[bulk, 1.005], min_ratio=1.0).n_flagged == 1
