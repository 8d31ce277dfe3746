"""Batch throughput from a warm store: BatchStream against the loaders people use now.

    python tools/bench_batches.py [--size 1GB] [--batches 400] [--reps 3] [--epochs 1] [--no-torch]

All read the same 128x96 float32 blocks, batch 64, from a warm page cache:

- memstore BatchStream (in-memory path, shuffled, background prefetch), and the
  same with ``prefetch=False``: the batch assembled in the consumer's thread, as
  the tutorial's loop does (the prefetch thread pays a hand-over per batch that
  only pays off when the consumer has work of its own to overlap, a training step);
- memstore BatchStream out of core (``memory_limit`` 16 MB, same warm file):
  the pager's windows instead of the whole mapping;
- memstore through PyTorch: ``DataLoader(BlockDataset(...), batch_size=None)``
  with ``num_workers=0`` (the setting docs/outofcore.md recommends) and with 2
  workers (skipped with ``--no-torch`` or when torch is missing);
- (a) h5py: the blocks pre-cut into a chunked ``(n_blocks, 128, 96)`` dataset
  (one block per chunk, as a user would store them), read with fancy indexing
  ``dset[sorted(batch_ids)]`` (h5py needs increasing indices);
- (b) per-file ``.npy`` opened with ``np.load(mmap_mode="r")`` and randomly
  cropped to 128 frames in a plain Python loop (a ``Dataset.__getitem__``
  without torch), stacked into a batch;
- (c) the tutorial: every block copied into one RAM array first (timed
  separately as set-up), then each shuffled batch a fancy-indexed copy
  ``feats[ids]``;
- (d) the memcpy bound: one contiguous batch-sized copy per batch from the
  same RAM array into a reused buffer — no loader can beat it.

Prints blocks/s (median of ``--reps``, the loaders interleaved within each
repetition), memstore's ratio to each, the time to the first batch (from
constructing the stream to holding batch 0) and, with ``--epochs N``, the
rate over N whole epochs instead of ``--batches`` batches. The issue-12
targets are printed beside the ratios they judge.

``--plan-size 29GB`` also times the out-of-core epoch plan (``plan_epoch``, the
step before the first window is read) for a store of that size at
``--ooc-limit``: only its block table is made (259-frame files of 96 float32
bins, as ``make_big_store`` writes), no data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_big_store import make_big_store  # noqa: E402
from pagecache import huge_mapped_share  # noqa: E402

import memstore as ms  # noqa: E402

T, B = 128, 64


def run_batchstream(store, n_batches, epochs=0, **kw):
    """(blocks/s, seconds to the first batch): ``n_batches`` batches, or ``epochs`` whole epochs when > 0."""
    t0 = time.perf_counter()
    stream = ms.BatchStream(store, batch_size=B, split="all", time_context=T, step=50, **kw)
    it = iter(stream)
    next(it)  # start-up (thread, JIT cache load, first window) is not throughput
    ttfb = time.perf_counter() - t0
    t = time.perf_counter()
    n = 0
    if epochs:
        for x, _ in it:
            n += len(x)
        for _ in range(epochs - 1):
            for x, _ in stream:
                n += len(x)
    else:
        for i, (x, _) in enumerate(it):
            n += len(x)
            if i + 1 >= n_batches:
                break
    dt = time.perf_counter() - t
    stream.close()
    return n / dt, ttfb


def run_torch(store_path, n_batches, num_workers):
    """blocks/s through ``DataLoader(BlockDataset, batch_size=None, num_workers=...)`` (first batch excluded)."""
    from torch.utils.data import DataLoader

    from memstore.torch import BlockDataset

    ds = BlockDataset(store_path, batch_size=B, split="all", time_context=T, step=50)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    n = 0
    for i, (x, _) in enumerate(it):
        n += len(x)
        if i + 1 >= n_batches:
            break
    dt = time.perf_counter() - t
    del it
    return n / dt


def run_h5py(path, n_blocks_total, n_batches, rng):
    with h5py.File(path, "r") as f:
        d = f["blocks"]
        t = time.perf_counter()
        n = 0
        for _ in range(n_batches):
            ids = np.sort(rng.choice(n_blocks_total, B, replace=False))
            x = d[ids]
            n += len(x)
        return n / (time.perf_counter() - t)


def run_npy(files, n_batches, rng):
    t = time.perf_counter()
    n = 0
    for _ in range(n_batches):
        batch = []
        for k in rng.integers(0, len(files), B):
            a = np.load(files[k], mmap_mode="r")
            s = int(rng.integers(0, max(1, len(a) - T + 1)))
            batch.append(np.asarray(a[s:s + T], dtype=np.float32))
        x = np.stack(batch)
        n += len(x)
    return n / (time.perf_counter() - t)


def tutorial_blocks(store):
    """The tutorial's set-up: every block of every file copied into one RAM array (fetchFile); seconds taken."""
    bf, bs = ms.block_table(store.index["n_frames"], T, 50)
    t0 = time.perf_counter()
    feats = np.zeros((len(bf), T, store.n_bins), np.float32)
    for i in range(len(store)):
        spec = store.frames(i)
        for j in np.flatnonzero(bf == i):
            blk = spec[bs[j]:bs[j] + T]
            feats[j, :len(blk)] = blk
    return feats, time.perf_counter() - t0


