"""``memstore bench``: batch throughput and shuffle quality of a store, against plain baselines."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

DESCRIPTIONS = {"bench": (
    "Measure BatchStream on a store: blocks/s and MB/s of distinct frames, and the\n"
    "shuffle quality (distinct files per batch, mean distance between consecutive\n"
    "blocks) against a true global shuffle. In the same run it measures two\n"
    "baselines on the same file: a plain sequential read of the whole file, and\n"
    "naive random-block reads through np.memmap. --cold evicts the store from the\n"
    "page cache (posix_fadvise DONTNEED) before each measurement.")}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("store", metavar="STORE", help="store file")
    parser.add_argument("--memory-limit", default=None, metavar="SIZE",
                        help="BatchStream memory_limit, e.g. 2GB (default: none, in memory)")
    parser.add_argument("--batch-size", type=int, default=64, help="blocks per batch (default: 64)")
    parser.add_argument("--time-context", type=int, default=128, help="frames per block (default: 128)")
    parser.add_argument("--step", type=int, default=50, help="hop between blocks in frames (default: 50)")
    parser.add_argument("--cold", action="store_true", help="evict the store from the page cache before each run")
    parser.add_argument("--max-batches", type=int, default=None, metavar="N",
                        help="stop each measurement after N batches, at least 2: the first is the time to the first "
                             "batch (default: --epochs whole epochs)")
    parser.add_argument("--epochs", type=int, default=1, metavar="N",
                        help="whole epochs to time when --max-batches is not given (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def evict(path) -> bool:
    """Drop the file's clean pages from the page cache; False where unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def sequential_read(path, chunk=16 << 20) -> tuple[int, float]:
    buf = bytearray(chunk)
    view = memoryview(buf)
    t = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total, time.perf_counter() - t


def naive_random(store, rows, valid, t_ctx, limit_blocks, max_seconds=20.0) -> tuple[int, float]:
    """Blocks in random order copied out of the memory map; stops after ``max_seconds`` (cold
    random reads of a large store can run at a few hundred blocks per second)."""
    feats = store.features
    order = np.random.default_rng(1).permutation(len(rows))[:limit_blocks]
    out = np.empty((t_ctx, store.n_bins), np.float32)
    t = time.perf_counter()
    done = 0
    for b in order:
        r, v = int(rows[b]), int(valid[b])
        out[:v] = feats[r:r + v]
        done += 1
        if done % 256 == 0 and time.perf_counter() - t > max_seconds:
            break
    return done, time.perf_counter() - t


