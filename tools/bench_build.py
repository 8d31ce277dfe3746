"""Build speed and memory: how a build scales with workers, against the work it cannot avoid.

    python tools/bench_build.py [--files 2000] [--reps 3] [--dir /tmp/memstore-bench-build]
                                [--tutorial] [--skip-rss]

Generates an IRMAS-shaped folder: ``--files`` clips of 3 s, stereo 16-bit
44.1 kHz (noise plus a tone, six class folders). Then, ``--reps`` times and
interleaved (so the three measures of one repetition share the machine's
load), it measures:

- **in-process read+features**: for each file, in this process,
  ``read_audio(path, sample_rate=rate)`` and the store's ``MelSpectrogram``,
  nothing else (no HDF5, checksum, statistics or pool): the work a build
  cannot avoid;
- **2 in-process loops at once**: the same loop split over two processes that
  start it at the same moment (after their imports and kernels): what two
  cores of this machine give for the unavoidable work, the ceiling that the
  ``2 x in-process`` ratios below assume;
- ``build_store(workers=1)`` and ``build_store(workers=2)``, fresh stores;
- the same build on two warm workers (``executor=`` a spawn-context
  ``concurrent.futures.ProcessPoolExecutor(2)`` whose workers start with one
  BLAS/OpenMP thread, as ``build_store``'s own do, and build once before the
  repetitions): the steady state, without the start-up of two interpreters
  that every ``workers=2`` build pays. Only public API: ``build_store``
  accepts any executor.

It prints the median of each rate (audio seconds per wall second) and the
medians of the per-repetition ratios ``w2 / w1`` and ``w2 / (2 x in-process)``;
ratios taken within one repetition matter most on a shared machine. With
``--tutorial`` it also times the tutorial's per-file loop (read, sum the
channels, ``librosa.feature.melspectrogram``, ``np.tofile``). It also prints
the CPU seconds (user + system) of the ``workers=1`` and ``workers=2``
builds, workers included: what a second core adds, which the wall clock of a
shared machine hides when another process holds that core; and, per
repetition, how many cores *other* processes kept busy during each measure
(the machine's busy time in ``/proc/stat`` minus this process tree's): a
``workers=2`` figure taken while they used most of a core says little. Unless
``--skip-rss``, it then measures the peak RSS of a build (parent and
workers) of a folder holding one two-hour WAV file.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ("cel", "flu", "gac", "pia", "tru", "vio")
#: thread-count variables a warm worker starts with set to 1 (build_store's workers do the same)
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
RATE = 44100
SECONDS = 3.0


def make_irmas_folder(root: Path, n_files: int, seed: int = 7) -> Path:
    """``n_files`` stereo 16-bit 3 s clips at 44.1 kHz in six class folders."""
    from memstore.audio import write_wav

    rng = np.random.default_rng(seed)
    n = int(SECONDS * RATE)
    t = np.arange(n) / RATE
    for k in range(n_files):
        cls = CLASSES[k % len(CLASSES)]
        (root / cls).mkdir(parents=True, exist_ok=True)
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        x = 0.1 * rng.standard_normal((n, 2)) + tone[:, None]
        write_wav(root / cls / f"{k:05d}__[{cls}]__{k}.wav", x, RATE)
    return root


def in_process(root: Path, limit: int | None = None, part: tuple[int, int] = (0, 1)) -> float:
    """Seconds to read and compute the features of every file (or the first ``limit``) in this process, nothing else.

    ``part=(k, n)``: only every ``n``-th file from the ``k``-th (one of ``n`` loops run at once).
    """
    from memstore.audio import read_audio
    from memstore.features import MelSpectrogram

    mel = MelSpectrogram(sample_rate=RATE)
    paths = sorted(root.rglob("*.wav"))[:limit][part[0]::part[1]]
    t = time.perf_counter()
    for p in paths:
        samples, rate = read_audio(p, sample_rate=RATE)
        mel(samples, rate)
    return time.perf_counter() - t


def loop_child(root: Path, k: int, n: int) -> int:
    """One of :func:`two_loops`' processes: warm up, say ``ready``, wait for a line, time part ``k`` of ``n``."""
    in_process(root, limit=2)
    print("ready", flush=True)
    sys.stdin.readline()
    print(in_process(root, part=(k, n)), flush=True)
    return 0


def two_loops(root: Path) -> float:
    """Wall seconds of the in-process loop split over two processes that start it at the same moment.

    Each process imports and loads its kernels first (not timed); the time is the slower
    half's. It tells what two cores of this machine give for the work a build cannot avoid,
    the ceiling the ``2 x in-process`` ratios assume.
    """
    kids = [subprocess.Popen([sys.executable, __file__, "--loop-child", str(root), str(k), "2"], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE) for k in range(2)]
    try:
        for kid in kids:
            if kid.stdout.readline().strip() != "ready":
                raise RuntimeError("a loop process did not start")
        for kid in kids:
            kid.stdin.write("go\n")
            kid.stdin.flush()
        return max(float(kid.stdout.readline()) for kid in kids)
    finally:
        for kid in kids:
            kid.stdin.close()
            kid.wait()


