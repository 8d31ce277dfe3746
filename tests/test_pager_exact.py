"""The pager's own readahead at the ends of a rank's stretches (issue 12, sharding by pages).

:func:`memstore.pager.exact_pages` decides which pages are read with the kernel's readahead off
(and advised exactly); the rest keep the readahead. The plan tests check what that choice
promises -- no readahead from an unmarked page reaches bytes that only other ranks read, and an
unsharded reader marks nothing -- on the pager's real plans. The reader tests read real files
(sharded windows, so the second descriptor is used) and a store file truncated under a stream.
``tests/test_shard_io.py`` counts the bytes a cold epoch reads.
"""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_pager import assert_windows_hold_rows, table

from memstore.batches import BatchStream
from memstore.build import write_store_from_arrays
from memstore.errors import StoreFormatError
from memstore.features import MelSpectrogram
from memstore.order import STRETCH_FIRST, EpochOrder, Windows
from memstore.pager import GAP, TRAILER, WindowReader, exact_pages, plan_epoch, served_rows

#: a row of 4 KB: GAP is 64 rows, so holes of unused rows both below and above it occur
ROW = 4096


def pages(ws):
    start = np.concatenate([np.zeros(0, np.int64)] + [w.row_start for w in ws]) * ROW
    stop = np.concatenate([np.zeros(0, np.int64)] + [w.row_stop for w in ws]) * ROW
    return start, stop


def covered(start, stop, lo, hi) -> np.ndarray:
    """Bool per byte of [lo, hi): inside one of the pages [start, stop)."""
    out = np.zeros(hi - lo, bool)
    for a, b in zip(start.tolist(), stop.tolist(), strict=True):
        out[max(a, lo) - lo:max(min(b, hi), lo) - lo] = True
    return out


def served(lengths, t, step, keep_every):
    """The block table of a store without every ``keep_every``-th file (held-out files are holes)."""
    rows, valid = table(lengths, t, step)
    lengths = np.asarray(lengths, np.int64)
    file_of = np.searchsorted(np.cumsum(lengths), rows, side="right")
    keep = (file_of % keep_every != keep_every - 1) if keep_every > 1 else np.ones(len(rows), bool)
    return rows[keep], valid[keep], int(lengths.sum())


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 600), min_size=2, max_size=60), t=st.integers(1, 64),
       step=st.integers(1, 80), extra=st.integers(0, 1500), seed=st.integers(0, 3), keep_every=st.integers(1, 4),
       shuffle=st.booleans(), margin_rows=st.integers(1, 3000))
# found by hypothesis: three pages of one 16-row file overlapping by 12 rows, all within the margin of its end
@example(lengths=[16, 16, 1], t=13, step=1, extra=0, seed=0, keep_every=2, shuffle=True, margin_rows=3)
def test_an_unsharded_reader_keeps_the_readahead_but_before_holes_between_lanes(lengths, t, step, extra, seed,
                                                                                keep_every, shuffle, margin_rows):
    rows, valid, n_rows = served(lengths, t, step, keep_every)
    if not len(rows):
        return
    margin = margin_rows * ROW
    ws = plan_epoch(rows, valid, window_rows=t + extra, seed=seed, epoch=0, shuffle=shuffle)
    start, stop = pages(ws)
    end = int(stop.max())  # held-out files after the last served one are left out of the file here
    mask = exact_pages(ws, offset=0, row_bytes=ROW, margin=margin, gap=GAP, file_size=end + TRAILER)
    edges = np.diff(np.r_[0, (~covered(start, stop, 0, end)).astype(np.int8), 0])
    lo, hi = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # the holes [lo, hi) between pages
    long_lo, long_hi = lo[hi - lo > GAP], hi[hi - lo > GAP]
    if not len(long_lo):  # the lanes read the store without a hole longer than GAP (split "all", step <= T)
        assert not mask.any()
    # a page is marked only near where the readahead would read on into a hole longer than GAP: held-out files
    # (or unused rows) where one lane ends and the next begins -- never inside a lane, read across its holes
    for p in np.flatnonzero(mask).tolist():  # within a margin of its run's end, or in a run shorter than two
        reaches = np.any((long_hi > stop[p]) & (long_lo < stop[p] + 2 * margin))
        assert reaches or stop[p] + 2 * margin > end, p
    n_lanes = max(len(w.row_start) for w in ws)
    # the bytes read without the readahead: the marked pages' union (with step < t, pages of one file overlap,
    # and a sum of their sizes counts the same bytes several times)
    assert covered(start[mask], stop[mask], 0, end).sum() <= (n_lanes + 1) * (2 * margin + (stop - start).max())
    # more than TRAILER bytes after its last page (held-out files, the index): the end is read exactly
    far = exact_pages(ws, offset=0, row_bytes=ROW, margin=margin, gap=GAP, file_size=end + TRAILER + 1)
    assert far[np.argmax(stop)] and np.all(far[end - stop < margin]) and np.all(far[mask])
    assert n_rows * ROW >= end


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(50, 600), min_size=10, max_size=80), t=st.integers(8, 64),
       step=st.integers(8, 80), extra=st.integers(0, 1500), seed=st.integers(0, 3), keep_every=st.integers(1, 4),
       world=st.integers(2, 4), margin_rows=st.integers(1, 3000))
