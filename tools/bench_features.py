"""Feature extraction speed: memstore against librosa on the same signals, in one process.

    python tools/bench_features.py [--seconds 30] [--files 10] [--reps 5]

Prints seconds of audio per wall second (medians over repetitions) and the
ratio to ``librosa.feature.melspectrogram`` with matching settings. Both run
in this one process with the same BLAS/FFT thread settings (the machine's
defaults; scipy.fft runs single-threaded for both).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import librosa
import numpy as np

import memstore as ms


def measure(fn, signals, rate, reps) -> float:
    fn(signals[0][:rate], rate)  # warm-up (JIT, caches)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for x in signals:
            fn(x, rate)
        times.append(time.perf_counter() - t)
    return sum(len(x) for x in signals) / rate / statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="length of each signal (default: 30)")
    p.add_argument("--files", type=int, default=10, help="number of signals (default: 10)")
    p.add_argument("--reps", type=int, default=5, help="repetitions; the median is reported (default: 5)")
    p.add_argument("--rate", type=int, default=44100, help="sample rate (default: 44100)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    n = int(args.seconds * args.rate)
    signals = [(0.1 * rng.standard_normal(n)).astype(np.float32) for _ in range(args.files)]
    tutorial = ms.MelSpectrogram()
    lib_conv = ms.MelSpectrogram.librosa(power=1.0)
    runs = {
        "memstore MelSpectrogram() (tutorial)": lambda x, r: tutorial(x, r),
        "memstore MelSpectrogram.librosa(power=1)": lambda x, r: lib_conv(x, r),
        "librosa.feature.melspectrogram(power=1)": lambda x, r: librosa.feature.melspectrogram(
            y=x, sr=r, n_fft=1024, hop_length=512, n_mels=96, power=1.0, pad_mode="constant"),
    }
    speeds = {name: measure(fn, signals, args.rate, args.reps) for name, fn in runs.items()}
    base = speeds["librosa.feature.melspectrogram(power=1)"]
    print(f"{args.files} signals x {args.seconds:g} s at {args.rate} Hz, median of {args.reps}; "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
          f"librosa {librosa.__version__}")
    print(f"{'':44} {'audio s / wall s':>17} {'vs librosa':>11}")
    for name, v in speeds.items():
        print(f"{name:44} {v:17,.0f} {v / base:10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
