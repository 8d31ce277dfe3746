"""An epoch's pages: lanes cut into pages, and pages made into windows.

The geometry of a paged epoch, below :mod:`memstore.order` (which says what
an epoch is and why it is cut this way, and calls these steps in order):

- :func:`plan_pages` and :func:`_store_order_windows`: the store's pages in
  row order, packed into windows (an unshuffled epoch);
- :class:`_Lanes`: the served blocks cut into equal lanes, each lane into
  pages, the first pages smaller (:func:`_ramp`); window ``j`` takes page
  ``j`` of every lane (a shuffled epoch);
- :class:`_Served` and :func:`_drawn`: the blocks an epoch's pages are cut
  from, and how often each is served (a balanced draw's ``counts``);
- :func:`_windows`: a stretch's pages made into its :class:`Windows`, each
  window's blocks laid out in its buffer and shuffled.

Pure functions of their arguments: no I/O, no threads. The numba kernels
check every index they are given, or are given only indices made here.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit
from ._window import Windows
from .errors import ParameterError
from .stats import offsets

__all__ = ["plan_pages", "lane_ends"]

#: a lane's first page is this many times smaller than the rest (then doubling): a smaller first window
FIRST_PAGE_DIVISOR = 16


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


def lane_ends(block_row, block_valid) -> np.ndarray:
    """Where each block ends, or an earlier block if that ends later (int64): what lanes are cut by."""
    end = np.asarray(block_row, np.int64) + np.asarray(block_valid, np.int64)
    return np.maximum.accumulate(end, out=end) if len(end) else end


class _Served:
    """The blocks an epoch's pages are cut from, in row order, and how often each is served.

    ``ids`` (None: every block, ``0..n_blocks - 1``) are the blocks; with ``counts``, ``drop``
    leaves out the blocks drawn zero times, and then ``row`` and ``ends`` are the rows and
    :func:`lane_ends` of those left (made with ``ids`` in one pass: :func:`_drawn`). Made once per
    epoch: a stretch then touches only its own blocks, whatever the size of the store.
    """

    def __init__(self, block_row, block_valid, counts, *, drop: bool):
        n_blocks = len(block_row)
        self.ids = self.row = self.ends = None
        self.n = n_blocks
        self.reps = self.cum = None
        if counts is None:
            return
        if drop:
            ids, reps, cum, row, ends = _drawn(counts, block_row, block_valid)
            if len(ids) < n_blocks:
                self.ids, self.n, self.reps, self.cum, self.row, self.ends = ids, len(ids), reps, cum, row, ends
            else:  # every block drawn: all of them, in the whole table's lanes; cum is the counts' offsets
                self.reps, self.cum = counts, cum
            return
        self.reps = counts
        self.cum = offsets(counts)

    def block(self, i: np.ndarray) -> np.ndarray:
        """The block ids at positions ``i``."""
        return i if self.ids is None else self.ids[i]

    def served(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Blocks served (repeats counted) by the positions ``first[k]:last[k]``, for each ``k``."""
        return last - first if self.cum is None else self.cum[last] - self.cum[first]


def _drawn(counts, block_row, block_valid):
    """The blocks drawn at least once: ``(ids, reps, cum, row, ends)`` -- their ids, their counts, the
    counts' offsets with the total, their rows and :func:`lane_ends` -- in one pass over the table
    (at 1 TB six array steps over 30 million blocks took 0.24 s). The arrays are numpy's, which
    asks for huge pages for large ones: made inside the kernel, 4 KB page faults cost twice that.
    The three arrays are of one length (:func:`memstore.order._checked` sees to it; the kernel trusts it)."""
    m = int(np.count_nonzero(counts > 0))  # what the kernel writes, whatever it is given
    ids, reps, row, ends = (np.empty(m, np.int64) for _ in range(4))
    cum = np.empty(m + 1, np.int64)
    _fill_drawn(counts, block_row, block_valid, ids, reps, cum, row, ends)
    return ids, reps, cum, row, ends


@njit(nogil=True, cache=True)
def _fill_drawn(counts, block_row, block_valid, ids, reps, cum, row, ends):  # pragma: no cover - jitted
    """:func:`_drawn`'s pass, into arrays as long as there are counts above zero (``cum`` one more)."""
    cum[0] = 0
    k = 0
    hi = np.iinfo(np.int64).min
    for i in range(len(counts)):
        c = counts[i]
        if c > 0:
            ids[k] = i
            reps[k] = c
            cum[k + 1] = cum[k] + c
            r = block_row[i]
            row[k] = r
            hi = max(hi, r + block_valid[i])
            ends[k] = hi
            k += 1


