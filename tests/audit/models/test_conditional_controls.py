"""Class-conditional analytic controls (``make_conditional_control``): one control per class fitted to that
class's own training items, and the plain control of the whole training set for ``cond=None``.

Known answers: the conditional memorizer's class-c samples are copies of class-c training items, even where the
classes overlap completely; the conditional gaussian's class-c samples have class c's training mean and
covariance; the conditional oracle's class-c samples are fresh data of class c; ``cond=None`` is exactly the
unconditional control.
"""

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.datasets.labels import labels_from_factors, sample_class
from diffaudit.errors import DiffauditError
from diffaudit.models.adapters import load_model
from diffaudit.models.controls import (
    ConditionalControl,
    ConditionalDenoiserControl,
    GaussianModel,
    MemorizerModel,
    class_seed,
    make_conditional_control,
    make_control,
)
from diffaudit.models.sampler import noise_from_seeds

D = 6


def separated(n_per=(120, 90, 60), seed=0):
    """Three classes with their own means and anisotropic covariances: (train (n, D), labels (n,))."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, n in enumerate(n_per):
        A = rng.standard_normal((D, D)) * np.linspace(0.3, 1.2, D)
        xs.append(4.0 * c + rng.standard_normal((n, D)) @ A.T)
        ys.append(np.full(n, c))
    return np.concatenate(xs), np.concatenate(ys)


def overlapping(n=240, k=4, seed=1):
    """One population N(0, I), labels at random: the classes overlap completely."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)), rng.permutation(np.arange(n) % k)


def test_memorizer_copies_items_of_its_own_class_never_of_another():
    train, y = overlapping()
    m = make_conditional_control("memorizer", train, y, 4)
    assert isinstance(m, ConditionalDenoiserControl) and m.conditioning == "labels" and m.n_classes == 4
    labels = np.arange(80) % 4
    x = m.sample(80, seed=3, cond=labels)
    d2 = ((x[:, None, :].astype(np.float64) - train[None]) ** 2).sum(-1)
    nn = d2.argmin(1)
    # a copy: within 1e-3 of a training item, while training items sit ~1 apart in 6 dims
    assert np.sqrt(d2.min(1)).max() < 1e-3
    np.testing.assert_array_equal(y[nn], labels)
    # the plain memorizer of all items copies whichever item its trajectory falls into, class or not
    plain = make_control("memorizer", train).sample(80, 3)
    nn_plain = ((plain[:, None, :] - train[None]) ** 2).sum(-1).argmin(1)
    assert (y[nn_plain] != labels).mean() > 0.5


def test_denoisers_route_each_row_to_its_class():
    train, y = separated()
    for name, cls in (("gaussian", GaussianModel), ("memorizer", MemorizerModel)):
        m = make_conditional_control(name, train, y, 3)
        x = np.random.default_rng(2).standard_normal((9, D)) * 3
        labels = np.array([2, 0, 1, 1, 0, 2, 2, 0, 1])
        out = m.denoise(x, 0.7, labels)
        for c in range(3):
            np.testing.assert_allclose(
                out[labels == c], cls(train[y == c]).denoise(x[labels == c], 0.7), rtol=1e-12, atol=1e-12
            )
        np.testing.assert_allclose(m.denoise(x, 0.7), cls(train).denoise(x, 0.7), rtol=1e-12)


def test_gaussian_class_samples_have_the_class_mean_and_covariance():
    train, y = separated()
    m = make_conditional_control("gaussian", train, y, 3)
    n = 3000
    x = m.sample(2 * n, seed=5, cond=np.repeat([0, 2], n)).astype(np.float64)
    for c, xc in ((0, x[:n]), (2, x[n:])):
        mu, S = train[y == c].mean(0), np.cov(train[y == c].T)
        # the sample mean of n draws of N(mu, S): each coordinate within 4.5 standard errors
        # (P(any of 6 beyond) ~ 4e-5)
        z = (xc.mean(0) - mu) / np.sqrt(np.diag(S) / n)
        assert np.abs(z).max() < 4.5, z
        # sample covariance: E ||S_hat - S||_F^2 = (tr(S^2) + (tr S)^2) / n for Gaussian draws; 4x that bound
        err = ((np.cov(xc.T) - S) ** 2).sum()
        assert err < 4 * (np.trace(S @ S) + np.trace(S) ** 2) / n, err
        # and not another class's: class means are 4 apart per coordinate
        other = train[y == (2 - c)].mean(0)
        assert np.linalg.norm(xc.mean(0) - other) > 10


