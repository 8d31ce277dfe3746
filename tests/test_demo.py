"""Demo data: deterministic, IRMAS-named, the promised WAV format, classes that a linear model separates."""

from __future__ import annotations

import re

import numpy as np
import pytest

from memstore.audio import audio_info, read_audio
from memstore.demo import DEMO_CLASSES, GENRES, make_demo_folder, make_demo_testing
from memstore.errors import ParameterError

NAME = re.compile(r"^(\d{3})__\[([a-z]{3})\]\[(nod|dru)\]\[(" + "|".join(GENRES) + r")\](\d{4,})__(\d+)\.wav$")


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_demo_folder(tmp_path / "a", n_per_class=2, seed=3, duration=0.5)
    b = make_demo_folder(tmp_path / "b", n_per_class=2, seed=3, duration=0.5)
    c = make_demo_folder(tmp_path / "c", n_per_class=2, seed=4, duration=0.5)
    assert _files(a) == _files(b) and len(_files(a)) == 2 * len(DEMO_CLASSES)
    for rel in _files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    other = {(c / rel).read_bytes() for rel in _files(c)}
    assert not other & {(a / rel).read_bytes() for rel in _files(a)}


def test_a_file_does_not_depend_on_which_other_classes_are_made(tmp_path):
    full = make_demo_folder(tmp_path / "full", n_per_class=2, seed=1, duration=0.4)
    part = make_demo_folder(tmp_path / "part", n_per_class=2, seed=1, duration=0.4, classes=["pia"])
    assert _files(part) == [f for f in _files(full) if f.startswith("pia/")]
    for rel in _files(part):
        assert (part / rel).read_bytes() == (full / rel).read_bytes()


def test_names_and_wav_format(tmp_path):
    root = make_demo_folder(tmp_path, n_per_class=2, seed=7)
    assert root == tmp_path / "Training"
    assert sorted(p.name for p in root.iterdir()) == sorted(DEMO_CLASSES)
    for rel in _files(root):
        cls, name = rel.split("/")
        m = NAME.match(name)
        assert m, name
        assert m.group(2) == cls and m.group(5) == "0007"
        info = audio_info(root / rel)
        assert info == (132300, 44100, 2, "pcm16")  # 3 s, 44.1 kHz, stereo, 16-bit
        assert (root / rel).stat().st_size == 44 + 132300 * 4  # canonical 44-byte header
        x, rate = read_audio(root / rel, mono=False)
        assert rate == 44100 and x.shape == (132300, 2)
        assert 0.2 < np.abs(x).max() <= 1.0  # audible, never clipped hard
        assert not np.array_equal(x[:, 0], x[:, 1])  # really stereo
    prefixes = [NAME.match(name).group(1) for name in _files(root / "pia")]
    assert len(set(prefixes)) == len(prefixes)


def test_files_of_a_class_differ(tmp_path):
    root = make_demo_folder(tmp_path, n_per_class=4, seed=2, duration=1.0, classes=["vio", "gac"])
    for cls in ("vio", "gac"):
        signals = [read_audio(p)[0] for p in sorted((root / cls).iterdir())]
        for i in range(len(signals)):
            for j in range(i):
                r = np.corrcoef(signals[i], signals[j])[0, 1]
                assert abs(r) < 0.9, (cls, i, j, r)


def _mean_log_mel(root):
    from memstore.features import MelSpectrogram

    mel = MelSpectrogram()
    xs, ys = [], []
    for p in sorted(root.rglob("*.wav")):
        x, rate = read_audio(p)
        xs.append(np.log10(1 + 10000 * mel(x, rate)).mean(axis=0))
        ys.append(sorted(DEMO_CLASSES).index(p.parent.name))
    return np.array(xs, np.float64), np.array(ys)


def _softmax_regression(x, y, n_classes, steps=500, lr=0.5, l2=1e-2):
    w = np.zeros((x.shape[1], n_classes))
    b = np.zeros(n_classes)
    onehot = np.eye(n_classes)[y]
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
    return w, b


def test_classes_are_separable_by_a_mean_mel_frame(tmp_path):
    """Train a logistic regression on one seed's files, test on another's: far above chance (1/6)."""
    x_train, y_train = _mean_log_mel(make_demo_folder(tmp_path / "train", n_per_class=8, seed=0, duration=1.5))
    x_test, y_test = _mean_log_mel(make_demo_folder(tmp_path / "test", n_per_class=6, seed=1, duration=1.5))
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-9
    w, b = _softmax_regression((x_train - mu) / sd, y_train, len(DEMO_CLASSES))
    accuracy = np.mean(np.argmax(((x_test - mu) / sd) @ w + b, axis=1) == y_test)
    assert accuracy >= 0.6, accuracy


def test_testing_excerpts_have_label_files(tmp_path):
    root = make_demo_testing(tmp_path, n_files=3, seed=5, duration=1.0)
    assert root == tmp_path / "Testing"
    wavs = sorted(root.glob("*.wav"))
    assert len(wavs) == 3
    for wav in wavs:
        lines = wav.with_suffix(".txt").read_text().splitlines()
        assert 1 <= len(lines) <= 3 and all(line.endswith("\t") for line in lines)
        codes = [line.strip() for line in lines]
        assert set(codes) <= set(DEMO_CLASSES) and len(set(codes)) == len(codes)
        assert audio_info(wav) == (44100, 44100, 2, "pcm16")
    again = make_demo_testing(tmp_path / "again", n_files=3, seed=5, duration=1.0)
    assert [p.read_bytes() for p in sorted(again.iterdir())] == [p.read_bytes() for p in sorted(root.iterdir())]


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_per_class=0), "n_per_class=0 must be a positive integer"),
    (dict(seed=-1), "seed=-1 must be a non-negative integer"),
    (dict(seed=1.5), "seed=1.5 must be an integer"),
    (dict(duration=0), "duration=0 must be a positive"),
    (dict(sample_rate=100), "sample_rate=100 must be at least 8000"),
    (dict(classes=["sax"]), r"classes=\['sax'\] must be demo classes"),
])
def test_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        make_demo_folder(tmp_path, **kwargs)
    assert not (tmp_path / "Training").exists()
