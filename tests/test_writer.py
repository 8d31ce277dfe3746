"""StoreWriter: the one way to write a store, checked against arrays computed here with plain numpy.

Every store is a real HDF5 file; rows go through the writer's memory map and
come back through ``open_store`` and h5py.
"""

from __future__ import annotations

import dataclasses
import doctest
import zlib

import h5py
import numpy as np
import pytest

from memstore import layout, writer
from memstore.build import write_store_from_arrays
from memstore.errors import BuildError, ParameterError
from memstore.features import MelSpectrogram
from memstore.stats import RunningStats, merge
from memstore.store import open_store
from memstore.verify import verify_store
from memstore.writer import StoreContents, StoreWriter

N_BINS = 6
CONFIG = MelSpectrogram(n_mels=N_BINS, n_fft=64, hop=32, sample_rate=8000)


def _rows(seed=0, lengths=(5, 1, 12, 3)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, N_BINS)).astype(np.float32) for n in lengths]


def _contents(rows, **kwargs) -> StoreContents:
    index = np.zeros(len(rows), layout.INDEX_DTYPE)
    index["n_frames"] = [len(r) for r in rows]
    index["offset"] = np.r_[0, np.cumsum(index["n_frames"])[:-1]]
    index["status"] = layout.STATUS_STORED
    index["label"] = np.arange(len(rows)) % 2
    labels = np.eye(2, dtype=np.uint8)[index["label"]]
    return StoreContents(index=index, paths=[f"c{i % 2}/f{i}.wav" for i in range(len(rows))], labels=labels,
                         classes=["c0", "c1"], config_json=CONFIG.to_json(), n_bins=N_BINS, **kwargs)


def _chan(rows):
    """Chan et al.'s merge of per-file (count, mean, co-moment), in file order, written out here."""
    n, mean, m2 = 0, np.zeros(N_BINS), np.zeros((N_BINS, N_BINS))
    for x in rows:
        x = x.astype(np.float64)
        nb, mb = len(x), x.mean(axis=0)
        d = x - mb
        m2b = d.T @ d
        if n == 0:
            n, mean, m2 = nb, mb, m2b
            continue
        delta = mb - mean
        total = n + nb
        n, mean, m2 = total, mean + delta * (nb / total), m2 + m2b + np.outer(delta, delta) * (n * nb / total)
    return n, mean, m2


def test_the_docstring_example_runs():
    failed, attempted = doctest.testmod(writer)
    assert attempted >= 5 and failed == 0