# found by hypothesis: a rank's pages on both sides of a neighbour's stretch, in one window
@example(lengths=[50] * 9 + [331, 547], t=26, step=8, extra=774, seed=0, keep_every=1, world=2, margin_rows=1)
def test_no_readahead_from_an_unmarked_page_reaches_another_ranks_bytes(lengths, t, step, extra, seed, keep_every,
                                                                        world, margin_rows):
    rows, valid, n_rows = served(lengths, t, step, keep_every)
    whole = plan_epoch(rows, valid, window_rows=t + extra, seed=seed, epoch=0)
    ranks = [plan_epoch(rows, valid, window_rows=t + extra, seed=seed, epoch=0, shard=(r, world))
             for r in range(world)]
    for r, ws in enumerate(ranks):
        if len(ws) < 4:  # a rank of a few windows may read on past its stretch (see docs/outofcore.md)
            continue
        assert_no_readahead_reaches_another_rank(ws, ws, ranks, r, rows, valid, n_rows, margin_rows * ROW)
    assert len(whole)


def assert_no_readahead_reaches_another_rank(part, ws, ranks, r, rows, valid, n_rows, margin):
    """No unmarked page of ``part`` (rank ``r``'s windows ``ws``, or a stretch of them, marked on its own)
    lets the readahead read into bytes that only other ranks read, but across a hole of at most GAP."""
    file_size = n_rows * ROW + TRAILER + ROW  # the features do not end near the end of the file
    mask = exact_pages(part, offset=0, row_bytes=ROW, margin=margin, gap=GAP, file_size=file_size,
                       served=served_rows(rows, valid))
    start, stop = pages(part)
    end = int(max(stop.max(), *(o[-1].row_stop.max() * ROW for o in ranks if o)))
    mine = covered(*pages(ws), 0, end)
    theirs = np.zeros(end, bool)
    for k, o in enumerate(ranks):
        if k != r:
            theirs |= covered(*pages(o), 0, end)
    edges = np.diff(np.r_[0, (~mine).astype(np.int8), 0])
    lo, hi = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # holes [lo, hi) between my pages
    foreign = np.array([theirs[a:b].any() for a, b in zip(lo.tolist(), hi.tolist(), strict=True)], bool)
    lo, hi = lo[foreign & (hi - lo > GAP)], hi[foreign & (hi - lo > GAP)]
    for p in np.flatnonzero(~mask).tolist():
        # the readahead from a read in page p: never into another rank's bytes, but across a hole of GAP
        assert not np.any((hi > stop[p]) & (lo < stop[p] + margin)), (r, p)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(50, 600), min_size=10, max_size=80), t=st.integers(8, 64),
       step=st.integers(8, 80), extra=st.integers(0, 1500), seed=st.integers(0, 3), keep_every=st.integers(1, 4),
       world=st.integers(2, 4), margin_rows=st.integers(1, 3000))
