"""Decode speed: memstore's own WAV reader against soundfile (libsndfile) on the same files, in one run.

    python tools/bench_decode.py [--files 8] [--seconds 30] [--channels 2] [--reps 7]

Writes seeded noise-plus-tone files into a temporary folder (WAV in several
sample formats with ``memstore.audio.write_wav``, and a FLAC file for
reference), reads each once to warm the page cache, then times, per format:

- ``memstore.read_audio(path, mono=False)`` against
  ``soundfile.read(path, dtype="float32", always_2d=True)`` (same samples:
  tests/test_formats.py checks it);
- ``memstore.read_audio(path)`` (mono, the mean of the channels: what a build
  decodes) against ``soundfile.read`` followed by the same mean, computed
  the fast way (a loop over channels, as memstore does);
- ``memstore.audio_info`` against ``soundfile.info`` (header only).

Repetitions are interleaved (rep 1 of every method and format, then rep 2,
...) so that load from other processes on a shared machine falls on all of
them alike. Prints the median seconds of audio decoded per wall second and
the ratio memstore / soundfile measured in this run (above 1: memstore is
faster). FLAC goes through soundfile in memstore too; its ratio shows the
overhead of memstore's wrapper. Before timing, every file is decoded by both
and compared; the script exits 1 if any file's samples differ.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = ("pcm16", "pcm24", "pcm32", "float32", "u8", "flac")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=8, help="files per format (default: 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each file in seconds (default: 30)")
    p.add_argument("--rate", type=int, default=44100, help="sample rate in Hz (default: 44100)")
    p.add_argument("--channels", type=int, default=2, help="channels per file (default: 2)")
    p.add_argument("--reps", type=int, default=7, help="repetitions; medians are reported (default: 7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the signals (default: 0)")
    args = p.parse_args(argv)
    if min(args.files, args.reps, args.rate, args.channels) < 1 or args.seconds <= 0:
        p.error("--files, --seconds, --rate, --channels and --reps must be positive")
    return args


def make_files(folder: Path, args) -> dict[str, list[Path]]:
    import soundfile as sf

    from memstore.audio import write_wav

    rng = np.random.default_rng(args.seed)
    n = int(args.seconds * args.rate)
    t = np.arange(n) / args.rate
    out: dict[str, list[Path]] = {f: [] for f in FORMATS}
    for i in range(args.files):
        x = 0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t)[:, None] + rng.uniform(-0.2, 0.2, (n, args.channels))
        for fmt in FORMATS:
            path = folder / f"{fmt}_{i}.{'flac' if fmt == 'flac' else 'wav'}"
            if fmt == "flac":
                sf.write(path, x, args.rate, subtype="PCM_16")
            else:
                write_wav(path, x, args.rate, sample_format=fmt)
            out[fmt].append(path)
    return out


def _mono(x: np.ndarray) -> np.ndarray:
    """The mean of the channels the fast way (a channel loop; mean(axis=1) is several times slower)."""
    out = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        out += x[:, c]
    out *= np.float32(1.0 / x.shape[1])
    return out


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import soundfile as sf

    from memstore.audio import audio_info, read_audio

    methods = {
        "stereo": (lambda p: read_audio(p, mono=False),
                   lambda p: sf.read(p, dtype="float32", always_2d=True)),
        "mono": (lambda p: read_audio(p), lambda p: _mono(sf.read(p, dtype="float32", always_2d=True)[0])),
        "header": (audio_info, sf.info),
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), args)
        differ = 0
        for paths in files.values():  # also warms the page cache: the benchmark measures decoding, not the disk
            for p in paths:
                differ += not np.array_equal(read_audio(p, mono=False)[0], sf.read(p, dtype="float32")[0]
                                             .reshape(-1, args.channels))
        times: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(args.reps):
            for fmt, paths in files.items():
                for what, pair in methods.items():
                    for who, fn in zip(("memstore", "soundfile"), pair, strict=True):
                        t0 = time.perf_counter()
                        for p in paths:
                            fn(p)
                        times.setdefault((fmt, what, who), []).append(time.perf_counter() - t0)
    audio = args.files * args.seconds
    print(f"{args.files} file(s) x {args.seconds:g} s x {args.channels} ch at {args.rate} Hz per format, "
          f"median of {args.reps} interleaved reps; numpy {np.__version__}, soundfile {sf.__version__}, "
          f"libsndfile {sf.__libsndfile_version__}, {platform.machine()}")
    print(f"{'format':8} {'read':7} {'memstore x rt':>14} {'soundfile x rt':>15} {'ratio':>7}")
    for fmt in files:
        for what in methods:
            m = statistics.median(times[fmt, what, "memstore"])
            s = statistics.median(times[fmt, what, "soundfile"])
            print(f"{fmt:8} {what:7} {audio / m:14.0f} {audio / s:15.0f} {s / m:7.2f}")
    n_files = sum(len(p) for p in files.values())
    print(f"same samples as soundfile: {n_files - differ} of {n_files} files")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
