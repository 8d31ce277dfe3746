"""The block table: which ``time_context``-frame blocks each file gives.

A file of ``L`` frames gives ``max(1, ceil((L - T) / step))`` blocks starting
at ``0, step, 2*step, ...`` -- the tutorial's ``getNumInstances``, and one
piece of code for both the count and the extraction (the tutorial's successor
computed them apart, and they disagreed). A file shorter than ``T`` gives one
block, padded with zeros by the slicer.

With ``tail=True``, a file whose regular blocks stop before its end gets one
more block, ``[L - T, L)``, so that no frame goes unused (when ``step <= T``;
a larger step leaves gaps between blocks by design). (The tutorial's
count leaves up to ``step`` frames at the end of every file unused: a
261-frame file with ``T=128, step=50`` gives blocks at 0, 50, 100, and frames
228..260 are never served; ``tail=True`` adds a block at 133.)
"""

from __future__ import annotations

import numpy as np

from ._validate import int_up_to
from .errors import ParameterError
from .stats import starts

__all__ = ["block_counts", "block_table"]


#: the longest block and the largest step, in frames: far past any file, and far inside the int64 sums
MAX_FRAMES = 1 << 40


def _check(n_frames, time_context, step) -> np.ndarray:
    int_up_to("time_context", time_context, MAX_FRAMES, "frames; 10**30 overflowed the block table's int64")
    int_up_to("step", step, MAX_FRAMES, "frames; 10**30 overflowed the block table's int64")
    n = np.asarray(n_frames)
    if n.ndim != 1 or (n.size and not np.issubdtype(n.dtype, np.integer)):
        raise ParameterError("n_frames must be a one-dimensional array of integers")
    n = n.astype(np.int64)
    if n.size and n.min() < 1:
        raise ParameterError(f"n_frames must be positive; got {int(n.min())}")
    return n


def block_counts(n_frames, time_context: int, step: int, *, tail: bool = False) -> np.ndarray:
    """Blocks per file (int64): ``max(1, ceil((L - T) / step))``, plus the tail block if asked."""
    n = _check(n_frames, time_context, step)
    counts = np.maximum(1, -((time_context - n) // step))  # integer ceil((L - T) / step)
    if tail:
        counts += _needs_tail(n, counts, time_context, step)
    return counts


def _needs_tail(n, counts, time_context, step) -> np.ndarray:
    last_end = (counts - 1) * step + time_context
    return ((n > time_context) & (last_end < n)).astype(np.int64)


def block_table(n_frames, time_context: int, step: int, *, tail: bool = False):
    """Every block of every file.

    Parameters
    ----------
    n_frames : array_like of int [shape=(n_files,)]
    time_context, step : int
    tail : bool
        Add a last block ending at each file's end (see the module notes).

    Returns
    -------
    block_file : ndarray [shape=(n_blocks,)], int64
    block_start : ndarray [shape=(n_blocks,)], int64
        First frame of each block within its file.

    Example
    -------
    >>> block_table([261, 100], 128, 50)
    (array([0, 0, 0, 1]), array([  0,  50, 100,   0]))
    """
    n = _check(n_frames, time_context, step)
    regular = np.maximum(1, -((time_context - n) // step))
    extra = _needs_tail(n, regular, time_context, step) if tail else np.zeros_like(regular)
    counts = regular + extra
    block_file = np.repeat(np.arange(len(n), dtype=np.int64), counts)
    first = starts(counts)
    k = np.arange(len(block_file), dtype=np.int64) - np.repeat(first, counts)
    block_start = k * step
    if tail and extra.any():
        last = first + counts - 1
        has = extra.astype(bool)
        block_start[last[has]] = n[has] - time_context
    return block_file, block_start
