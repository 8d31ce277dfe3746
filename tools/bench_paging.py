"""Out-of-core paging from a cold cache: BatchStream against the disk's own sequential read.

    python tools/bench_paging.py [--limit 16MB] [--ratio 12] [--reps 3] [--shards 2] [--dir DIR]

Two synthetic stores of ``--ratio`` x ``--limit`` bytes (``tools/make_big_store.py``),
both written class by class, as the worst case for shuffling:

- *long*: 60 s files (5,168 frames of 96 bins);
- *clips*: IRMAS-shaped 3 s clips (259 frames).

For each store, ``--reps`` rounds run *interleaved*, each step after
``posix_fadvise(DONTNEED)`` on the store: one whole shuffled epoch of
``BatchStream(memory_limit=--limit)`` (batch 64, 128 x 96 blocks, step 50), then
two plain sequential reads of the same file in 16 MB chunks. This virtual
disk is cached by its host too, so only ratios of neighbouring runs mean
anything; the median of the per-round ratios is printed.

Each epoch runs in a child process of its own, which reports:

- ``MB/s``: the store's feature bytes over the epoch's wall time (from ``iter(stream)`` to the
  last batch; making the stream is set-up, like opening the file, and counts in ``ttfb``);
- ``ratio``: that over the sequential read's MB/s (issue 12 target: >= 0.85);
- ``ttfb``: seconds from constructing the stream to holding the first batch (target <= 0.5 s);
- ``read/size``: ``read_bytes`` of ``/proc/self/io`` over the store's size (1.0 = no byte read twice);
- ``rss+``: the peak resident set (sampled after every batch) above the child's
  resident set before the stream was made (target: within ``memory_limit`` + 100 MB),
  and the absolute peak ``VmHWM`` of the child (interpreter, numba and imports included);
- ``mix``: distinct classes per batch over the same figure for a global shuffle of
  the same blocks (target >= 0.8).

With ``--shards N`` each store is also streamed by N ranks (``shard=(r, N)``),
one cold child per rank; ``rank read/size x N`` is each rank's ``read_bytes`` over
the store's size times N (1.0 = each rank reads 1/N; target <= 1.2), and each rank's
MB/s its 1/N of the store's feature bytes over its epoch's wall time (one run each,
not interleaved with the sequential read: compare with care).

``--split train`` streams the train split (80% of the files; the held-out ones are
holes the lanes read across); MB/s and the ratio still divide the whole store's
feature bytes by the epoch's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from memstore.commands.bench import evict, sequential_read

sys.path.insert(0, str(Path(__file__).resolve().parent))

T, B, STEP = 128, 64, 50
SHAPES = {"long": 5168, "clips": 259}


def sequential_mb_s(path) -> float:
    """A cold plain read of the whole file in 16 MB chunks, MB/s (the baseline ``memstore bench`` uses too)."""
    evict(path)
    n, seconds = sequential_read(path)
    return n / seconds / 1e6


def _io_read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return -1


def _hwm_bytes() -> int:
    """VmHWM: this process's peak RSS (``ru_maxrss`` would carry the parent's peak over ``exec``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> int:
    """One cold epoch (or one rank's share of it); prints a JSON line."""
    import memstore as ms
    from memstore.slicer import warm_up

    store = ms.open_store(args.store)
    warm_up(store.dtype, store.n_bins)
    shard = (args.rank, args.world) if args.world > 1 else None
    n_classes = len(store.classes)
    rss0 = _rss_bytes()
    io0 = _io_read_bytes()
    t0 = time.perf_counter()
    stream = ms.BatchStream(store, batch_size=B, time_context=T, step=STEP, split=args.split, labels="index",
                            memory_limit=args.limit, shard=shard, seed=args.seed)
    t_iter = time.perf_counter()
    ttfb = None
    n_blocks, classes = 0, []
    peak = rss0
    for x, y in stream:
        if ttfb is None:
            ttfb = time.perf_counter() - t0
        n_blocks += len(x)
        classes.append(y)  # counted after the epoch: the timed loop only samples the RSS
        peak = max(peak, _rss_bytes())
    wall = time.perf_counter() - t_iter
    distinct = [len(np.unique(y)) for y in classes]
    peak = max(peak, _rss_bytes())
    read = _io_read_bytes() - io0
    stream.close()
    allc = np.concatenate(classes)
    perm = np.random.default_rng(7).permutation(allc)
    glob = [len(np.unique(perm[k:k + B])) for k in range(0, len(perm) - B + 1, B)]
    feature_bytes = store.n_frames_total * store.n_bins * store.dtype.itemsize
    print(json.dumps({"wall": wall, "ttfb": ttfb, "blocks": n_blocks, "read_bytes": read,
                      "feature_bytes": feature_bytes, "file_bytes": os.path.getsize(args.store),
                      "rss_before": rss0, "rss_peak": peak,
                      "maxrss": _hwm_bytes(),
                      "out_of_core": stream.out_of_core,
                      "mix": float(np.mean(distinct)) / float(np.mean(glob)), "classes": n_classes}))
    store.close()
    return 0


