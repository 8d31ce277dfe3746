"""Cold reads against class mixing: how many lanes an out-of-core epoch reads at once.

    python tools/bench_lanes.py [--limit 16MB] [--ratio 12] [--lanes 16,8,4,2] [--reps 5]
                                [--store clips|long] [--dir DIR]

An out-of-core epoch (``memstore.order``) cuts the store into *lanes*, 16 when
the budget allows, and each window holds one page of every lane: a batch then
mixes blocks from all over the store even when it was written class by class,
and each lane is one sequential stream for the kernel's readahead. This tool
measures what that costs on a cold cache, and what it buys.

It writes one synthetic store of ``--ratio`` x ``--limit`` bytes, class by
class (``tools/make_big_store.py``: 11 classes; ``clips``: 3 s files of 259
frames, ``long``: 60 s files), takes the blocks and the window size a
``BatchStream(batch_size=64, time_context=128, step=50, memory_limit=--limit)``
would, and for each lane count runs ``--reps`` rounds, every step after
``posix_fadvise(DONTNEED)`` on the store:

- **reader alone**: the epoch's windows (``plan_epoch`` with
  ``page_rows = window_rows // lanes``) read by a ``WindowReader`` and
  dropped: the reads and nothing else (no gather, no batches);
- **whole epoch**: a ``BatchStream`` epoch with the same lanes (the tool sets
  ``memstore.order.MIN_PAGES_PER_WINDOW``, the planner's one tuning constant);
- one plain sequential read of the file in 16 MB chunks (``memstore bench``'s
  baseline), between the two.

It prints, per lane count, the median of each measure's feature bytes per
second over the sequential read's (issue 12's cold target is 0.85 for the
whole epoch), the mean size of the requests the block device served during
the reader-alone reads and during the sequential read (Linux
``/sys/dev/block/<major>:<minor>/stat``; every process's requests count, so
run it on a quiet machine; ``-`` where it cannot be read), and the batches'
class mixing: distinct classes per batch of 64 over the same figure for a
global shuffle of the same blocks (target 0.8). Only ratios of neighbouring
runs mean anything on a disk its host caches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paging import SHAPES, STEP, B, T  # noqa: E402 - the same blocks, batches and stores as bench_paging


def mixing(order: np.ndarray, classes: np.ndarray, batch: int = B, seed: int = 7) -> float:
    """Distinct classes per batch of ``order`` (block ids, in serving order) over a global shuffle's."""
    seq = classes[order]
    glob = np.random.default_rng(seed).permutation(seq)
    n = len(seq) // batch * batch
    if n == 0:
        return float("nan")

    def distinct(s):
        return np.mean([len(np.unique(s[k:k + batch])) for k in range(0, n, batch)])

    return float(distinct(seq) / distinct(glob))


