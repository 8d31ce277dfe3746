"""A build on a real Dask LocalCluster equals a local build, fails cleanly and resumes."""

from __future__ import annotations

import os
import re
import time

import h5py
import numpy as np
import pytest
import wavs
from conftest import varied_folder

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402
from test_build import same_store  # noqa: E402

import memstore.build as build  # noqa: E402
from memstore import cli  # noqa: E402
from memstore.build import build_store  # noqa: E402
from memstore.distributed import connect  # noqa: E402
from memstore.errors import BuildError  # noqa: E402
from memstore.store import open_store  # noqa: E402


def test_dask_build_equals_local_build(demo_root, demo_store, tmp_path):
    from test_build import same_store

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        report = build_store(demo_root, tmp_path / "d.h5", executor=client, progress=False)
    assert report.stored == 18
    same_store(tmp_path / "d.h5", demo_store)
    assert not (tmp_path / "d.h5.partial.shards").exists()


def test_cli_dask_local(demo_root, demo_store, tmp_path, capsys):
    assert cli.main(["build", str(demo_root), str(tmp_path / "c.h5"), "--dask", "local:2", "--quiet"]) == 0
    with open_store(tmp_path / "c.h5") as s:
        assert len(s) == 18
    assert cli.main(["build", str(demo_root), str(tmp_path / "e.h5"), "--dask", "udp://x"]) == 1
    assert "tcp://HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("args, why", [
    (["--dask", "local:0"], "N must be from 1 to"),  # a cluster without workers: the build waited forever
    (["--dask", "local:\u0663"], "must be tcp://HOST:PORT"),  # an Arabic-Indic 3 is not N
    (["--dask", "localhost:3"], r"must be tcp://HOST:PORT \(a scheduler, e.g. tcp://localhost:8786\)"),  # local:3
    (["--dask", ""], "must be tcp://HOST:PORT"),  # built locally without a word
    (["--dask", "local:2", "--workers", "2"], "with --dask the cluster's workers extract"),  # --workers ignored
    (["--spectrogram", "--n-mels", "40"], "--n-mels set mel bands, and --spectrogram stores FFT bins"),
    (["--spectrogram", "--fmin", "50", "--fmax", "4000"], "--fmin, --fmax set mel bands"),
])
def test_cli_options_that_would_be_misread_or_ignored_are_refused(demo_root, tmp_path, capsys, args, why):
    # found by the command-line hunt; none of these may start a cluster or write a store
    assert cli.main(["build", str(demo_root), str(tmp_path / "e.h5"), "--quiet", *args]) == 1
    assert re.search(why, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_scheduler_is_a_build_error(tmp_path):
    # a raw OSError traceback after 30 s before
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
            pytest.raises(BuildError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
        connect("tcp://127.0.0.1:1")


# --- failures on a real cluster ------------------------------------------------------------------

def _fail_shard_writes(suffix: str) -> None:
    """Run on each worker: renaming a shard whose name ends in ``suffix`` into place fails with ENOSPC."""
    import errno
    import os

    real = getattr(os.replace, "real", os.replace)

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)

    replace.real = real
    os.replace = replace


def _restore_shard_writes() -> None:
    import os

    os.replace = getattr(os.replace, "real", os.replace)


def _extract_tasks_on_scheduler(dask_scheduler) -> list[str]:
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith("memstore-extract")]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def full_disk_on_task_5(client):
    """ENOSPC (injected into os.replace on the workers) when task 5 renames its shard into place."""
    client.run(_fail_shard_writes, "00000005.npy")
    yield
    client.run(_restore_shard_writes)


def test_a_worker_error_is_a_build_error_and_a_rerun_resumes(demo_root, demo_store, tmp_path, monkeypatch,
                                                             client, full_disk_on_task_5):
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 1.0)  # one file per task
    store = tmp_path / "d.h5"
    with pytest.raises(BuildError, match=r"a Dask task failed on a worker \(OSError: .*No space left on device"
                                         r".*run the same build again to resume") as exc:
        build_store(demo_root, store, executor=client, progress=False)
    assert isinstance(exc.value.__cause__, OSError)
    with h5py.File(tmp_path / "d.h5.partial", "r", locking=False) as f:
        done = f["build/done"][()]
    assert set(done.tolist()) <= {0, 1} and done.sum() < 18  # no file skipped, and task 5's not done
    client.run(_restore_shard_writes)
    report = build_store(demo_root, store, executor=client, progress=False)
    assert report.resumed == done.sum()
    assert report.stored == 18 and report.skipped == []
    same_store(store, demo_store)
    assert not (tmp_path / "d.h5.partial.shards").exists()


def test_the_other_tasks_are_cancelled_when_one_fails(demo_root, tmp_path, monkeypatch, client,
                                                      full_disk_on_task_5):
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 1.0)
    with pytest.raises(BuildError, match="No space left") as exc:
        build_store(demo_root, tmp_path / "d.h5", executor=client, progress=False)
    # exc keeps the failed build's frames (and their futures) alive, as a caller's `except` block does:
    # only a cancel releases the tasks on the scheduler
    deadline = time.monotonic() + 20
    while client.run_on_scheduler(_extract_tasks_on_scheduler) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.run_on_scheduler(_extract_tasks_on_scheduler) == []
    assert exc.value.__traceback__ is not None


def test_relative_paths_work_when_the_workers_run_elsewhere(demo_root, demo_store, tmp_path, monkeypatch):
    """Workers resolve relative paths against their own working directory, not the client's.

    The cluster starts in ``w/``, the build runs from ``c/`` with a relative store path. The
    workers' ``w/d.h5.partial.shards`` exists (as a folder of that name on another machine
    would): without absolute paths a worker wrote its shard there, the client found none in
    ``c/`` and failed with a TypeError on ``None[...]``.
    """
    (tmp_path / "w" / "d.h5.partial.shards").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        monkeypatch.chdir(tmp_path / "c")
        report = build_store(os.path.relpath(demo_root), "d.h5", executor=c, progress=False)
    assert report.stored == 18
    same_store(tmp_path / "c" / "d.h5", demo_store)
    assert list((tmp_path / "w" / "d.h5.partial.shards").iterdir()) == []
    assert not (tmp_path / "c" / "d.h5.partial.shards").exists()


def test_a_task_of_skipped_files_only_writes_an_empty_shard_and_the_store_equals_a_local_one(tmp_path, monkeypatch,
                                                                                             client):
    """One file per task: the NaN file's task stores nothing, its shard holds zero rows."""
    root = tmp_path / "a"
    varied_folder(root)
    wavs.write(root / "c" / "nan.wav", wavs.float_with(np.nan))
    local = build_store(root, tmp_path / "local.h5", workers=1, progress=False)
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 1e-9)
    report = build_store(root, tmp_path / "dask.h5", executor=client, progress=False)
    assert [p for p, _ in report.skipped] == ["c/nan.wav"] and report.skipped == local.skipped
    assert report.stored == local.stored == 6
    same_store(tmp_path / "dask.h5", tmp_path / "local.h5")
    with h5py.File(tmp_path / "dask.h5", "r") as d, h5py.File(tmp_path / "local.h5", "r") as s:
        for name in ("count", "mean", "m2", "cov", "std"):
            assert d["stats"][name][()].tobytes() == s["stats"][name][()].tobytes()
    assert not (tmp_path / "dask.h5.partial.shards").exists()
