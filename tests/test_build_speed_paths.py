"""The build's fast paths change no byte: one process, worker processes, Dask and a resumed build agree.

A store's statistics are a Chan merge of per-file statistics, which is not
associative in floating point; the build merges them in file order whatever
order the files finish in. These tests pin that, with every dataset and
attribute compared byte for byte (only the build report, which holds wall
times, may differ), and the BLAS thread limit a ``workers=1`` build runs its
matrix products under.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import wavs
from conftest import varied_folder

import memstore.build as build
from memstore import layout
from memstore._workers import one_native_thread
from memstore.audio import write_wav
from memstore.features import Spectrogram
from memstore.stats import RunningStats, merge
from memstore.store import open_store


def _folder(root):
    """Varied formats, rates and lengths, one file to resample and one to skip: several tasks of it."""
    varied_folder(root)
    rng = np.random.default_rng(3)
    (root / "d").mkdir()
    for k in range(6):
        write_wav(root / "d" / f"g{k}.wav", rng.uniform(-0.5, 0.5, (3000 + 1500 * k, 1 + k % 2)), 8000)
    write_wav(root / "d" / "other-rate.wav", rng.uniform(-0.5, 0.5, (7000, 2)), 16000)
    wavs.write(root / "c" / "nan.wav", wavs.float_with(np.nan))
    return root


def _contents(path) -> dict[str, tuple]:
    """Every dataset's and attribute's bytes, by name; the report (wall times) left out."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/@"] = tuple(sorted((k, np.asarray(v).tobytes()) for k, v in f.attrs.items()))

        def visit(name, obj):
            if name == layout.REPORT:
                return
            attrs = tuple(sorted((k, np.asarray(v).tobytes()) for k, v in obj.attrs.items()))
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                data = b"\0".join(data.tolist()) if data.dtype == object else np.asarray(data).tobytes()
                out[name] = (str(obj.dtype), obj.shape, data, attrs)
            else:
                out[name] = attrs

        f.visititems(visit)
    return out


def _stats_in_file_order(path):
    """The statistics one process gets merging each stored file's own statistics in index order."""
    stats = None
    with open_store(path) as store:
        for i in range(len(store)):
            stats = merge(stats, RunningStats.of_rows(np.asarray(store.frames(i))))
    return stats.count, stats.mean, stats.m2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("speed") / "audio")


@pytest.fixture(scope="module")
def serial(root, tmp_path_factory):
    path = tmp_path_factory.mktemp("serial") / "one.h5"
    report = build.build_store(root, path, workers=1, progress=False)
    assert report.stored == 13 and [p for p, _ in report.skipped] == ["c/nan.wav"] and report.resampled == 1
    return path


def test_stored_statistics_are_the_file_order_merge(serial):
    count, mean, m2 = _stats_in_file_order(serial)
    with h5py.File(serial, "r") as f:
        assert int(f["stats/count"][()]) == count
        assert f["stats/mean"][()].tobytes() == mean.tobytes()
        assert f["stats/m2"][()].tobytes() == m2.tobytes()


def test_one_process_two_workers_and_dask_write_the_same_bytes(root, serial, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 0.5)  # many small tasks: files finish out of order
    expected = _contents(serial)
    build.build_store(root, tmp_path / "two.h5", workers=2, progress=False)
    assert _contents(tmp_path / "two.h5") == expected
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        build.build_store(root, tmp_path / "dask.h5", executor=client, progress=False)
    assert _contents(tmp_path / "dask.h5") == expected


def test_a_resumed_build_writes_the_same_bytes(root, serial, tmp_path, monkeypatch):
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 1e-9)  # one file per task: done flags file by file
    real = Spectrogram.__call__

    def failing_on_g0(self, samples, *args, **kwargs):
        if len(samples) == 3000:  # d/g0.wav, the first file after c/nan.wav
            raise ValueError("injected")
        return real(self, samples, *args, **kwargs)

    monkeypatch.setattr(Spectrogram, "__call__", failing_on_g0)
    with pytest.raises(ValueError, match="injected"):
        build.build_store(root, tmp_path / "r.h5", workers=1, progress=False)
    monkeypatch.setattr(Spectrogram, "__call__", real)
    with h5py.File(tmp_path / "r.h5.partial", "r", locking=False) as f:
        done = f[layout.BUILD_DONE][()]
    # stored files, the skipped NaN file and files still to do, so a resume meets all three
    assert {0, 1, 2} <= set(done.tolist())
    report = build.build_store(root, tmp_path / "r.h5", workers=2, progress=False)
    assert report.resumed == np.count_nonzero(done)
    assert [p for p, _ in report.skipped] == ["c/nan.wav"]
    assert _contents(tmp_path / "r.h5") == _contents(serial)


def _blas_threads() -> list[int]:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]


def test_one_native_thread_limits_blas_and_restores_it_after_the_last_overlapping_user():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _blas_threads():
        pytest.skip("no BLAS library loaded that threadpoolctl sees")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert _blas_threads() == [2] * len(_blas_threads())
        entered, leave = threading.Event(), threading.Event()

        def other_build():
            with one_native_thread():
                entered.set()
                leave.wait(30)

        t = threading.Thread(target=other_build)
        with one_native_thread():
            assert set(_blas_threads()) == {1}
            t.start()
            assert entered.wait(30)
        assert set(_blas_threads()) == {1}  # the other user is still inside
        leave.set()
        t.join(30)
        assert set(_blas_threads()) == {2}


def test_a_serial_build_leaves_the_blas_threads_as_they_were(root, tmp_path):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not _blas_threads():
        pytest.skip("no BLAS library loaded that threadpoolctl sees")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        build.build_store(root, tmp_path / "s.h5", workers=1, progress=False)
        assert set(_blas_threads()) == {2}


@pytest.mark.parametrize("n_bins", [1, 2, 96])
def test_statistics_packed_for_the_trip_from_a_worker_come_back_byte_equal(n_bins):
    rows = np.random.default_rng(n_bins).standard_normal((37, n_bins)).astype(np.float32)
    stats = RunningStats.of_rows(rows)
    packed = stats.packed()
    assert len(packed) == 4 and packed[3].size == n_bins * (n_bins + 1) // 2  # x.T @ x is exactly symmetric
    back = RunningStats.unpacked(packed)
    assert back.count == stats.count and back.mean.tobytes() == stats.mean.tobytes()
    assert back.m2.tobytes() == stats.m2.tobytes()


def test_a_co_moment_symmetric_only_up_to_the_sign_of_zero_travels_whole():
    m2 = np.array([[1.0, 0.0], [-0.0, 2.0]])
    packed = RunningStats(3, np.zeros(2), m2).packed()
    assert len(packed) == 3
    assert RunningStats.unpacked(packed).m2.tobytes() == m2.tobytes()


WORKER_PRINTS = """
import sys
from memstore._workers import WorkerPool

def shout():
    sys.stdout.write("from the worker, unflushed")  # a pipe: block-buffered until exit
    return 1

if __name__ == "__main__":
    pool = WorkerPool(1, main=True)  # shout is this script's: the workers import it
    assert pool.submit(shout).result() == 1
    pool.shutdown(wait=True)
    print(" | parent done")
"""


def test_a_worker_that_ends_without_teardown_still_flushes_its_output(tmp_path):
    script = tmp_path / "prints.py"
    script.write_text(WORKER_PRINTS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(build.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the worker, unflushed | parent done\n"