def test_a_ranks_stretches_marked_each_on_its_own_keep_the_readahead_off_other_ranks_bytes(
        lengths, t, step, extra, seed, keep_every, world, margin_rows):
    """A shard's reader takes its windows as two stretches (the first few, then the rest) and marks each as
    a whole sequence: still no readahead into another rank's bytes from an unmarked page of either."""
    rows, valid, n_rows = served(lengths, t, step, keep_every)
    order = EpochOrder(rows, valid, seed=seed, window_rows=t + extra)
    ranks = [order.windows(0, (r, world)) for r in range(world)]
    for r, ws in enumerate(ranks):
        parts = list(order.stretches(0, (r, world)))
        assert 1 <= len(parts) <= 2 and len(parts[0]) == min(STRETCH_FIRST, len(ws))
        if len(ws) < 4:  # as above
            continue
        for part in parts:
            assert_no_readahead_reaches_another_rank(part, ws, ranks, r, rows, valid, n_rows, margin_rows * ROW)


def test_a_rank_reads_its_long_stretches_with_the_readahead_and_their_ends_exactly():
    rows, valid = table([300] * 2000, 128, 50)  # 600k rows, 16 lanes of 37.5k
    margin = 4000 * ROW
    for r in range(2):
        ws = plan_epoch(rows, valid, window_rows=16 * 300, seed=0, epoch=0, shard=(r, 2))
        mask = exact_pages(ws, offset=0, row_bytes=ROW, margin=margin, gap=GAP, file_size=10**12)
        start, stop = pages(ws)
        size = stop - start
        # about 16 stretch ends of a margin each (plus a page), not the whole share ...
        assert 0 < size[mask].sum() <= 16 * (margin + size.max()) * 1.5
        assert size[~mask].sum() > 0.5 * size.sum()
        # ... and the page that ends each of its stretches (pages that touch, merged) is one of them
        by = np.argsort(start)
        reach = np.maximum.accumulate(stop[by])
        ends = by[np.r_[start[by][1:] > reach[:-1], True]]
        assert 16 <= len(ends) <= 40 and mask[ends].all()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not os.path.isdir("/proc/self/fd"),
                    reason="needs posix_fadvise and /proc/self/fd")
@pytest.mark.parametrize("prefetch", [True, False])
def test_a_ranks_reader_returns_the_file_rows_through_both_descriptors(tmp_path, prefetch):
    data = np.random.default_rng(2).standard_normal((20000, 64)).astype(np.float32)  # 5 MB: > TRAILER
    path = tmp_path / "raw.bin"
    path.write_bytes(b"H" * 77 + data.tobytes())
    rows, valid = table([2000] * 10, 64, 30)
    before_threads, before_fds = set(threading.enumerate()), open_fds()
    for shard in ((0, 3), (1, 3), (2, 3), None):
        windows = plan_epoch(rows, valid, window_rows=1000, seed=4, epoch=1, shard=shard)
        mask = exact_pages(windows, offset=77, row_bytes=256, margin=2**20, gap=GAP, file_size=path.stat().st_size)
        assert mask.any() == (shard is not None)  # a rank reads some pages through the second descriptor
        with WindowReader(path, 77, 64, np.float32, windows, 1000, prefetch=prefetch) as reader:
            assert_windows_hold_rows(reader, windows, data)
        assert open_fds() <= before_fds  # both descriptors closed
    assert not [t for t in set(threading.enumerate()) - before_threads if t.is_alive()]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not os.path.isdir("/proc/self/fd"),
                    reason="needs posix_fadvise and /proc/self/fd")