def run_child(store, limit, rank=0, world=1, seed=0, split="all") -> dict:
    evict(store)
    cmd = [sys.executable, __file__, "--child", str(store), "--limit", limit, "--rank", str(rank),
           "--world", str(world), "--seed", str(seed), "--split", split]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", default="16MB", help="BatchStream memory_limit (default: 16MB)")
    p.add_argument("--ratio", type=float, default=12.0, help="store size as a multiple of the limit (default: 12)")
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds, median reported (default: 3)")
    p.add_argument("--shards", type=int, default=2, help="also stream with this many ranks (0: skip; default: 2)")
    p.add_argument("--stores", default="long,clips", help="which stores: long, clips (default: both)")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--split", default="all", choices=["all", "train"],
                   help="stream this split (train: 80%% of the files, the held-out ones are holes; default: all)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.store = args.child
        return child(args)
    from make_big_store import make_big_store

    from memstore import parse_memory

    limit = parse_memory(args.limit)
    if args.dir is not None:
        Path(args.dir).mkdir(parents=True, exist_ok=True)  # the stores' parent; a temp folder inside
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    print(f"limit {args.limit}, stores {args.ratio:g}x the limit, batch {B} of {T}x96 float32 blocks, step {STEP}, "
          f"cold cache, median of {args.reps} interleaved rounds; {os.cpu_count()} cores")
    for name in args.stores.split(","):
        path = Path(tmp.name) / f"{name}.h5"
        make_big_store(path, int(limit * args.ratio), frames_per_file=SHAPES[name], progress=False)
        rows, ratios = [], []
        for rep in range(args.reps):
            r = run_child(path, args.limit, seed=rep, split=args.split)
            seq = statistics.mean([sequential_mb_s(path), sequential_mb_s(path)])
            mbs = r["feature_bytes"] / r["wall"] / 1e6
            ratios.append(mbs / seq)
            rows.append((r, mbs, seq))
        print(f"\n{name}: {path.stat().st_size / 1e6:.0f} MB, {SHAPES[name]} frames per file")
        print(f"  {'round':>5} {'MB/s':>8} {'seq MB/s':>9} {'ratio':>6} {'ttfb s':>7} {'read/size':>9} "
              f"{'rss+ MB':>8} {'rss MB':>7} {'mix':>5}")
        for k, (r, mbs, seq) in enumerate(rows):
            print(f"  {k:>5} {mbs:8.1f} {seq:9.1f} {mbs / seq:6.2f} {r['ttfb']:7.3f} "
                  f"{r['read_bytes'] / r['file_bytes']:9.2f} {(r['rss_peak'] - r['rss_before']) / 1e6:8.1f} "
                  f"{r['maxrss'] / 1e6:7.1f} {r['mix']:5.2f}")
        med = statistics.median(ratios)
        print(f"  median ratio to sequential {med:.2f} (target >= 0.85: {'met' if med >= 0.85 else 'NOT met'}); "
              f"max ttfb {max(r['ttfb'] for r, _, _ in rows):.3f} s (target <= 0.5); "
              f"min mix {min(r['mix'] for r, _, _ in rows):.2f} (target >= 0.8); "
              f"max rss+ {max(r['rss_peak'] - r['rss_before'] for r, _, _ in rows) / 1e6:.0f} MB "
              f"(target <= {limit / 1e6 + 100:.0f})")
        if args.shards > 1:
            n = args.shards
            shares = [run_child(path, args.limit, rank=k, world=n, split=args.split) for k in range(n)]
            per = [s["read_bytes"] / s["file_bytes"] * n for s in shares]
            print(f"  {n} ranks: rank read/size x {n} = " + ", ".join(f"{v:.2f}" for v in per)
                  + f" (target <= 1.2: {'met' if max(per) <= 1.2 else 'NOT met'}); each rank's 1/{n} of the "
                  "store over its epoch, MB/s: " + ", ".join(f"{s['feature_bytes'] / n / s['wall'] / 1e6:.0f}"
                                                            for s in shares))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
