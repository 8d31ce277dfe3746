"""An epoch's windows: :class:`Window` (one) and :class:`Windows` (all of them, held as arrays).

:mod:`memstore.order` plans them, :mod:`memstore._deal` cuts them to a rank,
:mod:`memstore.pager` reads them and :mod:`memstore._assemble` serves their
blocks. Kept apart so that each can import them without the others.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Window", "Windows"]


@dataclass(frozen=True)
class Window:
    """Blocks served from one resident window of an epoch (in memory: the whole store map)."""

    row_start: np.ndarray   # int64 (pages,): absolute store rows read
    row_stop: np.ndarray
    buf_start: np.ndarray   # int64 (pages,): where each page lands in the buffer
    n_rows: int
    blocks: np.ndarray      # int64: block ids in serving order
    src_row: np.ndarray     # int64: buffer row where each served block starts


class Windows(Sequence):
    """An epoch's windows, held as whole-epoch arrays; a :class:`Window` is made when one is asked for.

    Window ``j`` reads pages ``page_at[j]:page_at[j + 1]`` of ``row_start``, ``row_stop`` and
    ``buf_start`` into a buffer of ``n_rows[j]`` rows, and serves the blocks
    ``blocks[block_at[j]:block_at[j + 1]]`` from the buffer rows ``src_row`` of the same range.
    An epoch of a 100 GB store at a 16 MB limit has some 60,000 windows: planning, dealing and
    reading them take whole-epoch array steps, and no Python step per window until it is served.
    A slice (step 1) is a :class:`Windows` of views.
    """

    __slots__ = ("row_start", "row_stop", "buf_start", "n_rows", "page_at", "blocks", "src_row", "block_at")

    def __init__(self, row_start, row_stop, buf_start, n_rows, page_at, blocks, src_row, block_at):
        self.row_start, self.row_stop, self.buf_start = row_start, row_stop, buf_start
        self.n_rows, self.page_at = n_rows, page_at
        self.blocks, self.src_row, self.block_at = blocks, src_row, block_at

    def __len__(self) -> int:
        return len(self.n_rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                return Windows.of([self[k] for k in range(a, b, step)])
            b = max(a, b)
            p, q, x, y = self.page_at[a], self.page_at[b], self.block_at[a], self.block_at[b]
            return Windows(self.row_start[p:q], self.row_stop[p:q], self.buf_start[p:q], self.n_rows[a:b],
                           self.page_at[a:b + 1] - p, self.blocks[x:y], self.src_row[x:y], self.block_at[a:b + 1] - x)
        j = operator.index(i)
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(f"window {i} of {len(self)}")
        p, q, x, y = self.page_at[j], self.page_at[j + 1], self.block_at[j], self.block_at[j + 1]
        return Window(self.row_start[p:q], self.row_stop[p:q], self.buf_start[p:q], int(self.n_rows[j]),
                      self.blocks[x:y], self.src_row[x:y])

    def __repr__(self) -> str:
        return f"Windows({len(self)} windows, {len(self.row_start)} pages, {len(self.blocks)} blocks)"

    @classmethod
    def of(cls, windows) -> Windows:
        """``windows`` -- :class:`Windows`, or a sequence of :class:`Window` and :class:`Windows` -- as one."""
        if isinstance(windows, Windows):
            return windows
        parts = [w if isinstance(w, Windows) else _one(w) for w in windows]
        empty = np.zeros(0, np.int64)
        if not parts:
            return Windows(empty, empty, empty, empty, np.zeros(1, np.int64), empty, empty, np.zeros(1, np.int64))

        def cat(name):
            return np.concatenate([np.asarray(getattr(w, name), np.int64) for w in parts])

        def at(name, count):  # the parts' offsets laid end to end
            base = np.cumsum([0] + [count(w) for w in parts])
            return np.concatenate([np.asarray(getattr(w, name)[:-1], np.int64) + base[k] for k, w in enumerate(parts)]
                                  + [base[-1:]]).astype(np.int64)

        return Windows(cat("row_start"), cat("row_stop"), cat("buf_start"), cat("n_rows"),
                       at("page_at", lambda w: len(w.row_start)), cat("blocks"), cat("src_row"),
                       at("block_at", lambda w: len(w.blocks)))

    def block_counts(self) -> np.ndarray:
        """Blocks each window serves (int64 [shape=(len(self),)])."""
        return np.diff(self.block_at)

    def page_counts(self) -> np.ndarray:
        """Pages each window reads (int64 [shape=(len(self),)])."""
        return np.diff(self.page_at)


def _one(w: Window) -> Windows:
    return Windows(w.row_start, w.row_stop, w.buf_start, np.array([w.n_rows], np.int64),
                   np.array([0, len(w.row_start)], np.int64), w.blocks, w.src_row,
                   np.array([0, len(w.blocks)], np.int64))
