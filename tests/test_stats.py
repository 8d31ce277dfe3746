"""RunningStats: Chan's merge against a direct two-pass computation, packing, offsets, normalisers."""

import numpy as np
import pytest

from memstore.stats import Fold, RunningStats, damaged, merge, offsets, standardiser, starts, whitener


def _rows(seed, n, bins=7):
    return np.random.default_rng(seed).normal(3.0, 2.0, (n, bins)).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 16])
def test_of_rows_matches_two_pass_numpy(chunk):
    x = _rows(0, 300)
    s = RunningStats.of_rows(x, chunk_rows=chunk)
    x64 = x.astype(np.float64)
    d = x64 - x64.mean(axis=0)
    assert s.count == 300
    np.testing.assert_allclose(s.mean, x64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.m2, d.T @ d, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.std, x64.std(axis=0), rtol=1e-9)
    np.testing.assert_allclose(s.cov, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-12)


def test_diagonal_mode_keeps_only_the_per_bin_sums():
    x = _rows(1, 200)
    full = RunningStats.of_rows(x)
    diag = RunningStats.of_rows(x, diagonal=True, chunk_rows=33)
    assert diag.m2.shape == (7,)
    np.testing.assert_allclose(diag.m2, np.diag(full.m2), rtol=1e-9)
    np.testing.assert_allclose(diag.std, full.std, rtol=1e-9)


def test_merge_of_parts_equals_the_whole_and_none_is_neutral():
    a, b = _rows(2, 50), _rows(3, 170)
    merged = merge(merge(None, RunningStats.of_rows(a)), RunningStats.of_rows(b))
    whole = RunningStats.of_rows(np.concatenate([a, b]))
    assert merged.count == 220
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-9)
    assert merge(merged, None) is merged
    assert RunningStats.of_rows(np.zeros((0, 7), np.float32)) is None


def test_packed_round_trip_is_byte_exact_and_halves_a_symmetric_matrix():
    s = RunningStats.of_rows(_rows(4, 100))
    t = s.packed()
    assert len(t) == 4 and t[3].size == 7 * 8 // 2
    back = RunningStats.unpacked(t)
    assert back.m2.tobytes() == s.m2.tobytes() and back.mean.tobytes() == s.mean.tobytes()
    asym = RunningStats(s.count, s.mean, s.m2 + np.triu(np.ones_like(s.m2), 1))
    t = asym.packed()
    assert len(t) == 3 and RunningStats.unpacked(t).m2.tobytes() == asym.m2.tobytes()


def test_starts():
    assert starts([3, 4, 5]).tolist() == [0, 3, 7]
    assert starts([]).tolist() == [] and starts([]).dtype == np.int64
    assert starts(np.array([9], np.int32)).tolist() == [0]


def test_offsets_are_the_starts_and_the_end():
    assert offsets([3, 4, 5]).tolist() == [0, 3, 7, 12]
    assert offsets([3, 4, 5], 10).tolist() == [10, 13, 17, 22]
    assert offsets([]).tolist() == [0] and offsets([], 4).tolist() == [4] and offsets([]).dtype == np.int64
    assert offsets(np.array([2**40, 2**40], np.int64), 2**41).tolist() == [2**41, 2**41 + 2**40, 2**42]


def test_standardiser_and_whitener_give_unit_statistics():
    x = _rows(5, 4000).astype(np.float64) @ np.random.default_rng(6).normal(size=(7, 7))
    s = RunningStats.of_rows(x)
    mean, scale = standardiser(s.mean, s.std)
    z = (x - mean) * scale
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-5)
    mean, proj = whitener(s.mean, s.cov)
    w = (x - mean) @ proj
    np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(7), atol=1e-4)
    _, scale = standardiser(np.zeros(2), np.zeros(2))
    assert np.isfinite(scale).all() and scale[0] == np.float32(1e8)


def _chain(parts):
    out = None
    for p in parts:
        out = merge(out, p if p is None or isinstance(p, RunningStats) else RunningStats.unpacked(p))
    return out


def _folded(parts, base=None):
    fold = Fold(base)
    for p in parts:
        fold.add(p)
    return fold.result()


def _same_bytes(a, b):
    assert a.count == b.count
    assert a.mean.dtype == b.mean.dtype and a.mean.tobytes() == b.mean.tobytes()
    assert a.m2.shape == b.m2.shape and a.m2.dtype == b.m2.dtype and a.m2.tobytes() == b.m2.tobytes()


@pytest.mark.parametrize("bins", [1, 2, 7, 96])
def test_fold_gives_merges_bytes_from_packed_and_plain_statistics(bins):
    # the build's statistics are merged by Fold; a store's bytes must not change, so every step is exact
    rng = np.random.default_rng(bins)
    parts = []
    for k in range(40):
        n = int(rng.integers(1, 400))
        x = (rng.standard_normal((n, bins)) * rng.uniform(0.01, 300) + rng.uniform(-80, 80)).astype(np.float32)
        s = RunningStats.of_rows(x)
        parts.append(None if k % 11 == 5 else s.packed() if k % 3 else s)
    asym = RunningStats.of_rows(_rows(9, 30, bins))
    m2 = asym.m2.copy()
    if bins > 1:
        m2[0, 1] = np.nextafter(m2[0, 1], np.inf)  # not symmetric: packed() sends the whole matrix
    parts.insert(7, RunningStats(asym.count, asym.mean, m2).packed())
    assert len(parts[7]) == (3 if bins > 1 else 4)
    _same_bytes(_folded(parts), _chain(parts))


