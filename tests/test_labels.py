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


def test_link_to_a_real_folder_sorted_first_is_not_a_loop(tmp_path):
    touch(tmp_path / "z" / "a.wav")
    os.symlink(tmp_path / "z", tmp_path / "alias")       # sorts before the real folder
    os.symlink(tmp_path / "z", tmp_path / "z" / "self")  # a real loop: a link to its own folder
    res = scan_audio(tmp_path, extensions=(".wav",))
    assert res.files == ["alias/a.wav", "z/a.wav"]
    assert dict(res.skipped) == {"alias/self": "symlink loop (links to a folder above it)",
                                 "z/self": "symlink loop (links to a folder above it)"}


def test_link_chain_loop_and_link_named_like_audio_to_a_folder(tmp_path):
    touch(tmp_path / "ok.wav")
    os.symlink(tmp_path / "b.wav", tmp_path / "a.wav")
    os.symlink(tmp_path / "a.wav", tmp_path / "b.wav")   # ELOOP when resolved
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "folder.wav")
    os.mkfifo(tmp_path / "pipe.wav")                     # must not be opened: it would block
    res = scan_audio(tmp_path, extensions=("WAV",))      # without the dot, upper case
    assert res.files == ["ok.wav"]
    reasons = dict(res.skipped)
    assert reasons["a.wav"] == reasons["b.wav"] == "symlink loop"
    assert reasons["folder.wav"].startswith("not a regular file")
    assert reasons["pipe.wav"] == "not a regular file"


def test_unreadable_folder_is_listed_not_fatal(tmp_path):
    touch(tmp_path / "ok" / "a.wav")
    touch(tmp_path / "locked" / "b.wav")
    (tmp_path / "locked").chmod(0)
    try:
        res = scan_audio(tmp_path, extensions=(".wav",))
    finally:
        (tmp_path / "locked").chmod(0o755)
    if os.geteuid() == 0:  # root lists any folder
        assert res.files == ["locked/b.wav", "ok/a.wav"]
    else:
        assert res.files == ["ok/a.wav"] and res.skipped == [("locked", "permission denied")]


def test_sort_is_by_bytes_and_names_survive(tmp_path):
    names = ["b.wav", "a b.wav", "a.wav", "a/x.wav", "Z.wav", "é.wav", "e\u0301.wav", "日本.wav"]
    for n in names:
        touch(tmp_path / n)
    with open(os.path.join(os.fsencode(tmp_path), b"\xff.wav"), "wb"):
        pass
    res = scan_audio(os.fsencode(tmp_path), extensions=(".wav",))  # a bytes root works too
    raw = [os.fsencode(f) for f in res.files]
    assert raw == sorted(raw) and len(raw) == 9
    assert b"\xff.wav" in raw and "e\u0301.wav" in res.files and "é.wav" in res.files
    assert all(os.path.exists(os.path.join(os.fsencode(tmp_path), r)) for r in raw)


def test_default_extensions_come_from_the_audio_module(tmp_path):
    from memstore.audio import audio_extensions

    touch(tmp_path / "a.wav")
    touch(tmp_path / "notes.txt")
    assert scan_audio(tmp_path).files == ["a.wav"]
    (tmp_path / "a.wav").unlink()
    with pytest.raises(BuildError, match=r"searched for .*\.wav"):
        scan_audio(tmp_path)
    assert ".wav" in audio_extensions()


def test_root_errors_name_the_root(tmp_path):
    f = touch(tmp_path / "file.wav")
    with pytest.raises(BuildError, match="is not a folder"):
        scan_audio(f)
    touch(tmp_path / "d" / "x.txt")
    with pytest.raises(BuildError, match=r"no audio files under .*d'"):
        scan_audio(tmp_path / "d", extensions=(".wav",))
    (tmp_path / "e").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "e" / "b.wav")
    with pytest.raises(BuildError, match="1 entry was skipped"):
        scan_audio(tmp_path / "e", extensions=(".wav",))
    for bad in (".wav", [""], [3]):
        with pytest.raises(ParameterError, match="extensions="):
            scan_audio(tmp_path, extensions=bad)