#: CPU seconds of each build measure (this process and the workers it reaped), per repetition
CPU: dict[str, list[float]] = {}


def _cpu_seconds(own_only: bool = False) -> float:
    """CPU seconds of this process and its reaped children, or (``own_only``) of this process alone."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    own = me.ru_utime + me.ru_stime
    if own_only:
        return own
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + kids.ru_utime + kids.ru_stime


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (Linux ``/proc/stat``: all but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


#: cores other processes kept busy during each measure, per repetition (``None`` where it cannot be told)
OTHERS: dict[str, list[float]] = {}


def measured(name: str, step) -> float:
    """Run ``step`` (it returns wall seconds); note in :data:`OTHERS` how many cores other processes used meanwhile.

    The machine's busy CPU time minus this process's and its reaped
    children's. A build on the warm pool is left out: its workers stay alive,
    so their CPU time cannot be told from other processes'.
    """
    busy, own = _busy_seconds(), _cpu_seconds()
    took = step()
    after = _busy_seconds()
    if busy is not None and after is not None and name != "build 2 warm workers":
        OTHERS.setdefault(name, []).append(max(0.0, (after - busy) - (_cpu_seconds() - own)) / took)
    return took


def build(root: Path, store: Path, workers: int, pool=None) -> float:
    """Wall seconds of one fresh build; its CPU seconds go to :data:`CPU` (a build's own pool is reaped in it)."""
    from memstore.build import build_store

    store.unlink(missing_ok=True)
    cpu, own, t = _cpu_seconds(), _cpu_seconds(own_only=True), time.perf_counter()
    build_store(root, store, workers=workers, executor=pool, progress=False, resume=False)
    took = time.perf_counter() - t
    if pool is None:
        CPU.setdefault(f"workers={workers}", []).append(_cpu_seconds() - cpu)
        CPU.setdefault(f"workers={workers}, building process", []).append(_cpu_seconds(own_only=True) - own)
    store.unlink()
    return took


def warm_pool(n_workers: int) -> cf.ProcessPoolExecutor:
    """``n_workers`` spawned processes with one native thread each, all started now, for ``executor=``.

    The variables (and glibc's ``MALLOC_TOP_PAD_``, which memstore's own
    workers set with ``mallopt``) are set in this script's environment only
    while the workers spawn (they inherit it), then restored: this process's BLAS is loaded
    already and keeps its threads for the in-process measure.
    """
    saved = {k: os.environ.get(k) for k in (*THREAD_VARS, "MALLOC_TOP_PAD_")}
    os.environ.update(dict.fromkeys(THREAD_VARS, "1"))
    os.environ["MALLOC_TOP_PAD_"] = str(64 << 20)  # glibc keeps freed heap, as memstore's own workers do
    try:
        pool = cf.ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
        # a spawn-context pool starts a worker, in submit, for each task that finds none idle
        for f in [pool.submit(os.getpid) for _ in range(n_workers)]:
            f.result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return pool


def tutorial_baseline(audio_root: Path, out: Path) -> float:
    import librosa

    from memstore.audio import read_audio

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    for wav in sorted(audio_root.rglob("*.wav")):
        audio, rate = read_audio(wav, mono=False)
        mel = librosa.feature.melspectrogram(y=audio.sum(axis=1), sr=rate, n_fft=1024, hop_length=512,
                                             n_mels=96, power=1.0).T
        mel.tofile(out / (wav.stem + "_mel_.data"))
        (out / (wav.stem + "_mel_.shape")).write_text("#" + "\t".join(map(str, mel.shape)) + "\n")
    return time.perf_counter() - t


RSS_SCRIPT = """
import resource, sys
from memstore.build import build_store
build_store(sys.argv[1], sys.argv[2], workers=2, progress=False)
with open("/proc/self/status") as f:  # VmHWM, not ru_maxrss: that survives exec from the forking parent
    own = int(next(l for l in f if l.startswith("VmHWM")).split()[1])
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(own * 1024, kids * 1024)
"""


def peak_rss(work: Path) -> None:
    from memstore.audio import write_wav

    long_dir = work / "long" / "x"
    long_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    path = long_dir / "two-hours.wav"
    write_wav(work / "minute.wav", 0.1 * rng.standard_normal((60 * 44100, 2)), 44100)
    minute = (work / "minute.wav").read_bytes()
    data = minute[44:]  # canonical 44-byte header from write_wav
    n = len(data) * 120  # 2 h stereo 16-bit (1.27 GB), written a minute at a time
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + n) + minute[8:40] + struct.pack("<I", n))
        for _ in range(120):
            f.write(data)
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(work / "long"), str(work / "long.h5")],
                         capture_output=True, text=True, check=True).stdout.split()
    own, kids = map(int, out)
    print(f"two-hour WAV ({path.stat().st_size / 1e9:.2f} GB): peak RSS parent {own / 1e6:.0f} MB, "
          f"largest worker {kids / 1e6:.0f} MB")


