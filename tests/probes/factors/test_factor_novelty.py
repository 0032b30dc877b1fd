"""Novelty (probes/factors/novelty.py): the ratio rule against brute force, agreement with the memorization
probe, factor-space copies and the held-out-combination rate."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.probes import factors as fp
from diffaudit.probes.memorization import find_copies


def test_novelty_ratio_rule_matches_brute_force(rng):
    train = rng.standard_normal((200, 5)).astype(np.float32)
    gen = np.concatenate([train[:30] + 0.01, rng.standard_normal((70, 5))]).astype(np.float32)
    valid = np.ones(100, bool)
    valid[::4] = False
    r = fp.novelty(gen, train, valid)
    d = np.sqrt(((gen[:, None].astype(np.float64) - train[None]) ** 2).sum(-1))
    ds = np.sort(d, 1)
    ratio = ds[:, 0] / ds[:, 1]
    np.testing.assert_allclose(r.ratio, ratio, rtol=1e-5)
    copy = ratio < 1 / 3
    assert copy[:30].all()
    np.testing.assert_array_equal(r.is_copy, copy)
    assert r.n_novel_valid == int((valid & ~copy).sum())
    assert r.novel_valid_rate == pytest.approx((valid & ~copy).mean())
    assert r.novel_rate_among_valid == pytest.approx((valid & ~copy).sum() / valid.sum())
    np.testing.assert_array_equal(r.nn_index, d.argmin(1))


def test_novelty_agrees_with_the_memorization_probe(rng):
    ds = get_dataset(
        "molrg:d=16,K=2,r=2"
    )  # intrinsic dimension 2: the ratio rule alone flags ~1/9 of fresh data
    train, _ = ds.sample(300, 0)
    holdout, _ = ds.sample(300, 1)
    gen = np.concatenate([train[:40], ds.sample(160, 2)[0]])
    valid = np.ones(200, bool)
    r_ratio = fp.novelty(gen, train, valid)
    r_hold = fp.novelty(gen, train, valid, holdout=holdout)
    cr = find_copies(gen, train, holdout)
    np.testing.assert_array_equal(r_hold.is_copy, cr.is_copy)
    np.testing.assert_allclose(r_ratio.ratio, cr.ratio, atol=1e-6)
    np.testing.assert_array_equal(r_ratio.nn_index, cr.nn_index)
    assert r_hold.is_copy[:40].all() and r_ratio.is_copy[:40].all()
    assert r_hold.is_copy[40:].mean() <= r_ratio.is_copy[40:].mean()


def test_novelty_accepts_is_copy_and_factor_space_copies(rng):
    train = rng.standard_normal((100, 4)).astype(np.float32)
    gen = rng.standard_normal((50, 4)).astype(np.float32)
    given = np.zeros(50, bool)
    given[:10] = True
    r = fp.novelty(gen, train, np.ones(50, bool), is_copy=given)
    np.testing.assert_array_equal(r.is_copy, given)
    assert r.novel_valid_rate == pytest.approx(0.8)
    # factor space: generated factors equal to training factors -> copies even if data differ
    z_train = rng.standard_normal((100, 2))
    z_gen = np.concatenate([z_train[:20], rng.standard_normal((30, 2))])
    r2 = fp.novelty(gen, train, np.ones(50, bool), z_gen=z_gen, z_train=z_train)
    assert r2.factor_is_copy[:20].all()
    assert r2.is_copy[:20].all()
    with pytest.raises(DiffauditError, match="valid_mask"):
        fp.novelty(gen, train, np.ones(3, bool))


def test_novelty_holdout_rate_against_reference(rng):
    gen = rng.standard_normal((400, 3)).astype(np.float32)
    train = rng.standard_normal((100, 3)).astype(np.float32)
    valid = np.ones(400, bool)
    valid[:100] = False
    region = np.zeros(400, bool)
    region[50:150] = True  # 50 invalid + 50 valid samples in the region
    r = fp.novelty(gen, train, valid, holdout_mask=region, reference_holdout_rate=0.25)
    assert r.holdout_rate == pytest.approx(50 / 400)
    assert r.holdout_ratio == pytest.approx(0.5)


def test_novelty_holdout_rate_on_sprites_compositional_split():
    # the held-out region mask comes from the dataset; the probe only counts (no oracle needed):
    ds = get_dataset("sprites:size=16,holdout_region=triangle-topleft,split=all")
    x, z = ds.sample(1200, 0)
    in_region = ds.in_holdout_region(z)
    train, _ = get_dataset("sprites:size=16,holdout_region=triangle-topleft").sample(300, 1)
    r = fp.novelty(
        x, train, np.ones(len(x), bool), holdout_mask=in_region, reference_holdout_rate=ds.region_rate
    )
    # true samples of the full prior: held-out share ~ the region's prior mass 1/12 (binomial sd 0.008)
    assert abs(r.holdout_rate - 1 / 12) < 0.03 and 0.6 < r.holdout_ratio < 1.4
