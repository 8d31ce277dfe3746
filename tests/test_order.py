"""The epoch plan's windows (memstore.order): built for the whole epoch at once, equal to one at a time.

The paged orders themselves are pinned in test_batches_golden; here the whole-epoch construction
(numpy steps and two kernels) is checked against a window-by-window one in plain Python integers, on
random block tables, and the unshuffled plan of a balanced draw (``counts``) is checked to serve
exactly the drawn blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memstore.order
from memstore._pages import _Lanes, _Served, _store_order_windows, _windows
from memstore.blocks import block_table
from memstore.errors import ParameterError
from memstore.order import (
    STRETCH_FIRST,
    STRETCH_MAX,
    EpochOrder,
    Windows,
    _checked,
    _dealt_windows,
    _skip_draws,
    deal_windows,
    lane_ends,
    plan_epoch,
    plan_stretches,
)
from memstore.stats import starts


def one_window(pages, served, block_row, counts, rng):
    """A window built alone, in plain Python: pages sorted by row, laid end to end, blocks shuffled."""
    ab = np.array(sorted(pages), np.int64).reshape(len(pages), 3)
    first, last, row_stop = ab[:, 0], ab[:, 1], ab[:, 2]
    row_start = block_row[served[first]]
    rows = row_stop - row_start
    buf = starts(rows)
    idx, src = [], []
    for p in range(len(first)):
        for i in range(first[p], last[p]):
            b = served[i]
            reps = 1 if counts is None else int(counts[b])
            idx += [b] * reps
            src += [buf[p] + block_row[b] - row_start[p]] * reps
    if rng is not None:  # Fisher-Yates, one raw 64-bit draw per block of the window (the first one unused)
        raw = rng.bit_generator.random_raw(len(idx)).tolist()
        for i in range(len(idx) - 1, 0, -1):
            j = raw[i] % (i + 1)
            idx[i], idx[j] = idx[j], idx[i]
            src[i], src[j] = src[j], src[i]
    return row_start, row_stop, buf, int(rows.sum()), np.array(idx, np.int64), np.array(src, np.int64)


def table(lengths, t, step):
    n_frames = np.array(lengths, np.int64)
    bf, bs = block_table(n_frames, t, step)
    offset = starts(n_frames)
    return offset[bf] + bs, np.minimum(t, n_frames[bf] - bs)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 700), min_size=1, max_size=40), t=st.integers(4, 90),
       step=st.integers(3, 60), extra=st.integers(0, 600), seed=st.integers(0, 50),
       shuffle=st.booleans(), balanced=st.booleans())
def test_windows_built_at_once_equal_windows_built_one_by_one(lengths, t, step, extra, seed, shuffle, balanced):
    row, valid = table(lengths, t, step)
    if not len(row):
        return
    longest = int(valid.max())
    window_rows = 2 * longest + extra
    page_rows = max(longest, window_rows // 16)
    counts = np.random.default_rng(seed).integers(0, 3, len(row)) if balanced else None
    if counts is not None and not counts.any():
        return
    if shuffle:
        served = np.flatnonzero(counts > 0) if counts is not None else np.arange(len(row))
        rng = np.random.default_rng((seed, 1))
        pages = _Lanes(row[served], lane_ends(row[served], valid[served]), window_rows, page_rows, longest,
                       rng).cut(None)  # the whole epoch in one cut
    else:
        served, rng = np.arange(len(row)), None
        pages = _store_order_windows(row, valid, window_rows, page_rows, counts)
    state = rng.bit_generator.state if rng is not None else None
    got = _windows(*pages, _Served(row, valid, counts, drop=shuffle), row, rng)
    ref_rng = None
    if state is not None:
        ref_rng = np.random.default_rng()
        ref_rng.bit_generator.state = state
    first, last, stop, window = pages
    assert len(got) == (int(window.max()) + 1 if len(window) else 0)
    for j, w in enumerate(got):
        mine = window == j
        ref = one_window(list(zip(first[mine].tolist(), last[mine].tolist(), stop[mine].tolist(), strict=True)),
                         served, row, counts, ref_rng)
        for a, b in zip((w.row_start, w.row_stop, w.buf_start, w.n_rows, w.blocks, w.src_row), ref, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(4))
def test_an_unshuffled_balanced_plan_serves_exactly_the_drawn_blocks_in_store_order(seed):
    """Pages without a drawn block are left out; before, the packing then raised a ValueError."""
    row, valid = table([300, 41, 520, 77, 260, 9, 400], 32, 16)
    counts = np.random.default_rng(seed).integers(0, 3, len(row))
    counts[: len(row) // 3] = 0  # whole pages with nothing drawn
    ws = plan_epoch(row, valid, window_rows=200, seed=seed, epoch=0, shuffle=False, counts=counts)
    served = np.concatenate([w.blocks for w in ws])
    np.testing.assert_array_equal(served, np.repeat(np.arange(len(row)), counts))
    for w in ws:
        assert w.n_rows <= 200
        np.testing.assert_array_equal(np.diff(w.src_row) >= 0, True)  # store order inside the buffer


def test_windows_index_and_slice_like_the_list_of_their_windows():
    """memstore.order.Windows: items, negative items, slices (any step) and Windows.of agree with a plain list."""
    row, valid = table([300, 41, 520, 77, 260, 9, 400], 32, 16)
    ws = plan_epoch(row, valid, window_rows=200, seed=3, epoch=1)
    as_list = [ws[j] for j in range(len(ws))]
    assert len(ws) == len(as_list) > 4

    def same(a, b):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            for name in ("row_start", "row_stop", "buf_start", "n_rows", "blocks", "src_row"):
                np.testing.assert_array_equal(getattr(x, name), getattr(y, name))

    same([ws[-1], ws[-len(ws)]], [as_list[-1], as_list[0]])
    for sl in (slice(None), slice(2, None), slice(1, 4), slice(3, 3), slice(5, 2), slice(None, None, 2),
               slice(None, None, -1)):
        same(ws[sl], as_list[sl])
        same(ws[sl][1:], as_list[sl][1:])  # a slice of a slice
    same(Windows.of(as_list), as_list)
    same(Windows.of([ws[:2], as_list[2], ws[3:]]), as_list)  # Windows and Window mixed
    np.testing.assert_array_equal(Windows.of(as_list).block_counts(), [len(w.blocks) for w in as_list])
    np.testing.assert_array_equal(ws.page_counts(), [len(w.row_start) for w in as_list])
    assert len(Windows.of([])) == 0 and len(Windows.of([]).blocks) == 0
    for bad in (len(ws), -len(ws) - 1):
        with pytest.raises(IndexError):
            ws[bad]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 700), min_size=0, max_size=40), t=st.integers(4, 90),
       step=st.integers(3, 60), extra=st.integers(0, 600), seed=st.integers(0, 50),
       shuffle=st.booleans(), balanced=st.booleans(), first=st.integers(1, 5))
def test_an_epoch_planned_a_stretch_at_a_time_is_the_whole_plan(lengths, t, step, extra, seed, shuffle, balanced,
                                                                first):
    """plan_stretches laid end to end is the epoch planned in one stretch, byte for byte, and so is plan_epoch;
    stretches after the first double in size."""
    row, valid = table(lengths, t, step) if lengths else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    longest = int(valid.max()) if len(valid) else 4
    window_rows = 2 * longest + extra
    counts = np.random.default_rng(seed).integers(0, 3, len(row)) if balanced else None
    kw = dict(window_rows=window_rows, seed=seed, epoch=2, shuffle=shuffle, counts=counts)
    (whole,) = plan_stretches(row, valid, first=None, **kw)  # one stretch: every lane cut to its end at once
    parts = list(plan_stretches(row, valid, first=first, **kw))
    for got in (Windows.of(parts), plan_epoch(row, valid, **kw)):
        for name in ("row_start", "row_stop", "buf_start", "n_rows", "page_at", "blocks", "src_row", "block_at"):
            np.testing.assert_array_equal(getattr(got, name), getattr(whole, name))
    if shuffle and len(parts) > 1:
        sizes = [len(p) for p in parts]
        assert sizes[:-1] == [min(first * 2**k, STRETCH_MAX) for k in range(len(sizes) - 1)]
        assert 0 < sizes[-1] <= min(first * 2 ** (len(sizes) - 1), STRETCH_MAX)
    else:
        assert len(parts) == 1  # unshuffled, or an epoch that fits the first stretch, or an empty one


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 700), min_size=1, max_size=30), seed=st.integers(0, 50),
       first=st.sampled_from([1, 3, None]))
def test_a_draw_that_serves_every_block_plans_as_one_that_names_them_all(lengths, seed, first):
    """A balanced draw whose counts are all positive (classes of equal size) is planned over the whole
    table without a list of the drawn blocks: the same plan as with the list 0..n-1 spelled out."""
    row, valid = table(lengths, 20, 7)
    counts = np.random.default_rng(seed).integers(1, 4, len(row))
    kw = dict(window_rows=2 * int(valid.max()) + 100, seed=seed, epoch=1, counts=counts, first=first)
    assert _Served(row, valid, counts, drop=True).ids is None
    got = Windows.of(list(plan_stretches(row, valid, **kw)))

    class Listed(_Served):
        def __init__(self, block_row, block_valid, counts, *, drop):
            super().__init__(block_row, block_valid, counts, drop=drop)
            if counts is not None and drop:  # the list every block's id, as before the shortcut
                self.ids = np.arange(len(block_row), dtype=np.int64)
                self.reps = counts[self.ids]
                self.row, self.ends = block_row[self.ids], lane_ends(block_row, block_valid)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(memstore.order, "_Served", Listed)
        want = Windows.of(list(plan_stretches(row, valid, **kw)))
    for name in ("row_start", "row_stop", "buf_start", "n_rows", "page_at", "blocks", "src_row", "block_at"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_stretches_reach_their_most_and_stay_there(monkeypatch):
    monkeypatch.setattr(memstore.order, "STRETCH_MAX", 20)
    row, valid = table([64] * 400, 8, 8)  # 2,800 blocks of 8 rows; pages of one block: 175 windows of 16
    parts = list(plan_stretches(row, valid, window_rows=128, page_rows=8, seed=0, epoch=0, first=3))
    assert [len(p) for p in parts] == [3, 6, 12] + [20] * 7 + [14]
    np.testing.assert_array_equal(Windows.of(parts).blocks, plan_epoch(row, valid, window_rows=128, page_rows=8,
                                                                       seed=0, epoch=0).blocks)


@pytest.mark.parametrize("first", [0, -3, 2.5, True, "8", 2**63])
def test_a_stretch_size_that_is_not_a_whole_number_of_windows_is_refused(first):
    row, valid = table([300, 41, 520], 32, 16)
    with pytest.raises(ParameterError, match="first must be"):
        plan_stretches(row, valid, window_rows=200, seed=0, epoch=0, first=first)


def test_a_block_table_of_two_lengths_is_refused_before_any_kernel_reads_it():
    """The kernels index the rows and the valid rows by one index: a table whose two arrays differ in
    length (or in shape: a single valid count that numpy would broadcast) is an error, on every paged path."""
    row, valid = table([300, 41, 520, 77], 32, 16)
    counts = np.ones(len(row), np.int64)
    kw = dict(window_rows=200, seed=0, epoch=0, counts=counts)
    for bad in (valid[:-1], valid[:1], valid[None]):
        for call in (lambda b=bad: list(plan_stretches(row, b, **kw)), lambda b=bad: plan_epoch(row, b, **kw),
                     lambda b=bad: plan_epoch(row, b, shard=(0, 2), **kw)):
            with pytest.raises(ParameterError, match="one length"):
                call()


def test_a_numpy_stretch_size_plans_the_same_stretches_as_an_int():
    row, valid = table([300, 41, 520, 77, 260, 9, 400], 32, 16)
    kw = dict(window_rows=200, seed=1, epoch=0)
    a = [ws.blocks for ws in plan_stretches(row, valid, first=np.uint64(2), **kw)]
    b = [ws.blocks for ws in plan_stretches(row, valid, first=2, **kw)]
    assert len(a) == len(b) > 1
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


FIELDS = ("row_start", "row_stop", "buf_start", "n_rows", "page_at", "blocks", "src_row", "block_at")


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 700), min_size=0, max_size=40), t=st.integers(4, 90),
       step=st.integers(3, 60), extra=st.integers(0, 600), seed=st.integers(0, 50), balanced=st.booleans(),
       world=st.integers(1, 6), stretch=st.integers(1, 6), cuts=st.lists(st.floats(0, 1), max_size=6))
def test_a_rank_that_plans_only_its_windows_gets_the_whole_plan_dealt(lengths, t, step, extra, seed, balanced,
                                                                     world, stretch, cuts):
    """A sharded (or resumed) shuffled epoch plans only the windows that hold the rank's positions and
    skips the other windows' draws: the same bytes as the whole epoch planned and dealt, for every rank,
    with stretches of any size, balanced or not, whole or resumed (an unserved set)."""
    row, valid = table(lengths, t, step) if lengths else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    longest = int(valid.max()) if len(valid) else 4
    window_rows = 2 * longest + extra
    counts = np.random.default_rng(seed).integers(0, 3, len(row)) if balanced else None
    kw = dict(window_rows=window_rows, seed=seed, epoch=3, counts=counts)
    whole = plan_epoch(row, valid, **kw)
    n = int(whole.block_at[-1])
    edges = sorted({int(c * n) for c in cuts})
    unserved = [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=False) if b > a] if cuts else None
    table_row, table_valid, page_rows, longest, checked = _checked(row, valid, window_rows, None, counts)
    for rank in range(world):
        want = deal_windows(whole, (rank, world), unserved)
        got = plan_epoch(row, valid, shard=(rank, world), unserved=unserved, **kw)
        small = _dealt_windows(table_row, table_valid, window_rows, page_rows, longest, checked,
                               np.random.default_rng((seed, 3)), (rank, world), unserved, stretch=stretch)
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
            np.testing.assert_array_equal(getattr(small, name), getattr(want, name))


def test_a_sharded_paged_epoch_order_is_the_whole_plan_dealt():
    """EpochOrder's sharded paged windows (with the lane ends it keeps across epochs) are the whole
    epoch dealt; and a rank plans only its part: the other ranks' windows are not made."""
    row, valid = table([700, 33, 260, 512, 90, 401] * 40, 64, 20)
    order = EpochOrder(row, valid, seed=5, window_rows=600)
    calls = []
    real = memstore.order._windows

    def counting(first, *rest):
        calls.append(len(np.unique(rest[2])))  # windows made
        return real(first, *rest)

    for epoch in (0, 1):
        whole = order.windows(epoch)
        assert len(whole) > 40
        for rank in range(4):
            calls.clear()
            with pytest.MonkeyPatch.context() as m:
                m.setattr(memstore.order, "_windows", counting)
                got = order.windows(epoch, shard=(rank, 4))
            want = deal_windows(whole, (rank, 4))
            for name in FIELDS:
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
            assert sum(calls) <= len(want) + 1 < len(whole)  # its own windows (cut ones whole), not the epoch's