def run_tutorial(feats, n_batches, rng):
    """A shuffled batch the tutorial's way: a fancy-indexed copy ``feats[ids]`` of the RAM array."""
    t = time.perf_counter()
    n = 0
    for _ in range(n_batches):
        x = feats[rng.integers(0, len(feats), B)][:, np.newaxis]
        n += len(x)
    return n / (time.perf_counter() - t)


def run_memcpy(feats, n_batches, rng):
    """The bound: one contiguous batch-sized memcpy per batch from a random place of the same array,
    into a reused buffer (no allocation, no gather)."""
    out = np.empty((B,) + feats.shape[1:], feats.dtype)
    t = time.perf_counter()
    for _ in range(n_batches):
        k = int(rng.integers(0, len(feats) - B))
        np.copyto(out, feats[k:k + B])
    return B * n_batches / (time.perf_counter() - t)


def time_plan(size: str, limit: str, reps: int) -> tuple[float, int, int]:
    """Median seconds of ``plan_epoch`` for a ``size`` store at ``limit``, its blocks and windows."""
    from memstore.order import plan_epoch
    from memstore.pager import parse_memory, window_budget

    n_files = max(1, parse_memory(size) // (259 * 96 * 4))
    n_frames = np.full(n_files, 259, np.int64)
    bf, bs = ms.block_table(n_frames, T, 50)
    row = (np.arange(n_files, dtype=np.int64) * 259)[bf] + bs
    valid = np.minimum(T, n_frames[bf] - bs)
    rows = window_budget(parse_memory(limit), row_bytes=96 * 4, batch_bytes=B * T * 96 * 4, n_batch_buffers=4,
                         time_context=T)
    times = []
    for epoch in range(reps):
        t = time.perf_counter()
        ws = plan_epoch(row, valid, window_rows=rows, seed=0, epoch=epoch)
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(row), len(ws)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GB", help="synthetic store size (default: 1GB)")
    p.add_argument("--batches", type=int, default=400, help="batches per measurement (default: 400)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, median reported (default: 3)")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--epochs", type=int, default=0,
                   help="time memstore over this many whole epochs instead of --batches batches (default: 0)")
    p.add_argument("--ooc-limit", default="16MB", help="memory_limit of the out-of-core run (default: 16MB)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch DataLoader runs")
    p.add_argument("--plan-size", default=None,
                   help="also time the out-of-core plan of a store this size at --ooc-limit, e.g. 29GB")
    args = p.parse_args(argv)
    if args.dir is not None:
        Path(args.dir).mkdir(parents=True, exist_ok=True)  # the scratch store's parent; a temp folder inside
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    work = Path(tmp.name)
    store_path = work / "bench.h5"
    make_big_store(store_path, args.size, progress=False)
    store = ms.open_store(store_path)
    rng = np.random.default_rng(0)
    # baselines' data: pre-cut blocks in chunked HDF5, and per-file .npy
    bf, bs = ms.block_table(store.index["n_frames"], T, 50)
    with h5py.File(work / "blocks.h5", "w") as f:
        d = f.create_dataset("blocks", (len(bf), T, store.n_bins), np.float32, chunks=(1, T, store.n_bins))
        for s in range(0, len(bf), 4096):
            e = min(len(bf), s + 4096)
            rows = store.index["offset"][bf[s:e]] + bs[s:e]
            d[s:e] = np.stack([store.features[r:r + T] for r in rows])
    (work / "npy").mkdir()
    files = []
    for i in range(len(store)):
        fp = work / "npy" / f"{i:07d}.npy"
        np.save(fp, np.asarray(store.frames(i)))
        files.append(str(fp))
    with open(store_path, "rb") as f:  # warm the page cache
        while f.read(64 << 20):
            pass
    feats, setup = tutorial_blocks(store)
    try:
        import torch  # noqa: F401
        has_torch = not args.no_torch
    except ImportError:
        has_torch = False
    names = ["memstore BatchStream", "memstore BatchStream prefetch=False", "memstore out of core (warm)"]
    if has_torch:
        names += ["memstore via DataLoader, 0 workers", "memstore via DataLoader, 2 workers"]
    names += ["(a) h5py fancy indexing", "(b) per-file .npy + Python crop", "(c) tutorial fancy index in RAM",
              "(d) memcpy bound"]
    res: dict[str, list[float]] = {k: [] for k in names}
    ttfb: dict[str, list[float]] = {"in memory": [], "out of core": []}
    for _ in range(args.reps):
        rate, first = run_batchstream(store, args.batches, args.epochs)
        res["memstore BatchStream"].append(rate)
        ttfb["in memory"].append(first)
        res["memstore BatchStream prefetch=False"].append(run_batchstream(store, args.batches, args.epochs,
                                                                          prefetch=False)[0])
        rate, first = run_batchstream(store, args.batches, args.epochs, memory_limit=args.ooc_limit)
        res["memstore out of core (warm)"].append(rate)
        ttfb["out of core"].append(first)
        if has_torch:
            res["memstore via DataLoader, 0 workers"].append(run_torch(store_path, args.batches, 0))
            res["memstore via DataLoader, 2 workers"].append(run_torch(store_path, args.batches, 2))
        res["(a) h5py fancy indexing"].append(run_h5py(work / "blocks.h5", len(bf), args.batches // 4, rng))
        res["(b) per-file .npy + Python crop"].append(run_npy(files, args.batches // 4, rng))
        res["(c) tutorial fancy index in RAM"].append(run_tutorial(feats, args.batches, rng))
        res["(d) memcpy bound"].append(run_memcpy(feats, args.batches, rng))
    med = {k: statistics.median(v) for k, v in res.items()}
    ours = med["memstore BatchStream"]
    span = f"{args.epochs} epoch(s)" if args.epochs else f"{args.batches} batches"
    print(f"store {store_path.stat().st_size / 1e9:.2f} GB, {len(bf)} blocks of {T}x{store.n_bins} float32, "
          f"batch {B}, warm cache, {span} per run, median of {args.reps}; {os.cpu_count()} cores")
    share = huge_mapped_share(store_path)
    if share is not None:
        print(f"the store's page cache maps {share:.0%} in 2 MB pages (after the runs; the in-memory rates depend on "
              "it, docs/performance.md)")
    print(f"{'':38} {'blocks/s':>12} {'memstore is':>12}")
    for k, v in med.items():
        print(f"{k:38} {v:12,.0f} {ours / v:11.2f}x")
    print("targets (issue 12), each ratio from this run:")
    inline = med["memstore BatchStream prefetch=False"]
    checks = [("BatchStream / (c) tutorial", ours / med["(c) tutorial fancy index in RAM"], 1.0),
              ("BatchStream prefetch=False / (c) tutorial", inline / med["(c) tutorial fancy index in RAM"], 1.0),
              ("BatchStream / (d) memcpy bound", ours / med["(d) memcpy bound"], 0.5),
              ("out of core / in memory (warm)", med["memstore out of core (warm)"] / ours, 0.8)]
    if has_torch:
        best = max(med["memstore via DataLoader, 0 workers"], med["memstore via DataLoader, 2 workers"])
        checks.append(("best DataLoader setting / BatchStream", best / ours, 1.0))
    for label, ratio, target in checks:
        print(f"  {label:40} {ratio:6.2f}  (target >= {target}: {'met' if ratio >= target else 'NOT met'})")
    for k, v in ttfb.items():
        print(f"time to first batch, {k}: {statistics.median(v) * 1e3:.0f} ms (median; target <= 500 ms)")
    print(f"(c) needs {feats.nbytes / 1e9:.2f} GB of RAM and {setup:.1f} s to fill it before the first batch")
    if args.plan_size:
        sec, n_blocks, n_windows = time_plan(args.plan_size, args.ooc_limit, args.reps)
        print(f"plan of a {args.plan_size} store at {args.ooc_limit}: {n_blocks:,} blocks in {n_windows:,} windows, "
              f"{sec:.3f} s (median of {args.reps}; target <= 0.5 s before the first batch)")
    store.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
