"""The pager's plan and reader: every block once, inside its page, within the budget; clean threads."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstore.blocks import block_table
from memstore.errors import ParameterError, StoreFormatError
from memstore.order import plan_stretches
from memstore.pager import WindowReader, parse_memory, plan_epoch, window_budget


def table(lengths, t, step):
    lengths = np.asarray(lengths, np.int64)
    bf, bs = block_table(lengths, t, step)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    return offsets[bf] + bs, np.minimum(t, lengths[bf] - bs)


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(1, 900), min_size=1, max_size=40), t=st.integers(1, 100),
       step=st.integers(1, 80), extra=st.integers(0, 2000), seed=st.integers(0, 5), world=st.integers(1, 4))
def test_plan_properties(lengths, t, step, extra, seed, world):
    rows, valid = table(lengths, t, step)
    window_rows = t + extra
    windows = plan_epoch(rows, valid, window_rows=window_rows, seed=seed, epoch=1)
    served = np.concatenate([w.blocks for w in windows])
    assert sorted(served.tolist()) == list(range(len(rows)))
    for w in windows:
        assert w.n_rows <= window_rows
        assert np.all(np.diff(w.row_start) > 0)  # pages read in file order
        # the block's rows in the buffer are exactly its rows in the store
        page = np.searchsorted(w.buf_start, w.src_row, side="right") - 1
        assert np.all(w.src_row + valid[w.blocks] <= w.buf_start[page] + (w.row_stop - w.row_start)[page])
        assert np.array_equal(w.src_row - w.buf_start[page] + w.row_start[page], rows[w.blocks])
    again = plan_epoch(rows, valid, window_rows=window_rows, seed=seed, epoch=1)
    assert all(np.array_equal(a.blocks, b.blocks) for a, b in zip(windows, again, strict=True))
    parts = [np.concatenate([np.zeros(0, np.int64)] + [w.blocks for w in plan_epoch(  # a rank may get no window
        rows, valid, window_rows=window_rows, seed=seed, epoch=1, shard=(r, world))]) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(rows) // world
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 900), min_size=1, max_size=40), t=st.integers(1, 100),
       step=st.integers(1, 80), extra=st.integers(0, 2000), world=st.integers(1, 4))
def test_unshuffled_plan_serves_the_store_in_order_within_the_budget(lengths, t, step, extra, world):
    rows, valid = table(lengths, t, step)
    windows = plan_epoch(rows, valid, window_rows=t + extra, seed=3, epoch=7, shuffle=False)
    assert np.array_equal(np.concatenate([w.blocks for w in windows]), np.arange(len(rows)))
    assert all(w.n_rows <= t + extra for w in windows)
    for w in windows:
        page = np.searchsorted(w.buf_start, w.src_row, side="right") - 1
        assert np.array_equal(w.src_row - w.buf_start[page] + w.row_start[page], rows[w.blocks])
    for r in range(world):  # a rank's share keeps the order
        mine = np.concatenate([np.zeros(0, np.int64)] + [w.blocks for w in plan_epoch(
            rows, valid, window_rows=t + extra, seed=0, epoch=0, shard=(r, world), shuffle=False)])
        per = len(rows) // world
        assert np.array_equal(mine, np.arange(r * per, (r + 1) * per))  # a contiguous chunk (sharding by pages)


def test_windows_mix_pages_from_across_the_store():
    rows, valid = table([300] * 200, 128, 50)  # like a store written class by class
    windows = plan_epoch(rows, valid, window_rows=16 * 300, seed=0, epoch=0)
    first = windows[0]
    assert len(first.row_start) >= 8
    assert first.row_start.max() - first.row_start.min() > 0.5 * rows.max()


def _continuations(windows) -> float:
    """Share of page reads that go on where a page of the previous window ended (a sequential stream)."""
    hits = total = 0
    for prev, w in zip(windows[:-1], windows[1:], strict=True):
        for rs in w.row_start.tolist():
            total += 1
            # the previous window read a page that ends inside or just before this one: one lane, read on
            hits += bool(np.any((prev.row_start < rs) & (rs <= prev.row_stop + 300)))
    return hits / max(total, 1)


def test_shuffled_windows_read_every_lane_front_to_back():
    rows, valid = table([300] * 400, 128, 50)  # 120k rows, windows of 4800: 25+ windows
    windows = plan_epoch(rows, valid, window_rows=16 * 300, seed=3, epoch=2)
    assert len(windows) > 20
    # page j of every lane: almost every page continues a lane read in the window before (the readahead's
    # sequential streams); a random page order would continue almost none
    assert _continuations(windows) > 0.9
    assert all(len(w.row_start) >= 8 for w in windows[:-1])  # each window still mixes the store's stretches
    # the first window is smaller than the rest: a lane's first page is 1/16 of a full one, doubling after
    # (never less than the longest block, which here is 128 of a page's 300 rows)
    assert windows[0].n_rows <= 0.5 * np.median([w.n_rows for w in windows])
    rows, valid = table([300] * 400, 16, 8)
    windows = plan_epoch(rows, valid, window_rows=16 * 300, seed=3, epoch=2)
    assert windows[0].n_rows <= np.median([w.n_rows for w in windows]) / 8


def test_lanes_start_at_a_new_place_every_epoch():
    rows, valid = table([300] * 400, 128, 50)
    firsts = {int(plan_epoch(rows, valid, window_rows=4800, seed=0, epoch=e)[0].row_start.min()) for e in range(6)}
    assert len(firsts) >= 5


def test_reader_returns_the_file_rows_and_stops_its_thread(tmp_path):
    data = np.random.default_rng(0).standard_normal((5000, 7)).astype(np.float32)
    path = tmp_path / "raw.bin"
    with open(path, "wb") as f:
        f.write(b"H" * 123)
        f.write(data.tobytes())
    rows, valid = table([1000, 1500, 2500], 64, 30)
    windows = plan_epoch(rows, valid, window_rows=700, seed=1, epoch=0)
    before = threading.active_count()
    with WindowReader(path, 123, 7, np.float32, windows, 700) as reader:
        for w, buf in reader:
            for p in range(len(w.row_start)):
                n = w.row_stop[p] - w.row_start[p]
                np.testing.assert_array_equal(buf[w.buf_start[p]:w.buf_start[p] + n],
                                              data[w.row_start[p]:w.row_stop[p]])
    assert threading.active_count() == before
    reader = WindowReader(path, 123, 7, np.float32, windows, 700)
    next(reader)
    reader.close()  # abandoned early
    assert threading.active_count() == before


def test_reader_reports_a_truncated_file(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(np.zeros((100, 4), np.float32).tobytes())
    rows, valid = table([1000], 10, 10)
    windows = plan_epoch(rows, valid, window_rows=2000, seed=0, epoch=0)
    with pytest.raises(StoreFormatError, match="ended while reading"), WindowReader(
            path, 0, 4, np.float32, windows, 2000) as reader:
        list(reader)


def test_parse_memory_and_budget():
    assert parse_memory("512MB") == 512 * 10**6 and parse_memory("2GiB") == 2 * 2**30
    assert parse_memory(1000) == 1000 and parse_memory(None) is None and parse_memory("1.5kb") == 1500
    for bad in ("lots", "-1GB", 0, True, "5 parsecs", "9" * 400, "1e30"):  # "9" * 400 raised OverflowError
        with pytest.raises(ParameterError, match="memory_limit="):
            parse_memory(bad)
    for huge in ("99999999999GB", 2**63, "9" * 400):  # called "not a positive number" (the command-line hunt)
        with pytest.raises(ParameterError, match="past any machine's memory"):
            parse_memory(huge)
    assert window_budget(10_000_000, row_bytes=400, batch_bytes=1_000_000, n_batch_buffers=4,
                         time_context=128) == 6_000_000 // 800
    with pytest.raises(ParameterError, match="too small.*need 4102400 bytes"):
        window_budget(1_000_000, row_bytes=400, batch_bytes=1_000_000, n_batch_buffers=4, time_context=128)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_reader_without_prefetch_reads_in_the_callers_thread_and_closes_its_file(tmp_path):
    data = np.random.default_rng(1).standard_normal((5000, 7)).astype(np.float32)
    path = tmp_path / "raw.bin"
    path.write_bytes(b"H" * 123 + data.tobytes())
    rows, valid = table([1000, 1500, 2500], 64, 30)
    windows = plan_epoch(rows, valid, window_rows=700, seed=1, epoch=0)
    before_threads, before_fds = set(threading.enumerate()), open_fds()
    for prefetch in (True, False):
        reader = WindowReader(path, 123, 7, np.float32, windows, 700, prefetch=prefetch)
        started = {t.name for t in set(threading.enumerate()) - before_threads}
        assert started == ({"memstore-pager"} if prefetch else set())  # prefetch=False starts no thread
        assert_windows_hold_rows(reader, windows, data)
        assert open_fds() <= before_fds  # the file is closed at the end
    reader = WindowReader(path, 123, 7, np.float32, windows, 700, prefetch=False)
    next(reader)
    reader.close()  # abandoned early: closed too
    assert open_fds() <= before_fds


def assert_windows_hold_rows(reader, windows, data) -> None:
    """``reader`` yields ``windows`` in order, each buffer holding its pages' rows of ``data``."""
    n = 0
    for w, buf in reader:
        want = windows[n]  # made anew on each access (memstore.order.Windows): the same arrays, not the same object
        for name in ("row_start", "row_stop", "buf_start", "n_rows", "blocks", "src_row"):
            np.testing.assert_array_equal(getattr(w, name), getattr(want, name))
        for p in range(len(w.row_start)):
            k = w.row_stop[p] - w.row_start[p]
            np.testing.assert_array_equal(buf[w.buf_start[p]:w.buf_start[p] + k], data[w.row_start[p]:w.row_stop[p]])
        n += 1
    assert n == len(windows)


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_reader_given_stretches_reads_the_whole_plans_windows(tmp_path, prefetch):
    """WindowReader over plan_stretches (an iterator of Windows) yields plan_epoch's windows, each holding its rows."""
    data = np.random.default_rng(5).standard_normal((5000, 7)).astype(np.float32)
    path = tmp_path / "raw.bin"
    path.write_bytes(b"H" * 123 + data.tobytes())
    rows, valid = table([1000, 1500, 2500], 64, 30)
    whole = plan_epoch(rows, valid, window_rows=700, seed=2, epoch=3)
    stretches = plan_stretches(rows, valid, window_rows=700, seed=2, epoch=3, first=1)
    before = threading.active_count()
    with WindowReader(path, 123, 7, np.float32, stretches, 700, prefetch=prefetch) as reader:
        assert_windows_hold_rows(reader, whole, data)
    assert threading.active_count() == before