def test_fold_starts_from_base_statistics_and_never_writes_to_its_inputs():
    base = RunningStats.of_rows(_rows(4, 90))
    for arr in (base.mean, base.m2):
        arr.flags.writeable = False  # a store's statistics may be read-only maps
    parts = [RunningStats.of_rows(_rows(5 + k, 20 + k)) for k in range(5)]
    kept = [(p.mean.copy(), p.m2.copy()) for p in parts]
    packed = [p.packed() for p in parts]
    kept_tri = [t[3].copy() for t in packed]
    fold = Fold(base)
    for k, p in enumerate(packed):
        fold.add(p if k % 2 else parts[k])
    _same_bytes(fold.result(), _chain([base] + parts))
    for p, (mean, m2) in zip(parts, kept, strict=True):
        assert p.mean.tobytes() == mean.tobytes() and p.m2.tobytes() == m2.tobytes()
    for t, tri in zip(packed, kept_tri, strict=True):
        assert t[3].tobytes() == tri.tobytes()


def test_fold_result_is_a_copy_and_an_empty_fold_is_none():
    assert Fold().result() is None
    fold = Fold()
    fold.add(None)
    assert fold.result() is None
    a, b = RunningStats.of_rows(_rows(6, 40)), RunningStats.of_rows(_rows(7, 50))
    fold.add(a)
    first = fold.result()
    fold.add(b)
    _same_bytes(first, a)
    _same_bytes(fold.result(), merge(a, b))


def test_fold_takes_merges_own_way_for_what_its_kernels_do_not_cover():
    # diagonal statistics, and a co-moment in another dtype, are merged by merge() itself: same bytes
    d = [RunningStats.of_rows(_rows(8 + k, 30), diagonal=True) for k in range(3)]
    _same_bytes(_folded([p.packed() for p in d]), _chain(d))
    full = [RunningStats.of_rows(_rows(12 + k, 30)) for k in range(3)]
    low = RunningStats(full[1].count, full[1].mean, full[1].m2.astype(np.float32))
    _same_bytes(_folded([low, full[2]], base=full[0]), _chain([full[0], low, full[2]]))


def _fold_or_error(base, parts):
    try:
        return _folded(parts, base)
    except Exception as err:  # noqa: BLE001 - compared with merge's own outcome below
        return type(err)


@pytest.mark.parametrize("m2_shape", [(7, 1), (1, 7), (3, 3), (8, 8)])
def test_fold_with_held_statistics_of_another_shape_does_what_merge_does(m2_shape):
    # a damaged store's co-moment (appends refuse it first): never handed to a kernel, which would write out
    # of bounds; merge's own broadcasting, or its error
    good = RunningStats.of_rows(_rows(20, 40))
    rng = np.random.default_rng(21)
    base = RunningStats(good.count, good.mean, rng.standard_normal(m2_shape))
    parts = [RunningStats.of_rows(_rows(22 + k, 30)) for k in range(2)]
    parts = [parts[0].packed(), parts[1]]
    got = _fold_or_error(base, parts)
    try:
        want = _chain([base] + parts)
    except Exception as err:  # noqa: BLE001
        assert got is type(err)
        return
    _same_bytes(got, want)


def test_fold_of_float32_means_gives_merges_float32_arithmetic():
    # numpy squares a float32 difference of means in float32, a numba kernel would in float64
    parts = []
    for k in range(4):
        s = RunningStats.of_rows(_rows(30 + k, 25 + k))
        parts.append(RunningStats(s.count, s.mean.astype(np.float32), s.m2))
    _same_bytes(_folded(parts), _chain(parts))
    half = [RunningStats(p.count, p.mean.astype(np.float16), p.m2) for p in parts]
    _same_bytes(_folded(half), _chain(half))


def test_fold_updates_each_half_of_an_asymmetric_matrix_from_its_own_values():
    # a packed triangle goes to (i, j) and (j, i); each must be added to its own element, not copied across
    a = RunningStats.of_rows(_rows(40, 60))
    m2 = a.m2.copy()
    m2[0, 1] += 0.5
    m2[5, 2] -= 0.25
    base = RunningStats(a.count, a.mean, m2)
    b = RunningStats.of_rows(_rows(41, 50))
    assert len(b.packed()) == 4
    fold = Fold(base)
    fold.add(b.packed())
    result = fold.result()
    _same_bytes(result, merge(base, b))
    assert result.m2[0, 1] != result.m2[1, 0]


def test_damaged_names_every_saved_statistic_that_is_unusable():
    f = 4
    good = {"count": np.int64(10), "mean": np.zeros(f), "std": np.ones(f), "cov": np.eye(f), "m2": np.eye(f)}
    assert damaged(good, f) == {}
    assert damaged({}, f) == {}  # a store of no frames saves none
    assert damaged({"m2": np.eye(f, dtype=np.float32)}, f) == {}  # any real numbers of the right shape
    bad = {"count": np.ones(3), "mean": np.zeros(f + 1), "std": np.array([b"x"] * f), "cov": np.zeros(f),
           "m2": np.zeros((f, f), complex)}
    found = damaged(bad, f)
    assert set(found) == set(bad)
    assert found["count"] == "has shape (3,), not ()"
    assert found["mean"] == "has shape (5,), not (4,)"
    assert found["std"] == "holds |S1 values, not numbers"
    assert found["cov"] == "has shape (4,), not (4, 4)"
    assert found["m2"] == "holds complex128 values, not numbers"
    assert damaged({"count": np.float64(10.0)}, f) == {"count": "is 10.0, not a count of frames"}
    assert damaged({"count": np.int64(-1)}, f) == {"count": "is -1, not a count of frames"}
    assert damaged({"count": np.array(b"many")}, f) == {"count": "holds |S4 values, not numbers"}
    assert damaged({"mean": np.zeros((f, f))}, f) == {"mean": "has shape (4, 4), not (4,)"}