@pytest.mark.parametrize("prefetch", [True, False])
def test_a_ranks_reader_of_stretches_returns_the_file_rows_and_closes_each_stretchs_descriptor(tmp_path, prefetch):
    """A shard's windows given a stretch at a time: the same rows as the whole sequence; each stretch's
    second descriptor is closed when the next stretch takes over (one at a time), and all at the end."""
    data = np.random.default_rng(3).standard_normal((20000, 64)).astype(np.float32)
    path = tmp_path / "raw.bin"
    path.write_bytes(b"H" * 77 + data.tobytes())
    rows, valid = table([2000] * 10, 64, 30)
    order = EpochOrder(rows, valid, seed=4, window_rows=1000)
    before_threads, before_fds = set(threading.enumerate()), open_fds()
    for shard in ((0, 3), (1, 3), (2, 3)):
        windows = order.windows(1, shard)
        parts = list(order.stretches(1, shard))
        assert len(parts) == 2 and len(parts[0]) == STRETCH_FIRST
        seen = []

        def stretches(parts=parts, seen=seen):
            for part in parts:
                seen.append(len(open_fds() - before_fds))  # descriptors open as the reader asks for it
                yield part

        with WindowReader(path, 77, 64, np.float32, stretches(), 1000, prefetch=prefetch,
                          served=served_rows(rows, valid)) as reader:
            assert_windows_hold_rows(reader, Windows.of(parts), data)
            assert len(open_fds() - before_fds) <= 2  # one second descriptor for both stretches
        np.testing.assert_array_equal(Windows.of(parts).blocks, windows.blocks)
        assert seen[0] == 1 and seen[1] <= 2  # the reader's own; then at most the first stretch's second one too
        assert open_fds() <= before_fds  # every descriptor closed
    assert not [t for t in set(threading.enumerate()) - before_threads if t.is_alive()]


@pytest.fixture(scope="module")
def store_file(tmp_path_factory):
    """60 files of 400 frames x 16 bins, written to a file the tests may copy and cut."""
    path = tmp_path_factory.mktemp("exact") / "s.h5"
    rng = np.random.default_rng(1)
    feats = [rng.standard_normal((400, 16)).astype(np.float32) for _ in range(60)]
    hot = np.zeros((60, 3), np.uint8)
    hot[np.arange(60), np.arange(60) % 3] = 1
    write_store_from_arrays(path, feats, [f"c{i % 3}/f{i}.wav" for i in range(60)], list("abc"), hot,
                            MelSpectrogram(n_mels=16, sample_rate=8000))
    return path


@pytest.mark.parametrize("shard", [None, (1, 2)])
@pytest.mark.parametrize("prefetch", [True, False])
def test_a_store_file_cut_under_a_stream_is_a_clear_error(store_file, tmp_path, shard, prefetch):
    path = tmp_path / "cut.h5"
    shutil.copy(store_file, path)
    before = {t for t in threading.enumerate() if t.name.startswith("memstore-")}
    stream = BatchStream(path, batch_size=8, time_context=16, step=16, split="all", memory_limit=60_000,
                         shard=shard, prefetch=prefetch, seed=0)
    assert stream.out_of_core
    os.truncate(path, stream.store.data_offset + 400 * 16 * 4 * 30)  # half the features are gone
    with pytest.raises(StoreFormatError, match="store file ended while reading rows"):
        for _ in stream:
            pass
    stream.close()
    left = [t for t in threading.enumerate() if t.name.startswith("memstore-") and t not in before]
    for t in left:
        t.join(timeout=30)
    assert not [t for t in left if t.is_alive()]


def test_served_rows_merges_the_blocks_rows_into_sorted_stretches():
    starts, stops = served_rows([20, 0, 5, 40, 30], [10, 10, 3, 0, 5])  # an empty block reads nothing
    assert starts.tolist() == [0, 20] and stops.tolist() == [10, 35]
    starts, stops = served_rows(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert starts.dtype == np.int64 and not len(starts) and not len(stops)
