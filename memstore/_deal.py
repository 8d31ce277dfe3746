"""Dealing an epoch to ranks by pages: the unserved set, contiguous chunks, windows cut to a rank's pages.

The rule is described in :mod:`memstore.order` ("Dealing to ranks by pages"),
which exports these functions; they work on positions of an epoch's global
sequence and on an epoch's windows (:class:`memstore.order.Windows`), and are pure.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._window import Window, Windows
from .errors import ParameterError
from .stats import offsets

__all__ = ["intervals", "deal", "dealt", "remaining", "deal_windows"]


def intervals(unserved, n: int) -> np.ndarray:
    """``unserved`` as an int64 array [shape=(k, 2)] of disjoint ascending ``[lo, hi)`` in ``[0, n)``.

    ``None`` is the whole epoch ``[(0, n)]``; empty intervals are dropped and touching ones merged.
    """
    if unserved is None:
        return np.array([[0, n]] if n else [], np.int64).reshape(-1, 2)
    try:
        pairs = [tuple(p) for p in (unserved.tolist() if isinstance(unserved, np.ndarray) else unserved)]
        ok = all(len(p) == 2 and all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                                     and -(2 ** 63) <= v < 2 ** 63 for v in p) for p in pairs)
    except TypeError:
        ok = False
    iv = np.array(pairs if ok else [], np.int64).reshape(-1, 2)
    iv = iv[iv[:, 1] > iv[:, 0]]
    if not ok or (len(iv) and (iv[0, 0] < 0 or iv[-1, 1] > n)) or np.any(iv[1:, 0] < iv[:-1, 1]):
        raise ParameterError(f"unserved positions must be ascending disjoint [lo, hi) pairs of integers in "
                             f"[0, {n}]; got {unserved!r:.200}")
    if len(iv) > 1:  # merge touching intervals
        new = np.r_[True, iv[1:, 0] > iv[:-1, 1]]
        iv = np.stack([iv[new, 0], iv[np.r_[new[1:], True], 1]], axis=1)
    return iv


def _flat_range(iv: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Positions ``flat(iv)[lo:hi]`` as intervals."""
    cum = offsets(iv[:, 1] - iv[:, 0])
    a = np.maximum(lo, cum[:-1])
    b = np.minimum(hi, cum[1:])
    keep = a < b
    return np.stack([iv[keep, 0] + a[keep] - cum[:-1][keep], iv[keep, 0] + b[keep] - cum[:-1][keep]], axis=1)


def deal(unserved, rank: int, world: int) -> np.ndarray:
    """Positions of the unserved set that ``rank`` of ``world`` serves, ascending (int64).

    ``unserved`` is an epoch length ``n`` (the whole epoch) or checked intervals (:func:`intervals`).
    With ``per = |U| // world``, rank ``r`` gets ``flat(U)[r * per:(r + 1) * per]``: every rank
    gets as many, and at most ``world - 1`` positions go to nobody.
    """
    mine = dealt(unserved, rank, world)
    if not len(mine):
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in mine.tolist()])


def dealt(unserved, rank: int, world: int) -> np.ndarray:
    """:func:`deal`'s positions as intervals [shape=(k, 2)] (ascending, disjoint): nothing materialised."""
    if isinstance(unserved, int | np.integer):
        unserved = intervals(None, int(unserved))
    iv = np.asarray(unserved, np.int64).reshape(-1, 2)
    per = int((iv[:, 1] - iv[:, 0]).sum()) // world
    return _flat_range(iv, rank * per, (rank + 1) * per)


def remaining(unserved, world: int, consumed) -> np.ndarray:
    """What is left of ``unserved`` after rank ``j`` of ``world`` consumed ``consumed[j]`` of its chunk.

    Returns intervals [shape=(k, 2)]: every chunk's tail, and the at most ``world - 1`` positions
    that the dealing gave nobody (put back, so a resume at another world size may serve them).
    """
    iv = np.asarray(unserved, np.int64).reshape(-1, 2)
    m = int((iv[:, 1] - iv[:, 0]).sum())
    per = m // world
    tails = [(j * per + min(int(c), per), (j + 1) * per) for j, c in enumerate(consumed)] + [(world * per, m)]
    parts = [_flat_range(iv, a, b) for a, b in tails if a < b]
    return intervals(np.concatenate(parts) if parts else np.zeros((0, 2), np.int64), int(iv[-1, 1]) if m else 0)


def deal_windows(windows, shard, unserved=None) -> Windows:
    """The one sharding rule: the windows' global block sequence dealt to ``shard`` by :func:`deal`.

    A rank keeps the windows that hold its positions of ``unserved`` (default: the whole
    sequence), each cut to those blocks and to the pages that hold them: out of core the other
    pages and windows are never read. ``windows``: :class:`Windows` or a sequence of
    :class:`Window`. A window the rank serves whole is kept as it is, and runs of such windows
    as slices: only the windows it shares with other ranks are cut one by one.
    """
    windows = Windows.of(windows)
    rank, world = shard or (0, 1)
    bounds = windows.block_at
    pos = deal(intervals(unserved, int(bounds[-1])), rank, world)
    cut = np.searchsorted(pos, bounds)  # this rank's positions inside window i: pos[cut[i]:cut[i + 1]]
    mine = np.diff(cut)
    kept = np.flatnonzero(mine > 0)
    whole = mine[kept] == np.diff(bounds)[kept]
    # runs of whole windows next to each other: one slice each; every other kept window on its own
    new = np.r_[True, ~whole[1:] | ~whole[:-1] | (np.diff(kept) > 1)] if len(kept) else np.zeros(0, bool)
    heads = np.flatnonzero(new)
    ends = np.r_[heads[1:], len(kept)] if len(kept) else heads
    parts = []
    for h, e in zip(heads.tolist(), ends.tolist(), strict=True):
        i = int(kept[h])
        if whole[h]:
            parts.append(windows[i:int(kept[e - 1]) + 1])
        else:
            parts.append(_cut(windows[i], pos[cut[i]:cut[i + 1]] - bounds[i]))
    return Windows.of(parts)


def _cut(w: Window, keep: np.ndarray) -> Window:
    """Window ``w`` serving only its blocks ``keep``, with only the pages that hold them."""
    blocks, src = w.blocks[keep], w.src_row[keep]
    if not len(w.row_start):  # in memory: one window over the store map, nothing to read
        return replace(w, blocks=blocks, src_row=src)
    page = np.searchsorted(w.buf_start, src, side="right") - 1
    used = np.unique(page)
    rows_at = offsets(w.row_stop[used] - w.row_start[used])  # where each kept page lands, and the rows in all
    buf = rows_at[:-1]
    where = np.zeros(len(w.buf_start), np.int64)
    where[used] = buf
    return replace(w, row_start=w.row_start[used], row_stop=w.row_stop[used], buf_start=buf,
                   n_rows=int(rows_at[-1]), blocks=blocks, src_row=src - w.buf_start[page] + where[page])
