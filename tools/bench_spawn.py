"""What a build's workers cost when the calling script imports heavy modules, with and without its main module.

    python tools/bench_spawn.py [--files 2000] [--reps 3] [--imports numpy,torch] [--dir DIR]

``multiprocessing``'s spawn makes every worker import the caller's main script
again before it works, and with it whatever the script imports at the top: a
training script's ``import torch`` ran in every build worker. memstore's pool
starts its workers without the main module
(``memstore._spawn.STARTS_WITHOUT_MAIN``). This tool measures both starts
side by side: for each module list in ``--imports`` (``numpy``: a plain
script; ``numpy,torch``: a training script; modules that are not installed
are skipped with a note), it writes a script that imports them at the top and
runs ``build_store(workers=2)`` on an IRMAS-shaped folder (``--files`` 3 s
clips, ``tools/bench_build.py``'s), once with memstore's start and once with
``multiprocessing``'s own spawn (the same code, ``STARTS_WITHOUT_MAIN = False``),
each in a fresh process, the two alternating ``--reps`` times. Each process
builds three times (the first counts as a first build, the best of the other
two as a warm one) and reports the workers' peak RSS (``VmRSS`` of each
worker after its ``exec``, sampled every 20 ms) and the CPU seconds of its
children.

It prints, per import list and start, the medians, and the ratios
``spawn / memstore`` of the warm build time, the workers' CPU seconds and the
workers' peak RSS (above 1: memstore's start costs less).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import make_irmas_folder  # noqa: E402 - the same folder as bench_build

SCRIPT = '''import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

{imports}
import memstore._spawn
from memstore.build import build_store

memstore._spawn.STARTS_WITHOUT_MAIN = {without_main}
PEAK = {{}}


def watch(stop):
    """Peak VmRSS of each child once it runs the worker (a child not yet exec'd shows this process's pages)."""
    me = os.getpid()
    while not stop.is_set():
        try:
            kids = open(f"/proc/{{me}}/task/{{me}}/children").read().split()
        except OSError:
            kids = []
        for k in kids:
            try:
                if b"spawn_main" not in open(f"/proc/{{k}}/cmdline", "rb").read():
                    continue
                with open(f"/proc/{{k}}/status") as f:
                    kb = int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            PEAK[k] = max(PEAK.get(k, 0), kb)
        stop.wait(0.02)


if __name__ == "__main__":
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,), daemon=True)
    watcher.start()
    root, out, took = Path(sys.argv[1]), Path(sys.argv[2]), []
    for _ in range(3):
        t = time.perf_counter()
        build_store(root, out, workers=2, progress=False, resume=False)
        took.append(time.perf_counter() - t)
        out.unlink()
    stop.set()
    watcher.join()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({{"first": took[0], "warm": min(took[1:]), "worker_cpu": kids.ru_utime + kids.ru_stime,
                      "worker_rss": max(PEAK.values(), default=0) * 1024}}))
'''


def run_child(script: Path, root: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, str(script), str(root), str(out)], capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000, help="3-second clips to generate (default: 2000)")
    p.add_argument("--reps", type=int, default=3, help="alternating rounds, medians reported (default: 3)")
    p.add_argument("--imports", action="append", default=None,
                   help="comma-separated modules the calling script imports at the top; repeat for several "
                        "scripts (default: numpy, and numpy,torch)")
    p.add_argument("--dir", default="/tmp/memstore-bench-spawn", help="scratch folder (removed at the end)")
    args = p.parse_args(argv)
    if args.files < 1 or args.reps < 1:
        p.error("--files and --reps must be positive")
    lists = args.imports or ["numpy", "numpy,torch"]
    scripts = []
    for text in lists:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names or not all(n.replace(".", "").replace("_", "").isalnum() for n in names):
            p.error(f"--imports {text!r} must be comma-separated module names")
        missing = [n for n in names if importlib.util.find_spec(n.split(".")[0]) is None]
        if missing:
            print(f"skipped --imports {text}: {', '.join(missing)} not installed")
            continue
        scripts.append(names)
    if not scripts:
        p.error("none of the --imports lists can be imported here")
    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    try:
        root = make_irmas_folder(work / "audio", args.files)
        starts = {"memstore": True, "spawn": False}
        paths = {}
        for names in scripts:
            for start, without in starts.items():
                path = work / f"build_{'_'.join(names).replace('.', '_')}_{start}.py"
                path.write_text(SCRIPT.format(imports="\n".join(f"import {n}" for n in names),
                                              without_main=without))
                paths[(",".join(names), start)] = path
        print(f"{args.files} clips of 3 s, workers=2, {args.reps} rounds, {os.cpu_count()} cores")
        results: dict[tuple[str, str], list[dict]] = {key: [] for key in paths}
        for rep in range(args.reps):
            for names in scripts:
                order = list(starts) if rep % 2 == 0 else list(reversed(starts))  # neither always runs first
                for start in order:
                    key = (",".join(names), start)
                    results[key].append(run_child(paths[key], root, work / "s.h5"))
        for names in scripts:
            imports = ",".join(names)
            med = {start: {k: statistics.median(r[k] for r in results[(imports, start)])
                           for k in ("first", "warm", "worker_cpu", "worker_rss")} for start in starts}
            for start in starts:
                m = med[start]
                print(f"script imports {imports}, {start} start: first build {m['first']:.2f} s, warm build "
                      f"{m['warm']:.2f} s, workers' CPU {m['worker_cpu']:.2f} s (3 builds), peak worker RSS "
                      f"{m['worker_rss'] / 1e6:.0f} MB")
            pairs = list(zip(results[(imports, "spawn")], results[(imports, "memstore")], strict=True))
            ratio = {k: statistics.median(s[k] / w[k] if w[k] else float("nan") for s, w in pairs)
                     for k in ("warm", "worker_cpu", "worker_rss")}
            print(f"script imports {imports}: spawn / memstore: warm build {ratio['warm']:.2f}x, workers' CPU "
                  f"{ratio['worker_cpu']:.2f}x, peak worker RSS {ratio['worker_rss']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
