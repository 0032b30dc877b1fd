"""The extraction attack (Carlini et al. 2023) against analytic answers.

- ``coupon_collector``: exact enumeration of every draw sequence on small cases.
- The memorizer and noisy-memorizer controls draw their n training items uniformly, so the number of items
  generated >= 2 times (what ``unique_train_extracted`` counts with ``min_cluster`` = 2) has the exact mean
  n (1 - (1 - 1/n)^B - (B/n)(1 - 1/n)^(B-1)) and the items generated at least once (``unique_train_copied``)
  n (1 - (1 - 1/n)^B); the exact variances come from ``coupon_collector``. Several seeds are pooled and the
  pooled z-score must stay within 4 (a 6e-5 two-sided normal tail per check).
- Oracle and gaussian: nothing extracted. The stated false-flag bound: B fresh generations make about
  B^2 q / (2 n) chance links (q = 0.01) and each must also pass the copy rule (rate <= q), so the expected number
  of false extractions is at most B^2 q^2 / (2 n); at B = 5 n that is 0.25 (checked: 0), at B = 40 n it is
  8 (checked: <= 8).
- Linking against a brute-force sequential leader clustering; the bounded store (eviction, memory).
"""

import itertools
import tracemalloc

import numpy as np
import pytest

from diffaudit.datasets.base import get_dataset
from diffaudit.errors import DiffauditError
from diffaudit.models.controls import make_control
from diffaudit.models.sampler import noise_from_seeds
from diffaudit.probes.extraction import budget_grid, coupon_collector, extract
from diffaudit.probes.memorization import find_copies

Q = 0.01  # the copy rule's holdout quantile


def stream(model, seed):
    """generate(start, n) over a control's stream: per-sample noise seeds for denoisers, a seed per chunk else."""

    def gen(start, n):
        if hasattr(model, "denoise") and type(model).__name__ in ("MemorizerModel", "GaussianModel"):
            return model.sample_from_noise(
                noise_from_seeds(range(start, start + n), model.shape, base_seed=seed)
            )
        return model.sample(n, seed * 1_000_003 + start)

    return gen


def hm(n_train, seed=0, n_holdout=1000):
    ds = get_dataset("hidden-manifold:d=32")
    return ds, ds.sample(n_train, 3 * seed + 1)[0], ds.sample(n_holdout, 3 * seed + 2)[0]


# ------------------------------------------------------------------------------------------ coupon collector


@pytest.mark.parametrize("n,B", [(1, 3), (2, 2), (3, 4), (4, 5)])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_coupon_collector_matches_enumeration(n, B, m):
    vals = []
    for seq in itertools.product(range(n), repeat=B):
        c = np.bincount(seq, minlength=n)
        vals.append(int((c >= m).sum()))
    mean, var = coupon_collector(n, B, m)
    assert mean == pytest.approx(np.mean(vals), abs=1e-12)
    assert var == pytest.approx(np.var(vals), abs=1e-10)


def test_coupon_collector_closed_forms():
    n, B = 50, 100
    assert coupon_collector(n, B, 1)[0] == pytest.approx(n * (1 - (1 - 1 / n) ** B), rel=1e-12)
    m2 = n * (1 - (1 - 1 / n) ** B - (B / n) * (1 - 1 / n) ** (B - 1))
    assert coupon_collector(n, B, 2)[0] == pytest.approx(m2, rel=1e-12)
    # the Poisson forms of the issue are their large-n limits
    assert coupon_collector(10**6, 2 * 10**6, 1)[0] / 1e6 == pytest.approx(1 - np.exp(-2), rel=1e-5)
    assert coupon_collector(10**6, 2 * 10**6, 2)[0] / 1e6 == pytest.approx(1 - 3 * np.exp(-2), rel=1e-5)


# ------------------------------------------------------------------------------------------ controls