def main(argv=None) -> int:  # noqa: PLR0915 - one script, top to bottom
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000, help="3-second clips to generate (default: 2000)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions, medians reported (default: 3)")
    p.add_argument("--dir", default="/tmp/memstore-bench-build", help="scratch folder (removed at the end)")
    p.add_argument("--tutorial", action="store_true", help="also time the tutorial's per-file librosa loop")
    p.add_argument("--skip-rss", action="store_true", help="skip the two-hour-file memory measurement")
    p.add_argument("--loop-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loop_child:
        return loop_child(Path(args.loop_child[0]), int(args.loop_child[1]), int(args.loop_child[2]))
    if args.files < 1 or args.reps < 1:
        p.error("--files and --reps must be positive")
    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    root = make_irmas_folder(work / "audio", args.files)
    audio_s = args.files * SECONDS
    print(f"generated {args.files} stereo 16-bit 3 s clips ({audio_s / 60:.0f} min of audio) in "
          f"{time.perf_counter() - t:.0f} s; {os.cpu_count()} cores")
    pool = warm_pool(2)  # started and warmed once: the steady state without the start-up of two interpreters
    build(root, work / "warm.h5", 2, pool)
    in_process(root, limit=2)  # this process's own kernels loaded too (0.2 s), before any measure
    names = ["in-process read+features", "2 in-process loops at once", "build workers=1", "build workers=2",
             "build 2 warm workers"] + (["tutorial loop"] if args.tutorial else [])
    rates: dict[str, list[float]] = {k: [] for k in names}
    w2_w1, w2_ideal, warm_w1, warm_ideal, pair = [], [], [], [], []
    for rep in range(args.reps):
        steps = {
            "in-process read+features": lambda: in_process(root),
            "2 in-process loops at once": lambda: two_loops(root),
            "build workers=1": lambda: build(root, work / "w1.h5", 1),
            "build workers=2": lambda: build(root, work / "w2.h5", 2),
            "build 2 warm workers": lambda: build(root, work / "w2p.h5", 2, pool),
            "tutorial loop": lambda: tutorial_baseline(root, work / "legacy"),
        }
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: no measure always runs first
        got = {k: audio_s / measured(k, steps[k]) for k in order}
        for k in names:
            rates[k].append(got[k])
        w2_w1.append(got["build workers=2"] / got["build workers=1"])
        w2_ideal.append(got["build workers=2"] / (2 * got["in-process read+features"]))
        warm_w1.append(got["build 2 warm workers"] / got["build workers=1"])
        warm_ideal.append(got["build 2 warm workers"] / (2 * got["in-process read+features"]))
        pair.append(got["2 in-process loops at once"] / (2 * got["in-process read+features"]))
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {got[k]:.0f}" for k in names) + " audio s/s; cores other "
              "processes used: " + ", ".join(f"{k.removeprefix('build ')} {OTHERS[k][-1]:.2f}" for k in names
                                             if k in OTHERS))
    print(f"{'median of ' + str(args.reps):28} {'audio s / s':>12}")
    for k in names:
        print(f"{k:28} {statistics.median(rates[k]):12.0f}")
    print(f"workers=2 / workers=1:              {statistics.median(w2_w1):.2f}x   (target >= 1.7)")
    print(f"workers=2 / (2 x in-process):       {statistics.median(w2_ideal):.2f}    (target >= 0.8)")
    print(f"2 warm workers / workers=1:         {statistics.median(warm_w1):.2f}x")
    print(f"2 warm workers / (2 x in-process):  {statistics.median(warm_ideal):.2f}")
    print(f"2 loops at once / (2 x in-process): {statistics.median(pair):.2f}    (what two cores give the "
          "unavoidable work: the ceiling of the ratios above)")
    if OTHERS:
        busiest = max(max(v) for v in OTHERS.values())
        print("cores other processes used during the measures, median (max): "
              + ", ".join(f"{k} {statistics.median(v):.2f} ({max(v):.2f})" for k, v in OTHERS.items())
              + ("; the machine was shared: w2/w1 understates what two free cores give" if busiest > 0.2 else ""))
    cpu1, cpu2 = statistics.median(CPU["workers=1"]), statistics.median(CPU["workers=2"])
    print(f"CPU seconds per build (user + system, this process and its workers): workers=1 {cpu1:.2f}, "
          f"workers=2 {cpu2:.2f}; workers=1 / workers=2 {cpu1 / cpu2:.2f} (1.0: the second process costs no CPU "
          "beyond its share of the work; two free cores can speed a build up at most 2x this)")
    own2 = statistics.median(CPU["workers=2, building process"])
    print(f"workers=2 CPU seconds: building process {own2:.2f}, its worker (start-up included) {cpu2 - own2:.2f}")
    pool.shutdown()
    if not args.skip_rss:
        peak_rss(work)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
