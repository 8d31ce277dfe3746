"""The pager: an out-of-core epoch read under a memory budget.

When a split's features do not fit in ``memory_limit``, an epoch is served in
*windows* of whole pages of blocks; which pages form which window, and in
what order the blocks of a window are served, is the epoch order's business
(:func:`memstore.order.plan_epoch`, re-exported here with :class:`Window`,
:class:`Windows` and :func:`plan_pages`). This module owns the bytes:

- :func:`parse_memory` and :func:`window_budget`: how many rows a window
  buffer may hold so that two of them and the batch buffers fit the budget;
- :class:`WindowReader`: reads each window's pages with large sequential
  ``pread`` calls into one of two preallocated buffers, the next window in
  a background thread (:mod:`memstore.prefetch`) while the current one is
  served. A window's reads are one GIL-free call (:mod:`memstore._pread`):
  a thread that takes the GIL back after every page waits for the batch
  producer and the consumer each time.

Readahead. Each lane is read front to back, so the kernel's readahead reads
ahead of it in large requests; but it reads on past the last page a reader
wants, up to twice ``read_ahead_kb`` (8 MB here: 16 MB per lane). For a
sharded rank that is the next rank's stretch of every lane -- most of a small
store. :func:`exact_pages` finds the pages whose readahead could reach bytes
this reader does not read (the ends of a rank's stretches); those are read
through a second descriptor with the readahead off (``POSIX_FADV_RANDOM`` is
per open file description) and advised exactly, a window ahead
(``POSIX_FADV_WILLNEED``), so the kernel still reads them in the background.
An unsharded reader reads the whole store and marks none, but at a lane's end
followed by rows of another split; an unsharded reader given an epoch a stretch
at a time (:func:`memstore.order.plan_stretches`) marks none at all, and a
shard's reader marks each of its stretches as if its runs ended there.
Without ``posix_fadvise`` (macOS, Windows) the readahead reads everything.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import threading
from collections.abc import Sequence

import numpy as np

from ._pread import PageReads
from .errors import ParameterError, StoreFormatError
from .order import MIN_PAGES_PER_WINDOW, Window, Windows, plan_epoch, plan_pages, shuffle_quality
from .prefetch import start as start_producer
from .prefetch import wait_get

__all__ = ["parse_memory", "Window", "Windows", "plan_pages", "plan_epoch", "window_budget", "WindowReader",
           "served_rows", "shuffle_quality", "MIN_PAGES_PER_WINDOW"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_memory(limit) -> int | None:
    """Bytes from ``None``, an int, or a string like ``"512MB"`` or ``"2GiB"``."""
    if limit is None:
        return None
    if isinstance(limit, bool):
        raise ParameterError(f"memory_limit={limit!r} must be bytes (int) or a string like '2GB'")
    if isinstance(limit, int | np.integer):
        if limit <= 0:
            raise ParameterError(f"memory_limit={limit!r} must be positive")
        if limit >= 2**63:
            raise ParameterError(f"memory_limit={limit!r} is past any machine's memory (at most 2**63 bytes)")
        return int(limit)
    if isinstance(limit, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", limit)
        if m and m.group(2).upper() in _UNITS:
            value = float(m.group(1)) * _UNITS[m.group(2).upper()]
            if 0 < value < 2.0 ** 63:  # past that, no machine's memory (and int(inf) would raise)
                return int(value)
            if value >= 2.0 ** 63:  # it was called not a positive number
                raise ParameterError(f"memory_limit={limit!r} is {value:.3g} bytes, past any machine's memory "
                                     "(at most 2**63)")
    raise ParameterError(f"memory_limit={limit!r} must be a positive number of bytes or a string "
                         "like '512MB', '2GB' or '1.5GiB'")


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


class WindowReader:
    """Read windows into two preallocated buffers, the next one in a background thread.

    Iterating yields ``(window, buf)``; ``buf`` is an ``(n_rows, n_bins)`` view
    that stays valid until the next step. ``close()`` stops and joins the
    thread; it is called on exhaustion, on an error and by ``with``. A reader
    dropped without ``close()`` (even mid-epoch) is collected -- its thread
    holds the file descriptor, the buffers and the queues but not the reader --
    and the finalizer of its :class:`memstore.prefetch.Prefetcher` then stops
    the thread, which ends on its own (``tests/test_threads.py`` drops readers
    mid-epoch).
    A ``buf`` still held after that stays valid memory, but its contents are no
    longer defined. With ``prefetch=False`` each window is read in the
    consumer's thread when it is asked for, into the same two buffers.

    ``windows``: a :class:`Windows` (or a list of :class:`Window`), or an iterator of
    :class:`Windows` -- an epoch a stretch at a time (:func:`memstore.order.plan_stretches`),
    each next stretch planned in the reader's thread when it gets there.

    ``served`` (:func:`served_rows`) names the rows that the split's blocks read,
    for a reader that reads only some of them (a shard): the readahead is kept
    from reading on into rows it names and the reader's windows do not
    (:func:`exact_pages`). None: the windows read every block of the split.
    """

    def __init__(self, path, data_offset: int, n_bins: int, dtype, windows,
                 window_rows: int, *, prefetch: bool = True, served=None):
        dtype = np.dtype(dtype)
        self._bufs = [np.empty((max(window_rows, 1), n_bins), dtype) for _ in range(2)]
        # a SimpleQueue: its put (``wake`` too) never blocks, so a finalizer may call it anywhere
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(2):
            self._free.put(i)
        self._held = None
        stop = threading.Event()
        fd = os.open(path, os.O_RDONLY)
        # the source owns ``fd`` and closes it when it ends: nobody closes it under a running read
        source = _WindowSource(path, fd, int(data_offset), n_bins * dtype.itemsize, windows, self._bufs, self._free,
                               stop, served)
        self._items = start_producer(source, depth=2, name="memstore-pager", what="window reader",
                                    threaded=prefetch, stop=stop, wake=functools.partial(self._free.put, -1))

    def __iter__(self):
        return self

    def __next__(self):
        if self._held is not None:
            self._free.put(self._held)
            self._held = None
        try:
            w, slot = next(self._items)
        except BaseException:
            self.close()
            raise
        self._held = slot
        return w, self._bufs[slot][: w.n_rows]

    def close(self) -> None:
        self._items.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: bytes per ``POSIX_FADV_WILLNEED`` call at most: the kernel reads at most max(readahead size, device
#: request size) per call, so a call is never larger than the readahead size, nor smaller than this:
CHUNK = 2 * 2**20
PAGE_MIN_CHUNK = 128 * 2**10
#: a page read without the readahead has the next pages of its run advised, this many times its own size
EXACT_AHEAD = 4
#: a hole between two pages that the readahead may read through, in bytes: the unused rows at the end of a
#: short file where one lane ends and the next begins. A rank may read this much of the next rank's stretch
GAP = 64 * 2**10
#: a run of pages may end this close to the end of the file with the readahead on: it reads at most this
#: many bytes that nobody wants (the store's index after the features), once
TRAILER = 2**20
#: the readahead size assumed when the file's block device does not tell (``read_ahead_kb``)
DEFAULT_READAHEAD = 16 * 2**20


def _read_window(fds: np.ndarray, reads: PageReads, lo: int, w: Window, flat: np.ndarray) -> None:
    """Read window ``w`` (pages ``lo:`` of ``reads``) into ``flat``, page ``k`` from ``fds[k]``: one GIL-free call."""
    done = reads.read(fds, flat, lo, lo + len(w.row_start))
    if done < len(w.row_start):
        _ended(w, done)


def _ended(w: Window, k: int):
    raise StoreFormatError(f"store file ended while reading rows {int(w.row_start[k])}..{int(w.row_stop[k])} "
                           "(truncated under the reader?)")


def _runs(windows, offset: int, row_bytes: int, gap: int, served=None):
    """The pages' byte ranges (read order), the run of each page, each run's start and end (:func:`exact_pages`)."""
    windows = Windows.of(windows)
    total = len(windows.row_start)
    start = offset + windows.row_start * row_bytes
    stop = offset + windows.row_stop * row_bytes
    if not total:
        return start, stop, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    win = np.repeat(np.arange(len(windows)), windows.page_counts())
    by_pos = np.argsort(start, kind="stable")
    s, e, w = start[by_pos], np.maximum.accumulate(stop[by_pos]), win[by_pos]
    step = np.diff(w)
    apart = (step < 0) | (step > 1)
    if served is not None and len(served[0]):  # a hole with rows that other ranks read ends a run
        # in rows, not bytes (pages start and stop on whole rows): nothing done per served stretch of the split
        lo, hi = served
        hole_start, hole_stop = (e[:-1] - offset) // row_bytes, (s[1:] - offset) // row_bytes
        first = np.searchsorted(hi, hole_start, side="right")  # the first served stretch ending after the hole starts
        apart |= (first < len(lo)) & (lo[np.minimum(first, len(lo) - 1)] < hole_stop)
    new = np.r_[True, (s[1:] > e[:-1] + gap) & apart]
    run = np.empty(total, np.int64)
    run[by_pos] = np.cumsum(new) - 1
    return start, stop, run, s[new], e[np.r_[np.flatnonzero(new)[1:] - 1, total - 1]]


def served_rows(block_row, block_valid) -> tuple[np.ndarray, np.ndarray]:
    """The rows the blocks read, as sorted disjoint stretches ``[starts[i], stops[i])`` (int64 arrays)."""
    a = np.asarray(block_row, np.int64)
    b = a + np.asarray(block_valid, np.int64)
    keep = b > a
    a, b = a[keep], b[keep]
    if not len(a):
        return a, b
    if np.any(a[1:] < a[:-1]):  # a split's blocks come sorted by row (paging needs them so): no sort then
        order = np.argsort(a, kind="stable")
        a, b = a[order], b[order]
    b = np.maximum.accumulate(b)
    new = np.r_[True, a[1:] > b[:-1]]
    return a[new], b[np.r_[np.flatnonzero(new)[1:] - 1, len(a) - 1]]


def exact_pages(windows, *, offset: int, row_bytes: int, margin: int, gap: int,
                file_size: int, served=None) -> np.ndarray:
    """Which pages (in read order, window after window) to read with the kernel's readahead off.

    A read at byte ``x`` lets the readahead read on up to ``x + margin``. That is harmless where
    this reader reads those bytes itself, so its pages are merged into *runs*: two pages next to
    each other in the file belong to one run when the hole between them is at most ``gap``
    bytes (the unused end of a file) or when they are read in the same or in consecutive windows
    (one lane, read front to back, across held-out files) -- but never across a hole with rows of
    ``served`` in it: rows that the split's blocks read and this reader does not, so another rank
    does. ``served`` (:func:`served_rows`: sorted disjoint ``(starts, stops)`` of rows) is None for a
    reader that reads every block of its split (unsharded). A page that ends less than ``margin``
    before the end of its run is marked, and every page of a run shorter than ``2 * margin`` --
    unless the run ends within ``TRAILER`` bytes of the end of the file: where a sharded rank's
    stretch of a lane ends, the readahead would otherwise read on into the next rank's stretch.
    (A short run read with the readahead would have to have its end advised at its first read.)
    Pure; no I/O.

    Returns a bool array [shape=(n_pages,)].
    """
    return _marks(*_runs(windows, offset, row_bytes, gap, served), margin=margin, file_size=file_size)


def _marks(start, stop, run, run_start, run_end, *, margin: int, file_size: int) -> np.ndarray:
    """:func:`exact_pages` from the runs :func:`_runs` found."""
    end = run_end[run]
    short = (run_end - run_start < 2 * margin)[run]
    return (short | (end - stop < margin)) & (file_size - end > TRAILER)


def readahead_bytes(fd: int) -> int:
    """The kernel's readahead size for ``fd``'s block device (``read_ahead_kb``), or ``DEFAULT_READAHEAD``."""
    dev = os.fstat(fd).st_dev
    mm = f"{os.major(dev)}:{os.minor(dev)}"
    for path in (f"/sys/class/bdi/{mm}/read_ahead_kb", f"/sys/dev/block/{mm}/queue/read_ahead_kb",
                 f"/sys/dev/block/{mm}/../queue/read_ahead_kb"):
        try:
            with open(path) as f:
                return int(f.read()) * 1024
        except (OSError, ValueError):
            continue
    return DEFAULT_READAHEAD


class _Exact:
    """Reads the pages that :func:`exact_pages` marks: a second descriptor with readahead off, and advice.

    ``POSIX_FADV_RANDOM`` is per open file description, so the reader's first descriptor keeps
    the readahead for the rest. But a page the readahead brought in may carry its mark (the page
    whose read starts the next readahead), and a read of a marked page starts the readahead on
    any descriptor, ``POSIX_FADV_RANDOM`` or not: a run's marked pages must be in the page cache
    before the readahead of its unmarked ones gets there. So before a window is read, for each of
    its pages, the page's run's marked stretch (from the first marked page to the end of the run,
    holes included) is advised (``POSIX_FADV_WILLNEED``): up to ``margin`` bytes beyond the page
    before a read with the readahead (as far as that can reach), ``EXACT_AHEAD`` times the page
    beyond it before one without. The readahead stops at pages already cached, and advice leaves no marks. The kernel
    reads what is advised in the background, exactly, while the reader copies and the consumer
    serves. ``fd2``: the second descriptor of an earlier stretch of the same reader (-1: opened
    here if a page is marked); ``fd`` is the one in use (-1: none), and the reader closes it.
    """

    def __init__(self, path, fd: int, offset: int, row_bytes: int, windows: Windows, served=None, fd2: int = -1):
        ra = readahead_bytes(fd)
        self._margin = 2 * ra + CHUNK  # a read at x lets the readahead run to x + 2 x its size
        self._chunk = max(PAGE_MIN_CHUNK, min(CHUNK, ra))  # the kernel reads at most its readahead size per call
        start, stop, run, run_start, run_end = _runs(windows, offset, row_bytes, GAP, served)
        self.mask = _marks(start, stop, run, run_start, run_end, margin=self._margin, file_size=os.fstat(fd).st_size)
        self.fd = -1
        if not self.mask.any():
            return  # nothing to read without the readahead (an unsharded reader): the reader drops this
        # per run: where its marked stretch starts (none: its end), and how far it is advised
        tail = run_end.copy()
        np.minimum.at(tail, run[self.mask], start[self.mask])
        self._run, self._start, self._stop, self._mask = run.tolist(), start.tolist(), stop.tolist(), self.mask.tolist()
        self._tail_end, self._advised = run_end.tolist(), tail.tolist()
        if fd2 < 0:  # else the descriptor of an earlier stretch of the same reader, advised already
            fd2 = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd2, 0, 0, os.POSIX_FADV_RANDOM)
            except BaseException:
                os.close(fd2)
                raise
        self.fd = fd2  # the reader's to close (last: nothing after the open can fail and lose it)

    def advise(self, lo: int, hi: int) -> None:
        """Pages ``lo:hi`` (a window, in read order) are about to be read: for each, advise its run's marked stretch."""
        for p in range(lo, hi):
            r = self._run[p]
            # before a read with the readahead: the whole margin. Before one without: a few pages' worth -- the
            # first pages of a lane are small, so the first window is not queued behind 16 margins of advice
            ahead = (self._margin if not self._mask[p]
                     else min(self._margin, EXACT_AHEAD * (self._stop[p] - self._start[p])))
            a, b = self._advised[r], min(self._tail_end[r], self._stop[p] + ahead)
            while a < b:
                n = min(self._chunk, self._tail_end[r] - a)
                os.posix_fadvise(self.fd, a, n, os.POSIX_FADV_WILLNEED)
                a += n
            self._advised[r] = max(a, self._advised[r])


