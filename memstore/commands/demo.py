"""``memstore demo``: the whole pipeline on built-in synthetic data.

Synthesises a small IRMAS-style folder of labelled instrument tones, builds a
store from it on every core, then streams one epoch of shuffled batches under
a ``memory_limit`` smaller than the store, so the out-of-core path runs, and
prints what it did and how fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

#: the most files per class: 1000 x 7 classes of 3 s stereo clips is 3.7 GB of audio
MAX_PER_CLASS = 1000

DESCRIPTIONS = {
    "demo": (
        "Run the main job on built-in data:\n"
        "  1. synthesise an IRMAS-style folder Training/<class>/*.wav (3 s, 44.1 kHz,\n"
        "     stereo, 16-bit) of instrument-like tones, deterministic from --seed;\n"
        "  2. build one HDF5 feature store from it (96-band mel, the tutorial's settings);\n"
        "  3. stream one epoch of shuffled (batch, 1, time, mel) batches with a\n"
        "     memory_limit smaller than the store, so the out-of-core pager runs.\n"
        "DIR defaults to a temporary folder that is removed afterwards. In a DIR of your own,\n"
        "a Training folder must be empty or absent: the demo builds everything in it, so your\n"
        "audio, or an earlier demo's, would be mixed into its store (give a new DIR to run again)."
    )
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "dir", nargs="?", default=None, metavar="DIR",
        help="folder for the demo audio and store (default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--per-class", type=int, default=8, metavar="N",
                        help=f"audio files per class (default: 8, at most {MAX_PER_CLASS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthesis and the shuffle (default: 0)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="build processes (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="blocks per batch (default: 8)")
    parser.add_argument("--memory-limit", default=None, metavar="SIZE",
                        help="streaming budget, e.g. 2MB (default: the batch buffers plus half the "
                             "store's feature bytes, so the out-of-core path runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (shown when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    from ..errors import ParameterError

    if not 1 <= args.per_class <= MAX_PER_CLASS:  # 10**30 wrote 1.7 GB a minute until the disk was full
        raise ParameterError(f"--per-class={args.per_class} must be from 1 to {MAX_PER_CLASS}")
    if args.dir is None:
        # the handler ends before the folder's removal starts: a SIGTERM then cannot stop it half way
        with tempfile.TemporaryDirectory(prefix="memstore-demo-") as tmp, _terminate_as_exit():
            return _demo(Path(tmp), args)
    if not args.dir:
        raise ParameterError("DIR '' names no folder; give one, or none for a temporary folder")
    training = Path(args.dir) / "Training"
    if training.is_dir() and _holds_anything(training):  # the user's audio was built into the demo's store
        raise ParameterError(f"{training} already holds files; the demo writes its own audio there: give a new "
                             "or empty folder")
    return _demo(Path(args.dir), args)


def _holds_anything(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is not None


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM ends the demo as an exception would, so its temporary folder is removed (it was left behind).

    Only where SIGTERM has its default action, in the main thread: a caller that ignores or handles it keeps it.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) \
            is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _demo(root: Path, args: argparse.Namespace) -> int:
    from ..batches import PREFETCH, BatchStream
    from ..build import build_store
    from ..demo import make_demo_folder
    from ..errors import ParameterError
    from ..pager import parse_memory
    from ..slicer import warm_up
    from ..store import open_store

    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    audio_root = make_demo_folder(root, n_per_class=args.per_class, seed=args.seed)
    n_wav = sum(1 for _ in audio_root.rglob("*.wav"))
    print(f"1. synthesised {n_wav} demo files in {audio_root} ({time.perf_counter() - t0:.1f} s)")

    store_path = root / "demo.h5"
    report = build_store(
        audio_root, store_path, workers=args.workers, progress=False if args.quiet else None,
        mode="create", resume=False,
    )
    speed = report.audio_seconds / max(report.wall_seconds, 1e-9)
    print(
        f"2. built {store_path}: {report.stored} files stored, {len(report.skipped)} skipped, "
        f"{report.frames} frames, {report.bytes / 1e6:.1f} MB in {report.wall_seconds:.1f} s "
        f"({speed:.0f} s of audio per second)"
    )

    with open_store(store_path) as store:
        feature_bytes = store.n_frames_total * store.n_bins * store.dtype.itemsize
        # default: the batch buffers plus half the features, so the 80% training split cannot fit
        batch_bytes = args.batch_size * 128 * store.n_bins * 4
        limit = (parse_memory(args.memory_limit) if args.memory_limit
                 else (PREFETCH + 2) * batch_bytes + feature_bytes // 2)
        stream = BatchStream(
            store, batch_size=args.batch_size, time_context=128, step=50, seed=args.seed,
            memory_limit=limit, normalize="standard",
        )
        if stream.iteration_size == 0:  # it printed "0 batches of shape None" and "done"
            raise ParameterError(f"--batch-size {args.batch_size} is more than the {len(stream.block_file)} "
                                 "blocks of the demo's training split: use a smaller batch or a larger --per-class")
        warm_up(store.dtype, store.n_bins)  # numba compiles on the very first run; not throughput
        t1 = time.perf_counter()
        n_blocks = 0
        shape = None
        for x, _ in stream:
            n_blocks += len(x)
            shape = x.shape
        elapsed = time.perf_counter() - t1
        quality = stream.shuffle_report()
        print(
            f"3. streamed one epoch: {stream.iteration_size} batches of shape {shape}, "
            f"{n_blocks} blocks in {elapsed:.2f} s ({n_blocks / max(elapsed, 1e-9):.0f} blocks/s), "
            f"classes {store.classes}"
        )
        print(
            f"   memory_limit {limit / 1e6:.2f} MB for {feature_bytes / 1e6:.2f} MB of features "
            f"({'out-of-core pager' if stream.out_of_core else 'in memory'}); "
            f"shuffle quality: {_describe(quality)}"
        )
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def _describe(report: dict) -> str:
    parts = []
    for key, value in report.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.2f}")
        elif isinstance(value, dict):
            parts.append(f"{key}=({_describe(value)})")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)
