"""Epoch order: which block is served when, for the in-memory and the paged path alike.

Everything here is a pure function of ``(seed, epoch)`` and the split's block
table (MosaicML streaming's shuffles are the model): no I/O, no threads.
:class:`EpochOrder` gives an epoch as its :class:`Windows` (held as arrays, a
:class:`Window` made when one is asked for) -- one window over the whole store
map in memory, the pager's windows out of core -- and both paths deal it to
ranks by one rule, :func:`deal_windows`. An unsharded paged epoch is also
given a stretch of windows at a time (:func:`plan_stretches`).

In memory
---------
The epoch's global sequence is ``default_rng((seed, epoch)).permutation(n)``
(``arange(n)`` with ``shuffle=False``), or, for a balanced epoch, the same
generator's permutation of the drawn multiset ``repeat(arange(n), counts)``.

Out of core (:func:`plan_epoch`)
--------------------------------
The served blocks, in store order, are rotated by a random offset
(``default_rng((seed, epoch))``) and cut into ``window_rows // page_rows``
equal *lanes* (16 when the budget allows): contiguous stretches spread evenly
over the whole store. Each lane is cut into *pages* of whole blocks, in row
order -- the first pages ``1/FIRST_PAGE_DIVISOR`` of a full one, doubling, so
the first window is small and the first batch comes quickly -- and window
``j`` holds page ``j`` of every lane. Inside a window the pages are sorted by
row, read into one buffer, and the window's blocks are shuffled (same
generator: a Fisher-Yates shuffle with one raw 64-bit draw per block, window
after window). Planned a stretch of windows at a time (:func:`plan_stretches`),
the lanes are cut a stretch further each time and the draws go on in window
order: the same bytes as the whole epoch at once (:func:`plan_epoch`).

Why lanes. A window mixes one stretch from each lane, so a batch holds blocks
from all over the store even when it was written class by class. And each
lane is read front to back, window after window: the kernel's readahead sees
16 sequential streams and keeps the disk busy at nearly its sequential speed,
where pages drawn at random (the plan before this one) read at a quarter of
it. A page reads on through the unused rows up to the next page of its lane
(the end of a short file), because the readahead takes a hole for a random
read. Consecutive pages of one long file overlap by up to ``time_context - 1``
rows, so every block lies inside one page; the overlap is still in the page
cache when it is read again. A balanced epoch passes per-block ``counts``:
blocks drawn zero times are left out of the lanes, and a repeated block is
served repeatedly from its window. Unshuffled (``shuffle=False``), pages are
read and served in store order.

Balanced epochs (``balance="class"``)
--------------------------------------
Every block gets one *balancing class*: its file's label, or for a
multi-label file its rarest label (fewest blocks over the split, counting a
multi-label file towards each of its labels; ties go to the lower class
index). Files without a label get ``-1`` and take no part in a balanced epoch.

An epoch of ``n_draw`` blocks gives each of the ``K`` classes present
``n_draw // K`` blocks, and one more to ``n_draw % K`` classes chosen at
random. A class of ``m`` blocks with quota ``q`` serves every block
``q // m`` times and ``q % m`` distinct blocks once more, drawn without
replacement: a minority class's blocks are repeated as evenly as possible, a
majority class is sampled down, and the class shares of an epoch are equal
within one block. The distinct blocks are drawn by selection sampling (Knuth's
Algorithm S, :func:`_select`): one pass over the class's blocks in block
order, one raw 64-bit draw each, integer arithmetic only -- every subset of
that size equally likely (to 2**-32 per step), the same on every machine, and
at 1 TB 0.14 s where ``rng.choice`` per class took 0.7 s. The draw is a pure
function of ``(seed, epoch)``; it returns per-block multiplicities
(``counts``), which either path turns into an order as above.

Dealing to ranks by pages (elastic)
-----------------------------------
An epoch is one global sequence ``G`` of blocks, the same for every world
size. What is left of it is the *unserved set* ``U``: disjoint ascending
intervals ``[lo, hi)`` of positions in ``G`` (a fresh epoch: ``[(0, n)]``).
With ``shard=(rank, world)``, ``U`` is dealt in contiguous chunks
(:func:`deal`): with ``m = |U|`` and ``per = m // world``, rank ``r`` serves
the positions ``flat(U)[r * per:(r + 1) * per]`` in ascending order, and the
last ``m - per * world`` (at most ``world - 1``) go to nobody. Out of core a
rank's windows are those holding its positions, each cut to its blocks *and
to the pages that hold them* (:func:`deal_windows`): a rank reads about
``1 / world`` of the store, plus the pages of the at most two windows it
shares with its neighbours. A rank also *plans* only those windows: the lanes'
pages are cut for the whole epoch, which gives every window's block count and
so where the rank's positions lie, and the shuffle's draws of the other
windows are skipped (``PCG64.advance``): the same bytes as the whole plan
dealt, for about ``1 / world`` of its work. A rank of more than one is given
its first ``STRETCH_FIRST`` windows on their own, then the rest
(:meth:`EpochOrder.stretches`), so its first batch does not wait for its
whole plan. After each rank ``j`` consumed the first ``c_j``
positions of its chunk, the rest is again an unserved set
(:func:`remaining`, the dropped tail put back), which any number of ranks can
deal: an elastic resume.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._deal import deal, deal_windows, dealt, intervals, remaining
from ._jit import njit
from ._window import Window, Windows
from .errors import ParameterError
from .stats import offsets

__all__ = ["EpochOrder", "Window", "Windows", "balance_classes", "balanced_counts", "class_members", "deal",
           "deal_windows", "intervals", "remaining", "plan_pages", "plan_epoch", "plan_stretches", "lane_ends",
           "shuffle_quality", "order_report", "MIN_PAGES_PER_WINDOW"]

#: separates the balanced draw's random stream from the shuffle's ``(seed, epoch)`` stream
_BALANCE_TAG = 0xBA1A
#: a window should mix at least this many pages when the budget allows
MIN_PAGES_PER_WINDOW = 16
#: a lane's first page is this many times smaller than the rest (then doubling): a smaller first window
FIRST_PAGE_DIVISOR = 16
#: windows in the first stretch of a streamed epoch (:func:`plan_stretches`), then twice as many each time
STRETCH_FIRST = 8
#: windows in a stretch at most
STRETCH_MAX = 1024
#: seeds the global shuffle that :func:`order_report` compares an order with
_REPORT_TAG = 0x610B


@dataclass(frozen=True, eq=False)
class EpochOrder:
    """The order of every epoch of one split, on either path.

    Parameters
    ----------
    block_row : int64 array [shape=(n_blocks,)]
        Absolute store row where each block starts, sorted (the split's block table).
    block_valid : int64 array [shape=(n_blocks,)]
        Real rows of each block (``time_context``, or fewer for a short file).
    seed : int
    shuffle : bool
        False: store order, file by file and by start frame (``seed`` unused).
    block_class : int64 array [shape=(n_blocks,)], optional
        Balancing class of each block: every epoch is a balanced draw. None: every block once.
    window_rows : int, optional
        Rows per window buffer: the paged order (:func:`plan_epoch`). None: in memory.
    """

    block_row: np.ndarray
    block_valid: np.ndarray
    seed: int
    shuffle: bool = True
    block_class: np.ndarray | None = None
    window_rows: int | None = None

    def __len__(self) -> int:
        """Blocks in an epoch's global sequence (a balanced draw is as long as the split)."""
        return len(self.block_row)

    def counts(self, epoch: int) -> np.ndarray | None:
        """Times each block is served in ``epoch`` (balanced), or None (every block once)."""
        if self.block_class is None:
            return None
        return balanced_counts(self.block_class, len(self), seed=self.seed, epoch=epoch, _classes=self._classes)

    @functools.cached_property
    def _classes(self):
        """:func:`class_members` of the balancing classes, the same every epoch."""
        return class_members(self.block_class)

    def windows(self, epoch: int, shard=None, unserved=None) -> Windows:
        """The windows of ``epoch`` with the blocks rank ``shard[0]`` serves of ``unserved`` (default: all)."""
        if self.window_rows is not None and self.shuffle and (shard is not None or unserved is not None):
            return Windows.of(list(self._dealt(epoch, shard, unserved)))
        counts = self.counts(epoch)
        if self.window_rows is not None:
            return plan_epoch(self.block_row, self.block_valid, window_rows=self.window_rows, seed=self.seed,
                              epoch=epoch, shard=shard, shuffle=self.shuffle, counts=counts, unserved=unserved)
        n = len(self)
        rng = np.random.default_rng((self.seed, int(epoch)))
        if counts is not None:
            order = rng.permutation(np.repeat(np.arange(n, dtype=np.int64), counts))
        else:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
        empty = np.zeros(0, np.int64)
        whole = Windows.of([Window(empty, empty, empty, 0, order, self.block_row[order])])
        return deal_windows(whole, shard, unserved) if shard is not None or unserved is not None else whole

    def stretches(self, epoch: int, shard=None, unserved=None):
        """The windows of ``epoch`` (as :meth:`windows`): an unsharded paged epoch as an iterator of
        :class:`Windows`, a stretch at a time (:func:`plan_stretches`); a shuffled paged epoch dealt to a
        rank of more than one as an iterator of its first ``STRETCH_FIRST`` windows and then, if there
        are more, the rest (planned when asked for: :func:`_dealt_parts`); any other as one
        :class:`Windows`."""
        if self.window_rows is not None and shard is None and unserved is None:
            return plan_stretches(self.block_row, self.block_valid, window_rows=self.window_rows, seed=self.seed,
                                  epoch=epoch, shuffle=self.shuffle, counts=self.counts(epoch), first=STRETCH_FIRST,
                                  ends=self._ends if self.shuffle and self.block_class is None else None)
        if self.window_rows is not None and self.shuffle and shard is not None and shard[1] > 1:
            return _head_and_rest(self._dealt(epoch, shard, unserved), STRETCH_FIRST)
        return self.windows(epoch, shard, unserved)

    def _dealt(self, epoch: int, shard, unserved):
        """:func:`_dealt_parts` of this paged, shuffled order (a generator: nothing runs before the first ``next``)."""
        row, valid, page_rows, longest, counts = _checked(self.block_row, self.block_valid, self.window_rows,
                                                          None, self.counts(epoch))
        return _dealt_parts(row, valid, self.window_rows, page_rows, longest, counts,
                            np.random.default_rng((self.seed, int(epoch))), shard, unserved, STRETCH_MAX,
                            self._ends if self.block_class is None else None)

    @functools.cached_property
    def _ends(self) -> np.ndarray:
        """:func:`lane_ends` of the block table, the same every epoch (a shuffled epoch that serves every block)."""
        return lane_ends(self.block_row, self.block_valid)

    def blocks(self, epoch: int, shard=None, unserved=None) -> np.ndarray:
        """Block ids in the order rank ``shard[0]`` serves them in ``epoch`` (see :meth:`windows`)."""
        return self.windows(epoch, shard, unserved).blocks.copy()

    def per_rank(self, world: int = 1, unserved=None) -> int:
        """Blocks each of ``world`` ranks serves of ``unserved`` (default: the whole epoch)."""
        iv = intervals(unserved, len(self))
        return int((iv[:, 1] - iv[:, 0]).sum()) // world


def balance_classes(block_file: np.ndarray, label_index: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The balancing class of each block (int64, ``-1`` for a file without a label).

    Parameters
    ----------
    block_file : int64 array [shape=(n_blocks,)]
        Store file of each block of the split.
    label_index : int array [shape=(n_files,)]
        Single label per file, ``-1`` for none or several.
    labels : uint8 array [shape=(n_files, n_classes)]
        Multi-hot labels per file.
    """
    block_file = np.asarray(block_file, dtype=np.int64)
    hot = np.asarray(labels, dtype=bool)
    blocks_per_file = np.bincount(block_file, minlength=len(hot))
    # rarity over the split: blocks carrying each label, a multi-label file counting for each of its labels
    per_class = blocks_per_file @ hot.astype(np.int64) if hot.shape[1] else np.zeros(0, np.int64)
    big = np.iinfo(np.int64).max
    rarest = (np.where(hot, per_class[None, :], big).argmin(axis=1) if hot.shape[1]
              else np.zeros(len(hot), np.int64))
    file_class = np.where(hot.any(axis=1), rarest, -1)
    single = np.asarray(label_index, dtype=np.int64)
    file_class = np.where(single >= 0, single, file_class).astype(np.int64)
    return file_class[block_file]


def class_members(block_class: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(present, by_class, first, last)``: the classes present (``>= 0``, ascending), the blocks sorted
    by class (stable), and where each present class's blocks start and end in that order.

    Classes from -1 to 32766 (any real label set) are sorted as 16-bit integers, which numpy's
    stable sort does by radix: for 30 million blocks (a 1 TB store) 0.085 s written class by class
    and 0.32 s shuffled, where the 64-bit sort and ``np.unique`` took 0.41 and 2.7 s. The same
    stable order either way."""
    block_class = np.asarray(block_class, dtype=np.int64)
    n = len(block_class)
    small = n > 0 and int(block_class.min()) >= -1 and int(block_class.max()) < np.iinfo(np.int16).max
    key = block_class.astype(np.int16) if small else block_class
    by_class = np.argsort(key, kind="stable")
    ordered = key[by_class]
    edges = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1  # where each class's run starts, the first aside
    heads = np.r_[np.zeros(min(n, 1), np.int64), edges]  # named apart from stats.starts
    values = ordered[heads].astype(np.int64)
    keep = values >= 0
    return values[keep], by_class, heads[keep], np.r_[edges, np.full(min(n, 1), n, np.int64)][keep]


def balanced_counts(block_class: np.ndarray, n_draw: int, *, seed: int, epoch: int, _classes=None) -> np.ndarray:
    """How many times each block is served in a balanced epoch of ``n_draw`` blocks.

    Returns an int64 array [shape=(n_blocks,)] summing to ``n_draw``; blocks of
    class ``-1`` get 0. A pure function of its arguments (see the module notes).
    ``_classes``: :func:`class_members` of the same ``block_class``, kept across
    epochs by :class:`EpochOrder` (its sorts were most of a draw's time: 0.95 of
    1.6 s for 30 million blocks).
    """
    block_class = np.asarray(block_class, dtype=np.int64)
    counts = np.zeros(len(block_class), np.int64)
    present, by_class, first, last = _classes if _classes is not None else class_members(block_class)
    if n_draw <= 0 or not len(present):
        return counts
    if not len(present) == len(first) == len(last):
        raise ParameterError("_classes must be class_members of the same block_class")
    rng = np.random.default_rng((int(seed), int(epoch), _BALANCE_TAG))
    k = len(present)
    quota = np.full(k, n_draw // k, np.int64)
    quota[rng.permutation(k)[: n_draw % k]] += 1
    size = last - first
    if size.min() <= 0:
        raise ParameterError("_classes must be class_members of the same block_class")
    if size.max() >= _SELECT_MAX:
        raise ParameterError(f"a balancing class of {int(size.max())} blocks is too large to draw from "
                             f"(at most {_SELECT_MAX - 1})")
    # the kernels check every index they write by (_classes may come from elsewhere): -1 when one is not a block
    if _fill_counts(by_class, first, last, quota // size, counts) < 0:
        raise ParameterError("_classes must be class_members of the same block_class")
    for c in np.flatnonzero(quota % size).tolist():  # these classes serve some blocks once more: which?
        need, a, b = int(quota[c] % size[c]), int(first[c]), int(last[c])
        for lo in range(a, b, _SELECT_CHUNK):  # every member's draw is made, in member order
            hi = min(b, lo + _SELECT_CHUNK)
            # members checked by _fill_counts: every id of by_class[a:b] is a block
            need = _select(by_class[lo:hi], b - lo, need, rng.bit_generator.random_raw(hi - lo), counts)
    return counts


#: members of a class drawn for at once (32 MB of draws)
_SELECT_CHUNK = 1 << 22
#: :func:`_select` multiplies a 32-bit draw by the members left: fewer than 2**31, so no product overflows
_SELECT_MAX = 1 << 31


@njit(nogil=True, cache=True)
def _fill_counts(by_class, first, last, each, counts):  # pragma: no cover - jitted
    """``counts[by_class[first[c]:last[c]]] = each[c]`` for every class ``c``; 0, or -1 (nothing written
    past it) at a run outside ``by_class`` or an id outside ``counts``: every index is checked."""
    n = len(counts)
    for c in range(len(first)):
        if first[c] < 0 or last[c] > len(by_class) or last[c] < first[c]:
            return -1
        for i in range(first[c], last[c]):
            b = by_class[i]
            if b < 0 or b >= n:
                return -1
            counts[b] = each[c]
    return 0


@njit(nogil=True, cache=True)
def _select(members, left, need, draws, counts):  # pragma: no cover - jitted
    """Selection sampling (Knuth's Algorithm S): of ``left`` members still to consider, the first
    ``len(members)`` of which are given, take each with probability ``need / left`` (its draw's upper
    32 bits below ``need / left`` of 2**32) and serve it once more. Returns the ``need`` still left.
    Every subset of the size asked for is equally likely (to within 2**-32 per step), and exactly
    ``need`` are taken by the last member: at ``need == left`` every draw takes. Integer arithmetic only."""
    for i in range(len(members)):
        if need == 0:
            break
        u = np.int64(draws[i] >> np.uint64(32))
        if u * left < need << 32:
            counts[members[i]] += 1
            need -= 1
        left -= 1
    return need


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
               page_rows: int | None = None, shuffle: bool = True, counts=None, unserved=None) -> Windows:
    """The windows of one paged epoch (see the module notes); a pure function of its arguments.

    Parameters
    ----------
    block_row : int64 array
        Absolute store row where each block of the split starts, sorted.
    block_valid : int64 array
        Real rows of each block (``time_context``, or fewer for short files).
    window_rows : int
    seed, epoch : int
    shard : (rank, world_size), optional
        Each rank gets an equal contiguous chunk of the epoch's sequence (:func:`deal_windows`);
        windows and pages without a block of this rank are left out (not read).
    unserved : intervals, optional
        The positions of the epoch's sequence still to serve (an elastic resume, :func:`deal`);
        default the whole sequence. Only these are dealt.
    page_rows : int, optional
        Default ``max(max block rows, window_rows // 16)``.
    shuffle : bool
        False: pages and blocks in store order (no lanes, no shuffle; ``seed`` and
        ``epoch`` unused), so the epoch is served file by file, each by start frame.
    counts : int array [shape=(n_blocks,)], optional
        Times each block is served (a balanced draw); default once each.
    """
    if shuffle and (shard is not None or unserved is not None):
        # only the windows this rank serves are planned; the draws of the others are skipped
        block_row, block_valid, page_rows, longest, counts = _checked(block_row, block_valid, window_rows,
                                                                      page_rows, counts)
        return _dealt_windows(block_row, block_valid, window_rows, page_rows, longest, counts,
                              np.random.default_rng((int(seed), int(epoch))), shard, unserved)
    # planned in stretches and laid end to end: the same bytes as one stretch, and at 1 TB 0.7 s instead of 3 s
    # (arrays of a few MB stay in the caches; one stretch of 30 million blocks does not)
    out = Windows.of(list(plan_stretches(block_row, block_valid, window_rows=window_rows, seed=seed, epoch=epoch,
                                         page_rows=page_rows, shuffle=shuffle, counts=counts, first=STRETCH_MAX)))
    if shard is not None or unserved is not None:
        out = deal_windows(out, shard, unserved)
    return out


def plan_stretches(block_row, block_valid, *, window_rows: int, seed: int, epoch: int, page_rows: int | None = None,
                   shuffle: bool = True, counts=None, first: int | None = STRETCH_FIRST, ends=None):
    """An unsharded epoch's windows a stretch at a time: a generator of :class:`Windows`.

    The stretches, laid end to end, are :func:`plan_epoch`'s windows, the same bytes (the lanes
    are cut a stretch further each time and the shuffle's draws go window after window). The
    first stretch has ``first`` windows, each next one twice as many, up to ``STRETCH_MAX``:
    the first batch waits for a few windows' plan, not the whole epoch's, and the plan held at
    any time is at most two stretches, at any store size. (A ``first`` above ``STRETCH_MAX``
    makes the first stretch that large, and the next ones ``STRETCH_MAX``.) ``first=None``: the
    whole epoch in one stretch. Unshuffled epochs are one stretch. Arguments as
    :func:`plan_epoch`; ``ends``, optional, is :func:`lane_ends` of the same table, kept across
    epochs by :class:`EpochOrder` (it is the one step over every block of the store: 15 ms at
    100 GB). Only its shape is checked: the ends of another table give another plan.
    """
    block_row, block_valid, page_rows, longest, counts = _checked(block_row, block_valid, window_rows, page_rows,
                                                                  counts)
    if first is not None and (isinstance(first, bool) or not isinstance(first, int | np.integer)
                              or not 1 <= first <= 2**40):
        raise ParameterError(f"first must be None or a whole number of windows, at least 1; got {first!r}")
    first = None if first is None else int(first)
    if ends is not None and np.shape(ends) != block_row.shape:
        raise ParameterError(f"ends must be lane_ends of the {len(block_row)} blocks")
    return _stretches(block_row, block_valid, window_rows, page_rows, longest, counts, shuffle,
                      np.random.default_rng((int(seed), int(epoch))), first, ends)


def _checked(block_row, block_valid, window_rows: int, page_rows: int | None, counts):
    """The block table as int64 arrays, the page size (default: see :func:`plan_epoch`), the longest
    block, and ``counts`` checked; :class:`ParameterError` when a window cannot hold a page."""
    block_row = np.asarray(block_row, dtype=np.int64)
    block_valid = np.asarray(block_valid, dtype=np.int64)
    if block_row.ndim != 1 or block_valid.shape != block_row.shape:  # the kernels index one by the other
        raise ParameterError(f"block_row and block_valid must be 1-D arrays of one length; got shapes "
                             f"{block_row.shape} and {block_valid.shape}")
    longest = int(block_valid.max()) if len(block_valid) else 1
    if page_rows is None:
        page_rows = max(longest, window_rows // MIN_PAGES_PER_WINDOW)
    if page_rows > window_rows or longest > page_rows:
        raise ParameterError(f"window_rows={window_rows} must hold a page of {page_rows} rows and "
                             f"the longest block ({longest} rows)")
    return block_row, block_valid, page_rows, longest, _check_counts(counts, len(block_row))


def lane_ends(block_row, block_valid) -> np.ndarray:
    """Where each block ends, or an earlier block if that ends later (int64): what lanes are cut by."""
    end = np.asarray(block_row, np.int64) + np.asarray(block_valid, np.int64)
    return np.maximum.accumulate(end, out=end) if len(end) else end


def _stretches(block_row, block_valid, window_rows, page_rows, longest, counts, shuffle, rng, first, ends):
    """:func:`plan_stretches` once its arguments are checked (a generator: nothing runs before the first ``next``)."""
    if not shuffle:
        yield _windows(*_store_order_windows(block_row, block_valid, window_rows, page_rows, counts),
                       _Served(block_row, block_valid, counts, drop=False), block_row, None)
        return
    served = _Served(block_row, block_valid, counts, drop=True)
    lanes = _lanes_of(served, block_row, block_valid, window_rows, page_rows, longest, rng, ends)
    n, any_yet = first, False
    while (pages := lanes.cut(n)) is not None:
        yield _windows(*pages, served, block_row, rng)
        any_yet = True
        if n is None:
            return
        n = min(2 * n, STRETCH_MAX)
    if not any_yet:  # an empty epoch is one empty stretch
        yield _windows(*_NO_PAGES, served, block_row, rng)


def _dealt_windows(block_row, block_valid, window_rows, page_rows, longest, counts, rng, shard, unserved,
                   stretch: int = STRETCH_MAX, ends=None) -> Windows:
    """A shuffled epoch's windows dealt to ``shard`` (:func:`deal_windows` of the whole plan, the same bytes),
    planning only the windows that hold the rank's positions.

    The lanes are cut for the whole epoch (their pages only: 0.08 s at 1 TB), a ``stretch`` of
    windows at a time; a stretch's windows are made (:func:`_windows`, most of a plan's time)
    only from the first to the last that hold one of the rank's positions, and the shuffle's
    draws of every other window are skipped (:func:`_skip_draws`), so the draws of the windows
    made are those of the whole plan. A rank of ``world`` plans about ``1 / world`` of the epoch.
    ``ends``: as for :func:`plan_stretches`.
    """
    return Windows.of(list(_dealt_parts(block_row, block_valid, window_rows, page_rows, longest, counts, rng, shard,
                                        unserved, stretch, ends)))


def _dealt_parts(block_row, block_valid, window_rows, page_rows, longest, counts, rng, shard, unserved, stretch, ends):
    """:func:`_dealt_windows` as a generator: the rank's windows of each ``stretch`` of the epoch that holds
    some (a :class:`Windows` each), made when asked for. The lanes are cut no further than the rank's last
    position."""
    rank, world = shard or (0, 1)
    served = _Served(block_row, block_valid, counts, drop=True)
    n_total = served.n if served.cum is None else int(served.cum[-1])
    mine = dealt(intervals(unserved, n_total), rank, world)  # this rank's positions, as intervals
    end = int(mine[-1, 1]) if len(mine) else 0  # past the rank's last position: nothing to cut after it
    if not end:
        return
    lanes = _lanes_of(served, block_row, block_valid, window_rows, page_rows, longest, rng, ends)
    base = 0  # the epoch position of the stretch's first block
    while base < end and (pages := lanes.cut(stretch)) is not None:
        first, last, stop, window = pages
        bounds = offsets(np.bincount(window, weights=served.served(first, last)).astype(np.int64), base)
        lo, hi = np.maximum(mine[:, 0], bounds[0]), np.minimum(mine[:, 1], bounds[-1])
        inside = lo < hi
        if not inside.any():
            _skip_draws(rng, int(bounds[-1] - base))
            base = int(bounds[-1])
            continue
        lo, hi = lo[inside], hi[inside]
        j0 = int(np.searchsorted(bounds, lo[0], side="right")) - 1  # the windows holding the first position ...
        j1 = int(np.searchsorted(bounds, hi[-1] - 1, side="right"))  # ... to the last, j1 excluded
        keep = (window >= j0) & (window < j1)
        _skip_draws(rng, int(bounds[j0] - base))
        made = _windows(first[keep], last[keep], stop[keep], window[keep] - j0, served, block_row, rng)
        _skip_draws(rng, int(bounds[-1] - bounds[j1]))
        base = int(bounds[-1])
        yield deal_windows(made, None, np.stack([lo, hi], axis=1) - bounds[j0])
    if base < end:  # never: the lanes cut every served block into exactly one page
        raise RuntimeError(f"memstore bug: the epoch's pages serve {base} blocks, not the {end} dealt")


def _head_and_rest(parts, first: int):
    """The windows of ``parts`` (an iterator of :class:`Windows`) as two: the first ``first`` windows as
    soon as they are made, then all the rest at once (none if there are none)."""
    head = []
    n = 0
    for ws in parts:
        head.append(ws)
        n += len(ws)
        if n >= first:
            break
    head = Windows.of(head)
    yield head[:first]
    rest = [head[first:]] + list(parts)
    if sum(len(ws) for ws in rest):
        yield Windows.of(rest)


def _skip_draws(rng, n: int) -> None:
    """Move ``rng`` on as ``rng.bit_generator.random_raw(n)`` would, without making the draws.

    PCG64 (``default_rng``'s) jumps there in a few steps (``advance``); that also drops the half
    of a 64-bit draw that a 32-bit draw left over, which ``random_raw`` keeps: put back, so the
    state is the same in every field. Another bit generator makes the draws.
    """
    if n <= 0:
        return
    bits = rng.bit_generator
    if not hasattr(bits, "advance"):
        bits.random_raw(n)
        return
    before = bits.state
    bits.advance(n)
    if "has_uint32" in before:
        after = bits.state
        after["has_uint32"], after["uinteger"] = before["has_uint32"], before["uinteger"]
        bits.state = after


def _lanes_of(served, block_row, block_valid, window_rows, page_rows, longest, rng, ends) -> _Lanes:
    """The :class:`_Lanes` of the ``served`` blocks (``ends``: the whole table's :func:`lane_ends`, or None)."""
    if served.ids is None:
        return _Lanes(block_row, lane_ends(block_row, block_valid) if ends is None else ends, window_rows,
                      page_rows, longest, rng)
    return _Lanes(served.row, served.ends, window_rows, page_rows, longest, rng)


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
    The three arrays are of one length (:func:`_checked` sees to it; the kernel trusts it)."""
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
    """Shuffled: windows of one page from each of ``window_rows // page_rows`` lanes (see the module notes).

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


def _check_counts(counts, n: int) -> np.ndarray | None:
    if counts is None:
        return None
    counts = np.asarray(counts)
    if counts.shape != (n,) or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
        raise ParameterError(f"counts must be {n} non-negative integers, one per block")
    return counts.astype(np.int64)


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


def shuffle_quality(block_file_order, block_row_order, batch_size: int) -> dict:
    """Distinct files per batch and mean distance (rows) between consecutive blocks."""
    f = np.asarray(block_file_order)
    r = np.asarray(block_row_order, dtype=np.int64)
    n = len(f) // batch_size * batch_size
    distinct = (float(np.mean([len(np.unique(f[i:i + batch_size])) for i in range(0, n, batch_size)]))
                if n else float("nan"))
    step = float(np.abs(np.diff(r)).mean()) if len(r) > 1 else float("nan")
    return {"distinct_files_per_batch": distinct, "mean_abs_step": step}


def order_report(order: np.ndarray, *, block_file: np.ndarray, block_row: np.ndarray, block_class: np.ndarray,
                 classes, batch_size: int, seed: int) -> dict:
    """Shuffle quality of ``order`` against a global shuffle of the same blocks, and its class shares.

    ``class_shares`` counts each block in its balancing class (:func:`balance_classes`);
    blocks of class ``-1`` count in none, so the shares may sum to less than 1.
    """
    rng = np.random.default_rng((seed, _REPORT_TAG))
    glob = rng.permutation(len(block_file))[: len(order)]
    cls = block_class[order]
    shares = np.bincount(cls[cls >= 0], minlength=len(classes)) / max(len(order), 1)
    return {
        "stream": shuffle_quality(block_file[order], block_row[order], batch_size),
        "global_shuffle": shuffle_quality(block_file[glob], block_row[glob], batch_size),
        "class_shares": {str(c): float(v) for c, v in zip(classes, shares, strict=True)},
    }