@pytest.mark.parametrize("n", [0, 1, 7, 12345])
def test_skipped_draws_leave_the_generator_as_the_draws_would(n):
    a, b = np.random.default_rng((4, 2)), np.random.default_rng((4, 2))
    a.integers(1000003), b.integers(1000003)  # a 32-bit draw keeps the other half of its 64 bits
    a.bit_generator.random_raw(n)
    _skip_draws(b, n)
    assert a.bit_generator.state == b.bit_generator.state
    assert a.integers(10**9) == b.integers(10**9)
    np.testing.assert_array_equal(a.bit_generator.random_raw(5), b.bit_generator.random_raw(5))


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("shard, unserved", [((0, 2), None), ((1, 2), None), ((2, 3), [(5, 900), (1000, 1700)]),
                                             ((0, 1), [(5, 900)])])
def test_a_ranks_stretches_are_its_first_windows_then_the_rest(balanced, shard, unserved):
    """A shard of more than one rank is given as its first STRETCH_FIRST windows, planned alone, then the
    rest: laid end to end, its whole windows. One rank of one (a resume) is given whole."""
    row, valid = table([700, 33, 260, 512, 90, 401] * 20, 64, 20)
    block_class = np.arange(len(row)) % 3 if balanced else None
    order = EpochOrder(row, valid, seed=2, window_rows=600, block_class=block_class)
    whole = order.windows(1, shard, unserved)
    got = order.stretches(1, shard, unserved)
    if shard[1] == 1:
        assert isinstance(got, Windows)
        parts = [got]
    else:
        parts = list(got)
        assert [len(p) for p in parts] == [STRETCH_FIRST, len(whole) - STRETCH_FIRST]
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(Windows.of(parts), name), getattr(whole, name))


