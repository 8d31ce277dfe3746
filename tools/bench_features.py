"""Feature extraction speed: memstore against librosa on the same signals, in one process.

    python tools/bench_features.py [--files 10] [--seconds 30] [--reps 5] [--threads 1]

Generates seeded noise-plus-tone signals (mono, 44.1 kHz by default) and
times, in this one process, on the same signals:

- memstore ``MelSpectrogram()``: the tutorial's settings (symmetric Hann,
  tutorial framing, |X| / sqrt(n_fft), power 1, 96 Slaney mels);
- memstore ``MelSpectrogram.librosa()``: librosa's conventions (power 2);
- ``librosa.feature.melspectrogram`` with the settings of the previous line
  (n_fft 1024, hop 512, 96 mels, power 2, ``pad_mode="constant"``).

Repetitions are interleaved (rep 1 of every method, then rep 2, ...) so that
load from other processes on a shared machine falls on all of them alike.
Prints seconds of audio per wall second (median over repetitions) and the
ratio to librosa, and checks that the librosa-convention output equals
librosa's.

Threads: ``--threads N`` (default 1) sets OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and NUMBA_NUM_THREADS before numpy is
imported, so both libraries get the same N cores: memstore's FFT runs with
one worker whatever N is (a build runs one process per core), librosa's
dense mel matmul uses up to N BLAS threads. ``--threads 0`` leaves the
environment as it is.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10, help="number of signals (default: 10)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each signal in seconds (default: 30)")
    p.add_argument("--rate", type=int, default=44100, help="sample rate in Hz (default: 44100)")
    p.add_argument("--reps", type=int, default=5, help="repetitions; medians are reported (default: 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP/numba threads for both libraries; 0 leaves the environment alone (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the signals (default: 0)")
    args = p.parse_args(argv)
    if args.files < 1 or args.seconds <= 0 or args.reps < 1 or args.threads < 0 or args.rate < 1:
        p.error("--files, --seconds, --reps and --rate must be positive, --threads >= 0")
    return args


def make_signals(np, files, seconds, rate, seed):
    """Noise plus a few harmonic tones per signal, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for _ in range(files):
        x = 0.05 * rng.standard_normal(len(t))
        for f in rng.uniform(80, 2000, size=3):
            x += 0.2 * np.sin(2 * np.pi * f * t)
        out.append((x / np.abs(x).max()).astype(np.float32))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        for name in THREAD_VARIABLES:  # must happen before numpy (and its BLAS) is imported
            os.environ[name] = str(args.threads)
    if "numpy" in sys.modules and args.threads:
        print("warning: numpy was imported before the thread limits were set", file=sys.stderr)

    import librosa
    import numba
    import numpy as np
    import scipy

    import memstore as ms

    signals = make_signals(np, args.files, args.seconds, args.rate, args.seed)
    rate = args.rate
    tutorial = ms.MelSpectrogram()
    lib_conv = ms.MelSpectrogram.librosa()

    def run_librosa(x):
        return librosa.feature.melspectrogram(y=x, sr=rate, n_fft=1024, hop_length=512, window="hann", center=True,
                                              pad_mode="constant", power=2.0, n_mels=96, htk=False, norm="slaney")

    methods = {
        "memstore MelSpectrogram() (tutorial)": lambda x: tutorial(x, rate),
        "memstore MelSpectrogram.librosa()": lambda x: lib_conv(x, rate),
        "librosa.feature.melspectrogram": run_librosa,
    }
    ours, ref = lib_conv(signals[0], rate), run_librosa(signals[0]).T
    agreement = float(np.abs(ours - ref).max() / np.abs(ref).max())

    for fn in methods.values():  # warm-up: numba compilation / cache load, filterbanks, FFT plans
        fn(signals[0][: 2 * rate])
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.reps):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            for x in signals:
                fn(x)
            times[name].append(time.perf_counter() - t0)

    audio_seconds = sum(len(x) for x in signals) / rate
    speed = {name: audio_seconds / statistics.median(ts) for name, ts in times.items()}
    base = speed["librosa.feature.melspectrogram"]
    threads = f"{args.threads} (OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS)" if args.threads else "environment defaults"
    print(f"{args.files} signals x {args.seconds:g} s at {rate} Hz = {audio_seconds:g} s of audio; "
          f"median of {args.reps} interleaved repetitions; threads: {threads}")
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, librosa {librosa.__version__}, numba {numba.__version__}")
    print(f"memstore MelSpectrogram.librosa() vs librosa: max|diff| / max|ref| = {agreement:.1e}")
    print(f"{'':40} {'audio s / wall s':>17} {'min..max':>17} {'vs librosa':>11}")
    for name, ts in times.items():
        lo, hi = audio_seconds / max(ts), audio_seconds / min(ts)
        print(f"{name:40} {speed[name]:17,.0f} {lo:8,.0f}..{hi:<8,.0f} {speed[name] / base:10.2f}x")
    return 0 if agreement < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