def device_stat(path):
    """``(requests, sectors)`` read so far by the block device holding ``path``, or None where unknown."""
    st = os.stat(path)
    try:
        with open(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat") as f:
            v = f.read().split()
        return int(v[0]), int(v[2])
    except (OSError, ValueError, IndexError):
        return None


def request_kb(before, after) -> float | None:
    """Mean size in KB of the read requests between two :func:`device_stat` samples."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) * 512 / (after[0] - before[0]) / 1e3


def reader_alone(store, windows, window_rows: int) -> float:
    """Seconds to read every window of ``windows`` into the pager's two buffers, and nothing else."""
    from memstore.pager import WindowReader

    t = time.perf_counter()
    with WindowReader(store.source, store.data_offset, store.n_bins, store.dtype, windows, window_rows) as reader:
        for _ in reader:
            pass
    return time.perf_counter() - t


def whole_epoch(store, limit, seed: int) -> float:
    """Seconds from ``iter`` to the last batch of one ``BatchStream`` epoch."""
    import memstore as ms

    stream = ms.BatchStream(store, batch_size=B, time_context=T, step=STEP, labels="index", memory_limit=limit,
                            seed=seed)
    t = time.perf_counter()
    for _ in stream:
        pass
    took = time.perf_counter() - t
    stream.close()
    return took


def _median_kb(values) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.0f}" if known else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", default="16MB", help="BatchStream memory_limit (default: 16MB)")
    p.add_argument("--ratio", type=float, default=12.0, help="store size as a multiple of the limit (default: 12)")
    p.add_argument("--lanes", default="16,8,4,2", help="lane counts to compare, comma-separated (default: 16,8,4,2)")
    p.add_argument("--reps", type=int, default=5, help="rounds per lane count, median reported (default: 5)")
    p.add_argument("--store", default="clips", choices=sorted(SHAPES), help="3 s clips or 60 s files (default: clips)")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    try:
        lanes = [int(v) for v in args.lanes.split(",")]
    except ValueError:
        p.error(f"--lanes must be comma-separated positive integers, got {args.lanes!r}")
    if not lanes or min(lanes) < 1:
        p.error(f"--lanes must be comma-separated positive integers, got {args.lanes!r}")
    if args.reps < 1:
        p.error("--reps must be at least 1")
    if not args.ratio > 0:
        p.error("--ratio must be positive")

    from make_big_store import make_big_store

    import memstore as ms
    import memstore.order as order
    from memstore import parse_memory
    from memstore.commands.bench import evict, sequential_read
    from memstore.order import plan_epoch
    from memstore.slicer import warm_up

    try:
        limit = parse_memory(args.limit)
    except ValueError as err:  # memstore's ParameterError is a ValueError
        p.error(f"--limit: {err}")
    if args.dir is not None:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    try:
        path = Path(tmp.name) / f"{args.store}.h5"
        make_big_store(path, int(limit * args.ratio), frames_per_file=SHAPES[args.store], progress=False)
        store = ms.open_store(path)
        warm_up(store.dtype, store.n_bins)
        probe = ms.BatchStream(store, batch_size=B, time_context=T, step=STEP, labels="index", memory_limit=limit)
        if not probe.out_of_core:
            p.error(f"a {path.stat().st_size / 1e6:.0f} MB store fits --limit {args.limit}: use --ratio above 1")
        window_rows = probe._window_rows
        classes = store.label_index[probe.block_file]
        feature_bytes = store.n_frames_total * store.n_bins * store.dtype.itemsize
        default = order.MIN_PAGES_PER_WINDOW
        print(f"{args.store}: {path.stat().st_size / 1e6:.0f} MB, {len(store.classes)} classes written one after "
              f"another; limit {args.limit}: windows of {window_rows * store.n_bins * store.dtype.itemsize / 1e6:.1f}"
              f" MB; cold cache, median of {args.reps}; {os.cpu_count()} cores")
        print(f"  {'lanes':>5} {'page KB':>8} {'windows':>7} {'reader alone':>12} {'whole epoch':>11} "
              f"{'seq MB/s':>8} {'req KB':>7} {'seq req KB':>10} {'mix':>5}")
        for n_lanes in lanes:
            page_rows = max(T, window_rows // n_lanes)
            alone, epoch, seqs, mixes, n_windows, req, seq_req = [], [], [], [], 0, [], []
            for rep in range(args.reps):
                windows = plan_epoch(probe.block_row, probe.block_valid, window_rows=window_rows, seed=rep, epoch=0,
                                     page_rows=page_rows)
                n_windows = len(windows)
                mixes.append(mixing(np.concatenate([w.blocks for w in windows]), classes))
                evict(path)
                d0 = device_stat(path)
                a = reader_alone(store, windows, window_rows)
                req.append(request_kb(d0, device_stat(path)))
                evict(path)
                d0 = device_stat(path)
                n, s = sequential_read(path)
                seq_req.append(request_kb(d0, device_stat(path)))
                evict(path)
                order.MIN_PAGES_PER_WINDOW = n_lanes
                try:
                    e = whole_epoch(store, limit, seed=rep)
                finally:
                    order.MIN_PAGES_PER_WINDOW = default
                seq = n / s
                seqs.append(seq / 1e6)
                alone.append(feature_bytes / a / seq)
                epoch.append(feature_bytes / e / seq)
            print(f"  {n_lanes:>5} {page_rows * store.n_bins * store.dtype.itemsize / 1e3:8.0f} {n_windows:>7} "
                  f"{statistics.median(alone):12.2f} {statistics.median(epoch):11.2f} "
                  f"{statistics.median(seqs):8.0f} {_median_kb(req):>7} {_median_kb(seq_req):>10} "
                  f"{statistics.median(mixes):5.2f}")
        print("  reader alone, whole epoch: feature bytes per second over the sequential read's (target for the "
              "whole epoch >= 0.85); req KB, seq req KB: mean read request the disk served during the reader alone "
              "and the sequential read; mix: distinct classes per batch over a global shuffle's (target >= 0.8)")
        store.close()
    finally:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
