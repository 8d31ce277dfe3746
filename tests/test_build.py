"""Building stores: round trip, skips, strict, resume after kill -9, append, determinism."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import wavs
from conftest import varied_folder

from memstore import cli
from memstore.audio import read_audio, write_wav
from memstore.build import build_store
from memstore.demo import make_demo_folder, make_demo_testing
from memstore.errors import BuildError, ParameterError, StoreFormatError
from memstore.features import MelSpectrogram
from memstore.store import open_store, read_metadata
from memstore.verify import verify_store


def same_store(a, b):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert np.array_equal(fa["features"][()], fb["features"][()])
        assert np.array_equal(fa["index"][()], fb["index"][()])
        assert np.array_equal(fa["paths"][()], fb["paths"][()])
        assert np.array_equal(fa["labels"][()], fb["labels"][()])


def test_round_trip_rows_equal_the_transform(demo_root, demo_store):
    with open_store(demo_store) as store:
        assert len(store) == 18 and store.classes == ["cel", "flu", "gac", "pia", "tru", "vio"]
        for i in range(len(store)):
            x, rate = read_audio(demo_root / store.paths[i])
            np.testing.assert_array_equal(store.frames(i), store.config(x, rate))
            assert store.classes[store.label_index[i]] == store.paths[i].split("/")[0]
        assert store.index["offset"][0] == 0
        assert store.features.shape == (store.index["n_frames"].sum(), 96)
        feats = np.asarray(store.features, np.float64)
        np.testing.assert_allclose(store.stats["mean"], feats.mean(0), rtol=1e-9)
        np.testing.assert_allclose(store.stats["cov"], np.cov(feats.T), rtol=1e-7, atol=1e-14)
        assert store.report[0]["stored"] == 18


def test_plain_h5py_reads_it(demo_store):
    with h5py.File(demo_store, "r") as f:
        assert set(f) >= {"features", "index", "paths", "labels", "segments", "stats", "report"}
        assert f["features"].chunks is None
        assert f.attrs["format"] == "memstore" and f.attrs["format_version"] == 1
        assert f["paths"][0].decode().startswith("cel/")


@pytest.mark.skipif(shutil.which("h5ls") is None, reason="h5ls (apt: hdf5-tools) is not installed")
def test_h5ls_lists_it(demo_store):
    out = subprocess.run(["h5ls", "-r", str(demo_store)], capture_output=True, text=True, check=True).stdout
    for name in ("/features", "/index", "/paths", "/labels", "/segments", "/stats/mean", "/report"):
        assert name in out


def test_one_and_two_workers_give_identical_stores(demo_root, demo_store, tmp_path):
    build_store(demo_root, tmp_path / "one.h5", workers=1, progress=False)
    same_store(demo_store, tmp_path / "one.h5")


def test_varied_formats_mixed_rates_and_bad_files_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "audio"
    varied_folder(root)
    write_wav(root / "c" / "other-rate.wav", np.zeros((5000, 2)), 16000)
    wavs.write(root / "c" / "nan.wav", wavs.float_with(np.nan))
    wavs.write(root / "a" / "trunc.wav", wavs.short_data())
    wavs.write(root / "a" / "adpcm.wav", wavs.adpcm())
    (root / "b" / "dir.wav").mkdir()
    (root / "b" / "readme.txt").write_text("not audio")
    report = build_store(root, tmp_path / "s.h5", workers=2, progress=False)
    reasons = dict(report.skipped)
    assert set(reasons) == {"c/nan.wav", "a/trunc.wav", "a/adpcm.wav", "b/dir.wav"}
    assert "NaN" in reasons["c/nan.wav"] and "shorter than declared" in reasons["a/trunc.wav"]
    assert "ADPCM" in reasons["a/adpcm.wav"]
    assert report.stored == 7 and report.target_rate == 8000 and report.resampled == 1
    assert any("mixed sample rates" in n for n in report.notes)
    with open_store(tmp_path / "s.h5") as store:
        assert len(store) == 7 and "c/nan.wav" not in store.paths
        assert dict(map(tuple, store.report[0]["skipped"])) == reasons
        i = store.paths.index("c/other-rate.wav")
        assert store.index["source_rate"][i] == 16000 and store.index["sample_rate"][i] == 8000
        x, _ = read_audio(root / "c" / "other-rate.wav", sample_rate=8000)
        np.testing.assert_array_equal(store.frames(i), store.config(x, 8000))


def test_strict_writes_nothing(tmp_path):
    root = tmp_path / "audio"
    varied_folder(root)
    wavs.write(root / "a" / "bad.wav", wavs.not_riff())
    with pytest.raises(BuildError, match="strict build: 1 file"):
        build_store(root, tmp_path / "s.h5", strict=True, progress=False)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.partial").exists()


def test_float16_and_options(demo_root, tmp_path):
    mel = MelSpectrogram.librosa(n_mels=40, log="db")
    build_store(demo_root, tmp_path / "h.h5", transform=mel, dtype="float16", labels="irmas", workers=1,
                progress=False)
    with open_store(tmp_path / "h.h5") as store:
        assert store.dtype == np.float16 and store.n_bins == 40 and store.config.log == "db"
        x, rate = read_audio(demo_root / store.paths[0])
        np.testing.assert_array_equal(store.frames(0), mel(x, rate).astype(np.float16))


def test_bad_arguments(demo_root, tmp_path):
    with pytest.raises(ParameterError, match="dtype='float64'"):
        build_store(demo_root, tmp_path / "s.h5", dtype="float64")
    with pytest.raises(ParameterError, match="mode='update'"):
        build_store(demo_root, tmp_path / "s.h5", mode="update")
    with pytest.raises(ParameterError, match="workers=0"):
        build_store(demo_root, tmp_path / "s.h5", workers=0)
    too_many = 4 * (os.cpu_count() or 1) + 1  # each a process of about 200 MB: 1000 on 2 cores held 200 GB
    with pytest.raises(ParameterError, match=f"workers={too_many} is more than 4 per core"):
        build_store(demo_root, tmp_path / "s.h5", workers=too_many)
    with pytest.raises(BuildError, match="no audio files"):
        build_store(tmp_path, tmp_path / "s.h5")
    with pytest.raises(BuildError, match="cannot append"):
        build_store(demo_root, tmp_path / "none.h5", mode="append")


def test_append_adds_a_segment_and_merges_statistics(tmp_path):
    root = make_demo_folder(tmp_path / "a", n_per_class=2, seed=3)
    extra = make_demo_testing(tmp_path / "a", n_files=3, seed=3)
    build_store(root, tmp_path / "s.h5", workers=1, progress=False)
    with open_store(tmp_path / "s.h5") as before:
        old_feats = np.array(before.features)
        old_paths = list(before.paths)
    report = build_store(extra, tmp_path / "s.h5", mode="append", labels="irmas", workers=2, progress=False)
    assert report.stored == 3 and report.segment == 1
    again = build_store(extra, tmp_path / "s.h5", mode="append", labels="irmas", progress=False)
    assert again.stored == 0 and all(r == "already in store" for _, r in again.skipped)
    with open_store(tmp_path / "s.h5") as s:
        assert s.paths[: len(old_paths)] == old_paths and len(s) == len(old_paths) + 3
        assert np.array_equal(s.features[: len(old_feats)], old_feats)
        assert s.index["segment"].tolist() == [0] * len(old_paths) + [1] * 3
        assert s.generation == 1 and len(s.segments) == 2 and len(s.report) == 2
        feats = np.asarray(s.features, np.float64)
        np.testing.assert_allclose(s.stats["mean"], feats.mean(0), rtol=1e-9)
        np.testing.assert_allclose(s.stats["cov"], np.cov(feats.T), rtol=1e-7, atol=1e-14)
        assert s.labels[-3:].sum() >= 3  # multi-hot from the .txt files
    assert any("labelled by 'folder', these by 'irmas': its label mode is now 'mixed'" in n for n in report.notes)
    assert not any("label mode" in n for n in again.notes)  # mixed already


def test_labels_that_find_nothing_or_change_on_append_are_noted(tmp_path):
    # found by the command-line hunt: every file stored unlabelled, said only as "classes (0)"
    root = make_demo_folder(tmp_path / "a", n_per_class=1, seed=3)
    plain = tmp_path / "plain" / "cel"
    plain.mkdir(parents=True)
    for name in ("a.wav", "b.wav"):  # names without [cls] tags, no .txt files
        write_wav(plain / name, np.zeros(44100, np.float32), 44100)
    report = build_store(plain.parent, tmp_path / "p.h5", labels="irmas", workers=1, progress=False)
    assert report.stored and any("labels='irmas' found no label" in n for n in report.notes)
    build_store(root, tmp_path / "s.h5", workers=1, progress=False)
    more = tmp_path / "more"
    (more / "x").mkdir(parents=True)
    write_wav(more / "x" / "new.wav", np.zeros(44100, np.float32), 44100)
    report = build_store(more, tmp_path / "s.h5", mode="append", labels="none", workers=1, progress=False)
    assert any("labelled by 'folder', these by 'none'" in n for n in report.notes)
    with open_store(tmp_path / "s.h5") as s:
        assert read_metadata(s.path).label_mode == "mixed" and not s.labels[-1].any()


BUILD_SCRIPT = """
import faulthandler
import sys
import memstore.build as b
faulthandler.dump_traceback_later(90)  # a hung build prints every thread's stack to stderr for the test
import memstore.extract as e
b.TASK_AUDIO_SECONDS = 1.0   # one file per task, so progress is recorded often
e.POOL_MIN_AUDIO_SECONDS = 0.0  # a small folder, built with the pool all the same
b.build_store(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]), progress=False)
"""


def wait_or_fail(proc, timeout, log) -> None:
    """Wait for a build process; if it hangs, fail with the stacks it dumped (faulthandler) to ``log``."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the build hung after the kill; its stderr:\n{log.read_text(errors='replace')[-6000:]}")


