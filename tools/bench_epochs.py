"""Whole warm epochs, out of core against in memory, in fresh processes: the A/B of two checkouts.

    python tools/bench_epochs.py [--size 1GB] [--limit 16MB] [--reps 10] [--dir DIR]
                                 [--tree /path/to/checkout-a --tree /path/to/checkout-b]

Writes a synthetic store of 3 s clips (``tools/make_big_store.py``, 259 frames
of 96 bins per file) unless ``DIR/epochs-<size>.h5`` exists, reads it once so
it is warm, then ``--reps`` times, for each ``--tree`` in turn (default: the
memstore this script imports), runs a child process with ``PYTHONPATH`` set to
that tree. The child makes ``BatchStream(..., batch_size=64, time_context=128,
step=50)`` streams in memory and with ``memory_limit=--limit``, runs one epoch
of each as a warm-up, then two whole epochs of each (from ``iter()`` to the
last batch; a new stream per epoch, as a fresh training run would), and
reports the median blocks/s of each. The parent prints, per tree, the median
over repetitions of the out-of-core and in-memory rates and of the
per-process ratio out of core / in memory (issue 12's target: >= 0.8).

Ratios taken inside one process, and trees alternating repetition by
repetition, are what survive a busy machine; compare trees only within one
run of this tool.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = """
import json, statistics, sys, time
import memstore as ms
path, limit = sys.argv[1], sys.argv[2]

def epoch(memory_limit):
    s = ms.BatchStream(path, batch_size=64, split="all", time_context=128, step=50, memory_limit=memory_limit)
    t = time.perf_counter()
    n = sum(len(x) for x, _ in s)
    rate = n / (time.perf_counter() - t)
    s.close()
    return rate

epoch(None), epoch(limit)  # JIT cache loads, first allocations: not throughput
mem = [epoch(None) for _ in range(2)]
ooc = [epoch(limit) for _ in range(2)]
print(json.dumps({"mem": statistics.median(mem), "ooc": statistics.median(ooc), "memstore": ms.__file__}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1GB", help="synthetic store size (default: 1GB)")
    p.add_argument("--limit", default="16MB", help="memory_limit of the out-of-core epochs (default: 16MB)")
    p.add_argument("--reps", type=int, default=10, help="repetitions per tree (default: 10)")
    p.add_argument("--dir", default="/tmp/memstore-bench-epochs", help="scratch folder for the store")
    p.add_argument("--tree", action="append", default=None,
                   help="a checkout whose memstore to run (PYTHONPATH); repeat for an A/B (default: this one)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    trees = args.tree or [None]
    for tree in trees:
        if tree is not None and not (Path(tree) / "memstore" / "__init__.py").is_file():
            p.error(f"--tree {tree}: no memstore package there")

    from make_big_store import make_big_store
    from pagecache import huge_mapped_share

    Path(args.dir).mkdir(parents=True, exist_ok=True)
    store = Path(args.dir) / f"epochs-{args.size}.h5"
    if not store.exists():
        tmp = store.with_suffix(".partial.h5")
        make_big_store(tmp, args.size, progress=False)
        os.replace(tmp, store)
    with open(store, "rb") as f:  # warm: these are warm epochs
        while f.read(16 << 20):
            pass

    results: list[list] = [[] for _ in trees]  # per --tree, in order (a tree may be named twice)
    for _ in range(args.reps):
        for k, tree in enumerate(trees):
            env = dict(os.environ)
            if tree is not None:
                env["PYTHONPATH"] = str(Path(tree).resolve())
            out = subprocess.run([sys.executable, "-c", CHILD, str(store), args.limit], env=env, cwd="/",
                                 capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stderr)
                return out.returncode
            results[k].append(json.loads(out.stdout.strip().splitlines()[-1]))
    share = huge_mapped_share(store)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{store} ({store.stat().st_size / 1e9:.2f} GB), warm, batch 64 of 128x96, step 50, limit {args.limit}; "
          f"{args.reps} fresh processes per tree, trees alternating; load {load:.1f} at the end, "
          f"{time.strftime('%H:%M UTC', time.gmtime())}"
          + ("" if share is None else f"; its page cache maps {share:.0%} in 2 MB pages (the in-memory rate "
                                      "depends on it)"))
    for rows in results:
        ratio = statistics.median(r["ooc"] / r["mem"] for r in rows)
        print(f"  {rows[0]['memstore']}: out of core {statistics.median(r['ooc'] for r in rows):,.0f} blocks/s, "
              f"in memory {statistics.median(r['mem'] for r in rows):,.0f}; out of core / in memory {ratio:.2f} "
              f"(target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}); per process "
              + ", ".join(f"{r['ooc'] / r['mem']:.2f}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
