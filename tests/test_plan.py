"""make_plan: files, headers, rate, offsets, labels and fingerprint from headers only, checked independently."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import wavs

from memstore.audio import audio_info, resampled_length, write_wav
from memstore.build import build_store
from memstore.errors import BuildError
from memstore.features import MelSpectrogram
from memstore.plan import BuildPlan, make_plan, read_base

MEL = MelSpectrogram(n_mels=16, n_fft=256, hop=128)


@pytest.fixture
def root(tmp_path):
    """Three classes at two rates (8 kHz the most common), one unreadable file, one text file."""
    rng = np.random.default_rng(0)
    specs = [("a", "x1.wav", 8000, 9000, 1), ("a", "x2.wav", 16000, 4000, 2), ("b", "y1.wav", 8000, 300, 1),
             ("c", "z1.wav", 8000, 12345, 3)]
    for cls, name, rate, n, ch in specs:
        (tmp_path / "audio" / cls).mkdir(parents=True, exist_ok=True)
        write_wav(tmp_path / "audio" / cls / name, rng.uniform(-0.5, 0.5, (n, ch)), rate)
    wavs.write(tmp_path / "audio" / "b" / "bad.wav", wavs.truncated_header())
    (tmp_path / "audio" / "notes.txt").write_text("not audio")
    return tmp_path / "audio"


def test_a_plan_from_headers_only(root):
    plan = make_plan(root, transform=MEL, labels="folder")
    assert plan.files == ["a/x1.wav", "a/x2.wav", "b/y1.wav", "c/z1.wav"]
    assert plan.headers == [audio_info(root / p) for p in plan.files]
    assert plan.rate == 8000 and plan.transform == dataclasses.replace(MEL, sample_rate=8000)
    assert [p for p, _ in plan.skipped] == ["b/bad.wav"] and plan.ignored == {".txt": 1}
    assert any("mixed sample rates {8000: 3, 16000: 1}" in n for n in plan.notes)
    n_frames = [plan.transform.n_frames(resampled_length(h.n_samples, h.sample_rate, 8000)) for h in plan.headers]
    assert plan.index["n_frames"].tolist() == n_frames
    assert plan.index["offset"].tolist() == [0, *np.cumsum(n_frames)[:-1].tolist()]
    assert plan.index["source_rate"].tolist() == [8000, 16000, 8000, 8000]
    assert plan.index["channels"].tolist() == [1, 2, 1, 3] and plan.index["sample_rate"].tolist() == [8000] * 4
    assert plan.classes == ["a", "b", "c"] and plan.index["label"].tolist() == [0, 0, 1, 2]
    assert plan.labels.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert plan.segments.tolist() == [(0, 4, 0, sum(n_frames))] and plan.segment == 0 and plan.n_old == 0
    assert plan.label_mode == "folder" and plan.copy_from() is None and plan.base_stats is None
    c = plan.contents()
    assert c.total == sum(n_frames) and c.n_bins == 16 and c.generation == 0 and c.paths == plan.files


def test_a_plan_is_frozen(root):
    plan = make_plan(root, transform=MEL, labels="folder")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rate = 16000
    with pytest.raises(ValueError, match="read-only"):
        plan.index["offset"][0] = 5
    with pytest.raises(ValueError, match="read-only"):
        plan.new["checksum"][0] = 5


def test_the_fingerprint_names_the_plan(root):
    first = make_plan(root, transform=MEL, labels="folder").fingerprint
    assert make_plan(root, transform=MEL, labels="folder").fingerprint == first
    assert make_plan(root, transform=MEL, labels="folder", dtype="float16").fingerprint != first
    assert make_plan(root, transform=MEL, labels="folder", classes=["a", "b", "c"]).fingerprint != first
    st = os.stat(root / "a" / "x1.wav")
    os.utime(root / "a" / "x1.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert make_plan(root, transform=MEL, labels="folder").fingerprint != first


def test_strict_stops_at_the_plan_and_fixed_classes_skip_first(root, tmp_path):
    with pytest.raises(BuildError, match="strict build: 1 file"):
        make_plan(root, transform=MEL, labels="folder", strict=True)
    plan = make_plan(root, transform=MEL, labels="folder", classes=["c", "a"])
    assert plan.files == ["a/x1.wav", "a/x2.wav", "c/z1.wav"] and plan.classes == ["c", "a"]
    assert ("b/y1.wav", "label(s) b not in classes=") in plan.skipped
    assert plan.index["label"].tolist() == [1, 1, 0]
    (tmp_path / "nothing").mkdir()
    wavs.write(tmp_path / "nothing" / "bad.wav", wavs.truncated_header())
    with pytest.raises(BuildError, match="no readable audio files"):
        make_plan(tmp_path / "nothing", transform=MEL, labels="folder")


def test_an_append_plan_keeps_the_old_files_first_and_merges_the_classes(root, tmp_path):
    store = tmp_path / "s.h5"
    (tmp_path / "first" / "d").mkdir(parents=True)
    write_wav(tmp_path / "first" / "d" / "w.wav", np.zeros(5000), 8000)
    build_store(tmp_path / "first", store, transform=MEL, workers=1, progress=False)
    base = read_base(store, sample_rate=None, dtype="float32", classes=None)
    plan = make_plan(root, transform=MEL, labels="folder", base=base)
    assert isinstance(plan, BuildPlan) and plan.n_old == 1 and plan.segment == 1
    assert plan.paths == ["d/w.wav", *plan.files] and plan.classes == ["a", "b", "c", "d"]
    assert plan.index["label"].tolist() == [3, 0, 0, 1, 2]
    old_total = int(plan.index["n_frames"][0])
    assert plan.new["offset"][0] == old_total and plan.copy_from() == (store, base.data_offset, old_total)
    assert plan.segments.tolist()[1][:3] == (1, 4, old_total) and plan.contents().generation == 1
    assert plan.base_stats.count == old_total
    with pytest.raises(BuildError, match="dtype='float16' differs"):
        read_base(store, sample_rate=None, dtype="float16", classes=None)
    with pytest.raises(BuildError, match="does not exist"):
        read_base(tmp_path / "none.h5", sample_rate=None, dtype="float32", classes=None)
    again = make_plan(tmp_path / "first", transform=MEL, labels="folder", base=base)
    assert again.files == [] and again.skipped == [("d/w.wav", "already in store")]


@pytest.mark.parametrize("with_classes", [False, True])
def test_a_header_rate_past_the_limit_or_too_far_below_the_target_is_a_skip(root, with_classes):
    # found by the audio hunt: 2**31 Hz in one 444-byte header overflowed the index (OverflowError, nothing
    # built) or asked 320 GiB to resample ("memory ran out"); 1 Hz became 625,070 frames of a 16 kHz store
    fast = root / "c" / "fast.wav"
    write_wav(fast, np.zeros(100, np.float32), 8000)
    data = bytearray(fast.read_bytes())
    data[24:28] = (2**31).to_bytes(4, "little")  # the fmt chunk's sample rate
    fast.write_bytes(bytes(data))
    write_wav(root / "c" / "slow.wav", np.zeros(100, np.float32), 31)  # 8 kHz is 258 x 31 Hz
    write_wav(root / "c" / "ok.wav", np.zeros(100, np.float32), 32)  # 250 x 32 Hz: upsampled, kept
    classes = ["a", "b", "c"] if with_classes else None
    plan = make_plan(root, transform=MEL, labels="folder", classes=classes)
    why = dict(plan.skipped)
    assert why["c/fast.wav"] == "its header's sample rate, 2,147,483,648 Hz, is above the highest memstore " \
                                "takes (2,000,000 Hz)"
    assert why["c/slow.wav"] == "its rate, 31 Hz, is below 1/256 of the target 8,000 Hz: too far to resample"
    assert plan.files == ["a/x1.wav", "a/x2.wav", "b/y1.wav", "c/ok.wav", "c/z1.wav"] and plan.rate == 8000
    assert plan.labels.argmax(axis=1).tolist() == [0, 0, 1, 2, 2]  # the labels stay with their files