def _done_count(partial):
    try:
        with h5py.File(partial, "r", locking=False) as f:  # never block the builder's own opens
            return int((f["build/done"][()] > 0).sum())
    except (OSError, KeyError):
        return 0


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _cmdline(pid) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def long_root(tmp_path_factory):
    return make_demo_folder(tmp_path_factory.mktemp("long"), n_per_class=6, seed=5, duration=8.0)


@pytest.fixture(scope="module")
def clean_long(long_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "clean.h5"
    build_store(long_root, path, workers=2, progress=False)
    return path


@pytest.mark.parametrize("victim", ["parent", "worker"])
def test_kill_9_then_resume_equals_a_clean_build(long_root, clean_long, tmp_path, victim):
    store = tmp_path / "s.h5"
    partial = tmp_path / "s.h5.partial"
    log = tmp_path / "build.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(long_root), str(store), "2"], stderr=err)
    try:
        deadline = time.time() + 60
        while _done_count(partial) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        if victim == "parent":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            kids = [k for k in _children(proc.pid) if "spawn_main" in _cmdline(k)]
            assert kids, "no worker process found"
            os.kill(kids[0], signal.SIGKILL)
        wait_or_fail(proc, 120, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not store.exists() and partial.exists()
    with pytest.raises(StoreFormatError, match="partial build"):
        open_store(partial)
    report = build_store(long_root, store, workers=2, progress=False)
    assert report.resumed >= 3 and not partial.exists()
    same_store(store, clean_long)


def test_cli_build_and_summary(demo_root, tmp_path, capsys):
    assert cli.main(["build", str(demo_root), str(tmp_path / "c.h5"), "--workers", "1", "--quiet",
                     "--n-mels", "64"]) == 0
    out = capsys.readouterr().out
    assert "18 file(s) stored, 0 skipped" in out
    with open_store(tmp_path / "c.h5") as s:
        assert s.n_bins == 64
    assert cli.main(["build", str(tmp_path / "nothing"), str(tmp_path / "d.h5")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["irmas", "callable"])
def test_changed_labels_with_the_same_classes_are_a_new_plan_not_a_resume(tmp_path, monkeypatch, mode):
    # an interrupted build's .partial holds its labels; a resume kept them when IRMAS .txt files (or a
    # labels callable) changed but the class list did not: a mislabelled store that verify then failed
    from memstore import writer

    root = tmp_path / "audio"
    root.mkdir()
    rng = np.random.default_rng(4)
    for i in range(4):
        write_wav(root / f"f{i}.wav", rng.uniform(-0.5, 0.5, 22050).astype(np.float32), 22050)
    names = {}

    def label(order: tuple[str, str]) -> None:
        for i in range(4):
            names[f"f{i}.wav"] = order[i % 2]
            (root / f"f{i}.txt").write_text(order[i % 2] + "\n")

    def labels():
        return "irmas" if mode == "irmas" else (lambda path: [names[path]])

    label(("cel", "flu"))
    monkeypatch.setattr(writer, "_finalize", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # stopped after every file was extracted
        build_store(root, tmp_path / "s.h5", labels=labels(), workers=1, progress=False)
    assert (tmp_path / "s.h5.partial").exists()
    monkeypatch.undo()
    label(("flu", "cel"))  # the same two classes, every file's label swapped
    report = build_store(root, tmp_path / "s.h5", labels=labels(), workers=1, progress=False)
    assert report.resumed == 0
    with open_store(tmp_path / "s.h5") as store:
        got = {p: [store.classes[k] for k in np.flatnonzero(store.labels[i])] for i, p in enumerate(store.paths)}
    assert got == {p: [c] for p, c in names.items()}
    assert verify_store(tmp_path / "s.h5").ok
