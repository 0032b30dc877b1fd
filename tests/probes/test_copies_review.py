"""Review findings on the transform-robust copy search (commit 995459d), each against a known answer.

Numbers before -> after the fixes are in the test comments (sprites, 16 px; 200-300 planted copies).
"""

import types

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.probes.memorization import find_copies
from diffaudit.probes.partial_copies import find_partial_copies, min_holdout


def sprites(n, seed, size=16):
    return get_dataset(f"sprites:size={size}").sample(n, seed)[0]


def noisy(x, s, rng):
    return (x + s * rng.standard_normal(x.shape)).astype(np.float32)


@pytest.mark.parametrize("times", [2, 4])
def test_duplicated_training_items_do_not_hide_copies(times):
    # a training set that holds each item `times` times: noisy copies had d1 = d2 (ratio 1), flagged 0.000
    base = sprites(1000 // times, 1)
    train = np.concatenate([base] * times)
    hold, fresh = sprites(1000, 2), sprites(500, 3)
    rng = np.random.default_rng(0)
    src = rng.choice(len(base), 150, replace=False)
    g = np.concatenate([fresh, noisy(train[src], 0.02 * float(train.std()), rng)])
    for tf in (None, "default"):
        r = find_copies(g, train, hold, transforms=tf)
        copied = r.is_copy[500:] & (r.nn_index[500:] % len(base) == src)
        assert copied.mean() >= 0.99, (tf, copied.mean())
        assert r.is_copy[:500].mean() <= 0.01, (tf, r.is_copy[:500].mean())


def test_constant_images_are_compared_by_their_raw_pixels():
    # standardising mapped every constant image to 0: all-grey and all-white images were 100 % copies of a
    # black training image
    train, hold = sprites(500, 1), sprites(500, 2)
    train[0] = -1.0
    grey, white, black = (np.full((20, 1, 16, 16), v, np.float32) for v in (0.0, 1.0, -1.0))
    r = find_copies(np.concatenate([grey, white, black]), train, hold, transforms="default")
    assert not r.is_copy[:40].any()
    assert r.is_copy[40:].all() and (r.nn_index[40:] == 0).all()


def test_partial_rule_needs_a_holdout_of_min_size():
    # k = max(1, binom.ppf(0.05, m, 0.01)) was 1 for m < 299: fresh images flagged at ~1 / (m + 1)
    assert min_holdout(0.01) == 299
    x = sprites(40, 1)
    with pytest.raises(DiffauditError, match="at least 299"):
        find_partial_copies(x[:5], x, sprites(298, 2))


def _ctx(train, hold, gen):
    from diffaudit.pipeline import stages

    ctx = types.SimpleNamespace(
        fg=gen.reshape(len(gen), -1),
        ft=train.reshape(len(train), -1),
        fh=hold.reshape(len(hold), -1),
        gen=gen,
        train=train,
        holdout=hold,
        embedder=types.SimpleNamespace(name="pixels", size=None),
        cfg=types.SimpleNamespace(max_calibration=10_000, seed=0),
        probes={},
        details={},
        skipped=[],
        art={},
    )
    ctx.subsample = lambda x, k, salt: x
    ctx.subsample_rows = lambda n, k, salt: np.arange(n)
    ctx.put = lambda key, value, ci=None: ctx.probes.__setitem__(key, value)
    stages.copies(ctx)
    return ctx


@pytest.mark.parametrize("size,n_hold", [(16, 40), (3, 400)])
def test_copies_stage_keeps_the_whole_image_rate_when_partial_cannot_run(size, n_hold):
    # 3-px images crashed find_partial_copies ("grid=4 must be ...") and the whole copies stage with it
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (300, 1, size, size)).astype(np.float32)
    hold = rng.uniform(-1, 1, (n_hold, 1, size, size)).astype(np.float32)
    gen = np.concatenate([train[:10], rng.uniform(-1, 1, (10, 1, size, size)).astype(np.float32)])
    ctx = _ctx(train, hold, gen)
    # 3-px images are below MIN_TRANSFORM_SIDE: plain distances (2-px shifts of them compare 1-px windows, which
    # put the holdout threshold at 0 and left exact copies unflagged); the 10 exact copies are found either way
    assert ctx.probes["memorization.copy_rate"] == pytest.approx(0.5)
    used = ctx.details["memorization"]["transforms"]
    assert used == ["identity"] if size == 3 else len(used) > 1
    assert "memorization.copy_rate_partial" not in ctx.probes and ctx.art["partial_copies"] is None
    why = ctx.details["memorization"]["partial_skipped"]
    assert ("at least 299 holdout" in why) if size == 16 else ("at least 4 x 4" in why)
    assert [s["probe"] for s in ctx.skipped] == ["memorization.copy_rate_partial"]


def test_partial_copies_survive_slight_noise():
    # a quarter-image paste + 0.5 % noise: 0.000 before (the threshold came from holdout windows without content)
    train, hold, fresh = sprites(1000, 1), sprites(2000, 2), sprites(300, 3)
    rng = np.random.default_rng(0)
    src = rng.choice(1000, 300, replace=False)
    out = fresh.copy()
    for i, s in enumerate(src):  # paste the 8 x 8 window with the most object mass
        _, r0, c0 = max(
            ((train[s, :, r : r + 8, c : c + 8] + 1).sum(), r, c) for r in (0, 4, 8) for c in (0, 4, 8)
        )
        out[i, :, r0 : r0 + 8, c0 : c0 + 8] = train[s, :, r0 : r0 + 8, c0 : c0 + 8]
    g = np.concatenate([sprites(1000, 4), noisy(out, 0.005 * float(train.std()), rng)])
    p = find_partial_copies(g, train, hold)
    assert (p.is_partial[1000:] & (p.nn_index[1000:] == src)).mean() >= 0.9
    assert p.is_partial[:1000].mean() <= 0.01