def test_a_rank_cuts_the_lanes_no_further_than_its_last_position(monkeypatch):
    """Rank 0 of 4 stops cutting pages after its last window (the rest of the epoch is another rank's);
    the last rank cuts to the end; a rank with nothing to serve cuts nothing."""
    row, valid = table([700, 33, 260, 512, 90, 401] * 40, 64, 20)
    table_row, table_valid, page_rows, longest, counts = _checked(row, valid, 600, None, None)
    cut_windows = []
    real = memstore.order._Lanes.cut

    def counting(self, n):
        pages = real(self, n)
        cut_windows.append(0 if pages is None else int(pages[3].max()) + 1)
        return pages

    monkeypatch.setattr(memstore.order._Lanes, "cut", counting)
    seen = {}
    for shard in ((0, 4), (3, 4), (0, 10**9)):
        cut_windows.clear()
        ws = _dealt_windows(table_row, table_valid, 600, page_rows, longest, counts,
                            np.random.default_rng((1, 0)), shard, None, stretch=4)
        seen[shard] = (sum(cut_windows), len(ws))
    total = seen[(3, 4)][0]
    assert seen[(0, 4)][0] < total / 2 and seen[(0, 4)][0] >= seen[(0, 4)][1]
    assert seen[(0, 10**9)] == (0, 0)
