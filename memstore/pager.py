"""The pager: an out-of-core epoch read under a memory budget.

When a split's features do not fit in ``memory_limit``, an epoch is served in
*windows* of whole pages of blocks; which pages form which window, and in
what order the blocks of a window are served, is the epoch order's business
(:func:`memstore.order.plan_epoch`, re-exported here with :class:`Window` and
:func:`plan_pages`). This module owns the bytes:

- :func:`parse_memory` and :func:`window_budget`: how many rows a window
  buffer may hold so that two of them and the batch buffers fit the budget;
- :class:`WindowReader`: reads each window's pages with large sequential
  ``preadv`` calls into one of two preallocated buffers, the next window in
  a background thread (:mod:`memstore.prefetch`) while the current one is
  served.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import threading

import numpy as np

from .errors import ParameterError, StoreFormatError
from .order import MIN_PAGES_PER_WINDOW, Window, plan_epoch, plan_pages, shuffle_quality
from .prefetch import start as start_producer
from .prefetch import wait_get

__all__ = ["parse_memory", "Window", "plan_pages", "plan_epoch", "window_budget", "WindowReader",
           "shuffle_quality", "MIN_PAGES_PER_WINDOW"]

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
        return int(limit)
    if isinstance(limit, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", limit)
        if m and m.group(2).upper() in _UNITS:
            value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
            if value > 0:
                return value
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
    and joins the thread (``tests/test_threads.py`` drops readers mid-epoch).
    A ``buf`` still held after that stays valid memory, but its contents are no
    longer defined. With ``prefetch=False`` each window is read in the
    consumer's thread when it is asked for, into the same two buffers.
    """

    def __init__(self, path, data_offset: int, n_bins: int, dtype, windows: list[Window],
                 window_rows: int, *, prefetch: bool = True):
        dtype = np.dtype(dtype)
        self._bufs = [np.empty((max(window_rows, 1), n_bins), dtype) for _ in range(2)]
        self._free: queue.Queue = queue.Queue()
        for i in range(2):
            self._free.put(i)
        self._held = None
        stop = threading.Event()
        fd = os.open(path, os.O_RDONLY)
        # the source owns ``fd`` and closes it when it ends: nobody closes it under a running read
        source = _WindowSource(fd, int(data_offset), n_bins * dtype.itemsize, windows, self._bufs, self._free, stop)
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


class _WindowSource:
    """Yields ``(window, slot)`` once the window is read into buffer ``slot``; closes ``fd`` when closed."""

    def __init__(self, fd, offset, row_bytes, windows, bufs, free, stop):
        self._fd, self._offset, self._row_bytes = fd, offset, row_bytes
        self._windows = iter(windows)
        self._bufs, self._free, self._stop = bufs, free, stop

    def __iter__(self):
        return self

    def __next__(self):
        w = next(self._windows)
        slot = wait_get(self._free, self._stop)  # a buffer the consumer is done with
        if slot is None or slot < 0 or self._stop.is_set():
            raise StopIteration
        _read_window(self._fd, self._offset, self._row_bytes, w, self._bufs[slot])
        return w, slot

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
