"""The pager: out-of-core epoch order under a memory budget.

When a split's features do not fit in ``memory_limit``, an epoch is served in
*windows*. Blocks, in store order, are grouped into *pages*: contiguous runs
of rows no longer than ``page_rows`` that hold whole blocks (consecutive
pages of one long file overlap by up to ``time_context - 1`` rows, so every
block lies inside one page). For epoch ``e`` and seed ``s``:

1. the pages are shuffled with ``np.random.default_rng((s, e))``;
2. windows are filled greedily with pages in that order, up to
   ``window_rows`` rows; inside a window the pages are sorted by row, so they
   are read with large sequential ``preadv`` calls into a preallocated buffer;
3. the blocks of a window are shuffled among themselves and served;
4. a background thread reads the next window into a second buffer meanwhile.

A window mixes about ``window_rows / page_rows`` (at least 16 when the
budget allows) pages drawn from the whole store, so a batch holds blocks of
many files and classes even when the store was written class by class
(ffcv's QuasiRandom repeats classes within a batch; see ``docs/outofcore.md``).

The plan is a pure function of its arguments: an epoch can be replayed and
resumed, and every rank of a sharded run computes the same plan and takes
its own blocks from each window (dealt from a start position, for an elastic
resume). A balanced epoch passes per-block ``counts``: pages without a drawn
block are left out, and a repeated block is served repeatedly from its window.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import warnings
import weakref
from dataclasses import dataclass

import numpy as np

from .errors import ParameterError, StoreFormatError

__all__ = ["parse_memory", "Window", "plan_pages", "plan_epoch", "window_budget", "WindowReader",
           "shuffle_quality"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
#: a window should mix at least this many pages when the budget allows
MIN_PAGES_PER_WINDOW = 16


def parse_memory(limit) -> int | None:
    """Bytes from ``None``, an int, or a string like ``"512MB"`` or ``"2GiB"``."""
    if limit is None:
        return None
    if isinstance(limit, bool):
        raise ParameterError(f"memory_limit={limit!r} must be bytes (int) or a string like '2GB'")
    if isinstance(limit, int | np.integer):
        if limit <= 0:
            raise ParameterError(f"memory_limit={limit!r} must be positive")
        return int(limit)
    if isinstance(limit, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", limit)
        if m and m.group(2).upper() in _UNITS:
            value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
            if value > 0:
                return value
    raise ParameterError(f"memory_limit={limit!r} must be a positive number of bytes or a string "
                         "like '512MB', '2GB' or '1.5GiB'")


@dataclass(frozen=True)
class Window:
    """One resident window of an epoch."""

    row_start: np.ndarray   # int64 (pages,): absolute store rows read
    row_stop: np.ndarray
    buf_start: np.ndarray   # int64 (pages,): where each page lands in the buffer
    n_rows: int
    blocks: np.ndarray      # int64: block ids in serving order
    src_row: np.ndarray     # int64: buffer row where each served block starts


def window_budget(memory_limit: int, *, row_bytes: int, batch_bytes: int, n_batch_buffers: int,
                  time_context: int) -> int:
    """Rows per window buffer: two window buffers plus the batch buffers fit ``memory_limit``."""
    fixed = n_batch_buffers * batch_bytes
    minimum = fixed + 2 * time_context * row_bytes
    if memory_limit < minimum:
        raise ParameterError(
            f"memory_limit={memory_limit} bytes is too small: {n_batch_buffers} batch buffers of "
            f"{batch_bytes} bytes and two windows of at least one block need {minimum} bytes "
            f"({minimum / 1e6:.2f} MB)")
    return int((memory_limit - fixed) // (2 * row_bytes))


def plan_pages(block_row: np.ndarray, block_valid: np.ndarray, page_rows: int):
    """Group blocks (sorted by absolute row) into pages of at most ``page_rows`` rows.

    Returns ``(page_of_block, page_start, page_stop)``.
    """
    n = len(block_row)
    ends = block_row + block_valid
    if n and np.any(np.diff(block_row) < 0):
        raise ParameterError("blocks must be sorted by row to be paged")
    run_end = np.maximum.accumulate(ends) if n else ends
    starts_idx = []
    i = 0
    while i < n:  # one step per page, not per block
        starts_idx.append(i)
        j = int(np.searchsorted(run_end, block_row[i] + page_rows, side="right"))
        i = max(j, i + 1)
    first = np.asarray(starts_idx, dtype=np.int64)
    page_of_block = np.repeat(np.arange(len(first), dtype=np.int64), np.diff(np.r_[first, n]))
    page_start = block_row[first] if n else np.zeros(0, np.int64)
    last = np.r_[first[1:], n] - 1
    page_stop = run_end[last] if n else np.zeros(0, np.int64)
    return page_of_block, page_start.astype(np.int64), page_stop.astype(np.int64)


def plan_epoch(block_row, block_valid, *, window_rows: int, seed: int, epoch: int, shard=None,
               page_rows: int | None = None, shuffle: bool = True, counts=None, start: int = 0) -> list[Window]:
    """The windows of one epoch (see the module notes); a pure function of its arguments.

    Parameters
    ----------
    block_row : int64 array
        Absolute store row where each block of the split starts, sorted.
    block_valid : int64 array
        Real rows of each block (``time_context``, or fewer for short files).
    window_rows : int
    seed, epoch : int
    shard : (rank, world_size), optional
        Each rank gets every ``world``-th block of the epoch's sequence, cut to a common length.
    start : int
        Position in the epoch's global sequence where the dealing to ranks begins (an elastic
        resume, :mod:`memstore.order`); earlier blocks go to nobody and windows left without a
        block of this rank are not read.
    page_rows : int, optional
        Default ``max(max block rows, window_rows // 16)``.
    shuffle : bool
        False: pages and blocks in store order (steps 1 and 3 skipped; ``seed`` and
        ``epoch`` unused), so the epoch is served file by file, each by start frame.
    """
    block_row = np.asarray(block_row, dtype=np.int64)
    block_valid = np.asarray(block_valid, dtype=np.int64)
    longest = int(block_valid.max()) if len(block_valid) else 1
    if page_rows is None:
        page_rows = max(longest, window_rows // MIN_PAGES_PER_WINDOW)
    if page_rows > window_rows or longest > page_rows:
        raise ParameterError(f"window_rows={window_rows} must hold a page of {page_rows} rows and "
                             f"the longest block ({longest} rows)")
    page_of_block, p_start, p_stop = plan_pages(block_row, block_valid, page_rows)
    if counts is not None:
        counts = np.asarray(counts)
        if counts.shape != block_row.shape or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
            raise ParameterError(f"counts must be {len(block_row)} non-negative integers, one per block")
        counts = counts.astype(np.int64)
    rng = np.random.default_rng((int(seed), int(epoch)))
    order = rng.permutation(len(p_start)) if shuffle else np.arange(len(p_start))
    if counts is not None:  # pages with nothing to serve this epoch are never read
        order = order[np.bincount(page_of_block, weights=counts, minlength=len(p_start))[order] > 0]
    sizes = (p_stop - p_start)[order]
    # greedy packing of the shuffled pages into windows
    windows_of = []
    cum = 0
    cur: list[int] = []
    for k, size in zip(order.tolist(), sizes.tolist(), strict=True):
        if cur and cum + size > window_rows:
            windows_of.append(cur)
            cur, cum = [], 0
        cur.append(k)
        cum += size
    if cur:
        windows_of.append(cur)
    # blocks grouped by page (blocks are sorted by page already)
    page_first = np.searchsorted(page_of_block, np.arange(len(p_start) + 1))
    out = []
    for pages in windows_of:
        pages = np.sort(np.asarray(pages, dtype=np.int64))
        rows = p_stop[pages] - p_start[pages]
        buf = np.r_[0, np.cumsum(rows)[:-1]].astype(np.int64)
        idx = np.concatenate([np.arange(page_first[p], page_first[p + 1]) for p in pages])
        owner = np.repeat(np.arange(len(pages)), page_first[pages + 1] - page_first[pages])
        src = buf[owner] + block_row[idx] - p_start[pages][owner]
        if counts is not None:
            src = np.repeat(src, counts[idx])
            idx = np.repeat(idx, counts[idx])
        perm = rng.permutation(len(idx)) if shuffle else np.arange(len(idx))
        out.append(Window(p_start[pages], p_stop[pages], buf, int(rows.sum()), idx[perm], src[perm]))
    if shard is not None or start:
        out = _shard(out, shard or (0, 1), int(start))
    return out


def _shard(windows: list[Window], shard, start: int = 0) -> list[Window]:
    """Deal the epoch's global block sequence round-robin to ranks from ``start``, cut to equal shares.

    Every rank computes the same plan and reads every window (I/O grows with the
    world size on one machine's page cache; see docs/outofcore.md), and at most
    ``world - 1`` blocks of ``[start, n)`` are dropped so that all ranks are equal
    (:func:`memstore.order.deal`). Windows wholly before ``start`` are left out: nothing
    in them is served, so they are not read.
    """
    rank, world = shard
    total = sum(len(w.blocks) for w in windows)
    if not 0 <= start <= total:
        raise ParameterError(f"start={start} must lie in the epoch's {total} blocks")
    cut = start + (total - start) // world * world
    out, first = [], 0
    for w in windows:
        pos = first + np.arange(len(w.blocks))
        first += len(w.blocks)
        if start and first <= start:
            continue
        keep = (pos >= start) & ((pos - start) % world == rank) & (pos < cut)
        out.append(Window(w.row_start, w.row_stop, w.buf_start, w.n_rows, w.blocks[keep], w.src_row[keep]))
    return out


class WindowReader:
    """Read windows into two preallocated buffers, the next one in a background thread.

    Iterating yields ``(window, buf)``; ``buf`` is an ``(n_rows, n_bins)`` view
    that stays valid until the next step. ``close()`` -- called on exhaustion,
    on an error, by ``with``, and when the reader is garbage collected -- stops
    and joins the thread. The thread holds the file descriptor, the buffers
    and the queues but not the reader, so dropping the last reference to a
    reader (even mid-epoch) does collect it and end its thread. A ``buf`` still
    held after that stays valid memory, but its contents are no longer defined.
    """

    def __init__(self, path, data_offset: int, n_bins: int, dtype, windows: list[Window],
                 window_rows: int, *, prefetch: bool = True):
        dtype = np.dtype(dtype)
        self._bufs = [np.empty((max(window_rows, 1), n_bins), dtype) for _ in range(2)]
        self._free: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        for i in range(2):
            self._free.put(i)
        self._stop = threading.Event()
        self._held = None
        fd = os.open(path, os.O_RDONLY)
        # the thread owns ``fd`` and closes it when it ends: nobody closes it under a running read
        self._thread = threading.Thread(
            target=_read_windows, name="memstore-pager", daemon=True,
            args=(fd, int(data_offset), n_bins * dtype.itemsize, windows, self._bufs, self._free, self._ready,
                  self._stop))
        try:
            self._thread.start()
        except BaseException:
            os.close(fd)
            raise
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._free, self._thread)

    def __iter__(self):
        return self

    def __next__(self):
        if self._held is not None:
            self._free.put(self._held)
            self._held = None
        while True:  # bounded waits: a reader thread that died without a word is an error, not a hang
            try:
                item = self._ready.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    self.close()
                    raise RuntimeError("the window reader thread ended without a result") from None
        if item is None:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        w, slot = item
        self._held = slot
        return w, self._bufs[slot][: w.n_rows]

    def close(self) -> None:
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: how often the reader thread looks at its stop event while it waits for a free buffer
_POLL_S = 0.1
#: how long ``close`` waits for a read in progress to finish
_JOIN_S = 30.0


def _read_window(fd: int, offset: int, row_bytes: int, w: Window, buf: np.ndarray) -> None:
    flat = buf.reshape(-1).view(np.uint8)
    for rs, re_, bs in zip(w.row_start.tolist(), w.row_stop.tolist(), w.buf_start.tolist(), strict=True):
        want = (re_ - rs) * row_bytes
        view = memoryview(flat[bs * row_bytes: bs * row_bytes + want])
        pos = offset + rs * row_bytes
        got = 0
        while got < want:
            n = os.preadv(fd, [view[got:]], pos + got)
            if n <= 0:
                raise StoreFormatError(f"store file ended while reading rows {rs}..{re_} "
                                       "(truncated under the reader?)")
            got += n


def _read_windows(fd, offset, row_bytes, windows, bufs, free, ready, stop) -> None:
    """Thread target: fill free buffers with the windows in turn; ``None`` at the end, or the error."""
    try:
        for w in windows:
            slot = None
            while slot is None:
                if stop.is_set():
                    return
                try:
                    slot = free.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
            if slot < 0 or stop.is_set():
                return
            _read_window(fd, offset, row_bytes, w, bufs[slot])
            ready.put((w, slot))
        ready.put(None)
    except BaseException as err:  # handed to the consumer
        ready.put(err)
    finally:
        os.close(fd)


def _shutdown(stop, free, thread) -> None:
    stop.set()
    free.put(-1)
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout=_JOIN_S)
        if thread.is_alive():
            warnings.warn(f"memstore: window reader thread did not stop within {_JOIN_S:.0f} s",
                          ResourceWarning, stacklevel=2)


def shuffle_quality(block_file_order, block_row_order, batch_size: int) -> dict:
    """Distinct files per batch and mean distance (rows) between consecutive blocks."""
    f = np.asarray(block_file_order)
    r = np.asarray(block_row_order, dtype=np.int64)
    n = len(f) // batch_size * batch_size
    distinct = (float(np.mean([len(np.unique(f[i:i + batch_size])) for i in range(0, n, batch_size)]))
                if n else float("nan"))
    step = float(np.abs(np.diff(r)).mean()) if len(r) > 1 else float("nan")
    return {"distinct_files_per_batch": distinct, "mean_abs_step": step}