def _windows(first, last, stop, window, served: _Served, block_row, rng) -> Windows:
    """A stretch's :class:`Windows` (or a whole epoch's), from its pages, in array steps.

    Page ``i`` serves the blocks at positions ``first[i]:last[i]`` of ``served`` (row-sorted) and
    is read up to row ``stop[i]``; it belongs to window ``window[i]`` (in any order: pages are
    grouped here). Inside a window the pages are sorted by row and laid end to end in the buffer,
    each block repeated as often as it is served, and the window's blocks are shuffled by ``rng``
    (None: kept in store order): one raw 64-bit draw per block, in window order, and a
    Fisher-Yates shuffle of each window with its draws (:func:`_shuffle_windows`). Integer
    arithmetic only, so the order is the same on every machine. No Python step per window (a
    100 GB store at a 16 MB limit has some 60,000 windows, and one ``rng.permutation`` each took
    0.2 s), and nothing done per block of the epoch outside the stretch.
    """
    order = np.lexsort((first, window))  # by window, then by row (served blocks are row-sorted)
    first, last, stop, window = first[order], last[order], stop[order], window[order]
    n_windows = int(window[-1]) + 1 if len(window) else 0
    page_at = offsets(np.bincount(window, minlength=n_windows))
    if served.n > len(block_row) or len(first) and (first.min() < 0 or np.any(last < first)
                                                    or last.max() > served.n):
        # never (_page_cuts made them), but the kernels below index with them: checked, not trusted
        raise RuntimeError("memstore bug: a page's blocks lie outside the epoch's served blocks")
    row_start = block_row[served.block(first)]
    rows = stop - row_start
    rows_at = offsets(rows)  # one running sum: where each page starts, and each window's rows
    buf = rows_at[:-1] - rows_at[page_at[window]]  # where each page lands in its window's buffer
    n_rows = np.diff(rows_at[page_at])
    block_at = offsets(served.served(first, last))[page_at]
    idx = np.empty(int(block_at[-1]), np.int64)
    src = np.empty(len(idx), np.int64)
    empty = np.zeros(0, np.int64)
    _blocks_of_pages(first, last, buf, row_start, empty if served.ids is None else served.ids, block_row,
                     empty if served.reps is None else served.reps, idx, src)
    if rng is not None:
        _shuffle_windows(idx, src, block_at, rng.bit_generator.random_raw(len(idx)))
    return Windows(row_start, stop, buf, n_rows, page_at, idx, src, block_at)


@njit(nogil=True, cache=True)
def _blocks_of_pages(first, last, buf, row_start, ids, block_row, reps, idx, src):  # pragma: no cover - jitted
    """Each page's blocks in row order, block ``ids[i]`` (empty ``ids``: ``i``) ``reps[i]`` times (empty
    ``reps``: once), and the buffer row it starts at."""
    n = 0
    for p in range(len(first)):
        for i in range(first[p], last[p]):
            b = i if len(ids) == 0 else ids[i]
            s = buf[p] + block_row[b] - row_start[p]
            for _ in range(1 if len(reps) == 0 else reps[i]):
                idx[n] = b
                src[n] = s
                n += 1


@njit(nogil=True, cache=True)
def _shuffle_windows(idx, src, block_at, raw):  # pragma: no cover - jitted
    """Fisher-Yates inside each window ``block_at[j]:block_at[j + 1]`` of ``idx`` and ``src`` alike: the
    block at ``a + i`` (``i`` from the window's last down to 1) swaps with ``a + raw[a + i] % (i + 1)``.
    ``raw``: uint64, one per block. The modulo's bias is below ``(i + 1) / 2**64``."""
    for j in range(len(block_at) - 1):
        a = block_at[j]
        for i in range(block_at[j + 1] - a - 1, 0, -1):
            k = a + i
            m = a + np.int64(raw[k] % np.uint64(i + 1))
            idx[k], idx[m] = idx[m], idx[k]
            src[k], src[m] = src[m], src[k]


def _store_order_windows(block_row, block_valid, window_rows: int, page_rows: int, counts):
    """Unshuffled: the store's pages in order (those with something to serve), packed greedily into windows.

    Returns the pages as :func:`_windows` takes them: ``(first, last, stop, window)``.
    """
    page_of_block, p_start, p_stop = plan_pages(block_row, block_valid, page_rows)
    page_first = np.searchsorted(page_of_block, np.arange(len(p_start) + 1))  # blocks are sorted by page
    order = np.arange(len(p_start))
    if counts is not None:
        order = order[np.bincount(page_of_block, weights=counts, minlength=len(p_start)) > 0]
    packed = _pack(order, (p_stop - p_start)[order], window_rows)
    pages = np.array([p for ws in packed for p in ws], np.int64)
    window = np.repeat(np.arange(len(packed), dtype=np.int64), [len(ws) for ws in packed])
    return page_first[pages], page_first[pages + 1], p_stop[pages], window


