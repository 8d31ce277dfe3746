"""Which extraction failures are per-file skips, and which stop the build.

Only the read and decode failures of one file (and its unusable features) are
skips. A bug (here: a ``ValueError``) or memory running out stops the build,
and the build stays resumable from its per-file done flags.

How the failure is injected: transforms travel to worker processes as their
JSON configuration and are rebuilt there as a plain ``MelSpectrogram``, so a
custom transform subclass cannot reach a worker. The tests therefore replace
``Spectrogram.__call__`` with one that raises on the one file of
:data:`BAD_N` samples and computes every other file as before: in this
process for ``workers=1``, and through the initializer of a real spawned
``ProcessPoolExecutor`` of two processes passed as ``executor=`` (the same
code path as ``workers=2``, for which ``build_store`` hands its own pool over
as the executor). The audio files, processes and HDF5 files are all real.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

import h5py
import numpy as np
import pytest
from test_build import same_store

import memstore.build as build
from memstore.audio import write_wav
from memstore.errors import BuildError
from memstore.features import Spectrogram

RATE = 8000
#: samples of the one file the injected failure hits; every other file is shorter
BAD_N = 12345


def _raising_call(kind: str, original):
    def call(self, samples, sample_rate):
        if len(samples) == BAD_N:
            raise {"ValueError": ValueError, "MemoryError": MemoryError}[kind](
                f"injected {kind} on the {BAD_N}-sample file")
        return original(self, samples, sample_rate)
    return call


def _inject(kind: str) -> None:
    """Worker initializer: this process's transforms raise ``kind`` on the bad file."""
    Spectrogram.__call__ = _raising_call(kind, Spectrogram.__call__)


def _folder(root, n_files=6, bad_first=False):
    """``n_files`` WAVs in two classes; the bad one sorts first or last."""
    rng = np.random.default_rng(3)
    for k in range(n_files):
        bad = k == (0 if bad_first else n_files - 1)
        n = BAD_N if bad else 4000 + 500 * k
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        write_wav(root / f"c{k % 2}" / f"{k:02d}.wav", rng.uniform(-0.5, 0.5, n), RATE)
    return root


def _done_flags(partial):
    with h5py.File(partial, "r", locking=False) as f:
        return f["build/done"][()]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("failures"))


@pytest.fixture(scope="module")
def clean(root, tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "clean.h5"
    report = build.build_store(root, path, workers=1, progress=False)
    assert report.stored == 6 and not report.skipped
    return path


@pytest.mark.parametrize("kind", ["ValueError", "MemoryError"])
@pytest.mark.parametrize("processes", [1, 2])
def test_a_bug_or_no_memory_stops_the_build_and_a_rerun_resumes(root, clean, tmp_path, monkeypatch, kind,
                                                                 processes):
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 0.1)  # one file per task: done flags file by file
    store, partial = tmp_path / "s.h5", tmp_path / "s.h5.partial"
    expected = (ValueError, "injected ValueError") if kind == "ValueError" else \
        (BuildError, r"memory ran out .*c1/05\.wav .*injected MemoryError.*; it resumes from the \d file\(s\) "
                     r"already done")
    if processes == 1:
        monkeypatch.setattr(Spectrogram, "__call__", _raising_call(kind, Spectrogram.__call__))
        with pytest.raises(expected[0], match=expected[1]) as exc:
            build.build_store(root, store, workers=1, progress=False)
        monkeypatch.undo()
    else:
        with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_inject,
                                    initargs=(kind,)) as pool, \
                pytest.raises(expected[0], match=expected[1]) as exc:
            build.build_store(root, store, workers=2, executor=pool, progress=False)
    assert "no file" not in str(exc.value)  # not every file skipped: the build stopped
    assert not store.exists()
    done = _done_flags(partial)
    # the bad file sorts last; with at most two running, at least three others finished before it started
    assert set(done.tolist()) <= {0, 1} and done[-1] == 0 and done.sum() >= 3

    report = build.build_store(root, store, workers=processes, progress=False)
    assert report.resumed == done.sum()
    assert report.stored == 6 and report.skipped == []
    assert not partial.exists()
    same_store(store, clean)


def test_queued_tasks_are_cancelled_when_one_fails(tmp_path, monkeypatch):
    """Tasks still queued in a caller's executor must not go on writing into the partial file."""
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 0.1)
    src = _folder(tmp_path / "a", n_files=12, bad_first=True)
    partial = tmp_path / "s.h5.partial"
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_inject,
                                initargs=("ValueError",)) as pool:
        with pytest.raises(ValueError, match="injected"):
            build.build_store(src, tmp_path / "s.h5", workers=2, executor=pool, progress=False)
        pool.shutdown(wait=True)
    with h5py.File(partial, "r", locking=False) as f:
        feats, index = f["features"][()], f["index"][()]
    written = sum(bool(feats[o:o + n].any()) for o, n in zip(index["offset"], index["n_frames"], strict=True))
    # 8 tasks were in flight (4 per worker, workers=2); one worker process holds at most 2 more in its
    # call queue, and those cannot be cancelled any more: the other 5 must never run
    assert written <= 3


@pytest.mark.parametrize("damage", ["index", "build/checksum", "features"])
def test_a_partial_file_that_lost_a_dataset_is_built_anew_not_resumed(root, clean, tmp_path, monkeypatch, caplog,
                                                                     damage):
    # found by the command-line hunt: such a partial was resumed, every file extracted again, and the build
    # then failed in its last step with a KeyError, at every run (only --no-resume got out)
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 0.1)
    store, partial = tmp_path / "s.h5", tmp_path / "s.h5.partial"
    monkeypatch.setattr(Spectrogram, "__call__", _raising_call("ValueError", Spectrogram.__call__))
    with pytest.raises(ValueError, match="injected ValueError"):
        build.build_store(root, store, workers=1, progress=False)
    monkeypatch.undo()
    assert _done_flags(partial).sum() >= 3
    with h5py.File(partial, "r+", locking=False) as f:
        if damage == "features":  # another shape under the same name
            del f[damage]
            f.create_dataset(damage, shape=(1, 1), dtype="<f4")
        else:
            del f[damage]
    with caplog.at_level("WARNING", logger="memstore"):
        report = build.build_store(root, store, workers=1, progress=False)
    assert report.resumed == 0 and report.stored == 6
    assert f"its {damage} is missing or damaged" in caplog.text
    same_store(store, clean)
