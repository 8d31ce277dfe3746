"""``memstore demo``: the whole pipeline on built-in synthetic data.

Synthesises a small IRMAS-style folder of labelled instrument tones, builds a
store from it on every core, then streams one epoch of shuffled batches under
a ``memory_limit`` smaller than the store, so the out-of-core path runs, and
prints what it did and how fast.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DESCRIPTIONS = {
    "demo": (
        "Run the main job on built-in data:\n"
        "  1. synthesise an IRMAS-style folder Training/<class>/*.wav (3 s, 44.1 kHz,\n"
        "     stereo, 16-bit) of instrument-like tones, deterministic from --seed;\n"
        "  2. build one HDF5 feature store from it (96-band mel, the tutorial's settings);\n"
        "  3. stream one epoch of shuffled (batch, 1, time, mel) batches with a\n"
        "     memory_limit smaller than the store, so the out-of-core pager runs.\n"
        "DIR defaults to a temporary folder that is removed afterwards."
    )
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "dir", nargs="?", default=None, metavar="DIR",
        help="folder for the demo audio and store (default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--per-class", type=int, default=8, metavar="N",
                        help="audio files per class (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthesis and the shuffle (default: 0)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="build processes (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="blocks per batch (default: 8)")
    parser.add_argument("--memory-limit", default=None, metavar="SIZE",
                        help="streaming budget, e.g. 2MB (default: the batch buffers plus half the "
                             "store's feature bytes, so the out-of-core path runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (shown when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    if args.dir is None:
        with tempfile.TemporaryDirectory(prefix="memstore-demo-") as tmp:
            return _demo(Path(tmp), args)
    return _demo(Path(args.dir), args)


def _demo(root: Path, args: argparse.Namespace) -> int:
    from ..batches import PREFETCH, BatchStream
    from ..build import build_store
    from ..demo import make_demo_folder
    from ..errors import ParameterError
    from ..pager import parse_memory
    from ..slicer import warm_up
    from ..store import open_store

    if args.per_class < 1:
        raise ParameterError(f"--per-class={args.per_class} must be a positive integer")
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