def test_rows_checksums_and_statistics_equal_an_independent_computation(tmp_path):
    rows = _rows()
    contents = _contents(rows)
    index = contents.index.copy()
    with StoreWriter(tmp_path / "s.h5") as w:
        assert w.start(contents) is False
        for i in reversed(range(len(rows))):  # any order: rows land at their planned offsets
            index["checksum"][i] = w.write(int(index["offset"][i]), rows[i])
        stats = None
        for x in rows:
            stats = merge(stats, RunningStats.of_rows(x))
        w.finalize(index, stats, [{"stored": len(rows)}])
        with pytest.raises(BuildError, match="start was not called"):  # the partial file is the store now
            w.write(0, rows[0])
    assert not (tmp_path / "s.h5.partial").exists() and not (tmp_path / "s.h5.lock").exists()
    everything = np.concatenate(rows).astype(np.float64)
    count, mean, m2 = _chan(rows)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["features"][()].tobytes() == np.concatenate(rows).tobytes()
        assert f["index"]["checksum"].tolist() == [zlib.crc32(x.tobytes()) for x in rows]
        assert int(f["stats/count"][()]) == count == len(everything)
        np.testing.assert_allclose(f["stats/mean"][()], mean, rtol=1e-12)
        np.testing.assert_allclose(f["stats/m2"][()], m2, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(f["stats/mean"][()], everything.mean(0), rtol=1e-9)
        np.testing.assert_allclose(f["stats/cov"][()], np.cov(everything.T), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(f["stats/std"][()], everything.std(0), rtol=1e-9)
        assert "build" not in f and layout.ATTR_FINGERPRINT not in f.attrs
        assert f["segments"][()].tolist() == [(0, 4, 0, 21)]
    assert verify_store(tmp_path / "s.h5").ok
    with open_store(tmp_path / "s.h5") as store:
        assert store.paths == contents.paths and store.classes == ["c0", "c1"]
        for i, x in enumerate(rows):
            assert np.array_equal(store.frames(i), x)


def test_write_store_from_arrays_is_byte_equal_to_the_writer_by_hand(tmp_path):
    rows = _rows(seed=4)
    contents = _contents(rows, label_mode="legacy")
    write_store_from_arrays(tmp_path / "a.h5", rows, contents.paths, contents.classes, contents.labels, CONFIG,
                            label_mode="legacy")
    count, mean, m2 = _chan(rows)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["features"][()].tobytes() == np.concatenate(rows).tobytes()
        assert f["labels"][()].tobytes() == contents.labels.tobytes()
        assert f["index"]["label"].tolist() == contents.index["label"].tolist()
        assert f.attrs[layout.ATTR_LABEL_MODE] == "legacy"
        np.testing.assert_allclose(f["stats/m2"][()], m2, rtol=1e-10, atol=1e-12)


def test_a_partial_of_the_same_plan_is_resumed_and_another_is_discarded(tmp_path):
    rows = _rows(seed=1)
    contents = _contents(rows)
    store = tmp_path / "s.h5"
    with StoreWriter(store) as w:
        assert w.start(contents, n_build=len(rows), fingerprint="plan-1", resume=True) is False
        w.write(int(contents.index["offset"][2]), rows[2])
        w.done[2], w.checksum[2] = 1, 1234
    # the writer went away without finalising (an interrupted build): the partial file stays
    assert (tmp_path / "s.h5.partial").exists() and not store.exists()
    with StoreWriter(store) as w:
        assert w.start(contents, n_build=len(rows), fingerprint="plan-1", resume=True) is True
        assert w.done.tolist() == [0, 0, 1, 0] and int(w.checksum[2]) == 1234
        o = int(contents.index["offset"][2])
        assert np.array_equal(w.features()[o:o + len(rows[2])], rows[2])
    with StoreWriter(store) as w:
        assert w.start(contents, n_build=len(rows), fingerprint="plan-1", resume=False) is False
        assert w.done.tolist() == [0, 0, 0, 0]
        w.done[1] = 1
    with StoreWriter(store) as w:
        assert w.start(contents, n_build=len(rows), fingerprint="plan-2", resume=True) is False
        assert w.done.tolist() == [0, 0, 0, 0] and w.checksum.tolist() == [0, 0, 0, 0]


def test_a_partial_of_no_rows_is_resumed_too(tmp_path, caplog):
    """A plan whose files give no row (a review found its partial file refused as damaged at every start)."""
    rows = [np.zeros((0, 4), np.float32)]
    contents = _contents(rows)
    store = tmp_path / "s.h5"
    with StoreWriter(store) as w:
        assert w.start(contents, n_build=1, fingerprint="plan-0", resume=True) is False
        w.done[0] = 2
    with caplog.at_level("WARNING", logger="memstore"), StoreWriter(store) as w:
        assert w.start(contents, n_build=1, fingerprint="plan-0", resume=True) is True
        assert w.done.tolist() == [2]
    assert "discarding" not in caplog.text


def test_an_append_copies_the_old_rows_before_its_own(tmp_path):
    old = _rows(seed=2, lengths=(4, 2))
    write_store_from_arrays(tmp_path / "s.h5", old, ["c0/a.wav", "c1/b.wav"], ["c0", "c1"],
                            np.eye(2, dtype=np.uint8), CONFIG)
    with open_store(tmp_path / "s.h5") as store:
        data_offset, n_old = store.features.offset, len(store.features)
    new = _rows(seed=3, lengths=(3,))
    contents = _contents(old + new)
    with StoreWriter(tmp_path / "s.h5") as w:
        w.start(contents, n_build=1, fingerprint="append", copy_from=(tmp_path / "s.h5", data_offset, n_old))
        w.write(n_old, new[0])
        assert np.array_equal(w.features()[:], np.concatenate(old + new))


def test_compact_drops_files_and_recounts_the_last_segment(tmp_path):
    rows = _rows(seed=5, lengths=(2, 3, 4, 5, 6))
    contents = _contents(rows)
    segments = np.array([(0, 2, 0, 5), (2, 3, 5, 15)], layout.SEGMENT_DTYPE)
    index = contents.index.copy()
    index["segment"] = [0, 0, 1, 1, 1]
    contents = dataclasses.replace(contents, index=index, segments=segments)
    with StoreWriter(tmp_path / "s.h5") as w:
        w.start(contents, n_build=3, fingerprint="x")
        for i, x in enumerate(rows):
            index["checksum"][i] = w.write(int(index["offset"][i]), x)
        kept = w.compact(index, [0, 1, 3])  # files 2 and 4 of the new segment failed
        assert kept["checksum"].tolist() == index["checksum"][[0, 1, 3]].tolist()
        w.finalize(kept, None, [])
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["features"][()].tobytes() == np.concatenate([rows[0], rows[1], rows[3]]).tobytes()
        assert f["segments"][()].tolist() == [(0, 2, 0, 5), (2, 1, 5, 5)]
        assert f["index"]["offset"].tolist() == [0, 2, 5]
        assert f["paths"][()].tolist() == [b"c0/f0.wav", b"c1/f1.wav", b"c1/f3.wav"]
        assert "count" not in f["stats"]
    assert not list(tmp_path.glob("*.partial"))


def test_misuse_is_a_clear_error(tmp_path):
    rows = _rows()
    with pytest.raises(ParameterError, match="must not end in .partial"):
        StoreWriter(tmp_path / "s.h5.partial")
    with pytest.raises(BuildError, match="in a `with` block"):
        StoreWriter(tmp_path / "s.h5").start(_contents(rows))
    with pytest.raises(ParameterError, match="dtype='float64' must be one of"):
        _contents(rows, dtype="float64")
    with StoreWriter(tmp_path / "s.h5") as w:
        with pytest.raises(BuildError, match="start was not called"):
            w.write(0, rows[0])
        w.start(_contents(rows))
        with pytest.raises(ParameterError, match=r"rows of shape \(3, 6\) at row 20 must be"):
            w.write(20, rows[3])
        with pytest.raises(ParameterError, match=r"must be \(n, 6\)"):
            w.write(0, np.zeros((2, 5), np.float32))
        w.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_second_writer_of_the_same_store_is_refused(tmp_path):
    with StoreWriter(tmp_path / "s.h5"):
        with pytest.raises(BuildError, match="another build is writing"):
            StoreWriter(tmp_path / "s.h5").__enter__()


def test_write_store_from_arrays_refuses_a_partial_name(tmp_path):
    """It used to write 's.h5.partial.partial' and rename it to a name that never opens."""
    with pytest.raises(ParameterError, match="must not end in .partial"):
        write_store_from_arrays(tmp_path / "s.h5.partial", _rows(), [f"f{i}" for i in range(4)], ["c0", "c1"],
                                np.zeros((4, 2), np.uint8), CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_float16_rows_are_stored_as_float16(tmp_path):
    rows = _rows(seed=6)
    contents = _contents(rows, dtype="float16")
    index = contents.index.copy()
    with StoreWriter(tmp_path / "s.h5") as w:
        w.start(contents)
        for i, x in enumerate(rows):
            index["checksum"][i] = w.write(int(index["offset"][i]), x)
        w.finalize(index, None, [])
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["features"].dtype == np.float16
        assert f["features"][()].tobytes() == np.concatenate(rows).astype(np.float16).tobytes()
        assert f["index"]["checksum"].tolist() == [zlib.crc32(x.astype(np.float16).tobytes()) for x in rows]


def test_make_big_store_imports_no_private_name():
    """Tools use the public API only: the tool used to import five private helpers of memstore.build."""
    import ast
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "make_big_store.py"
    imported = [(node.module, alias.name) for node in ast.walk(ast.parse(tool.read_text()))
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("memstore")
                for alias in node.names]
    assert ("memstore.writer", "StoreWriter") in imported
    assert [name for _, name in imported if name.startswith("_")] == []
    assert [module for module, _ in imported if any(part.startswith("_") for part in module.split("."))] == []
