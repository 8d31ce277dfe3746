"""Write a synthetic, valid store of any size quickly (for stress runs and benchmarks).

Example::

    python tools/make_big_store.py /tmp/big.h5 --size 30GB

Every file gets ``--frames-per-file`` rows of a cheap pattern that differs per
file; checksums and statistics are computed while writing, so
``memstore verify`` passes and ``normalize="standard"`` works.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from memstore import BuildReport, MelSpectrogram, layout
from memstore.pager import parse_memory
from memstore.stats import RunningStats, merge
from memstore.writer import StoreContents, StoreWriter


def make_big_store(path, size, *, n_bins=96, frames_per_file=259, n_classes=11, seed=0, progress=True):
    """Write a store of about ``size`` bytes of features; returns the number of files."""
    from tqdm.auto import tqdm

    row_bytes = n_bins * 4
    n_files = max(1, parse_memory(size) // (frames_per_file * row_bytes))
    rng = np.random.default_rng(seed)
    index = np.zeros(n_files, layout.INDEX_DTYPE)
    index["n_frames"] = frames_per_file
    index["offset"] = np.arange(n_files, dtype=np.int64) * frames_per_file
    index["label"] = np.arange(n_files) // max(1, n_files // n_classes) % n_classes  # written class by class
    index["sample_rate"] = index["source_rate"] = 44100
    index["n_samples"] = (frames_per_file - 2) * 512
    index["channels"] = 2
    index["status"] = layout.STATUS_STORED
    labels = np.zeros((n_files, n_classes), np.uint8)
    labels[np.arange(n_files), index["label"]] = 1
    total = n_files * frames_per_file
    transform = MelSpectrogram(n_mels=n_bins, sample_rate=44100)
    contents = StoreContents(index=index, labels=labels, classes=[f"c{k:02d}" for k in range(n_classes)],
                             paths=[f"c{int(c):02d}/synthetic-{i:08d}.wav" for i, c in enumerate(index["label"])],
                             config_json=transform.to_json(), n_bins=n_bins, label_mode="folder")
    base = rng.random((frames_per_file, n_bins), dtype=np.float32)
    stats = None
    per_chunk = max(1, (64 << 20) // (frames_per_file * row_bytes))
    with StoreWriter(path) as writer:
        writer.start(contents)
        for f0 in tqdm(range(0, n_files, per_chunk), unit="chunk", disable=not progress, desc="writing"):
            f1 = min(n_files, f0 + per_chunk)
            block = np.empty((f1 - f0, frames_per_file, n_bins), np.float32)
            block[:] = base
            block *= (np.arange(f0, f1, dtype=np.float32) % 97 + 1)[:, None, None] / 50.0
            block += (index["label"][f0:f1].astype(np.float32))[:, None, None]
            for k in range(f1 - f0):
                index["checksum"][f0 + k] = writer.write(int(index["offset"][f0 + k]), block[k])
            # statistics over every row written, merged chunk by chunk (Chan et al.)
            stats = merge(stats, RunningStats.of_rows(block.reshape(-1, n_bins)))
        writer.finalize(index, stats, [BuildReport(stored=n_files, frames=total, bytes=total * row_bytes).to_dict()])
    return n_files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="output store file")
    p.add_argument("--size", default="1GB", help="feature bytes, e.g. 500MB, 30GB (default: 1GB)")
    p.add_argument("--n-bins", type=int, default=96, help="bins per frame (default: 96)")
    p.add_argument("--frames-per-file", type=int, default=259, help="frames per file (default: 259, 3 s)")
    p.add_argument("--classes", type=int, default=11, help="number of classes (default: 11, as IRMAS)")
    p.add_argument("--seed", type=int, default=0, help="pattern seed (default: 0)")
    args = p.parse_args(argv)
    t = time.perf_counter()
    n = make_big_store(args.store, args.size, n_bins=args.n_bins, frames_per_file=args.frames_per_file,
                       n_classes=args.classes, seed=args.seed)
    print(f"{args.store}: {n} files in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