class _WindowSource:
    """Yields ``(window, slot)`` once the window is read into buffer ``slot``; closes its descriptors when closed.

    ``windows``: a sequence of windows (:class:`Windows`, or :class:`Window` objects), or an iterator of
    :class:`Windows` -- an epoch planned a stretch at a time (:func:`memstore.order.plan_stretches`,
    unsharded), taken one stretch at a time. Every page of a stretch is checked against the buffers
    once, so the reads themselves hold no GIL. The pages that :func:`exact_pages` marks are read
    without the readahead; they are found over the whole sequence, and for stretches not at all
    when unsharded (``served`` None): where a run ends in the stretch that is read is not known
    until the next one is planned. An unsharded reader of a large store has such marks only at a
    lane's end followed by rows of another split, and at most a readahead's worth
    (``read_ahead_kb``) is read there for nothing. A shard's stretches (its first windows, then the
    rest: :meth:`memstore.order.EpochOrder.stretches`) are marked each as a whole sequence, as if
    every run ended with its stretch: a page near a stretch's end is read without the readahead
    even when its run goes on, and no page with it reads on into rows of another rank.
    """

    def __init__(self, path, fd, offset, row_bytes, windows, bufs, free, stop, served=None):
        self._fd = fd
        self._path, self._offset, self._row_bytes, self._served = path, offset, row_bytes, served
        self._bufs, self._free, self._stop = bufs, free, stop
        self._flat = [b.reshape(-1).view(np.uint8) for b in bufs]
        self._exact = None
        self._fd2 = -1  # the second descriptor (readahead off), opened for the first page that needs it
        self._whole = isinstance(windows, Sequence)
        self._stretches = iter([Windows.of(windows)] if self._whole else windows)
        self._windows = Windows.of([])
        self._j = 0
        try:
            self._next_stretch()
        except BaseException:
            self.close()
            raise

    def _next_stretch(self) -> bool:
        """Take the next stretch of windows (False: none left): its page reads, checked, and each page's descriptor."""
        ws = next(self._stretches, None)
        if ws is None:
            return False
        ws = Windows.of(ws)
        rb = self._row_bytes
        reads = PageReads(ws.buf_start * rb, self._offset + ws.row_start * rb, (ws.row_stop - ws.row_start) * rb,
                          self._flat[0].nbytes)
        fds = np.full(len(reads), self._fd, np.int64)
        self._exact = None  # the last stretch's pages are all read
        # not on macOS and Windows: the kernel's readahead alone
        if (self._whole or self._served is not None) and hasattr(os, "posix_fadvise"):
            # the second descriptor, once open, serves every later stretch: nothing opened mid-epoch but once
            exact = _Exact(self._path, self._fd, self._offset, rb, ws, self._served, self._fd2)
            self._fd2 = max(self._fd2, exact.fd)
            self._exact = exact if exact.fd >= 0 else None  # no page marked: every read with the readahead
            if self._exact is not None:  # the marked pages without the readahead
                fds[self._exact.mask] = self._exact.fd
        self._windows, self._reads, self._fds, self._first, self._j = ws, reads, fds, ws.page_at.tolist(), 0
        return True

    def __iter__(self):
        return self

    def __next__(self):
        while self._j >= len(self._windows):
            if not self._next_stretch():
                raise StopIteration
        w = self._windows[self._j]
        slot = wait_get(self._free, self._stop)  # a buffer the consumer is done with
        if slot is None or slot < 0 or self._stop.is_set():
            raise StopIteration
        lo, hi = self._first[self._j], self._first[self._j + 1]
        if self._exact is not None:  # advise what the readahead will not read, before any page is read
            self._exact.advise(lo, hi)
        _read_window(self._fds[lo:hi], self._reads, lo, w, self._flat[slot])
        self._j += 1
        return w, slot

    def close(self) -> None:
        self._exact = None
        if self._fd2 >= 0:
            os.close(self._fd2)
            self._fd2 = -1
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
