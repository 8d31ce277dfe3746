"""RunningStats: Chan's merge against a direct two-pass computation, packing, offsets, normalisers."""

import numpy as np
import pytest

from memstore.stats import RunningStats, merge, offsets, standardiser, starts, whitener


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