@pytest.mark.parametrize("control", ["memorizer", "noisy-memorizer"])
@pytest.mark.parametrize("n,B", [(50, 100), (20, 60), (100, 300)])
def test_memorizers_follow_the_coupon_collector(control, n, B):
    ds, train, holdout = hm(n)
    model = make_control(control, train=train, dataset=ds)
    half = B // 2
    seeds = range(4)
    sums = {(m, b): 0 for m in (1, 2) for b in (half, B)}
    for s in seeds:
        r = extract(stream(model, s), B, train, holdout, grid=[half, B])
        assert r.unique_train_extracted == r.curve_extracted[-1] and r.curve_budgets.tolist() == [half, B]
        assert r.n_candidates_unverified == 0 and r.exact_linking
        for j, b in enumerate((half, B)):
            sums[(2, b)] += r.curve_extracted[j]
            sums[(1, b)] += r.curve_copied[j]
    K = len(seeds)
    for (m, b), total in sums.items():
        mean, var = coupon_collector(n, b, m)
        z = (total - K * mean) / np.sqrt(K * var)
        print(
            f"{control} n={n} B={b} m={m}: mean {total / K:.2f} vs {mean:.2f} (sd {np.sqrt(var):.2f}), z={z:.2f}"
        )
        assert abs(z) < 4, (control, n, b, m, total / K, mean, z)


def test_memorizer_at_n50_b100_single_run_and_costs():
    ds, train, holdout = hm(50)
    r = extract(stream(make_control("memorizer", train=train, dataset=ds), 0), 100, train, holdout)
    mean, var = coupon_collector(50, 100, 2)
    assert abs(r.unique_train_extracted - mean) < 4 * np.sqrt(var)
    assert r.cost_per_item == pytest.approx(100 / r.unique_train_extracted)
    assert r.extraction_yield == pytest.approx(r.unique_train_extracted / 100)
    # every extracted item is a true training copy: the gallery leaders sit on their training match
    assert len(r.gallery_train_index) == min(16, r.unique_train_extracted)
    d = np.linalg.norm(r.gallery_samples - train[r.gallery_train_index], axis=1)
    assert np.all(d < 1e-3) and np.all(r.gallery_cluster_size >= 2)
    assert np.all(np.diff(r.extracted_at) >= 0) and r.extracted_at.max() <= 100
    assert np.all(np.diff(r.curve_extracted) >= 0) and np.all(r.curve_extracted <= r.curve_copied)


@pytest.mark.parametrize("control", ["oracle", "gaussian"])
def test_generalizing_controls_extract_nothing(control):
    n, B = 200, 1000
    ds, train, holdout = hm(n)
    r = extract(stream(make_control(control, train=train, dataset=ds), 0), B, train, holdout)
    assert r.expected_chance_links == pytest.approx(B * (B - 1) * Q / (2 * n))
    assert r.unique_train_extracted == 0  # expected <= B^2 q^2 / (2 n) = 0.25
    assert r.unique_train_copied <= 0.02 * B  # the copy rule alone flags ~q of fresh data
    assert r.cost_per_item == float("inf")


def test_oracle_at_attack_scale_stays_within_the_false_flag_bound():
    n, B = 100, 4000
    ds, train, holdout = hm(n)
    r = extract(stream(make_control("oracle", train=train, dataset=ds), 1), B, train, holdout)
    bound = B**2 * Q**2 / (2 * n)  # 8
    print(
        "oracle n=100 B=4000:",
        r.unique_train_extracted,
        "extracted;",
        r.n_candidates_unverified,
        "unverified",
    )
    assert r.unique_train_extracted <= bound


def test_copied_count_is_find_copies_on_all_generations():
    ds, train, holdout = hm(80)
    x = make_control("noisy-memorizer", train=train, dataset=ds).sample(150, 3)
    fresh = ds.sample(150, 99)[0]
    gen = np.concatenate([x, fresh])[np.random.default_rng(0).permutation(300)]
    r = extract(lambda s, n: gen[s : s + n], 300, train, holdout, chunk_size=64)
    ref = find_copies(gen, train, holdout, rule="ratio_and_holdout")
    assert r.unique_train_copied == ref.unique_train_copied and r.n_copies == ref.n_copies
    assert r.copy_threshold == pytest.approx(ref.holdout_threshold)


# ------------------------------------------------------------------------------------------ linking


def leader_reference(x, r_link, min_cluster, ok_of_leader):
    """Sequential leader clustering, one generation at a time, with an unbounded store (brute force)."""
    leaders, counts, done_at = [], [], {}
    for g, v in enumerate(x):
        d = [np.linalg.norm(v.astype(np.float64) - x[j]) for j in leaders]
        if d and min(d) <= r_link:
            c = int(np.argmin(d))
        else:
            leaders.append(g)
            counts.append(0)
            c = len(leaders) - 1
        counts[c] += 1
        if counts[c] == min_cluster:
            done_at[leaders[c]] = g + 1
    return leaders, counts, {ld: a for ld, a in done_at.items() if ok_of_leader(ld)}