def test_black_box_controls_sample_their_class():
    train, y = separated()
    labels = np.repeat([0, 1, 2], 150)
    for name in ("shrunk", "collapsed", "interpolator", "noisy-memorizer"):
        m = make_conditional_control(name, train, y, 3)
        assert isinstance(m, ConditionalControl) and not m.has_denoiser
        x = m.sample(450, seed=1, cond=labels).astype(np.float64)
        for c in range(3):
            mu = train[y == c].mean(0)
            spread = np.sqrt(np.trace(np.cov(train[y == c].T)))
            # every control keeps its class's training mean (shrunk, collapsed exactly in expectation;
            # interpolator and noisy-memorizer as averages of class items): within 0.35 of the class spread
            assert np.linalg.norm(x[labels == c].mean(0) - mu) < 0.35 * spread, (name, c)
        d_nn = ((x[:, None, :] - train[None]) ** 2).sum(-1).argmin(1)
        assert (y[d_nn] == labels).mean() > 0.97, name


def test_oracle_draws_fresh_samples_of_the_class():
    ds = get_dataset("molrg")
    train, z = ds.sample(200, 0)
    y = labels_from_factors(ds, z)
    K = int(y.max()) + 1
    m = make_conditional_control("oracle", train, y, K, dataset=ds)
    labels = np.arange(40) % K
    x = m.sample(40, seed=2, cond=labels)
    np.testing.assert_array_equal(labels_from_factors(ds, ds.project(x)[0]), labels)
    np.testing.assert_array_equal(m.sample(40, 2, labels), x)
    with pytest.raises(DiffauditError, match="classes of"):
        make_conditional_control("oracle", train, y, K + 1, dataset=ds)


def test_finite_oracle_draws_class_items_outside_the_training_set():
    ds = get_dataset("digits")
    (train, zt), _ = ds.split(1000, 0, seed=0)
    y = labels_from_factors(ds, zt)
    m = make_conditional_control("oracle", train, y, 10, dataset=ds)
    labels = np.repeat([3, 7], 30)
    x = m.sample(60, seed=1, cond=labels)
    np.testing.assert_array_equal(labels_from_factors(ds, ds.project(x)[0]), labels)
    seen = {r.tobytes() for r in train.reshape(len(train), -1)}
    assert not any(r.tobytes() in seen for r in x.reshape(len(x), -1))
    assert len({r.tobytes() for r in x.reshape(len(x), -1)}) == 60  # without replacement
    left = int((labels_from_factors(ds, ds.sample(1797, 0)[1]) == 3).sum() - (y == 3).sum())
    with pytest.raises(DiffauditError, match=f"only the {left} items of class 3"):
        m.sample(left + 1, seed=0, cond=np.full(left + 1, 3))


def test_sample_class_of_a_finite_dataset_draws_without_replacement():
    ds = get_dataset("digits")
    x, z = sample_class(ds, 4, 150, seed=0)
    assert (labels_from_factors(ds, z) == 4).all() and len({r.tobytes() for r in x.reshape(150, -1)}) == 150
    np.testing.assert_array_equal(sample_class(ds, 4, 150, seed=0)[0], x)
    n4 = int((labels_from_factors(ds, ds.sample(1797, 0)[1]) == 4).sum())
    assert len(sample_class(ds, 4, n4, seed=1)[0]) == n4
    with pytest.raises(DiffauditError, match=f"has {n4} items"):
        sample_class(ds, 4, n4 + 1, seed=0)


def test_a_class_with_a_single_training_item():
    train, y = separated()
    y = y.copy()
    y[0] = 3  # class 3: one item
    m = make_conditional_control("memorizer", train, y, 4)
    x = m.sample(5, seed=0, cond=np.full(5, 3))
    np.testing.assert_allclose(x, np.repeat(train[:1], 5, axis=0), atol=1e-5)  # the memorizer of one item
    for name in ("gaussian", "shrunk", "noisy-memorizer"):
        with pytest.raises(DiffauditError, match=r"class 3 \(three\) has 1 training item"):
            make_conditional_control(name, train, y, 4, class_names=["zero", "one", "two", "three"])
    with pytest.raises(DiffauditError, match="class 4 has 0 training item"):
        make_conditional_control("memorizer", train, y, 5)
    # a class too small for a parameter: the control's own error, naming the class
    with pytest.raises(DiffauditError, match="class 2 of the training set: control 'interpolator'"):
        make_conditional_control("interpolator:k=60", train, separated()[1], 3)


