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
``j`` holds page ``j`` of every lane (the cutting: :mod:`memstore._pages`). Inside a window the pages are sorted by
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
Every block gets one balancing class, and an epoch of ``n_draw`` blocks gives
each class present an equal share, drawn as per-block ``counts``
(:mod:`memstore._balance`, a pure function of ``(seed, epoch)``), which
either path turns into an order as above.

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

from ._balance import balance_classes, balanced_counts, class_members
from ._deal import deal, deal_windows, dealt, intervals, remaining
from ._pages import _NO_PAGES, _Lanes, _Served, _store_order_windows, _windows, lane_ends, plan_pages
from ._window import Window, Windows
from .errors import ParameterError
from .stats import offsets

__all__ = ["EpochOrder", "Window", "Windows", "balance_classes", "balanced_counts", "class_members", "deal",
           "deal_windows", "intervals", "remaining", "plan_pages", "plan_epoch", "plan_stretches", "lane_ends",
           "shuffle_quality", "order_report", "MIN_PAGES_PER_WINDOW"]

#: a window should mix at least this many pages when the budget allows
MIN_PAGES_PER_WINDOW = 16
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


def _check_counts(counts, n: int) -> np.ndarray | None:
    if counts is None:
        return None
    counts = np.asarray(counts)
    if counts.shape != (n,) or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
        raise ParameterError(f"counts must be {n} non-negative integers, one per block")
    return counts.astype(np.int64)


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
