"""Batches from an epoch's windows: the producer that ``BatchStream`` runs (in a thread, :mod:`memstore.prefetch`).

The producer reads a :class:`Job` -- a snapshot of the stream's arrays and
scalars, never the stream itself, so a stream dropped without ``close()`` is
still collected (a thread is a garbage-collection root). In memory the one
window's ``src_row`` are rows of the store's mapping; out of core a
:class:`memstore.pager.WindowReader` reads the windows and ``src_row`` are
rows of its buffer. Every batch is a new array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .order import Window
from .pager import WindowReader
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


def shape(x: np.ndarray, layout: str) -> np.ndarray:
    """``(N, T, F)`` blocks in ``layout``: NCTF and NTFC are views, NFTC a transposed copy."""
    if layout == "NCTF":
        return x[:, None]
    if layout == "NTFC":
        return x[..., None]
    if layout == "NFTC":
        return np.ascontiguousarray(x.transpose(0, 2, 1))[..., None]
    return x


def produce(job: Job, ws: list[Window], first_batch: int):
    """Yield (x, y) or (x, y, file) from the windows ``ws`` of an epoch, from batch ``first_batch`` on."""
    counts = np.array([len(w.blocks) for w in ws], np.int64)
    cum = np.r_[0, np.cumsum(counts)]
    if job.n_batches == 0 or first_batch >= job.n_batches:
        return
    first_pos = first_batch * job.batch_size
    w_idx = int(np.searchsorted(cum, first_pos, side="right") - 1)
    if job.features is None:
        reader = WindowReader(job.path, job.data_offset, job.n_bins, job.dtype, ws[w_idx:], job.window_rows)
        windows = iter(reader)
    else:
        reader = None
        windows = iter([(ws[0], job.features)])
    try:
        w, buf = next(windows)
        fill = _gather(job, w, buf)
        total = int(cum[-1])
        for b in range(first_batch, job.n_batches):
            pos = b * job.batch_size
            size = min(job.batch_size, total - pos)
            out = np.empty((size, job.time_context, job.n_bins), np.float32)
            ids = np.empty(size, np.int64)
            filled = 0
            while filled < size:
                while pos >= cum[w_idx + 1]:
                    w, buf = next(windows)
                    w_idx += 1
                    fill = _gather(job, w, buf)
                k = pos - int(cum[w_idx])
                take = min(size - filled, int(cum[w_idx + 1]) - pos)
                fill(k, k + take, out[filled:filled + take])
                ids[filled:filled + take] = w.blocks[k:k + take]
                filled += take
                pos += take
            files = job.block_file[ids]
            if job.return_file:
                yield shape(out, job.layout), job.labels[files], files
            else:
                yield shape(out, job.layout), job.labels[files]
    finally:
        if reader is not None:
            reader.close()


def _gather(job: Job, w: Window, buf: np.ndarray) -> BlockGather:
    """The gather of window ``w``'s blocks from ``buf``, every bound checked once here."""
    return BlockGather(buf, w.src_row, job.block_valid[w.blocks], job.time_context, **job.norm)