def test_scan_of_written_wavs_is_deterministic(tmp_path):
    from memstore.audio import write_wav

    rng = np.random.default_rng(0)
    for i in rng.permutation(12):  # creation order must not matter
        (tmp_path / f"c{i % 3}").mkdir(exist_ok=True)
        write_wav(tmp_path / f"c{i % 3}" / f"f{i:02d}.wav", np.zeros(10), 8000)
    first = scan_audio(tmp_path)
    assert first == scan_audio(tmp_path) and len(first.files) == 12 and first.skipped == []
    classes, m = assign_labels(tmp_path, first.files, "folder")
    assert classes == ["c0", "c1", "c2"] and m.sum(axis=0).tolist() == [4, 4, 4]


def test_irmas_edge_cases(tmp_path):
    touch(tmp_path / "T" / "bom.txt", "\ufeffvoi\r\n\t\r\ngac\t\n".encode())
    touch(tmp_path / "T" / "dup.txt", b"pia\npia\n")
    touch(tmp_path / "T" / "dotted.name.txt", b"org\n")
    files = ["[cla][cla]0001__1.wav",                       # first tag only: clarinet
             "x/012__[sax][nod][cla]2217__3.wav",            # later [cla] is a genre
             "T/bom.wav", "T/dup.wav", "T/dotted.name.wav"]
    classes, m = assign_labels(tmp_path, files, "irmas")
    assert classes == ["cla", "gac", "org", "pia", "sax", "voi"]
    got = [[classes[k] for k in np.flatnonzero(row)] for row in m]
    assert got == [["cla"], ["sax"], ["gac", "voi"], ["pia"], ["org"]]
    assert label_index(m).tolist() == [0, 4, -1, 3, 2]


def test_callable_labels_validated():
    classes, m = assign_labels("/x", ["a/1.wav", "b/2.wav"], lambda p: ("k", "j") if p[0] == "a" else "j")
    assert classes == ["j", "k"] and m.tolist() == [[1, 1], [1, 0]]
    for bad in ("", [""], ["a", 1], {"a"}):
        with pytest.raises(ParameterError, match="labels callable returned"):
            assign_labels("/x", ["a.wav"], lambda p, bad=bad: bad)
    with pytest.raises(ParameterError, match="must be 2-D"):
        label_index(np.zeros(3))


def test_unreadable_irmas_txt_is_reported_not_silently_unlabelled(tmp_path):
    """A .txt that is a folder or a FIFO is reported (a FIFO used to block the build forever); a missing one is not."""
    from memstore.audio import write_wav
    from memstore.build import build_store

    root = tmp_path / "Testing"
    root.mkdir()
    tone = np.sin(np.arange(8000) / 5.0).astype(np.float32) * 0.3
    for name in ("good", "folder", "fifo", "missing"):
        write_wav(root / f"{name}.wav", tone, 8000)
    (root / "good.txt").write_text("pia\n")
    (root / "folder.txt").mkdir()
    os.mkfifo(root / "fifo.txt")
    files = ["fifo.wav", "folder.wav", "good.wav", "missing.wav"]
    problems = []
    classes, m = assign_labels(root, files, "irmas", problems=problems)
    assert classes == ["pia"] and m[:, 0].tolist() == [0, 0, 1, 0]
    assert [p for p, _ in problems] == ["fifo.wav", "folder.wav"]
    assert all(why.startswith(p.replace(".wav", ".txt")) for p, why in problems)
    assert "not a regular file" in problems[0][1]

    with pytest.raises(BuildError, match=r"2 label file\(s\) could not be read"):
        build_store(root, tmp_path / "strict.h5", labels="irmas", strict=True, workers=1, progress=False)
    assert not (tmp_path / "strict.h5").exists() and not list(tmp_path.glob("strict.h5*"))
    report = build_store(root, tmp_path / "s.h5", labels="irmas", workers=1, progress=False)
    assert report.stored == 4
    unreadable = [n for n in report.notes if "label file unreadable" in n]
    assert len(unreadable) == 2 and unreadable[0].startswith("fifo.wav: label file unreadable (fifo.txt:")
