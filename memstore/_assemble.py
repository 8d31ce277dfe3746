"""Batches from an epoch's windows: the producer that ``BatchStream`` runs (in a thread, :mod:`memstore.prefetch`).

The producer reads a :class:`Job` -- a snapshot of the stream's arrays and
scalars, never the stream itself, so a stream dropped without ``close()`` is
still collected (a thread is a garbage-collection root). In memory the one
window's ``src_row`` are rows of the store's mapping; out of core a
:class:`memstore.pager.WindowReader` reads the windows and ``src_row`` are
rows of its buffer. Every batch is a new array.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .order import Window, Windows
from .pager import WindowReader
from .prefetch import FLUSH
from .slicer import BlockGather

__all__ = ["Job", "shape", "produce"]


@dataclass(frozen=True, eq=False)
class Job:
    """What a producer reads: arrays and scalars of the stream, but not the stream itself."""

    batch_size: int
    time_context: int
    n_bins: int
    n_batches: int
    layout: str
    block_valid: np.ndarray
    block_file: np.ndarray
    labels: np.ndarray
    norm: dict
    features: np.ndarray | None   # the store's mapping (in memory), or None (out of core)
    path: object
    data_offset: int
    dtype: np.dtype
    window_rows: int
    return_file: bool
    served: tuple | None = None   # out of core, sharded: the split's rows (pager.served_rows); None: unsharded


def shape(x: np.ndarray, layout: str) -> np.ndarray:
    """``(N, T, F)`` blocks in ``layout``: NCTF and NTFC are views, NFTC a transposed copy."""
    if layout == "NCTF":
        return x[:, None]
    if layout == "NTFC":
        return x[..., None]
    if layout == "NFTC":
        return np.ascontiguousarray(x.transpose(0, 2, 1))[..., None]
    return x


def produce(job: Job, stretches, first_batch: int, total: int | None = None):
    """Yield (x, y) or (x, y, file) from an epoch's windows, from batch ``first_batch`` on.

    ``stretches``: the epoch's windows (:meth:`memstore.order.EpochOrder.stretches`), one
    :class:`Windows` or an iterator of them (a stretch at a time), ``total`` blocks in all (given for
    an iterator; one :class:`Windows` knows it). Per batch, the Python
    steps are few: a batch inside one window (every batch in memory) is one
    :meth:`BlockGather.fresh` call -- the kernel, without the GIL -- and one label lookup; a batch
    that spans windows (out of core) is gathered piece by piece. :data:`memstore.prefetch.FLUSH`
    follows the first batch and comes before every wait for a window, so a lazy hand-over delays
    neither the first batch nor one that waits behind the disk.
    """
    if job.n_batches == 0 or first_batch >= job.n_batches:
        return
    size_ = job.batch_size
    pos = first_batch * size_
    if total is None:
        total = int(stretches.block_at[-1])
    stretches, lo = _skip(stretches, pos)  # the windows from the one holding position ``pos`` on
    if job.features is None:
        reader = WindowReader(job.path, job.data_offset, job.n_bins, job.dtype, stretches, job.window_rows,
                              served=job.served)
        windows = iter(reader)
    else:
        reader = None
        windows = iter([(stretches[0], job.features)])
    labels, layout, return_file = job.labels, job.layout, job.return_file
    try:
        w, buf = next(windows)
        fill, files_w = _gather(job, w, buf)
        hi = lo + len(w.blocks)
        for b in range(first_batch, job.n_batches):
            size = min(size_, total - pos)
            if pos + size <= hi:  # the whole batch in this window
                k = pos - lo
                out = fill.fresh(k, k + size)
                files = files_w[k:k + size]
            else:
                out = np.empty((size, job.time_context, job.n_bins), np.float32)
                parts = []
                at = pos
                while at < pos + size:
                    while at >= hi:
                        yield FLUSH
                        w, buf = next(windows)
                        fill, files_w = _gather(job, w, buf)
                        lo, hi = hi, hi + len(w.blocks)
                    k, take = at - lo, min(pos + size, hi) - at
                    fill(k, k + take, out[at - pos:at - pos + take])
                    parts.append(files_w[k:k + take])
                    at += take
                files = np.concatenate(parts)
            pos += size
            x = shape(out, layout)
            if return_file:
                yield x, labels[files], files.copy()
            else:
                yield x, labels[files]
            if b == first_batch:
                yield FLUSH
    finally:
        if reader is not None:
            reader.close()


def _skip(stretches, pos: int):
    """``(windows, lo)``: the windows from the one that holds position ``pos`` of the epoch on, and that
    window's first position ``lo``. One :class:`Windows` gives one (a slice), an iterator of them an
    iterator (the first one cut to start at that window)."""
    if isinstance(stretches, Windows):
        k = int(np.searchsorted(stretches.block_at, pos, side="right")) - 1
        return stretches[k:], int(stretches.block_at[k])
    stretches = iter(stretches)
    lo = 0
    for ws in stretches:
        n = int(ws.block_at[-1])
        if pos < lo + n:
            k = int(np.searchsorted(ws.block_at, pos - lo, side="right")) - 1
            return itertools.chain([ws[k:]], stretches), lo + int(ws.block_at[k])
        lo += n
    raise ValueError(f"position {pos} is past the epoch's {lo} blocks")


def _gather(job: Job, w: Window, buf: np.ndarray) -> tuple[BlockGather, np.ndarray]:
    """The gather of window ``w``'s blocks from ``buf`` (every bound checked once here), and their files."""
    return (BlockGather(buf, w.src_row, job.block_valid[w.blocks], job.time_context, **job.norm),
            job.block_file[w.blocks])
