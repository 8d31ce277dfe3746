"""``memstore info`` on built and imported stores, as text and as JSON."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from memstore import cli
from memstore.audio import write_wav
from memstore.build import build_store


@pytest.fixture(scope="module")
def skipped_store(tmp_path_factory):
    """3 labelled files (2 classes), 1 unlabelled, 12 broken files: more skips than info shows by default."""
    root = tmp_path_factory.mktemp("audio")
    for rel, seconds in (("a/1.wav", 1.0), ("a/2.wav", 2.0), ("b/3.wav", 0.5), ("top.wav", 0.5)):
        (root / rel).parent.mkdir(exist_ok=True)
        write_wav(root / rel, np.zeros(int(8000 * seconds)), 8000)
    (root / "bad").mkdir()
    for k in range(12):
        (root / "bad" / f"broken{k:02d}.wav").write_bytes(b"RIFF nonsense")
    path = tmp_path_factory.mktemp("store") / "s.h5"
    report = build_store(root, path, workers=1, progress=False)
    assert len(report.skipped) == 12
    return path


def test_text_summary(skipped_store, capsys):
    assert cli.main(["info", str(skipped_store)]) == 0
    out = capsys.readouterr().out
    assert "4 files" in out and "4.0 s of audio" in out and "MB on disk" in out
    assert "classes (2): a (2), b (1); 1 unlabelled" in out
    assert "n_mels=96" in out and "float32" in out and "statistics over" in out
    assert "skipped at build: 12" in out and "bad/broken00.wav" in out
    assert "bad/broken11.wav" not in out and "2 more (--all-skipped)" in out
    assert cli.main(["info", str(skipped_store), "--all-skipped"]) == 0
    assert "bad/broken11.wav" in capsys.readouterr().out


def test_json_summary(skipped_store, capsys):
    assert cli.main(["info", str(skipped_store), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["files"] == 4 and d["classes"] == {"a": 2, "b": 1} and d["unlabelled"] == 1
    assert d["hours"] == pytest.approx(4.0 / 3600)
    assert d["dtype"] == "float32" and d["n_bins"] == 96 and d["config"]["hop"] == 512
    assert d["bytes_on_disk"] == skipped_store.stat().st_size
    assert len(d["skipped"]) == 12 and all(len(s) == 2 and s[1] for s in d["skipped"])
    assert d["stats"]["count"] == d["frames"] and d["stats"]["std_range"][0] >= 0


def test_imported_store_estimates_hours_from_frames(tmp_path, capsys):
    from memstore.legacy import import_legacy

    src = tmp_path / "f"
    src.mkdir()
    x = np.ones((862, 96))  # 862 frames x 512 / 44100 Hz = 10.0 s
    x.tofile(src / "a_mel_.data")
    (src / "a_mel_.shape").write_text("#862\t96\n")
    import_legacy(src, tmp_path / "s.h5")
    assert cli.main(["info", str(tmp_path / "s.h5"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["hours"] * 3600 == pytest.approx(862 * 512 / 44100) and d["classes"] == {}


def test_bad_store_is_an_error(tmp_path, capsys):
    (tmp_path / "x.h5").write_bytes(b"nope")
    assert cli.main(["info", str(tmp_path / "x.h5")]) == 1
    assert "memstore info: error:" in capsys.readouterr().err


def test_damaged_statistics_are_shown_as_damaged(demo_store, tmp_path, capsys):
    store = tmp_path / "s.h5"
    shutil.copy(demo_store, store)
    with h5py.File(store, "r+") as f:
        for key, value in (("count", b"many"), ("std", np.ones(3))):
            del f["stats"][key]
            f["stats"].create_dataset(key, data=value)
    assert cli.main(["info", str(store), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)["stats"]
    assert st["count"] is None and st["std_range"] is None and st["mean_range"][0] <= st["mean_range"][1]
    assert st["damaged"] == {"count": "holds |S4 values, not numbers", "std": "has shape (3,), not (96,)"}
    assert cli.main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "statistics: mean in [" in out and "std in" not in out
    assert "damaged statistics (memstore verify checks the whole store): count holds |S4 values" in out
    assert cli.main(["info", str(demo_store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["damaged"] == {}
