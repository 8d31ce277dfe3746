"""Out of core: peak RSS stays within memory_limit + a fixed overhead, whatever the store size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_big_store import make_big_store  # noqa: E402

from memstore.errors import ParameterError  # noqa: E402
from memstore.store import open_store  # noqa: E402

LIMIT = 24_000_000

STREAM = """
import sys
import numpy as np
from memstore.batches import BatchStream
from memstore.slicer import gather_blocks
from memstore.store import open_store

def hwm():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM")).split()[1]) * 1024

store = open_store(sys.argv[1])
src = np.zeros((4, store.n_bins), np.float32)
gather_blocks(src, [0], [4], np.zeros((1, 4, store.n_bins), np.float32), mean=np.zeros(store.n_bins),
              scale=np.ones(store.n_bins))
stream = BatchStream(store, batch_size=32, split="all", memory_limit=int(sys.argv[2]), normalize="standard",
                     drop_last=False)
assert stream.out_of_core
base = hwm()
n = 0
for x, y in stream:
    n += len(x)
print(base, hwm(), n, len(stream.block_file))
"""


@pytest.fixture(scope="module")
def big_stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    paths = []
    for factor in (8, 16):
        p = d / f"x{factor}.h5"
        make_big_store(p, factor * LIMIT, progress=False)
        paths.append(p)
    return paths


def test_peak_rss_is_bounded_and_does_not_grow_with_the_store(big_stores):
    peaks = []
    for path in big_stores:
        out = subprocess.run([sys.executable, "-c", STREAM, str(path), str(LIMIT)], capture_output=True,
                             text=True, check=True).stdout.split()
        base, peak, served, total = map(int, out)
        assert served == total  # the whole epoch was streamed
        assert peak - base <= LIMIT + 100_000_000, f"peak {peak / 1e6:.0f} MB over baseline {base / 1e6:.0f} MB"
        peaks.append(peak - base)
    assert abs(peaks[1] - peaks[0]) < 20_000_000, peaks


def test_limit_below_one_batch_names_the_minimum(big_stores):
    from memstore.batches import BatchStream

    with open_store(big_stores[0]) as s, pytest.raises(ParameterError, match=r"too small.*need \d+ bytes"):
        BatchStream(s, batch_size=256, memory_limit="10MB")
