"""Build speed and memory: memstore build (1 and 2 workers) against the tutorial's per-file loop.

    python tools/bench_build.py [--minutes 60] [--reps 1] [--dir /tmp/bench-build]

Generates a folder of about ``--minutes`` of 3-second stereo 16-bit 44.1 kHz
demo files, then times in the same run: ``build_store`` with ``workers=1``
and ``workers=2``, and the tutorial's baseline (for each file: read, sum the
channels, ``librosa.feature.melspectrogram``, ``np.tofile`` into ``.data``
plus a ``.shape`` file, one process). It then measures the peak RSS of a
build (parent and workers) of a folder holding one two-hour WAV file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def tutorial_baseline(audio_root: Path, out: Path) -> float:
    import librosa

    from memstore.audio import read_audio

    out.mkdir(parents=True, exist_ok=True)
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


def main(argv=None) -> int:
    from memstore.build import build_store
    from memstore.demo import make_demo_folder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of audio to generate (default: 60)")
    p.add_argument("--reps", type=int, default=1, help="repetitions, median reported (default: 1)")
    p.add_argument("--dir", default="/tmp/memstore-bench-build", help="scratch folder (removed at the end)")
    p.add_argument("--skip-rss", action="store_true", help="skip the two-hour-file memory measurement")
    args = p.parse_args(argv)
    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    per_class = max(1, int(args.minutes * 60 / 3 / 6))
    t = time.perf_counter()
    root = make_demo_folder(work / "audio", n_per_class=per_class, seed=7)
    n_files = sum(1 for _ in root.rglob("*.wav"))
    audio_s = n_files * 3.0
    print(f"generated {n_files} files, {audio_s / 3600:.2f} h of audio in {time.perf_counter() - t:.0f} s; "
          f"{os.cpu_count()} cores")
    times: dict[str, list[float]] = {"memstore workers=1": [], "memstore workers=2": [], "tutorial loop": []}
    for _ in range(args.reps):
        for w in (1, 2):
            store = work / f"w{w}.h5"
            store.unlink(missing_ok=True)
            r = build_store(root, store, workers=w, progress=False, resume=False)
            times[f"memstore workers={w}"].append(r.wall_seconds)
        shutil.rmtree(work / "legacy", ignore_errors=True)
        times["tutorial loop"].append(tutorial_baseline(root, work / "legacy"))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["tutorial loop"]
    print(f"{'':22} {'wall s':>8} {'audio s / s':>12} {'vs tutorial':>12}")
    for k, v in med.items():
        print(f"{k:22} {v:8.1f} {audio_s / v:12.0f} {base / v:11.2f}x")
    print(f"2 workers vs 1 worker: {med['memstore workers=1'] / med['memstore workers=2']:.2f}x")
    if not args.skip_rss:
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
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
