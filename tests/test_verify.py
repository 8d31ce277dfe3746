"""verify_store and ``memstore verify`` on a real store and on damaged copies of it."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest

from memstore import cli
from memstore.errors import ParameterError
from memstore.store import open_store
from memstore.verify import verify_store


@pytest.fixture
def copy(demo_store, tmp_path):
    """A private copy of the session's demo store, to damage."""
    path = tmp_path / "copy.h5"
    shutil.copy(demo_store, path)
    return path


def flip(path, pos, mask=0xFF):
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ mask]))


def feature_byte(path, file_i, row, col):
    with open_store(path) as s:
        pos = s.data_offset + ((int(s.index["offset"][file_i]) + row) * s.n_bins + col) * s.dtype.itemsize
        return pos, s.paths[file_i]


@pytest.mark.parametrize("chunk_bytes", [1, 384 * 7, 1 << 26])  # 1 row, 7 rows (files span chunks), everything
def test_clean_store_verifies_at_any_chunk_size(demo_store, chunk_bytes):
    report = verify_store(demo_store, chunk_bytes=chunk_bytes)
    assert report.ok, report.problems
    with open_store(demo_store) as s:
        assert report.files == len(s) and report.frames == s.n_frames_total


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_feature_byte_names_that_file(copy, where, capsys):
    with open_store(copy) as s:
        n = len(s)
        last_rows = int(s.index["n_frames"][-1])
    file_i, row, col = {"first": (0, 0, 0), "middle": (7, 5, 12), "last": (n - 1, last_rows - 1, 95)}[where]
    pos, name = feature_byte(copy, file_i, row, col)
    flip(copy, pos + 1, 0x01)  # one bit of a float32's mantissa: still finite, only the checksum sees it
    report = verify_store(copy, chunk_bytes=384 * 100)
    assert report.corrupt_files == [name]
    assert [p for p, _ in report.problems] == [name]  # the statistics move by far less than their rounding
    assert cli.main(["verify", str(copy), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert name in out and "checksum mismatch" in out


def test_nan_in_features_is_reported_and_stats_are_not_compared(copy):
    pos, name = feature_byte(copy, 3, 2, 0)
    with open(copy, "r+b") as f:
        f.seek(pos)
        f.write(np.float32(np.nan).tobytes())
    problems = verify_store(copy).problems
    about = [d for p, d in problems if p == name]
    assert len(about) == 2 and "checksum mismatch" in about[0] and "1 feature row(s) hold NaN" in about[1]
    assert {p for p, _ in problems} == {name}  # no statistics comparison against a NaN


def test_index_edits_are_reported(copy):
    with h5py.File(copy, "r+") as f:
        idx = f["index"][()]
        paths = [p.decode() for p in f["paths"][()]]
        idx["checksum"][2] ^= 1
        idx["label"][4] = (idx["label"][4] + 1) % 6
        idx["n_samples"][5] += 44100
        f["index"][...] = idx
        f["stats/mean"][3] += 1.0
    problems = verify_store(copy).problems
    kinds = {p: d for p, d in problems}
    assert "checksum mismatch" in kinds[paths[2]]
    assert "disagrees with the labels matrix" in kinds[paths[4]]
    assert "frames but" in kinds[paths[5]]
    assert "stored mean differs" in kinds["stats"]


def test_duplicate_paths_and_classes(copy):
    with h5py.File(copy, "r+") as f:
        paths = f["paths"][()]
        paths[1] = paths[0]
        f["paths"][...] = paths
        classes = json.loads(f.attrs["classes"])
        f.attrs["classes"] = json.dumps(classes[:-1] + classes[:1])
    problems = dict(verify_store(copy).problems)
    assert "stored twice (files 0 and 1)" in problems[paths[0].decode()]
    assert "must be unique" in problems["classes"]


def test_index_byte_flip_fails_to_open_or_is_reported(copy, capsys):
    with h5py.File(copy, "r") as f:
        base = f["index"].id.get_offset()
        row = f["index"].dtype.itemsize
    assert base is not None
    flip(copy, base + 3 * row + 0)  # low byte of file 3's offset: the files no longer tile the features
    report = verify_store(copy)
    assert not report.ok and report.problems[0][0] == "<store>" and "offsets" in report.problems[0][1]
    assert cli.main(["verify", str(copy), "--quiet"]) == 1
    assert "<store>" in capsys.readouterr().out


def test_unopenable_stores(tmp_path, copy, capsys):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    for bad in (junk, tmp_path / "missing.h5"):
        report = verify_store(bad)
        assert not report.ok and report.problems[0][0] == "<store>"
    with open(copy, "r+b") as f:
        f.truncate(f.seek(0, 2) - 1000)
    assert verify_store(copy).problems[0][0] == "<store>"
    assert cli.main(["verify", str(junk)]) == 1
    with pytest.raises(ParameterError, match="chunk_bytes=0"):
        verify_store(copy, chunk_bytes=0)


def test_cli_clean_prints_ok_and_progress_goes_to_stderr(demo_store, capsys):
    assert cli.main(["verify", str(demo_store)]) == 0
    captured = capsys.readouterr()
    assert "OK, 18 file(s) verified" in captured.out and "verifying" not in captured.out
    verify_store(demo_store, progress=True)
    assert "verifying" in capsys.readouterr().err


@pytest.mark.parametrize("chunk_bytes", [384 * 7, 1 << 26])
def test_stats_are_checked_against_an_independent_recomputation(copy, chunk_bytes):
    """The stored std is judged against the features' own, to 1e-6 of the largest mean or std: a change just
    inside passes and one just outside is reported, whichever chunks the pass reads."""
    with open_store(copy) as s:
        x = np.asarray(s.features, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    scale = max(np.abs(mean).max(), std.max())
    for shift, ok in ((0.5e-6 * scale, True), (2e-6 * scale, False)):
        with h5py.File(copy, "r+") as f:
            f["stats/mean"][...] = mean
            f["stats/std"][...] = std
            f["stats/std"][7] = std[7] + shift
        problems = verify_store(copy, chunk_bytes=chunk_bytes).problems
        assert problems == ([] if ok else [("stats", f"stored std differs from the features by up to "
                                                     f"{shift:.3g}")])


def test_chunk_bytes_must_be_a_positive_integer_and_not_a_bool(copy):
    for bad in (True, 0, -1, 1.5, "64"):
        with pytest.raises(ParameterError, match=re.escape(f"chunk_bytes={bad!r} must be a positive integer")):
            verify_store(copy, chunk_bytes=bad)


def replace_stat(path, key, value):
    with h5py.File(path, "r+") as f:
        del f["stats"][key]
        f["stats"].create_dataset(key, data=value)


@pytest.mark.parametrize("key, value, why", [
    ("m2", np.zeros((5, 5)), "m2 has shape (5, 5), not (96, 96)"),
    ("cov", np.zeros(96), "cov has shape (96,), not (96, 96)"),
    ("std", np.ones(3), "std has shape (3,), not (96,)"),  # was a numpy broadcasting error
    ("std", np.ones((96, 96)), "std has shape (96, 96), not (96,)"),  # was broadcast, "differs by up to 1"
    ("std", np.array([b"x"] * 96), "std holds |S1 values, not numbers"),  # was a TypeError from isfinite
    ("count", np.ones(3), "count has shape (3,), not ()"),  # was a TypeError from int()
    ("count", b"many", "count holds |S4 values, not numbers"),
])
def test_damaged_statistics_are_reported_not_raised(copy, key, value, why, capsys):
    replace_stat(copy, key, value)
    report = verify_store(copy)
    assert report.problems == [("stats", why)]  # the other statistics still agree with the features
    assert cli.main(["verify", str(copy), "--quiet"]) == 1
    assert why in capsys.readouterr().out