@pytest.mark.parametrize("min_cluster", [2, 3])
def test_linking_matches_a_brute_force_leader_clustering(min_cluster):
    rng = np.random.default_rng(5)
    D = 16
    train = rng.standard_normal((40, D)).astype(np.float32) * 3
    holdout = rng.standard_normal((400, D)).astype(np.float32) * 3
    src = rng.integers(0, 60, 500)  # 0..39 copy a training item, 40..59 repeat a non-training point
    other = rng.standard_normal((20, D)).astype(np.float32) * 3
    base = np.concatenate([train, other])
    x = (base[src] + 0.01 * rng.standard_normal((500, D))).astype(np.float32)
    fresh = rng.random(500) < 0.3
    x[fresh] = rng.standard_normal((int(fresh.sum()), D)) * 3
    r = extract(lambda s, n: x[s : s + n], 500, train, holdout, chunk_size=7, min_cluster=min_cluster)
    ref_copy = find_copies(x, train, holdout, rule="ratio_and_holdout")
    leaders, counts, done = leader_reference(x, r.link_radius, min_cluster, lambda g: ref_copy.is_copy[g])
    assert r.n_clusters == len(leaders)
    assert r.n_candidates == sum(c >= min_cluster for c in counts)
    items = {}
    for ld, a in done.items():
        t = int(ref_copy.nn_index[ld])
        items[t] = min(items.get(t, a), a)
    assert dict(zip(r.extracted_index.tolist(), r.extracted_at.tolist(), strict=True)) == items
    assert r.n_candidates_unverified > 0  # the repeated non-training points are dense but not copies


def test_bounded_store_evicts_and_memory_stays_flat():
    ds, train, holdout = hm(200)
    model = make_control("oracle", train=train, dataset=ds)
    asked = []

    def gen(start, n):
        asked.append(n)
        return stream(model, 0)(start, n)

    peaks = []
    for B in (4000, 16000):
        tracemalloc.start()
        r = extract(gen, B, train, holdout, chunk_size=256, store_mib=0.1)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert (
            r.store_capacity == int(0.1 * 2**20 / (32 * 4)) and r.n_evicted_open > 0 and not r.exact_linking
        )
    assert max(asked) == 256
    assert peaks[1] < 1.3 * peaks[0], peaks  # 4 x the budget, the same memory


def test_evicted_candidates_are_counted_once():
    # a memorizer of 12 items, a store of 16 leaders fed 8 at a time: candidates leave the store first
    # (their item is counted) and re-form later; each item still counts once
    rng = np.random.default_rng(1)
    train = rng.standard_normal((12, 8)).astype(np.float32)
    holdout = rng.standard_normal((300, 8)).astype(np.float32)
    x = train[rng.integers(0, 12, 400)]
    r = extract(lambda s, n: x[s : s + n], 400, train, holdout, chunk_size=8, store_mib=1e-4)
    assert r.store_capacity == 16
    assert r.unique_train_extracted == len(set(r.extracted_index.tolist())) == 12
    assert r.n_candidates > 12  # re-formed clusters are candidates again


# ------------------------------------------------------------------------------------------ bad input


def test_bad_inputs_are_one_sentence_errors():
    rng = np.random.default_rng(0)
    train, hold = rng.standard_normal((20, 4)), rng.standard_normal((20, 4))
    ok = lambda s, n: rng.standard_normal((n, 4))  # noqa: E731
    with pytest.raises(DiffauditError, match="budget"):
        extract(ok, 0, train, hold)
    with pytest.raises(DiffauditError, match="min_cluster"):
        extract(ok, 10, train, hold, min_cluster=1)
    with pytest.raises(DiffauditError, match="exactly"):
        extract(lambda s, n: rng.standard_normal((n + 1, 4)), 10, train, hold)
    with pytest.raises(DiffauditError, match="feature dimensions"):
        extract(lambda s, n: rng.standard_normal((n, 5)), 10, train, hold)
    with pytest.raises(DiffauditError, match="NaN"):
        extract(lambda s, n: np.full((n, 4), np.nan), 10, train, hold)


def test_budget_grid():
    g = budget_grid(100000)
    assert g[0] == 100 and g[-1] == 100000 and np.all(np.diff(g) > 0)
    assert budget_grid(1).tolist() == [1]


# ------------------------------------------------------------------------------------------ transformed copies


def sprites(n_train, seed=0):
    ds = get_dataset("sprites")
    return ds, ds.sample(n_train, 10 * seed + 1)[0], ds.sample(1000, 10 * seed + 2)[0]


