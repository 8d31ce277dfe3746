"""build_store(..., classes=[...]): a fixed class list, in every label mode, with append, resume and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from memstore import cli
from memstore.audio import write_wav
from memstore.build import build_store
from memstore.errors import BuildError, ParameterError
from memstore.labels import check_classes, fix_classes
from memstore.labeltable import LabelTable
from memstore.store import open_store


def _wav(path, seed, n=4000):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, np.random.default_rng(seed).uniform(-0.5, 0.5, n), 8000, sample_format="pcm16")


@pytest.fixture
def folder(tmp_path):
    """root/<cls>/x.wav for classes b, a, c (c is outside the list the tests fix)."""
    root = tmp_path / "audio"
    for i, p in enumerate(["b/1.wav", "b/2.wav", "a/1.wav", "c/1.wav"]):
        _wav(root / p, i)
    return root


def _labels(path):
    with open_store(path) as s:
        return s.classes, {p: [s.classes[j] for j in np.flatnonzero(row)] for p, row in zip(s.paths, s.labels,
                                                                                               strict=True)}


def test_fixed_list_sets_order_and_columns_even_for_a_class_with_no_file(folder, tmp_path):
    report = build_store(folder, tmp_path / "s.h5", workers=1, progress=False, classes=["z", "b", "a", "c"])
    assert report.stored == 4 and report.skipped == []
    classes, labels = _labels(tmp_path / "s.h5")
    assert classes == ["z", "b", "a", "c"]
    assert labels == {"a/1.wav": ["a"], "b/1.wav": ["b"], "b/2.wav": ["b"], "c/1.wav": ["c"]}
    with open_store(tmp_path / "s.h5") as s:
        assert s.labels[:, 0].sum() == 0  # "z": a column of zeros
        assert s.index["label"][s.paths.index("a/1.wav")] == 2


def test_a_file_outside_the_list_is_a_listed_skip_and_strict_stops(folder, tmp_path):
    report = build_store(folder, tmp_path / "s.h5", workers=1, progress=False, classes=["b", "a"])
    assert report.stored == 3
    assert report.skipped == [("c/1.wav", "label(s) c not in classes=")]
    assert _labels(tmp_path / "s.h5")[0] == ["b", "a"]
    with open_store(tmp_path / "s.h5") as s:
        assert s.report[-1]["skipped"] == [["c/1.wav", "label(s) c not in classes="]]
    with pytest.raises(BuildError, match=r"(?s)strict build: 1 file\(s\) would be skipped.*c/1\.wav: label\(s\) c"):
        build_store(folder, tmp_path / "t.h5", workers=1, progress=False, classes=["b", "a"], strict=True)
    assert not (tmp_path / "t.h5").exists() and not (tmp_path / "t.h5.partial").exists()


def test_no_file_inside_the_list_is_a_clear_error(folder, tmp_path):
    with pytest.raises(BuildError, match="(?s)no readable audio files.*not in classes="):
        build_store(folder, tmp_path / "s.h5", workers=1, progress=False, classes=["x"])


@pytest.mark.parametrize("bad, rule", [
    ([], "must name at least one class"),
    ("abc", "must be a list of class names"),
    (["a", "a"], "'a' is listed twice"),
    (["a", ""], "'' must be a non-empty string"),
    (["a", 3], "3 must be a non-empty string"),
    ({"a": 1}, "must be a list of class names"),
])
def test_a_bad_list_is_a_parameter_error(folder, tmp_path, bad, rule):
    with pytest.raises(ParameterError, match=rule):
        build_store(folder, tmp_path / "s.h5", workers=1, progress=False, classes=bad)
    assert not (tmp_path / "s.h5").exists()


def test_labels_none_with_classes_is_a_parameter_error(folder, tmp_path):
    with pytest.raises(ParameterError, match="classes= needs labels"):
        build_store(folder, tmp_path / "s.h5", workers=1, progress=False, labels="none", classes=["a"])


def test_check_and_fix_classes():
    assert check_classes(np.array(["vio", "cel"])) == ["vio", "cel"]
    m, out = fix_classes(["a", "b", "c"], np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], np.uint8), ["c", "a"])
    assert m.tolist() == [[0, 1], [1, 0], [0, 0]] and out == [["b"], [], []]


def test_irmas_txt_labels_multi_label_and_outside(tmp_path):
    root = tmp_path / "Testing"
    for i, (stem, tags) in enumerate([("t1", "cel\t\nvio\t\n"), ("t2", "pia\n"), ("t3", "vio\nsax\n")]):
        _wav(root / f"{stem}.wav", i)
        (root / f"{stem}.txt").write_text(tags)
    _wav(root / "t4.wav", 9)  # no .txt: stored without a label, as without classes=
    report = build_store(root, tmp_path / "s.h5", labels="irmas", workers=1, progress=False,
                         classes=["vio", "pia", "cel", "flu"])
    assert report.skipped == [("t3.wav", "label(s) sax not in classes=")]
    classes, labels = _labels(tmp_path / "s.h5")
    assert classes == ["vio", "pia", "cel", "flu"]
    assert labels == {"t1.wav": ["vio", "cel"], "t2.wav": ["pia"], "t4.wav": []}


def test_table_and_callable_modes(folder, tmp_path):
    (tmp_path / "meta.csv").write_text("file_name,label\nb/1.wav,dog\nb/2.wav,cat;dog\na/1.wav,cat\n"
                                       "c/1.wav,bird\n")
    table = LabelTable(tmp_path / "meta.csv", relative_to=folder)
    report = build_store(folder, tmp_path / "t.h5", labels=table, workers=1, progress=False,
                         classes=["dog", "cat"])
    assert report.skipped == [("c/1.wav", "label(s) bird not in classes=")]
    assert _labels(tmp_path / "t.h5") == (["dog", "cat"], {"a/1.wav": ["cat"], "b/1.wav": ["dog"],
                                                           "b/2.wav": ["dog", "cat"]})
    report = build_store(folder, tmp_path / "c.h5", labels=lambda p: p[0].upper(), workers=1, progress=False,
                         classes=["C", "B", "A"])
    assert report.skipped == []
    assert _labels(tmp_path / "c.h5")[0] == ["C", "B", "A"]


def test_append_keeps_the_fixed_list_and_refuses_another(folder, tmp_path):
    first = tmp_path / "first"
    _wav(first / "b" / "0.wav", 7)
    store = tmp_path / "s.h5"
    build_store(first, store, workers=1, progress=False, classes=["c", "b", "a"])
    with pytest.raises(BuildError, match=r"classes=\['a', 'b', 'c'\] differs from the store's \['c', 'b', 'a'\]"):
        build_store(folder, store, workers=1, progress=False, mode="append", classes=["a", "b", "c"])
    report = build_store(folder, store, workers=1, progress=False, mode="append", classes=["c", "b", "a"])
    assert report.stored == 4
    classes, labels = _labels(store)
    assert classes == ["c", "b", "a"]
    assert labels["b/0.wav"] == ["b"] and labels["a/1.wav"] == ["a"] and labels["c/1.wav"] == ["c"]
    # an append without classes= whose labels are all in the store keeps the store's order
    _wav(tmp_path / "more" / "a" / "9.wav", 11)
    build_store(tmp_path / "more", store, workers=1, progress=False, mode="append")
    classes, labels = _labels(store)
    assert classes == ["c", "b", "a"] and labels["a/9.wav"] == ["a"] and labels["b/0.wav"] == ["b"]


def test_append_with_classes_skips_files_outside(folder, tmp_path):
    first = tmp_path / "first"
    _wav(first / "a" / "0.wav", 7)
    store = tmp_path / "s.h5"
    build_store(first, store, workers=1, progress=False, classes=["b", "a"])
    report = build_store(folder, store, workers=1, progress=False, mode="append", classes=["b", "a"])
    assert report.stored == 3 and report.skipped == [("c/1.wav", "label(s) c not in classes=")]
    assert _labels(store)[0] == ["b", "a"]


def test_an_interrupted_build_without_classes_is_not_resumed_with_them(folder, tmp_path, monkeypatch):
    """The same files and the same final list, but another request: a new plan, not a resume."""
    from memstore import writer

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_finalize", stop)
    with pytest.raises(KeyboardInterrupt):
        build_store(folder, tmp_path / "s.h5", workers=1, progress=False)
    monkeypatch.undo()
    report = build_store(folder, tmp_path / "s.h5", workers=1, progress=False, classes=["a", "b", "c"])
    assert report.resumed == 0 and report.stored == 4
    monkeypatch.setattr(writer, "_finalize", stop)
    with pytest.raises(KeyboardInterrupt):
        build_store(folder, tmp_path / "t.h5", workers=1, progress=False, classes=["c", "b", "a"])
    monkeypatch.undo()
    report = build_store(folder, tmp_path / "t.h5", workers=1, progress=False, classes=["c", "b", "a"])
    assert report.resumed == 4  # the same request resumes


def test_cli_classes_from_a_store_and_from_a_list(folder, tmp_path, capsys):
    build_store(folder, tmp_path / "train.h5", workers=1, progress=False, classes=["c", "a", "b", "z"])
    assert cli.main(["build", str(folder), str(tmp_path / "test.h5"), "--workers", "1", "--quiet",
                     "--classes-from", str(tmp_path / "train.h5")]) == 0
    assert _labels(tmp_path / "test.h5")[0] == ["c", "a", "b", "z"]
    assert cli.main(["build", str(folder), str(tmp_path / "l.h5"), "--workers", "1", "--quiet",
                     "--classes", "b,a"]) == 0
    assert "skipped c/1.wav: label(s) c not in classes=" in capsys.readouterr().err
    assert _labels(tmp_path / "l.h5")[0] == ["b", "a"]
    with pytest.raises(SystemExit):
        cli.main(["build", str(folder), str(tmp_path / "x.h5"), "--classes", "a", "--classes-from",
                  str(tmp_path / "train.h5")])
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli.main(["build", str(folder), str(tmp_path / "x.h5"), "--classes", "a,,b"]) != 0
    assert "'' must be a non-empty string" in capsys.readouterr().err
    assert cli.main(["build", str(folder), str(tmp_path / "x.h5"), "--classes-from", str(tmp_path / "no.h5")]) != 0
    assert "no.h5" in capsys.readouterr().err


def test_a_store_with_a_fixed_order_verifies(folder, tmp_path):
    from memstore.verify import verify_store

    build_store(folder, tmp_path / "s.h5", workers=1, progress=False, classes=["c", "b", "a", "z"])
    report = verify_store(tmp_path / "s.h5")
    assert report.ok, report.problems
