"""Opening stores: validation before any read, fork safety, errors."""

from __future__ import annotations

import multiprocessing
import os
import shutil

import h5py
import numpy as np
import pytest

from memstore import layout
from memstore.errors import ParameterError, StoreFormatError
from memstore.store import open_store


def corrupt(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_store_api(demo_store):
    with open_store(demo_store) as s:
        assert len(s) == len(s.paths) == len(s.labels) == 18
        assert s.index.dtype == layout.INDEX_DTYPE
        assert isinstance(s.features, np.memmap) and not s.features.flags.writeable
        assert np.shares_memory(s.frames(2), s.features)
        assert s.frames(-1).shape[0] == s.index["n_frames"][-1]
        assert s.stats["std"].shape == (96,) and s.stats["cov"].shape == (96, 96)
        assert "18 files" in repr(s)
        with pytest.raises(ParameterError, match="file index 18"):
            s.frames(18)


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.attrs.__setitem__("format_version", 99), "format version 99"),
    (lambda f: f.attrs.__setitem__("format", "other"), "format"),
    (lambda f: f.attrs.__setitem__("complete", 0), "did not complete"),
    (lambda f: f.attrs.__setitem__("config", "{not json"), "not valid JSON"),
    (lambda f: f.attrs.__setitem__("config", '{"kind": "mel", "hop": 0}'), "bad feature configuration"),
    (lambda f: f.attrs.__setitem__("classes", '"x"'), "classes"),
    (lambda f: f.__delitem__("labels"), "missing dataset 'labels'"),
    (lambda f: f["index"].__setitem__((0, "offset"), 5), "do not tile"),
    (lambda f: f["index"].__setitem__((3, "n_frames"), 10**9), "do not tile"),
    (lambda f: f["index"].__setitem__((1, "label"), 77), "labels out of range"),
])
def test_bad_metadata_raises_store_format_error(demo_store, tmp_path, edit, match):
    bad = corrupt(demo_store, tmp_path / "bad.h5", edit)
    with pytest.raises(StoreFormatError, match=match):
        open_store(bad)


def test_truncated_garbage_and_missing(demo_store, tmp_path):
    data = demo_store.read_bytes()
    (tmp_path / "t.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreFormatError):
        open_store(tmp_path / "t.h5")
    (tmp_path / "g.h5").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreFormatError, match="not an HDF5 file"):
        open_store(tmp_path / "g.h5")
    with pytest.raises(StoreFormatError, match="no such store"):
        open_store(tmp_path / "missing.h5")
    shutil.copy(demo_store, tmp_path / "x.h5.partial")
    with pytest.raises(StoreFormatError, match="partial build"):
        open_store(tmp_path / "x.h5.partial")


def _child(store, q):
    q.put(float(np.asarray(store.frames(3), np.float64).sum()))


def test_forked_child_maps_its_own_view(demo_store):
    s = open_store(demo_store)
    expected = float(np.asarray(s.frames(3), np.float64).sum())
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(s, q))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and got == expected


def test_store_is_not_picklable(demo_store):
    import pickle

    with open_store(demo_store) as s, pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(s)


def test_an_open_store_keeps_its_generation_when_a_new_one_is_renamed_over_it(demo_store, tmp_path):
    """A build renames a new generation over the path at any moment: a store opened before keeps reading the
    bytes its metadata describes (the mapping, the out-of-core pager and verify), and close() frees them."""
    import os

    from memstore.batches import BatchStream
    from memstore.build import build_store
    from memstore.demo import make_demo_folder

    path = tmp_path / "s.h5"
    shutil.copy(demo_store, path)
    other = tmp_path / "other.h5"
    build_store(make_demo_folder(tmp_path / "o", n_per_class=2, seed=3, duration=5.0), other, workers=1,
                progress=False)
    with open_store(demo_store) as ref:
        expected = np.array(ref.features)
    store = open_store(path)
    fds = len(os.listdir("/proc/self/fd"))
    os.replace(other, path)  # what a finished build or append does
    np.testing.assert_array_equal(np.asarray(store.features), expected)
    limit = 4 * 4 * 128 * store.n_bins * 4 + 2 * 256 * store.n_bins * 4
    for memory_limit in (None, limit):
        stream = BatchStream(store, batch_size=4, split="all", shuffle=False, drop_last=False,
                             memory_limit=memory_limit)
        x = np.concatenate([b for b, _ in stream])
        stream.close()
        first = stream.block_start[0], stream.block_file[0]
        assert x.shape[0] == len(stream.block_file)
        np.testing.assert_array_equal(x[0, 0, :10], store.frames(int(first[1]))[first[0]:first[0] + 10])
        np.testing.assert_array_equal(store.frames(0), expected[: int(store.index["n_frames"][0])])
    store.close()
    assert len(os.listdir("/proc/self/fd")) == fds - 1  # the pinned descriptor is gone
    with open_store(path) as new:
        assert len(new) != len(expected) or not np.array_equal(np.asarray(new.features), expected)


def test_a_closed_store_refuses_to_read_instead_of_reading_whatever_now_holds_its_descriptor(demo_store, tmp_path):
    # the features are read through /proc/self/fd/N: after close() the next open() takes N for another file
    from memstore.batches import BatchStream

    store = open_store(demo_store)
    first = np.array(store.frames(0))
    in_memory = BatchStream(store, batch_size=4, split="all", shuffle=False)
    paged = BatchStream(store, batch_size=4, split="all", shuffle=False, memory_limit="1MB")
    assert paged.out_of_core and not in_memory.out_of_core
    next(iter(in_memory))
    store.close()
    (tmp_path / "other").write_bytes(b"\x7f" * (demo_store.stat().st_size + 4096))
    fd = os.open(tmp_path / "other", os.O_RDONLY)  # most likely the number the store held
    try:
        assert store.closed
        for read in (lambda: store.frames(0), lambda: store.features, lambda: store.source,
                     lambda: next(iter(in_memory)), lambda: next(iter(paged)),
                     lambda: BatchStream(store, batch_size=4, split="all")):
            with pytest.raises(ParameterError, match="is closed; open it again with open_store"):
                read()
        assert len(store) == 18 and store.classes  # the metadata stays readable
    finally:
        os.close(fd)
    with open_store(demo_store) as again:
        np.testing.assert_array_equal(again.frames(0), first)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_opening_what_is_not_a_store_file_says_what_it_is(tmp_path):
    from memstore import cli

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "gone.h5")
    for name, why in (("fifo", "is not a regular file"), ("link", "is a broken symlink"),
                      ("missing.h5", "no such store file")):
        with pytest.raises(StoreFormatError, match=why):  # all three used to say "no such store file"
            open_store(tmp_path / name)
    with pytest.raises(StoreFormatError, match="is a folder, not a store file"):
        open_store(tmp_path)
    assert cli.main(["info", str(tmp_path / "fifo")]) == 1 and cli.main(["verify", str(tmp_path)]) == 1