class _Lanes:
    """Shuffled: windows of one page from each of ``window_rows // page_rows`` lanes (see :mod:`memstore.order`).

    ``row``/``end`` are the served blocks' first rows, sorted, and :func:`lane_ends`. The blocks,
    rotated by a random offset (``rng``'s first draw), are cut into equal lanes --
    contiguous stretches of the store -- and each lane into pages in row order, the
    first pages smaller (``page_rows / FIRST_PAGE_DIVISOR``, doubling). Window ``j``
    holds page ``j`` of every lane, so each window mixes stretches from across the
    whole store while every lane is read front to back: the kernel's readahead sees
    sequential streams and the disk runs at nearly its sequential speed.

    :meth:`cut` cuts every lane a stretch of windows further; each lane remembers where it stopped.
    """

    def __init__(self, row, end, window_rows: int, page_rows: int, longest: int, rng):
        m = len(row)
        self.row, self.end = row, end
        self.limits = np.asarray(_ramp(page_rows, longest), np.int64)
        self.first_window = 0
        self.lanes = []  # per lane: its pieces [(a, b)], the piece it is in, its next block, its next page
        if not m:
            return
        n_lanes = max(1, min(window_rows // page_rows, m))
        rotation = int(rng.integers(m))
        for k in range(n_lanes):
            lo = (rotation + k * m // n_lanes) % m
            size = (k + 1) * m // n_lanes - k * m // n_lanes
            pieces = [(lo, lo + size)] if lo + size <= m else [(lo, m), (0, lo + size - m)]
            self.lanes.append([pieces, 0, pieces[0][0], 0])

    def cut(self, n_windows: int | None):
        """The pages of the next ``n_windows`` windows (None: all that are left), as :func:`_windows`
        takes them: ``(first, last, stop, window)`` with windows numbered from 0; None when every lane is done."""
        j0 = self.first_window
        stop_at = np.iinfo(np.int64).max if n_windows is None else j0 + n_windows
        parts = []
        for lane in self.lanes:
            pieces, p, i, t = lane
            while p < len(pieces) and t < stop_at:
                a, b = pieces[p]
                cuts, stops = _page_cuts(self.row, self.end, i, b, self.limits, t, stop_at - t)
                if len(stops):
                    parts.append((cuts[:-1], cuts[1:], stops, np.arange(t - j0, t - j0 + len(stops), dtype=np.int64)))
                t += len(stops)
                i = int(cuts[-1])
                if i >= b:
                    p += 1
                    i = pieces[p][0] if p < len(pieces) else b
            lane[1:] = [p, i, t]
        if not parts:
            return None
        self.first_window = stop_at if n_windows is not None else j0
        return tuple(np.concatenate(c) for c in zip(*parts, strict=True))


_NO_PAGES = tuple(np.zeros(0, np.int64) for _ in range(4))


def _ramp(page_rows: int, longest: int) -> list[int]:
    """Row limits of a lane's first pages: from ``page_rows / FIRST_PAGE_DIVISOR`` doubling to ``page_rows``."""
    limits = [min(page_rows, max(longest, page_rows // FIRST_PAGE_DIVISOR))]
    while limits[-1] < page_rows:
        limits.append(min(page_rows, max(limits[-1] * 2, longest)))
    return limits


@njit(nogil=True, cache=True)
def _page_cuts(row, end, a, b, limits, t, most):  # pragma: no cover - jitted
    """Blocks ``a:b`` (row-sorted, ``end`` non-decreasing) cut into at most ``most`` pages: the first block
    of each page, then where the last one ends (``b`` when all are cut); and each page's stop row.

    Page ``t`` spans at most ``limits[t]`` rows (the last limit after that). Rows between a
    page's last block and the next page's first (the unused end of a short file) are read with
    the page, up to its limit: a lane then reads the store without holes, and the kernel's
    readahead, which takes a hole for a random read and stops, keeps reading ahead (a 12 KB
    hole after each 77 KB page cut a lane's speed to a fifth).
    """
    k = min(b - a, most)  # pages at most
    cuts = np.empty(k + 1, np.int64)
    stops = np.empty(k, np.int64)
    n = 0
    i = a
    last = len(limits) - 1
    while i < b and n < most:
        cuts[n] = i
        stop = row[i] + limits[min(t, last)]
        j = i + 1
        while j < b and end[j] <= stop:
            j += 1
        stops[n] = max(end[j - 1], min(row[j], stop)) if j < b else end[j - 1]
        n += 1
        i = j
        t += 1
    cuts[n] = i
    return cuts[:n + 1], stops[:n]


def _pack(order: np.ndarray, sizes: np.ndarray, window_rows: int) -> list[list[int]]:
    """Greedy packing of the pages in ``order`` (of ``sizes`` rows) into windows of ``window_rows``."""
    windows_of: list[list[int]] = []
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
    return windows_of
