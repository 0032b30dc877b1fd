"""float64 features far from 0 keep their spread through the float32 cast in the copy, C_T, AuthPct, extraction,
factor and moment probes (``_checks`` module docstring): every set a measure compares is shifted by ONE offset in
float64 before the cast (a constant one for images under the transform search), so that

- data at 1e4 with spread 1e-4 (copies 1e-4 x the spread from their training item, fresh samples) give the result
  of the same call on the data centred at 0: same flags and indices, distances to float32 precision;
- the old code (each array cast on its own; it is the new code's float32 path, so a call on the float32 cast of the
  inputs reproduces it) got those data wrong: all points fell on a few float32 grid points at 1e4 (spacing ~1e-3),
  copies became exact copies and so did fresh samples;
- float32 inputs are not shifted (every cast gets no offset: the arrays, and so every result, are those of before)
  and ordinary float64 data (offset ~ spread) give the flags of before.

The cosine metric is not translation invariant: rows are normalised in float64 before the cast, and features far
from 0 (whose directions float32 cannot tell apart) keep the PrecisionWarning.
"""

import contextlib
import warnings

import numpy as np
import pytest

from diffaudit.errors import DiffauditError
from diffaudit.probes import _checks
from diffaudit.probes import extraction as ext
from diffaudit.probes import memorization as mem
from diffaudit.probes import moment_error as me
from diffaudit.probes.factors import _common, novelty

OFF, S = 1e4, 1e-4  # offset and spread: the float32 grid at 1e4 (~1e-3) is 10x the spread
D = 8


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def copy_data(rng, n_train=300, n_copies=30, n_fresh=50, n_holdout=300, d=D):
    """Centred sets (spread S): training rows, holdout, generated = noisy copies (1e-4 x S) then fresh rows."""
    train = S * rng.standard_normal((n_train, d))
    holdout = S * rng.standard_normal((n_holdout, d))
    copies = train[:n_copies] + 1e-4 * S * rng.standard_normal((n_copies, d))
    generated = np.concatenate([copies, S * rng.standard_normal((n_fresh, d))])
    return generated, train, holdout


@contextlib.contextmanager
def strict():
    """No PrecisionWarning (nor any other) may be raised: the shifted cast keeps the spread."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def f32(*arrays):
    return tuple(a if a is None or callable(a) else np.asarray(a, np.float32) for a in arrays)


def old_call(fn, *arrays, **kw):
    """What the old code returned for float64 ``arrays``: it cast each to float32 as given, which is the new code
    on the float32 cast (``test_float32_inputs_are_not_shifted``). The lossy cast warns: silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _checks.PrecisionWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # 0 / 0 where collapsed images have no spread
        return fn(*f32(*arrays), **kw)


