"""Batch throughput from a warm store: BatchStream against the loaders people use now.

    python tools/bench_batches.py [--size 1GB] [--batches 400] [--reps 3]

All read the same 128x96 float32 blocks, batch 64, from a warm page cache:

- memstore BatchStream (in-memory path, shuffled, background prefetch);
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
repetition) and memstore's ratio to each.
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

import memstore as ms  # noqa: E402

T, B = 128, 64


def run_batchstream(store, n_batches):
    stream = ms.BatchStream(store, batch_size=B, split="all", time_context=T, step=50)
    it = iter(stream)
    next(it)  # start-up (thread, JIT cache load) is not throughput
    t = time.perf_counter()
    n = 0
    for i, (x, _) in enumerate(it):
        n += len(x)
        if i + 1 >= n_batches:
            break
    dt = time.perf_counter() - t
    stream.close()
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GB", help="synthetic store size (default: 1GB)")
    p.add_argument("--batches", type=int, default=400, help="batches per measurement (default: 400)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, median reported (default: 3)")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
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
    res: dict[str, list[float]] = {"memstore BatchStream": [], "(a) h5py fancy indexing": [],
                                   "(b) per-file .npy + Python crop": [], "(c) tutorial fancy index in RAM": [],
                                   "(d) memcpy bound": []}
    for _ in range(args.reps):
        res["memstore BatchStream"].append(run_batchstream(store, args.batches))
        res["(a) h5py fancy indexing"].append(run_h5py(work / "blocks.h5", len(bf), args.batches // 4, rng))
        res["(b) per-file .npy + Python crop"].append(run_npy(files, args.batches // 4, rng))
        res["(c) tutorial fancy index in RAM"].append(run_tutorial(feats, args.batches, rng))
        res["(d) memcpy bound"].append(run_memcpy(feats, args.batches, rng))
    med = {k: statistics.median(v) for k, v in res.items()}
    ours = med["memstore BatchStream"]
    print(f"store {store_path.stat().st_size / 1e9:.2f} GB, {len(bf)} blocks of {T}x{store.n_bins} float32, "
          f"batch {B}, warm cache, median of {args.reps}; {os.cpu_count()} cores")
    print(f"{'':34} {'blocks/s':>12} {'memstore is':>12}")
    for k, v in med.items():
        print(f"{k:34} {v:12,.0f} {ours / v:11.1f}x")
    print(f"(c) needs {feats.nbytes / 1e9:.2f} GB of RAM and {setup:.1f} s to fill it before the first batch")
    store.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