def run(args: argparse.Namespace) -> int:
    from ..batches import BatchStream
    from ..errors import ParameterError
    from ..slicer import warm_up
    from ..store import open_store

    if args.epochs < 1:
        raise ParameterError(f"--epochs {args.epochs} must be positive")
    if args.max_batches is not None and args.max_batches < 2:
        raise ParameterError(f"--max-batches {args.max_batches} must be at least 2: the first batch is the time "
                             "to the first batch, the rest the throughput")
    results: dict = {"store": args.store, "cold": args.cold}
    with open_store(args.store) as store:
        warm_up(store.dtype, store.n_bins)  # JIT start-up is not throughput
        frame_bytes = store.n_bins * store.dtype.itemsize
        if args.cold:
            results["evicted"] = evict(store.path)
        t_make = time.perf_counter()
        stream = BatchStream(store, batch_size=args.batch_size, time_context=args.time_context, step=args.step,
                             split="all", memory_limit=args.memory_limit)
        results["out_of_core"] = stream.out_of_core
        timed = min(args.max_batches, len(stream)) if args.max_batches else len(stream) * args.epochs
        if timed < 2:
            stream.close()
            raise ParameterError(
                f"{args.store} gives {len(stream)} batch(es) of {args.batch_size} blocks of {args.time_context} "
                f"frames per epoch, {timed} in all: nothing to time after the first batch; lower --batch-size "
                "or --time-context" + ("" if args.max_batches else ", or raise --epochs"))
        n_blocks, ttfb, dt, served = _time_stream(stream, t_make, args.max_batches, args.epochs)
        stream.close()
        distinct_rows = _distinct_rows(stream.block_row[served], stream.block_valid[served])
        results["stream"] = {"blocks": n_blocks, "seconds": dt, "blocks_per_s": n_blocks / dt,
                             "distinct_MB_per_s": distinct_rows * frame_bytes / dt / 1e6,
                             "epochs": None if args.max_batches else args.epochs,
                             "time_to_first_batch_s": ttfb}
        if args.cold:
            evict(store.path)
        nbytes, sdt = sequential_read(store.path)
        results["sequential_read"] = {"bytes": nbytes, "seconds": sdt, "MB_per_s": nbytes / sdt / 1e6}
        if args.cold:
            evict(store.path)
        limit = n_blocks if args.max_batches else len(stream.block_row)
        nb, rdt = naive_random(store, stream.block_row, stream.block_valid, args.time_context, limit)
        results["naive_memmap_random"] = {"blocks": nb, "seconds": rdt, "blocks_per_s": nb / rdt}
        results["ratios"] = {
            "stream_vs_sequential_read":
                results["stream"]["distinct_MB_per_s"] / results["sequential_read"]["MB_per_s"],
            "stream_vs_naive_random":
                results["stream"]["blocks_per_s"] / results["naive_memmap_random"]["blocks_per_s"],
        }
        results["shuffle"] = stream.shuffle_report()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    s, q, r = results["stream"], results["sequential_read"], results["naive_memmap_random"]
    print(f"{args.store} ({'cold' if args.cold else 'warm'} cache, "
          f"{'out of core' if results['out_of_core'] else 'in memory'}):")
    print(f"  BatchStream        {s['blocks_per_s']:>12,.0f} blocks/s  "
          f"{s['distinct_MB_per_s']:>9,.1f} MB/s distinct frames  (first batch after "
          f"{s['time_to_first_batch_s'] * 1e3:.0f} ms)")
    print(f"  sequential read    {'':>12}           {q['MB_per_s']:>9,.1f} MB/s")
    print(f"  naive memmap random{r['blocks_per_s']:>12,.0f} blocks/s")
    print(f"  ratios: {results['ratios']['stream_vs_sequential_read']:.2f} of sequential read speed, "
          f"{results['ratios']['stream_vs_naive_random']:.1f}x naive random reads")
    sh = results["shuffle"]
    print(f"  shuffle: {sh['stream']['distinct_files_per_batch']:.1f} distinct files per batch "
          f"(global shuffle {sh['global_shuffle']['distinct_files_per_batch']:.1f}), mean step "
          f"{sh['stream']['mean_abs_step']:.0f} rows (global {sh['global_shuffle']['mean_abs_step']:.0f})")
    return 0


def _time_stream(stream, t_make: float, max_batches, epochs: int):
    """(blocks, seconds to the first batch, seconds of the run after it, block ids served)."""
    n_blocks, ttfb, orders = 0, None, []
    t0 = time.perf_counter()
    for epoch in range(1 if max_batches else epochs):
        orders.append(stream.order(epoch))
        for i, (x, _) in enumerate(stream):
            if ttfb is None:
                ttfb = time.perf_counter() - t_make
                t0 = time.perf_counter()  # the first batch's wait is the time to first batch, not throughput
            else:
                n_blocks += len(x)
            if max_batches and i + 1 >= max_batches:
                break
    dt = time.perf_counter() - t0
    served = np.concatenate(orders)[1 * stream.batch_size: 1 * stream.batch_size + n_blocks]
    return n_blocks, ttfb or 0.0, dt, served


def _distinct_rows(rows, valid) -> int:
    if not len(rows):
        return 0
    order = np.argsort(rows)
    starts, ends = rows[order], rows[order] + valid[order]
    covered, cur = 0, -1
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e > cur:
            covered += e - max(s, cur)
            cur = e
    return covered
