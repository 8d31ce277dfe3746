"""Labels from a metadata table (AudioFolder convention, ESC-50 style): reading, matching, builds, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import memstore as ms
from memstore import cli
from memstore.audio import write_wav
from memstore.build import build_store
from memstore.errors import BuildError, ParameterError
from memstore.labeltable import LabelTable
from memstore.store import open_store, read_metadata


def _wav(path, seed=0, n=4000):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, np.random.default_rng(seed).uniform(-0.5, 0.5, n), 8000)


def _audiofolder(root):
    """root/metadata.csv beside root/a.wav, root/sub/b.wav, root/c.wav."""
    for i, name in enumerate(("a.wav", "sub/b.wav", "c.wav")):
        _wav(root / name, seed=i)


def _labels_of(store_path):
    with open_store(store_path) as store:
        return {p: sorted(store.classes[k] for k in np.flatnonzero(row))
                for p, row in zip(store.paths, store.labels, strict=True)}


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_audiofolder_table_labels_a_build(tmp_path, kind):
    root = tmp_path / "data"
    _audiofolder(root)
    if kind == "jsonl":
        rows = [{"file_name": "a.wav", "label": "dog"}, {"file_name": "sub/b.wav", "label": ["cat", "dog"]},
                {"file_name": "c.wav", "label": None}]
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        d = "," if kind == "csv" else "\t"
        (root / f"metadata.{kind}").write_text(f"file_name{d}label\na.wav{d}dog\nsub/b.wav{d}cat; dog\nc.wav{d}\n")
    report = build_store(root, tmp_path / "s.h5", labels=str(root / f"metadata.{kind}"), workers=1, progress=False)
    assert report.stored == 3 and report.skipped == []
    assert report.ignored == {f".{kind}": 1}
    assert _labels_of(tmp_path / "s.h5") == {"a.wav": ["dog"], "sub/b.wav": ["cat", "dog"], "c.wav": []}
    with open_store(tmp_path / "s.h5") as store:
        assert store.classes == ["cat", "dog"]
        assert store.report[-1]["ignored"] == {f".{kind}": 1}
    assert read_metadata(tmp_path / "s.h5")["label_mode"] == "table"


def test_file_without_row_is_skipped_and_missing_row_reported(tmp_path):
    root = tmp_path / "data"
    _audiofolder(root)
    (root / "metadata.csv").write_text("file_name,label\na.wav,dog\nsub/b.wav,cat\ngone.wav,cat\n")
    report = build_store(root, tmp_path / "s.h5", labels=root / "metadata.csv", workers=1, progress=False)
    assert report.stored == 2
    assert report.skipped == [("c.wav", "no row in metadata.csv"), ("gone.wav", "listed in metadata.csv but not found")]
    with pytest.raises(BuildError, match="strict build: 2 file"):
        build_store(root, tmp_path / "t.h5", labels=root / "metadata.csv", workers=1, progress=False, strict=True)
    assert not (tmp_path / "t.h5").exists()


def test_esc50_style_table_with_other_columns_and_folder(tmp_path):
    esc = tmp_path / "ESC-50"
    for i, name in enumerate(("1-100032-A-0.wav", "1-110389-A-0.wav", "1-100038-A-14.wav")):
        _wav(esc / "audio" / name, seed=i)
    (esc / "meta").mkdir()
    (esc / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
        "1-110389-A-0.wav,1,0,dog,True,110389,A\n"
        "1-100038-A-14.wav,1,14,chirping_birds,False,100038,A\n")
    table = ms.LabelTable(esc / "meta" / "esc50.csv", file_column="filename", label_column="category",
                          relative_to=esc / "audio")
    report = build_store(esc / "audio", tmp_path / "esc.h5", labels=table, workers=1, progress=False)
    assert report.stored == 3 and report.skipped == []
    assert _labels_of(tmp_path / "esc.h5")["1-100038-A-14.wav"] == ["chirping_birds"]
    # the same table without relative_to looks for meta/1-100032-A-0.wav: every row is missing
    plain = LabelTable(esc / "meta" / "esc50.csv", file_column="filename", label_column="category")
    with pytest.raises(BuildError, match=r"none of its 3 rows names a file found under .*relative to .*meta"):
        build_store(esc / "audio", tmp_path / "x.h5", labels=plain, workers=1, progress=False)


def test_sep_option(tmp_path):
    (tmp_path / "t.csv").write_text("file_name,label\na.wav,x|y\n")
    assert next(iter(LabelTable(tmp_path / "t.csv", sep="|").labels.values())) == ["x", "y"]
    assert next(iter(LabelTable(tmp_path / "t.csv", sep="").labels.values())) == ["x|y"]


def test_quoted_cells_blank_lines_and_repeated_other_columns_are_read(tmp_path):
    # only the file and label columns must be unique; a quoted cell may hold the delimiter; blank lines are
    # skipped, and so are empty cells past the header's (nothing is lost)
    (tmp_path / "t.csv").write_text('file_name,note,note,label\na.wav,n1,n2,x,,\n\nb.wav,"q,r",n,"y;z"\n')
    table = LabelTable(tmp_path / "t.csv")
    assert sorted(table.labels.values()) == [["x"], ["y", "z"]]


BAD_TABLES = {
    "no column": ("t.csv", "name,label\na.wav,x\n", r"no column 'file_name'; it has \['label', 'name'\]"),
    "twice": ("t.csv", "file_name,label\na.wav,x\n./a.wav,y\n", "line 3 names './a.wav' again"),
    "empty name": ("t.csv", "file_name,label\n,x\n", "line 2 has an empty 'file_name'"),
    "bad json": ("t.jsonl", '{"file_name": "a.wav", "label": "x"}\n{oops\n', "line 2 is not valid JSON"),
    "json label": ("t.jsonl", '{"file_name": "a.wav", "label": {"a": 1}}\n', "must be a string or an integer"),
    "json no col": ("t.jsonl", '{"file": "a.wav", "label": "x"}\n', r"line 1 has no 'file_name' \(it has \['file'"),
    "json no label on line 3": ("t.jsonl", '{"file_name": "a.wav", "label": "x"}\n\n{"file_name": "b.wav"}\n',
                                "line 3 has no 'label'"),
    "json array line": ("t.jsonl", '{"file_name": "a.wav", "label": "x"}\n["b.wav", "y"]\n',
                        "line 2 is a JSON array, not an object"),
    "json null line": ("t.jsonl", "null\n", "line 1 is a JSON null, not an object"),
    "json huge integer": ("t.jsonl", '{"file_name": "a.wav", "label": ' + "9" * 5000 + "}\n",
                          "line 1 is not valid JSON"),
    "json lone surrogate": ("t.jsonl", '{"file_name": "a.wav", "label": "x\\ud800"}\n',
                            "line 1: label 'x\\\\ud800' is not valid Unicode text"),
    "repeated file column": ("t.csv", "file_name,file_name,label\na.wav,b.wav,x\n",
                             r"the column 'file_name' appears 2 times \(columns 1, 2\)"),
    "repeated label column": ("t.tsv", "label\tfile_name\tlabel\nx\ta.wav\ty\n",
                              r"the column 'label' appears 2 times \(columns 1, 3\)"),
    "extra cell": ("t.csv", "file_name,label\na.wav,cat,dog\n",
                   r"line 2 has 3 cell\(s\), the header 2; quote a cell that holds ',', and separate several labels "
                   "with ';'"),
    "missing cell": ("t.csv", "file_name,label\na.wav,x\nb.wav\n", r"line 3 has 1 cell\(s\), the header 2"),
    "extra cell after an empty one": ("t.csv", "file_name,label\na.wav,x,,y\n",
                                      r"line 2 has 4 cell\(s\), the header 2"),
    "quote left open": ("t.tsv", 'file_name\tlabel\na.wav\t"x\nb.wav\ty\n',
                        r"not a readable table at line 3 \(unexpected end of data\) \(a quote left open\?\)"),
    "label over two lines": ("t.csv", 'file_name,label\na.wav,"x\nb.wav,y"\nc.wav,z\n',
                             r"line 3: label 'x\\nb.wav,y' holds a line break \(a quote left open\?\)"),
    "not utf8": ("t.csv", b"file_name,label\n\xff\xfe\xfa,x\n", "not a readable table"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_tables_raise_naming_table_and_line(tmp_path, case):
    name, text, match = BAD_TABLES[case]
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BuildError, match=match) as exc:
        LabelTable(path)
    assert str(path) in str(exc.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(ParameterError, match=r"must end in one of \('.csv', '.tsv', '.jsonl'\)"):
        LabelTable(tmp_path / "t.txt")
    with pytest.raises(ParameterError, match="file_column='' must be a non-empty column name"):
        LabelTable(tmp_path / "t.csv", file_column="")
    with pytest.raises(BuildError, match="cannot open"):
        LabelTable(tmp_path / "missing.csv")
    with pytest.raises(ParameterError, match="or the path of a .csv/.tsv/.jsonl table"):
        build_store(tmp_path, tmp_path / "s.h5", labels="labels.txt")


def test_cli_labels_path_and_columns(tmp_path, capsys):
    esc = tmp_path / "esc"
    _wav(esc / "audio" / "x.wav", seed=1)
    _wav(esc / "audio" / "y.wav", seed=2)
    (esc / "meta").mkdir()
    (esc / "meta" / "t.csv").write_text("filename,category\nx.wav,dog\ny.wav,rain\n")
    code = cli.main(["build", str(esc / "audio"), str(tmp_path / "s.h5"), "--workers", "1", "--quiet",
                     "--labels", str(esc / "meta" / "t.csv"), "--file-column", "filename",
                     "--label-column", "category", "--relative-to", str(esc / "audio")])
    assert code == 0
    assert _labels_of(tmp_path / "s.h5") == {"x.wav": ["dog"], "y.wav": ["rain"]}
    code = cli.main(["build", str(esc / "audio"), str(tmp_path / "t.h5"), "--file-column", "filename"])
    assert code != 0
    assert "need --labels PATH" in capsys.readouterr().err


def test_a_changed_table_does_not_resume_with_stale_labels(tmp_path, monkeypatch):
    """An interrupted build leaves its .partial (labels included); a corrected table is a new plan."""
    from memstore import writer

    root = tmp_path / "data"
    _audiofolder(root)
    table = root / "metadata.csv"
    table.write_text("file_name,label\na.wav,dog\nsub/b.wav,cat\nc.wav,cat\n")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # an interruption after every file was extracted

    monkeypatch.setattr(writer, "_finalize", stop)
    with pytest.raises(KeyboardInterrupt):
        build_store(root, tmp_path / "s.h5", labels=table, workers=1, progress=False)
    assert (tmp_path / "s.h5.partial").exists()
    monkeypatch.undo()
    table.write_text("file_name,label\na.wav,cat\nsub/b.wav,dog\nc.wav,cat\n")  # same classes, fixed rows
    report = build_store(root, tmp_path / "s.h5", labels=table, workers=1, progress=False)
    assert report.resumed == 0
    assert _labels_of(tmp_path / "s.h5") == {"a.wav": ["cat"], "sub/b.wav": ["dog"], "c.wav": ["cat"]}


def test_a_bare_table_name_is_looked_up_in_the_audio_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _audiofolder(root)
    (root / "metadata.csv").write_text("file_name,label\na.wav,dog\nsub/b.wav,cat\nc.wav,cat\n")
    monkeypatch.chdir(tmp_path)  # no metadata.csv here
    report = build_store(root, tmp_path / "s.h5", labels="metadata.csv", workers=1, progress=False)
    assert report.stored == 3
    assert cli.main(["build", str(root), str(tmp_path / "t.h5"), "--workers", "1", "--quiet",
                     "--labels", "metadata.csv"]) == 0
    assert _labels_of(tmp_path / "t.h5") == _labels_of(tmp_path / "s.h5") == {
        "a.wav": ["dog"], "sub/b.wav": ["cat"], "c.wav": ["cat"]}
    # a table outside the root is found relative to the working directory
    (tmp_path / "other.csv").write_text("file_name,label\ndata/a.wav,x\ndata/sub/b.wav,x\ndata/c.wav,y\n")
    build_store(root, tmp_path / "u.h5", labels="other.csv", workers=1, progress=False)
    assert _labels_of(tmp_path / "u.h5")["c.wav"] == ["y"]
