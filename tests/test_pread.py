"""The pager's GIL-free reads (:mod:`memstore._pread`): bytes, ends of file, errors and bounds.

Both forms run on real files: the compiled loop (where the JIT is on, on Linux) and its
Python form, which also runs without the JIT and off Linux.
"""

from __future__ import annotations

import errno
import os
import sys

import numpy as np
import pytest

from memstore import _pread
from memstore._jit import JIT
from memstore._pread import PageReads, read_pages


def _python_form(fd, buf, dst, src, size):
    """:func:`read_pages`' checks around the Python loop."""
    done, err = _pread._read_pages_py(np.full(len(dst), fd, np.int64), buf, np.asarray(dst, np.int64),
                                      np.asarray(src, np.int64), np.asarray(size, np.int64))
    if err:
        raise OSError(-err, os.strerror(-err))
    return done


@pytest.fixture
def data_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8)
    path = tmp_path / "data.bin"
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


@pytest.mark.parametrize("form", [read_pages, _python_form], ids=["read_pages", "python"])
def test_pages_land_where_asked(data_file, form):
    fd, data = data_file
    rng = np.random.default_rng(1)
    size = rng.integers(0, 200_000, 12)
    src = rng.integers(0, len(data) - 200_000, 12)
    dst = np.r_[0, np.cumsum(size)[:-1]] + 7  # packed, after 7 untouched bytes
    buf = np.full(int(size.sum()) + 20, 0xAB, np.uint8)
    assert form(fd, buf, dst, src, size) == 12
    for d, s, n in zip(dst.tolist(), src.tolist(), size.tolist(), strict=True):
        np.testing.assert_array_equal(buf[d:d + n], data[s:s + n])
    assert np.all(buf[:7] == 0xAB) and np.all(buf[int(size.sum()) + 7:] == 0xAB)


@pytest.mark.parametrize("form", [read_pages, _python_form], ids=["read_pages", "python"])
def test_the_end_of_the_file_stops_at_its_page(data_file, form):
    fd, data = data_file
    buf = np.zeros(30_000, np.uint8)
    # the second page runs 5,000 bytes past the end; the third is never read
    got = form(fd, buf, [0, 10_000, 20_000], [0, len(data) - 5_000, 0], [10_000, 10_000, 10_000])
    assert got == 1
    np.testing.assert_array_equal(buf[10_000:15_000], data[-5_000:])  # what there was is read
    assert not buf[20_000:].any()


@pytest.mark.parametrize("form", [read_pages, _python_form], ids=["read_pages", "python"])
def test_a_failed_read_raises_its_errno(data_file, form, tmp_path):
    fd, _ = data_file
    buf = np.zeros(100, np.uint8)
    folder = os.open(tmp_path, os.O_RDONLY)  # a directory: read() fails with EISDIR
    try:
        with pytest.raises(OSError) as exc:
            form(folder, buf, [0], [0], [100])
        assert exc.value.errno == errno.EISDIR
    finally:
        os.close(folder)
    with pytest.raises(OSError) as exc:
        form(10_000, buf, [0], [0], [100])  # not an open descriptor
    assert exc.value.errno == errno.EBADF


def test_bounds_are_checked_before_the_kernel_runs(data_file):
    fd, _ = data_file
    buf = np.zeros(100, np.uint8)
    for dst, src, size in (([0], [0], [101]), ([90], [0], [11]), ([-1], [0], [10]), ([0], [-5], [10]),
                           ([0], [0], [-1]), ([0, 1], [0], [1])):
        with pytest.raises(ValueError):
            read_pages(fd, buf, dst, src, size)
    for bad in (np.zeros(100, np.float32), np.zeros((10, 10), np.uint8), np.zeros(200, np.uint8)[::2],
                np.frombuffer(bytes(100), np.uint8)):
        with pytest.raises(ValueError, match="writable C-contiguous 1-D uint8"):
            read_pages(fd, bad, [0], [0], [10])
    assert not buf.any()
    assert read_pages(fd, buf, [], [], []) == 0


def test_the_compiled_form_is_used_where_it_can_be():
    assert _pread.NATIVE == (JIT and sys.platform.startswith("linux"))
    if _pread.NATIVE:
        assert _pread._read_pages is not _pread._read_pages_py


def test_page_reads_take_each_page_from_its_own_descriptor(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes(range(256)) * 64)
    b.write_bytes(bytes(255 - i for i in range(256)) * 64)
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    try:
        reads = PageReads([0, 100, 200, 300], [10, 20, 30, 40], [100, 100, 100, 100], 400)
        buf = np.zeros(400, np.uint8)
        assert reads.read(np.array([fb, fa], np.int64), buf, 1, 3) == 2  # pages 1 and 2 only
        assert not buf[:100].any() and not buf[300:].any()
        np.testing.assert_array_equal(buf[100:200], (255 - np.arange(20, 120)) % 256)
        np.testing.assert_array_equal(buf[200:300], np.arange(30, 130) % 256)
        with pytest.raises(ValueError, match="descriptors"):
            reads.read(np.array([fa], np.int64), buf, 0, 2)  # one descriptor for two pages
        with pytest.raises(ValueError, match="descriptors"):
            reads.read(np.array([fa, fa], np.int32), buf, 0, 2)
        with pytest.raises(ValueError, match="at least 400 bytes"):
            reads.read(np.array([fa], np.int64), np.zeros(399, np.uint8), 0, 1)
        with pytest.raises(ValueError, match="past the buffer"):
            PageReads([350], [0], [51], 400)
    finally:
        os.close(fa)
        os.close(fb)


def test_a_window_larger_than_the_buffers_is_refused_before_any_read(tmp_path):
    from memstore.pager import WindowReader, plan_epoch

    path = tmp_path / "rows.bin"
    path.write_bytes(np.zeros((1000, 4), np.float32).tobytes())
    rows, valid = np.arange(0, 1000, 10, dtype=np.int64), np.full(100, 10, np.int64)
    windows = plan_epoch(rows, valid, window_rows=400, seed=0, epoch=0)
    assert max(w.n_rows for w in windows) > 100
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="past the buffer"):
        WindowReader(path, 0, 4, np.float32, windows, 100)  # buffers of 100 rows, windows of up to 400
    assert len(os.listdir("/proc/self/fd")) == before  # its descriptor closed
