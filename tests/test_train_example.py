"""tools/train_example.py learns the demo classes: labels and blocks line up."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import memstore as ms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_example  # noqa: E402

from memstore.build import build_store  # noqa: E402
from memstore.demo import make_demo_folder  # noqa: E402


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    build_store(make_demo_folder(d, n_per_class=8, seed=2), d / "t.h5", workers=2, progress=False)
    return d / "t.h5"


def test_numpy_classifier_is_well_above_chance(train_store, capsys):
    history = train_example.run(train_store, epochs=20, memory_limit="2MB", batch_size=8)
    assert "out of core" in capsys.readouterr().out
    assert history[-1] >= 0.5  # chance is 1/6


def test_torch_cnn_runs_and_learns(train_store):
    pytest.importorskip("torch")
    history = train_example.run(train_store, epochs=4, model="torch", batch_size=8, memory_limit=None)
    assert max(history) > 1 / 6 + 0.15


@pytest.fixture(scope="module")
def test_folder(tmp_path_factory):
    """IRMAS-style testing excerpts: mixes of two demo classes' phrases with a .txt of both labels,
    one single-class excerpt, one with a class outside the training list and one without a .txt."""
    from memstore.audio import read_audio, write_wav

    d = tmp_path_factory.mktemp("testing")
    src = make_demo_folder(d / "src", n_per_class=2, seed=7)
    phrases = {c: [read_audio(p, mono=True)[0] for p in sorted((src / c).glob("*.wav"))]
               for c in ("cel", "flu", "gac", "pia", "tru", "vio")}
    out = d / "Testing"
    out.mkdir()
    pairs = [("cel", "flu"), ("gac", "tru"), ("pia", "vio"), ("cel", "tru"), ("flu", "pia"), ("gac", "vio")]
    for i, (a, b) in enumerate(pairs):
        for k in range(2):
            stem = f"mix-{i}-{k}"
            write_wav(out / f"{stem}.wav", (phrases[a][k] + phrases[b][k]) / 2, 44100)
            (out / f"{stem}.txt").write_text(f"{a}\t\n{b}\t\n")
    write_wav(out / "solo.wav", phrases["vio"][0], 44100)
    (out / "solo.txt").write_text("vio\n")
    write_wav(out / "sax.wav", phrases["gac"][1], 44100)
    (out / "sax.txt").write_text("gac\nsax\n")  # sax: not a training class
    write_wav(out / "nolabel.wav", phrases["pia"][1], 44100)
    return out


@pytest.mark.parametrize("aggregate", ["mean", "max", "vote"])
def test_testing_protocol_end_to_end(train_store, test_folder, tmp_path, capsys, aggregate):
    test_store = tmp_path / "test.h5"
    result = train_example.run_test(train_store, test_folder, test_store=test_store, aggregate=aggregate,
                                    epochs=20, memory_limit="2MB", batch_size=8, workers=1)
    out = capsys.readouterr().out
    assert result["skipped"] == [("sax.wav", "label(s) sax not in classes=")]
    with ms.open_store(train_store) as train, ms.open_store(test_store) as test:
        assert test.classes == train.classes and len(test) == 14
        assert test.labels[test.paths.index("mix-0-0.wav")].tolist() == [1, 1, 0, 0, 0, 0]  # cel, flu
    t, v = result["test"], result["valid"]
    assert t["files"] == 13 and t["unlabelled"] == 1  # nolabel.wav is stored, but not scored
    assert v["files"] == 12  # a quarter of 48 training files, every one pooled
    assert 0 < result["threshold"] <= 1
    for m in (t, v):
        for key in ("precision_at_1", "micro_f1", "macro_f1"):
            assert 0 <= m[key] <= 1
        assert m["per_class"].shape == (6,)
    assert t["support"].tolist() == [4, 4, 4, 4, 4, 5]
    # chance: a random top class is one of a file's ~2 labels with p ~ 2/6
    assert t["precision_at_1"] >= 0.6
    assert v["micro_f1"] >= 0.5 and t["micro_f1"] > 0.3
    assert "precision@1" in out and "macro F1" in out and f"pooled per file by {aggregate}" in out


def test_testing_protocol_reuses_a_matching_test_store_and_rebuilds_another(train_store, test_folder, tmp_path,
                                                                           capsys):
    kw = dict(epochs=2, memory_limit=None, batch_size=8, workers=1)
    test_store = tmp_path / "test.h5"
    build_store(test_folder, test_store, labels="irmas", workers=1, progress=False)  # its own classes
    first = train_example.run_test(train_store, test_folder, test_store=test_store, **kw)
    assert "building it again" in capsys.readouterr().out and first["skipped"]
    again = train_example.run_test(train_store, test_folder, test_store=test_store, **kw)
    assert "reusing the test store" in capsys.readouterr().out and again["skipped"] == []
    assert again["test"]["micro_f1"] == pytest.approx(first["test"]["micro_f1"])
    assert again["threshold"] == pytest.approx(first["threshold"])


def test_threshold_and_metrics_by_hand():
    scores = np.array([[0.9, 0.2, 0.1], [0.4, 0.7, 0.1], [0.3, 0.3, 0.6]])
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], np.uint8)
    f1 = train_example.f1_scores(scores, labels, 0.5)
    # predicted: (0,0) (1,1) (2,2): tp 2, fp 1, fn 1 -> micro 4/6; class F1: 2/3, 1, 0
    assert f1["micro_f1"] == pytest.approx(4 / 6)
    assert f1["per_class"].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert f1["macro_f1"] == pytest.approx(5 / 9)
    assert train_example.precision_at_1(scores[:2], labels[:2]) == 1.0
    t = train_example.choose_threshold(scores[:2], labels[:2])
    assert t == pytest.approx(0.4)  # every true label predicted and nothing else: micro F1 1
    assert train_example.f1_scores(scores[:2], labels[:2], t)["micro_f1"] == 1.0
