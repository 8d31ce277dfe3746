"""How long an out-of-core epoch's plan takes, by store size: the part of the first batch's wait that grows.

    python tools/bench_plan.py [--sizes 1GB,29GB,100GB,300GB,1TB] [--limit 16MB] [--reps 3]

Every out-of-core epoch of a ``BatchStream`` starts with a plan: lanes, pages
and windows (``memstore.order``), then the first window is read. An unsharded
epoch is planned a stretch of windows at a time (``plan_stretches``): its first
batch waits for the first stretch only. A sharded epoch (``shard=``, or an
elastic resume) is dealt from the whole sequence (``plan_epoch``), but a rank
makes only the windows that hold its own part (the other windows' pages are
cut, their draws skipped); a stream of more than one rank starts on its first
8 windows alone (``EpochOrder.stretches``). This tool times all three on synthetic block tables (no store is
written): IRMAS-shaped 3 s clips of 259 rows of 96 float32 bins, three blocks
of 128 rows per clip (step 50), a window budget of ``--limit`` with the batch
buffers of batch 64 taken out as ``BatchStream`` does. For each size it prints
the blocks, the windows, and the median (and max) seconds of ``--reps`` plans
with different seeds: the first stretch (with the block table's lane ends kept
from an earlier epoch, as a stream keeps them), every stretch of the epoch, and
the whole plan at once, and one rank's plan of ``--world`` ranks (``plan_epoch(...,
shard=(world // 2, world))``, a middle rank), and a balanced epoch's first stretch
(``EpochOrder(..., block_class=...).stretches``: the class draw, then the plan of the drawn blocks) over
11 classes sized as IRMAS's and written one after another -- in a new order's epoch 0, which also sorts
the blocks by class, and in its epoch 1, as every later epoch of a stream. Only the plan is timed:
opening the store, building its block table and reading the first window come on top.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paging import SHAPES, STEP, T  # noqa: E402 - the same clips and blocks as bench_paging
from bench_paging import B as BATCH  # noqa: E402

ROWS, BINS = SHAPES["clips"], 96
#: files per class in IRMAS's training set, the balanced plan's class sizes
IRMAS_CLASSES = [388, 505, 451, 637, 760, 682, 721, 626, 577, 580, 778]


def block_table(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(block_row, block_valid)`` of a store of about ``size`` feature bytes of 3 s clips."""
    n_files = max(1, size // (ROWS * BINS * 4))
    starts = np.arange(0, ROWS - T + 1, STEP, dtype=np.int64)
    block_row = (np.arange(n_files, dtype=np.int64)[:, None] * ROWS + starts).ravel()
    return block_row, np.full(len(block_row), T, np.int64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1GB,29GB,100GB,300GB,1TB", help="store sizes, comma-separated")
    p.add_argument("--limit", default="16MB", help="BatchStream memory_limit (default: 16MB)")
    p.add_argument("--reps", type=int, default=3, help="plans per size, median reported (default: 3)")
    p.add_argument("--world", type=int, default=2, help="ranks of the sharded plan timed (default: 2)")
    args = p.parse_args(argv)

    from memstore import parse_memory
    from memstore._streamconf import PREFETCH
    from memstore.order import STRETCH_FIRST, EpochOrder, lane_ends, plan_epoch, plan_stretches
    from memstore.pager import window_budget

    try:
        sizes = [parse_memory(s) for s in args.sizes.split(",")]
        limit = parse_memory(args.limit)
        window_rows = window_budget(limit, row_bytes=BINS * 4, batch_bytes=BATCH * T * BINS * 4,
                                    n_batch_buffers=PREFETCH + 2, time_context=T)
    except ValueError as err:  # memstore's ParameterError is a ValueError
        p.error(str(err))
    if args.reps < 1:
        p.error("--reps must be at least 1")
    if args.world < 1:
        p.error("--world must be at least 1")
    shard = (args.world // 2, args.world)
    print(f"limit {args.limit}: windows of {window_rows * BINS * 4 / 1e6:.1f} MB; 3 s clips, step {STEP}; "
          f"median (max) of {args.reps}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    plan_epoch(*block_table(1), window_rows=window_rows, seed=0, epoch=0)  # numba's kernels loaded, not timed
    plan_epoch(*block_table(1), window_rows=window_rows, seed=0, epoch=0, shard=shard)
    small = block_table(10**7)
    next(iter(EpochOrder(*small, 0, True, np.arange(len(small[0])) % 7 // 3, window_rows).stretches(0)))
    print(f"  {'store':>8} {'blocks':>10} {'windows':>8} {'first stretch s':>16} {'all stretches s':>16} "
          f"{'whole plan s':>14} {f'rank {shard[0]} of {shard[1]} s':>16} {'balanced ep 0 s':>16} "
          f"{'balanced ep 1 s':>16}")
    for size in sizes:
        block_row, block_valid = block_table(size)
        ends = lane_ends(block_row, block_valid)
        first, every, whole, rank, bal0, bal1, n_windows = [], [], [], [], [], [], 0
        edges = (np.cumsum(IRMAS_CLASSES) * len(block_row)) // sum(IRMAS_CLASSES)
        block_class = np.searchsorted(edges, np.arange(len(block_row)), side="right").astype(np.int64)
        for rep in range(args.reps):
            t = time.perf_counter()
            stretches = plan_stretches(block_row, block_valid, window_rows=window_rows, seed=rep, epoch=0,
                                       first=STRETCH_FIRST, ends=ends)
            n_windows = len(next(stretches))
            first.append(time.perf_counter() - t)
            n_windows += sum(len(ws) for ws in stretches)
            every.append(time.perf_counter() - t)
            t = time.perf_counter()
            windows = plan_epoch(block_row, block_valid, window_rows=window_rows, seed=rep, epoch=0)
            whole.append(time.perf_counter() - t)
            assert len(windows) == n_windows
            del windows
            t = time.perf_counter()
            windows = plan_epoch(block_row, block_valid, window_rows=window_rows, seed=rep, epoch=0, shard=shard)
            rank.append(time.perf_counter() - t)
            del windows
            order = EpochOrder(block_row, block_valid, rep, True, block_class, window_rows)
            for epoch, times in ((0, bal0), (1, bal1)):
                t = time.perf_counter()
                next(iter(order.stretches(epoch)))
                times.append(time.perf_counter() - t)
            del order
        cells = " ".join(f"{statistics.median(x):{w - 7}.3f} ({max(x):5.2f})"
                         for x, w in ((first, 16), (every, 16), (whole, 14), (rank, 16), (bal0, 16), (bal1, 16)))
        print(f"  {size / 1e9:7.1f}G {len(block_row):>10} {n_windows:>8} {cells}")
    print("  first stretch: what an unsharded epoch's first batch waits for; rank: what a sharded one's waits for; "
          "balanced: what a balanced one's waits for (target for the whole wait: <= 0.5 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