def assert_same_copies(r, r0, scale=S):
    np.testing.assert_array_equal(r.is_copy, r0.is_copy)
    np.testing.assert_array_equal(r.nn_index, r0.nn_index)
    np.testing.assert_allclose(r.d1, r0.d1, rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(r.d2, r0.d2, rtol=1e-4, atol=1e-6 * scale)


# ------------------------------------------------------------------------------------------------ find_copies


@pytest.mark.parametrize("with_holdout", [False, True])
def test_find_copies_far_from_zero_equals_the_centred_call(rng, with_holdout):
    g, t, h = copy_data(rng)
    h = h if with_holdout else None
    with strict():
        r = mem.find_copies(g + OFF, t + OFF, None if h is None else h + OFF)
    r0 = mem.find_copies(g, t, h)
    assert_same_copies(r, r0)
    if h is not None:
        assert r.holdout_threshold == pytest.approx(r0.holdout_threshold, rel=1e-5)
    assert r.is_copy[:30].all() and r.is_copy[30:].mean() <= 0.02
    assert (r.d1[:30] > 0).all()  # near copies stay near copies, not exact ones
    old = old_call(mem.find_copies, g + OFF, t + OFF, None if h is None else h + OFF)
    if h is None:
        assert old.is_copy[30:].mean() > 0.9  # the old cast made fresh samples exact copies
    else:
        assert not old.is_copy[:30].any()  # ... and the holdout threshold 0: no copy was ever flagged


def test_find_copies_tile_distance_far_from_zero(rng):
    g, t, h = copy_data(rng, d=16)
    shape = (1, 4, 4)
    with strict():
        r = mem.find_copies(g + OFF, t + OFF, h + OFF, tile=True, image_shape=shape)
    r0 = mem.find_copies(g, t, h, tile=True, image_shape=shape)
    assert_same_copies(r, r0)
    np.testing.assert_array_equal(r.is_copy_carlini, r0.is_copy_carlini)
    np.testing.assert_allclose(r.carlini_score, r0.carlini_score, rtol=1e-4, atol=1e-6)


def image_copy_data(rng, n_train=200, n_copies=20, n_fresh=30, side=10):
    """Centred images (n, 1, side, side): copies are training images shifted 1 px right (+ 1e-4 x S noise)."""

    def imgs(n):
        return S * rng.standard_normal((n, 1, side, side))

    train, holdout = imgs(n_train), imgs(n_train)
    copies = np.roll(train[:n_copies], 1, axis=3) + 1e-4 * S * rng.standard_normal((n_copies, 1, side, side))
    return np.concatenate([copies, imgs(n_fresh)]), train, holdout


def test_find_copies_under_transforms_far_from_zero(rng):
    g, t, h = image_copy_data(rng)
    with strict():
        r = mem.find_copies(g + OFF, t + OFF, h + OFF, transforms="default")
    r0 = mem.find_copies(g, t, h, transforms="default")
    assert_same_copies(r, r0, scale=r0.holdout_threshold)
    np.testing.assert_array_equal(r.transform, r0.transform)
    assert r.is_copy[:20].all() and not r.is_copy[20:].any()
    assert set(r.transform[:20]) == {"shift(+1,+0)"}
    # a constant offset commutes with the shift: the shifted copies stay at distance ~0 (1e-4 x the spread in
    # the standardised views), where a per-pixel offset o leaves T(o) - o (~0.1 of the holdout threshold here)
    assert r.d1[:20].max() < 1e-3 * r.holdout_threshold
    try:
        old = old_call(mem.find_copies, g + OFF, t + OFF, h + OFF, transforms="default")
    except DiffauditError:  # the collapsed images have no spread to standardise by
        return
    assert not np.array_equal(old.is_copy, r0.is_copy)


def test_the_offset_is_constant_over_pixels_under_transforms(rng):
    _, t, _ = image_copy_data(rng)
    a = (t + OFF).reshape(len(t), -1)
    off = mem.shared_offset(a, scalar=True)
    assert np.ptp(off) == 0 and abs(off[0] - OFF) < 3 * S
    assert np.ptp(mem.shared_offset(a)) > 0  # per coordinate without transforms
    assert mem.shared_offset(a.astype(np.float32), scalar=True) is None


def test_cosine_normalises_in_float64_and_keeps_the_warning(rng):
    g, t, h = copy_data(rng)
    g32, t32, h32 = f32(g / S + 1, t / S + 1, h / S + 1)  # ordinary features, away from 0 as cosine needs

    def unit(x):  # the old normalisation: float32 rows, norm in float64, cast back
        return (x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)

    r = mem.find_copies(g32, t32, h32, metric="cosine")
    ref = mem.find_copies(unit(g32), unit(t32), unit(h32))
    np.testing.assert_array_equal(r.d1, ref.d1)  # float32 inputs: bit for bit the old rows
    np.testing.assert_array_equal(r.is_copy, ref.is_copy)
    r64 = mem.find_copies(g / S + 1, t / S + 1, h / S + 1, metric="cosine")
    np.testing.assert_array_equal(r64.is_copy, r.is_copy)
    # far from 0 every row points the same way: float32 cannot resolve the cosines, and says so
    with pytest.warns(_checks.PrecisionWarning):
        mem.find_copies(g + OFF, t + OFF, h + OFF, metric="cosine")


@pytest.mark.filterwarnings("ignore::diffaudit.probes._checks.PrecisionWarning")  # the unshifted odd array
def test_a_width_mismatch_is_named_not_the_offset(rng):
    g, t, h = copy_data(rng)
    with pytest.raises(DiffauditError, match="holdout has 7 feature dimensions"):
        mem.find_copies(g + OFF, t + OFF, h[:, :7] + OFF)
    with pytest.raises(DiffauditError, match="generated has 7 feature dimensions"):
        mem.authenticity(g[:, :7] + OFF, t + OFF)


# ------------------------------------------------------------------------------------------- C_T, authenticity


def mixture(rng, centres, n):
    return centres[rng.integers(0, len(centres), n)] + S * rng.standard_normal((n, centres.shape[1]))


def test_ct_test_far_from_zero_equals_the_centred_call(rng):
    centres = 4 * S * rng.standard_normal((8, D))
    t, h = mixture(rng, centres, 400), mixture(rng, centres, 1000)
    memorizer = t[rng.integers(0, 400, 200)] + 1e-4 * S * rng.standard_normal((200, D))
    with strict():
        r = mem.ct_test(memorizer + OFF, t + OFF, h + OFF)
    r0 = mem.ct_test(memorizer, t, h)
    np.testing.assert_array_equal(r.cell_generated, r0.cell_generated)
    np.testing.assert_array_equal(r.cell_holdout, r0.cell_holdout)
    np.testing.assert_allclose(r.d_generated, r0.d_generated, rtol=1e-4, atol=1e-6 * S)
    assert r.c_t == pytest.approx(r0.c_t, rel=1e-6)
    assert r.c_t < -8  # data-copying, as on the memorizer control
    assert old_call(mem.ct_test, memorizer + OFF, t + OFF, h + OFF).c_t > -3  # the old cast hid most of it


def test_authenticity_far_from_zero_equals_the_centred_call(rng):
    g, t, h = copy_data(rng)
    with strict():
        r = mem.authenticity(g + OFF, t + OFF, reference=h + OFF)
    r0 = mem.authenticity(g, t, reference=h)
    np.testing.assert_array_equal(r.authentic, r0.authentic)
    np.testing.assert_array_equal(r.nn_index, r0.nn_index)
    np.testing.assert_allclose(r.d_gen, r0.d_gen, rtol=1e-4, atol=1e-6 * S)
    assert r.reference == r0.reference
    assert not r.authentic[:30].any() and r.authentic[30:].mean() > 0.4
    old = old_call(mem.authenticity, g + OFF, t + OFF, reference=h + OFF)
    assert old.authentic[30:].mean() < 0.2  # fresh samples looked like copies


# ------------------------------------------------------------------------------------------------- extraction


def generator(train, offset, kind, dtype=np.float64):
    def generate(start, m):
        r = np.random.default_rng(start)
        if kind == "memorizer":
            x = train[r.integers(0, len(train), m)] + 1e-4 * S * r.standard_normal((m, train.shape[1]))
        else:
            x = S * r.standard_normal((m, train.shape[1]))
        return (x + offset).astype(dtype)

    return generate


@pytest.mark.parametrize("kind", ["memorizer", "fresh"])
def test_extract_far_from_zero_equals_the_centred_call(rng, kind):
    _, t, h = copy_data(rng, n_train=150)
    h = h if kind == "memorizer" else None  # fresh generations are checked by the ratio rule alone
    with strict():
        r = ext.extract(generator(t, OFF, kind), 600, t + OFF, None if h is None else h + OFF, chunk_size=200)
    r0 = ext.extract(generator(t, 0.0, kind), 600, t, h, chunk_size=200)
    np.testing.assert_array_equal(r.extracted_index, r0.extracted_index)
    np.testing.assert_array_equal(r.extracted_at, r0.extracted_at)
    assert (r.n_copies, r.unique_train_copied, r.n_clusters) == (
        r0.n_copies,
        r0.unique_train_copied,
        r0.n_clusters,
    )
    assert r.link_radius == pytest.approx(r0.link_radius, rel=1e-5)
    # the gallery is in the caller's coordinates, to float32 precision of the spread
    np.testing.assert_allclose(r.gallery_samples - OFF, r0.gallery_samples, rtol=0, atol=1e-6 * S)
    g32 = generator(t, OFF, kind, np.float32)
    old = old_call(ext.extract, g32, 600, t + OFF, None if h is None else h + OFF, chunk_size=200)
    if kind == "memorizer":
        assert r.unique_train_extracted > 100
        assert old.unique_train_extracted == 0  # holdout threshold 0: nothing verified
    else:
        assert r.unique_train_extracted == 0 and r.n_copies <= 6
        assert old.n_copies > 500  # every fresh generation an exact copy


def test_extract_under_transforms_far_from_zero(rng):
    _, t, h = image_copy_data(rng, n_train=60, side=8)

    def generate(offset):
        def g(start, m):
            r = np.random.default_rng(start)
            x = np.roll(t[r.integers(0, len(t), m)], 1, axis=3)
            return x + 1e-4 * S * r.standard_normal(x.shape) + offset

        return g

    with strict():
        r = ext.extract(generate(OFF), 200, t + OFF, h + OFF, transforms="default", chunk_size=100)
    r0 = ext.extract(generate(0.0), 200, t, h, transforms="default", chunk_size=100)
    np.testing.assert_array_equal(r.extracted_index, r0.extracted_index)
    np.testing.assert_array_equal(r.extracted_transform, r0.extracted_transform)
    assert r.unique_train_extracted > 30 and set(r.extracted_transform) == {"shift(+1,+0)"}


# --------------------------------------------------------------------------------------------------- moments


def test_moment_errors_far_from_zero_equal_the_centred_call(rng):
    x = 1.3 * S * rng.standard_normal((500, 4))
    ref = S * rng.standard_normal((600, 4))
    mu, sigma = np.zeros(4), S * S * np.eye(4)
    with strict():
        a = me.whitened_moment_error(x + OFF, mu + OFF, sigma)  # mu in the features' own coordinates
        b = me.two_sample_moment_mmd(x + OFF, ref + OFF, seed=0)
    a0 = me.whitened_moment_error(x, mu, sigma)
    b0 = me.two_sample_moment_mmd(x, ref, seed=0)
    for r, r0 in ((a, a0), (b, b0)):
        assert r.value == pytest.approx(r0.value, rel=1e-6)
        assert r.se == pytest.approx(r0.se, rel=1e-6)
        assert r.mean_part == pytest.approx(r0.mean_part, rel=1e-5, abs=1e-9)
        assert r.plugin == pytest.approx(r0.plugin, rel=1e-6)
    assert a.value == pytest.approx((1.69 - 1) ** 2, abs=0.15)  # N(0, 1.69 sigma): E1 = (c - 1)^2
    old = old_call(me.whitened_moment_error, x + OFF, mu + OFF, sigma)
    assert (
        old.mean_part == 0.0 and abs(old.value - a.value) > 0.2
    )  # every row one grid point: no mean shift left
    with pytest.raises(DiffauditError, match="singular"):  # the old cast collapsed the reference
        old_call(me.two_sample_moment_mmd, x + OFF, ref + OFF, seed=0)


# --------------------------------------------------------------------------------------------------- factors


def test_factor_flat_keeps_wide_inputs_for_the_callers_shift(rng):
    x = OFF + S * rng.standard_normal((20, 2, 3))
    out = _common.flat(x, "samples")
    assert out.dtype == np.float64 and out.shape == (20, 6)
    np.testing.assert_array_equal(out, x.reshape(20, 6))
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(_common.flat(x32, "samples"), x32.reshape(20, 6))
    assert _common.flat(np.arange(12, dtype=np.int16).reshape(6, 2), "s").dtype == np.float32
    with pytest.raises(DiffauditError, match="complex"):
        _common.flat(np.ones((3, 2), complex), "samples")


@pytest.mark.parametrize("with_holdout", [False, True])
def test_novelty_far_from_zero_equals_the_centred_call(rng, with_holdout):
    g, t, h = copy_data(rng)
    h = h if with_holdout else None
    valid = np.ones(len(g), bool)
    with strict():
        r = novelty(g + OFF, t + OFF, valid, holdout=None if h is None else h + OFF)
    r0 = novelty(g, t, valid, holdout=h)
    np.testing.assert_array_equal(r.is_copy, r0.is_copy)
    np.testing.assert_array_equal(r.nn_index, r0.nn_index)
    assert r.is_copy[:30].all() and not r.is_copy[30:].any()
    old = old_call(novelty, g + OFF, t + OFF, valid, holdout=None if h is None else h + OFF)
    assert not np.array_equal(old.is_copy, r.is_copy)


# ----------------------------------------------------------------------- float32 and ordinary float64 inputs


def spy_as_features(monkeypatch):
    """Record every cast of the changed modules: (dtype given, offset, dtype asked for)."""
    calls = []
    real = _checks.as_features

    def spy(x, name, *, offset=None, dtype=np.float32, **kw):
        calls.append((np.asarray(x).dtype, offset, np.dtype(dtype)))
        return real(x, name, offset=offset, dtype=dtype, **kw)

    for mod in (mem, ext, me, _common):
        monkeypatch.setattr(mod, "as_features", spy)
    return calls


def test_float32_inputs_are_not_shifted(rng, monkeypatch):
    """Float32 inputs: every cast gets no offset and asks for float32 (or the float64 validation of cosine rows,
    normalised as before: ``test_cosine_normalises_in_float64_and_keeps_the_warning``), i.e. the arrays the old
    code passed on, and so its results."""
    g, t, h = f32(*copy_data(rng))
    gi, ti, hi = f32(*image_copy_data(rng, n_train=60, side=8))
    calls = spy_as_features(monkeypatch)
    mem.find_copies(g, t, h)
    mem.find_copies(g, t, h, metric="cosine")
    mem.find_copies(gi, ti, hi, transforms="default")
    mem.ct_test(g, t, h)
    mem.authenticity(g, t, reference=h)
    ext.extract(lambda s, m: np.resize(g, (m, D)), 100, t, h, chunk_size=50)
    me.whitened_moment_error(g, np.zeros(D), S * S * np.eye(D))
    me.two_sample_moment_mmd(g, h, seed=0)
    _common.flat(g, "generated")
    assert calls and all(off is None for _, off, _ in calls)
    assert {dt for src, _, dt in calls if src == np.float32} <= {np.dtype(np.float32), np.dtype(np.float64)}
    assert all(dt == np.float32 for src, _, dt in calls if src != np.float32)  # cosine: normalised rows
    assert _checks.l2_offset(t, g, h) is None


def test_ordinary_float64_gives_the_flags_of_before(rng):
    """Offset ~ spread: the shifted cast gives the old flags (the old code = the float32 cast of the inputs)."""
    g, t, h = copy_data(rng)
    g, t, h = (x / S + 0.5 for x in (g, t, h))
    with strict():
        r = mem.find_copies(g, t, h)
        rn = mem.find_copies(g, t)
        c = mem.ct_test(g, t, h)
        a = mem.authenticity(g, t, reference=h)
        e = ext.extract(generator(t, 0.5, "memorizer"), 300, t, h, chunk_size=100)
        m = me.two_sample_moment_mmd(g, h, seed=0)
    for new, old in ((r, old_call(mem.find_copies, g, t, h)), (rn, old_call(mem.find_copies, g, t))):
        np.testing.assert_array_equal(new.is_copy, old.is_copy)
        np.testing.assert_array_equal(new.nn_index, old.nn_index)
        np.testing.assert_allclose(new.d1, old.d1, rtol=1e-5, atol=1e-6)
    c_old = old_call(mem.ct_test, g, t, h)
    np.testing.assert_array_equal(c.cell_generated, c_old.cell_generated)
    assert c.c_t == pytest.approx(c_old.c_t, rel=1e-6)
    np.testing.assert_array_equal(a.authentic, old_call(mem.authenticity, g, t, reference=h).authentic)
    e_old = old_call(ext.extract, generator(t, 0.5, "memorizer", np.float32), 300, t, h, chunk_size=100)
    np.testing.assert_array_equal(e.extracted_index, e_old.extracted_index)
    assert m.value == pytest.approx(old_call(me.two_sample_moment_mmd, g, h, seed=0).value, rel=1e-5)
    gi, ti, hi = image_copy_data(rng, n_train=100, side=8)
    gi, ti, hi = (x / S + 0.5 for x in (gi, ti, hi))
    with strict():
        ri = mem.find_copies(gi, ti, hi, transforms="default")
    ri_old = old_call(mem.find_copies, gi, ti, hi, transforms="default")
    np.testing.assert_array_equal(ri.is_copy, ri_old.is_copy)
    np.testing.assert_array_equal(ri.transform, ri_old.transform)
    np.testing.assert_allclose(ri.d1, ri_old.d1, rtol=1e-5, atol=1e-6)
