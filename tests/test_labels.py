"""Scanning folders and labelling files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from memstore.errors import BuildError, ParameterError
from memstore.labels import assign_labels, label_index, scan_audio


def touch(path, data=b"RIFF"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_is_recursive_sorted_and_reports_odd_entries(tmp_path):
    for rel in ["vio/b.wav", "vio/a.WAV", "cel/deep/x y ü.wav", "notes.txt", ".DS_Store"]:
        touch(tmp_path / rel)
    (tmp_path / "dir.wav").mkdir()
    os.symlink(tmp_path / "missing.wav", tmp_path / "broken.wav")
    os.symlink(tmp_path, tmp_path / "cel" / "loop")
    os.symlink(tmp_path / "vio" / "a.WAV", tmp_path / "link.wav")
    res = scan_audio(tmp_path, extensions=(".wav",))
    assert res.files == sorted(res.files)
    assert res.files == ["cel/deep/x y ü.wav", "link.wav", "vio/a.WAV", "vio/b.wav"]
    reasons = dict(res.skipped)
    assert reasons["broken.wav"] == "broken symlink"
    assert "loop" in reasons["cel/loop"]
    assert "not a regular file" in reasons["dir.wav"]
    assert scan_audio(tmp_path, extensions=(".wav",)) == res


def test_non_utf8_names_survive(tmp_path):
    name = b"caf\xe9.wav"
    with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
        f.write(b"x")
    res = scan_audio(tmp_path, extensions=(".wav",))
    assert os.fsencode(res.files[0]) == name


def test_unreadable_file_is_listed(tmp_path):
    p = touch(tmp_path / "a" / "secret.wav")
    touch(tmp_path / "a" / "ok.wav")
    p.chmod(0)
    try:
        res = scan_audio(tmp_path, extensions=(".wav",))
    finally:
        p.chmod(0o644)
    if os.geteuid() == 0:  # root reads anything: the file is simply listed
        assert "a/secret.wav" in res.files
    else:
        assert dict(res.skipped)["a/secret.wav"] == "permission denied"


def test_empty_and_missing_roots(tmp_path):
    with pytest.raises(BuildError, match="no audio files"):
        scan_audio(tmp_path, extensions=(".wav",))
    with pytest.raises(BuildError, match="does not exist"):
        scan_audio(tmp_path / "nope")


def test_folder_labels():
    classes, m = assign_labels("/x", ["vio/a.wav", "cel/b.wav", "top.wav"], "folder")
    assert classes == ["cel", "vio"]
    assert m.tolist() == [[0, 1], [1, 0], [0, 0]]
    assert label_index(m).tolist() == [1, 0, -1]


def test_irmas_labels_by_position_and_txt(tmp_path):
    touch(tmp_path / "Testing" / "song-1.txt", b"gel\t\n\npia \n")
    files = ["Training/cla/001__[cla][nod][cla]0001__1.wav",   # clarinet, classical genre
             "Training/vio/002__[vio][jaz_blu]0002__2.wav",    # no dru/nod tag
             "Training/pia/003__[pia][dru][cla]0003__1.wav",   # piano, classical genre
             "Testing/song-1.wav", "Testing/unlabelled.wav"]
    classes, m = assign_labels(tmp_path, files, "irmas")
    assert classes == ["cla", "gel", "pia", "vio"]
    assert m.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert label_index(m).tolist() == [0, 3, 2, -1, -1]


def test_none_and_callable_and_bad_mode():
    classes, m = assign_labels("/x", ["a.wav"], "none")
    assert classes == [] and m.shape == (1, 0)
    classes, m = assign_labels("/x", ["a.wav", "b.wav"], lambda p: ["x", "y"] if p == "a.wav" else None)
    assert classes == ["x", "y"] and m.tolist() == [[1, 1], [0, 0]]
    with pytest.raises(ParameterError, match="labels='genre'"):
        assign_labels("/x", ["a.wav"], "genre")
    with pytest.raises(ParameterError, match="labels callable returned 3"):
        assign_labels("/x", ["a.wav"], lambda p: 3)
    assert np.asarray(label_index(np.zeros((2, 0), np.uint8))).tolist() == [-1, -1]