@pytest.mark.parametrize("edit", ["exact", "shift", "flip"])
def test_transformed_copy_memorizer_extracts_like_the_exact_one(edit):
    # a model that emits its training images moved by 1 px (or mirrored) is a memorizer: the copies stage sees
    # it, and so must extraction (plain pixel verification extracted 0 of these and left the clusters unverified)
    n, B = 60, 150
    ds, train, holdout = sprites(n)
    src = np.random.default_rng(5).integers(0, n, B)
    g = {"exact": train, "shift": np.roll(train, 1, axis=3), "flip": train[..., ::-1]}[edit][src]
    r = extract(lambda s, k: g[s : s + k], B, train, holdout, transforms="default", chunk_size=64)
    truth = int((np.bincount(src, minlength=n) >= 2).sum())  # items generated at least twice
    mean, var = coupon_collector(n, B, 2)
    assert abs(r.unique_train_extracted - mean) < 4 * np.sqrt(var)
    assert r.unique_train_extracted == truth and r.n_candidates_unverified == 0
    want = {"exact": "identity", "shift": "shift(+1,+0)", "flip": "flip"}[edit]
    assert set(r.extracted_transform) == {want} and set(r.gallery_transform) == {want}
    assert r.unique_train_copied >= r.unique_train_extracted
    plain = extract(lambda s, k: g[s : s + k], B, train, holdout, chunk_size=64)
    if edit != "exact":  # the bug: plain distances see none of them
        assert plain.unique_train_extracted <= 1


def test_transform_verification_is_find_copies_on_the_leaders():
    ds, train, holdout = sprites(40, seed=1)
    rng = np.random.default_rng(2)
    g = np.concatenate([np.roll(train[rng.integers(0, 40, 60)], 1, axis=2), ds.sample(60, 77)[0]])
    g = g[rng.permutation(len(g))]
    r = extract(lambda s, k: g[s : s + k], len(g), train, holdout, transforms="default", gallery_size=100)
    ref = find_copies(r.gallery_samples, train, holdout, transforms="default")
    assert ref.is_copy.all() and np.array_equal(ref.nn_index, r.gallery_train_index)
    np.testing.assert_allclose(ref.d1, r.gallery_distance)
    assert r.transform_threshold == pytest.approx(ref.holdout_threshold)


def test_oracle_with_transforms_stays_within_the_stated_bound():
    n, B = 100, 1000
    ds, train, holdout = sprites(n, seed=2)
    fresh = ds.sample(B, 99)[0]
    r = extract(lambda s, k: fresh[s : s + k], B, train, holdout, transforms="default")
    bound = B * (B - 1) * Q**2 / (2 * n)  # 0.5
    assert r.expected_false_extractions == pytest.approx(bound)
    assert r.unique_train_extracted <= max(1, bound)


def test_expected_false_extractions_is_the_stated_bound_capped_at_n():
    ds, train, holdout = hm(10)
    fresh = ds.sample(1000, 5)[0]
    r = extract(lambda s, k: fresh[s : s + k], 1000, train, holdout)
    assert r.expected_false_extractions == pytest.approx(min(10, 1000 * 999 * Q**2 / 20))
    assert r.unique_train_extracted <= r.expected_false_extractions  # chance extractions, within the bound
    none = extract(lambda s, k: fresh[s : s + k], 100, train)
    assert none.expected_false_extractions is None


def test_transforms_need_images():
    ds, train, holdout = hm(20)
    with pytest.raises(DiffauditError, match="needs images"):
        extract(lambda s, k: train[:k], 10, train, holdout, transforms="default")


def test_extraction_counts_items_held_twice():
    """Every training item held twice: extraction finds what it finds on the single set (before, the raw second
    neighbour was the item's own repeat, ratio 1, and nothing was extracted), with indices of the first rows."""
    from diffaudit.probes.extraction import extract

    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 8)).astype(np.float32)
    hold = rng.standard_normal((500, 8)).astype(np.float32)

    def gen(start, n):
        r = np.random.default_rng([start])
        return (base[r.integers(0, 100, n)] + 0.001 * r.standard_normal((n, 8))).astype(np.float32)

    single = extract(gen, 2000, base, hold)
    twice = extract(gen, 2000, np.concatenate([base, base]), hold)
    assert single.unique_train_extracted > 90
    assert twice.unique_train_extracted == single.unique_train_extracted
    np.testing.assert_array_equal(twice.extracted_index, single.extracted_index)
    assert twice.n_train == 1000