def test_unconditional_path_is_the_plain_control_of_all_the_data():
    train, y = separated()
    for name in ("gaussian", "memorizer", "shrunk", "collapsed", "interpolator", "noisy-memorizer"):
        m = make_conditional_control(name, train, y, 3)
        np.testing.assert_array_equal(m.sample(20, seed=4), make_control(name, train).sample(20, 4))
    g = make_conditional_control("gaussian", train, y, 3, clip=(-1.0, 1.0))
    noise = noise_from_seeds(range(8), (D,), base_seed=1)
    np.testing.assert_array_equal(
        g.sample_from_noise(noise), make_control("gaussian", train, clip=(-1.0, 1.0)).sample_from_noise(noise)
    )
    assert np.abs(g.sample_from_noise(noise, np.zeros(8, int))).max() <= 1.0  # the clip holds per class too


def test_determinism_is_per_seed_and_labels():
    train, y = separated()
    for name in ("gaussian", "shrunk"):
        m = make_conditional_control(name, train, y, 3)
        a = m.sample(6, seed=2, cond=[0, 1, 0, 2, 0, 1])
        np.testing.assert_array_equal(m.sample(6, seed=2, cond=[0, 1, 0, 2, 0, 1]), a)
        # a row depends on (seed, its label, its rank among the rows of that label), not on the other classes
        b = m.sample(5, seed=2, cond=[2, 0, 0, 1, 0])
        np.testing.assert_allclose(b[[1, 2, 4]], a[[0, 2, 4]], rtol=1e-6)
        np.testing.assert_allclose(b[0], a[3], rtol=1e-6)
        assert not np.allclose(m.sample(6, seed=3, cond=[0, 1, 0, 2, 0, 1]), a)
    # the denoiser controls' sample is sample_from_noise of the per-class seeded noise; row i of
    # sample_from_noise depends only on noise i and label i
    m = make_conditional_control("gaussian", train, y, 3)
    labels = np.array([1, 0, 1])
    noise = np.stack(
        [noise_from_seeds([0], (D,), base_seed=class_seed(2, 1))[0]]
        + [noise_from_seeds([0], (D,), base_seed=class_seed(2, 0))[0]]
        + [noise_from_seeds([1], (D,), base_seed=class_seed(2, 1))[0]]
    )
    x = m.sample_from_noise(noise, labels)
    np.testing.assert_array_equal(m.sample(3, seed=2, cond=labels), x)
    np.testing.assert_allclose(m.sample_from_noise(noise[::-1], labels[::-1]), x[::-1], rtol=1e-9)


def test_condition_validation():
    train, y = separated()
    m = make_conditional_control("gaussian", train, y, 3)
    with pytest.raises(DiffauditError, match="one class label per sample"):
        m.sample(4, seed=0, cond=[0, 1])
    with pytest.raises(DiffauditError, match="outside the model's classes"):
        m.denoise(np.zeros((2, D)), 1.0, [0, 3])
    with pytest.raises(DiffauditError, match="whole numbers"):
        m.sample(2, seed=0, cond=[0.5, 1.0])
    with pytest.raises(DiffauditError, match="one class label per sample"):
        make_conditional_control("gaussian", train, y[:-1], 3)
    with pytest.raises(DiffauditError, match="outside the model's classes"):
        make_conditional_control("gaussian", train, y, 2)
    with pytest.raises(DiffauditError, match="one name per class"):
        make_conditional_control("gaussian", train, y, 3, class_names=["a", "b"])
    with pytest.raises(DiffauditError, match="no class-conditional form"):
        make_conditional_control("mode-dropper", train, y, 3, dataset=get_dataset("molrg"))
    with pytest.raises(DiffauditError, match="has no parameter"):
        make_conditional_control("gaussian:k=3", train, y, 3)
    # n_classes None: the largest label + 1
    assert make_conditional_control("collapsed", train, y, None).n_classes == 3


def test_adapter_builds_the_conditional_control_when_labels_are_given():
    train, y = separated()
    m = load_model("control:memorizer", train=train, train_labels=y, n_classes=3, class_names=("a", "b", "c"))
    assert m.conditioning == "labels" and m.name == "control:memorizer" and m.class_names == ("a", "b", "c")
    assert load_model("control:memorizer", train=train).conditioning is None
    g = load_model("control:gaussian", train=train, train_labels=y, n_classes=3, num_steps=8)
    assert g.sampler_config.num_steps == 8 and g.clip is None
