"""memstore.extract: per-file compute, tasks, the worker-side statistics and the build's local executor.

Everything here is real: WAV files written to ``tmp_path``, rows written
through a real memory map, spawned worker processes. The statistics a worker
sends back are compared with an independent spelling of the formula the
build used before ``RunningStats`` (chunked float64, ``x.T @ x`` per chunk,
Chan's merge, the upper triangle when the matrix is symmetric), so a store's
statistics stay the same bytes.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import wavs

import memstore.audio as audio
import memstore.build as build
import memstore.extract as extract
from memstore._workers import WorkerPool
from memstore.audio import audio_info, decodes_lazily, read_audio, write_wav
from memstore.errors import BuildError
from memstore.features import MelSpectrogram, Spectrogram
from memstore.stats import RunningStats
from memstore.store import open_store

TOOLS = Path(__file__).resolve().parents[1] / "tools"


# --- which files are decoded lazily ---------------------------------------------------------

LONG = audio.LONG_SAMPLES


@pytest.mark.parametrize(("path", "n_samples", "source_rate", "rate", "lazy"), [
    ("a/long.wav", LONG + 1, 44100, 44100, True),
    ("a/LONG.WAV", LONG + 1, 44100, 44100, True),           # the name's case does not matter
    ("a/long.wav", LONG, 44100, 44100, False),              # not longer than the limit
    ("a/long.wav", LONG + 1, 48000, 44100, False),          # resampled files are read whole
    ("a/long.flac", LONG + 1, 44100, 44100, False),         # libsndfile formats are read whole
    (Path("a/long.wav"), LONG + 1, 44100, 44100, True),     # a path object as well as a str
])
def test_only_long_wavs_read_at_their_own_rate_are_decoded_lazily(path, n_samples, source_rate, rate, lazy):
    assert decodes_lazily(path, n_samples=n_samples, source_rate=source_rate, sample_rate=rate) is lazy


def test_a_long_wav_goes_through_open_signal_and_gives_the_rows_of_a_whole_read(tmp_path, monkeypatch):
    """With the limit lowered, the build reads long same-rate WAVs lazily, and stores the same rows."""
    rng = np.random.default_rng(5)
    root = tmp_path / "audio"
    (root / "x").mkdir(parents=True)
    write_wav(root / "x" / "long.wav", rng.uniform(-0.5, 0.5, (30000, 2)), 8000)
    write_wav(root / "x" / "short.wav", rng.uniform(-0.5, 0.5, 3000), 8000)
    write_wav(root / "x" / "resampled.wav", rng.uniform(-0.5, 0.5, 40000), 16000)
    whole = build.build_store(root, tmp_path / "whole.h5", workers=1, sample_rate=8000, progress=False)
    assert whole.stored == 3

    opened = []
    real = extract.open_signal

    def spy(path):
        opened.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(extract, "open_signal", spy)
    monkeypatch.setattr(audio, "LONG_SAMPLES", 10000)
    lazy = build.build_store(root, tmp_path / "lazy.h5", workers=1, sample_rate=8000, progress=False)
    assert lazy.stored == 3
    assert opened == ["long.wav"]
    with open_store(tmp_path / "whole.h5") as a, open_store(tmp_path / "lazy.h5") as b:
        assert a.paths == b.paths
        assert np.asarray(a.features).tobytes() == np.asarray(b.features).tobytes()
        assert a.index.tobytes() == b.index.tobytes()


# --- a task: rows at their planned offsets, checksums, statistics ---------------------------

def _old_file_stats(rows: np.ndarray, chunk: int = 1 << 16):
    """The build's per-file statistics before RunningStats, spelled out: (count, mean, co-moment)."""
    stats = None
    for s in range(0, len(rows), chunk):
        x = rows[s:s + chunk].astype(np.float64)
        mean = x.mean(axis=0)
        x -= mean
        part = (len(x), mean, x.T @ x)
        if stats is None:
            stats = part
            continue
        na, ma, m2a = stats
        nb, mb, m2b = part
        n = na + nb
        delta = mb - ma
        stats = (n, ma + delta * (nb / n), m2a + m2b + np.outer(delta, delta) * (na * nb / n))
    return stats


def _old_packed(stats):
    count, mean, m2 = stats
    if m2.tobytes() == np.ascontiguousarray(m2.T).tobytes():
        return count, mean, None, m2[np.triu_indices(len(m2))]
    return stats


def _same_packed(a, b) -> bool:
    if len(a) != len(b) or a[0] != b[0]:
        return False
    return all((x is None and y is None) or (x is not None and y is not None and x.tobytes() == y.tobytes())
               for x, y in zip(a[1:], b[1:], strict=True))


@pytest.mark.parametrize(("n_rows", "n_bins", "dtype"), [
    (1, 1, "float32"), (37, 96, "float32"), (70000, 3, "float32"), (140000, 2, "float16"),
])
def test_worker_statistics_are_the_bytes_of_the_old_formula(n_rows, n_bins, dtype):
    """Rows over one or several 64 Ki-row chunks: packed for the trip, and unpacked, byte for byte."""
    rows = np.random.default_rng(n_rows).standard_normal((n_rows, n_bins)).astype(dtype)
    old = _old_file_stats(rows)
    packed = RunningStats.of_rows(rows).packed()
    assert _same_packed(packed, _old_packed(old))
    back = RunningStats.unpacked(packed)
    assert back.count == old[0] and back.mean.tobytes() == old[1].tobytes() and back.m2.tobytes() == old[2].tobytes()


def test_a_task_writes_each_file_at_its_planned_rows_and_returns_its_checksum_and_statistics(tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    for k, n in enumerate([5000, 800, 12000]):
        paths.append(tmp_path / f"{k}.wav")
        write_wav(paths[-1], rng.uniform(-0.5, 0.5, n), 8000)
    wavs.write(tmp_path / "nan.wav", wavs.floats(np.array([0.1, np.nan, 0.2] * 500), rate=8000))
    paths.insert(1, tmp_path / "nan.wav")
    mel = MelSpectrogram(n_mels=20, n_fft=256, hop=128, sample_rate=8000)
    infos = [audio_info(p) for p in paths]
    n_frames = [mel.n_frames(info.n_samples) for info in infos]
    lead = 3  # rows before the task's first file: the map starts at its first planned row
    offsets = lead + np.r_[0, np.cumsum(n_frames)[:-1]]
    total = lead + sum(n_frames)
    data = tmp_path / "rows.bin"
    data.write_bytes(bytes(total * mel.n_bins * 4))
    items = [(i, os.fsdecode(p), int(offsets[i]), n_frames[i], info.n_samples, info.sample_rate)
             for i, (p, info) in enumerate(zip(paths, infos, strict=True))]
    results = extract.extract_task(os.fsdecode(data), 0, mel.n_bins, "float32", mel.to_json(), 8000, items)

    stored = np.fromfile(data, np.float32).reshape(total, mel.n_bins)
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert results[1][1] is None and results[1][2].startswith("AudioDecodeError: ")
    assert not stored[offsets[1]:offsets[1] + n_frames[1]].any()  # a skipped file writes nothing
    assert not stored[:lead].any()
    for i, crc, packed in (r for r in results if r[1] is not None):
        want = mel(*read_audio(paths[i], sample_rate=8000))
        rows = stored[offsets[i]:offsets[i] + n_frames[i]]
        assert rows.tobytes() == want.tobytes()
        assert crc == zlib.crc32(want.data)
        assert _same_packed(packed, _old_packed(_old_file_stats(want)))


def _cachestat(path: Path, offset: int, nbytes: int) -> dict[str, int] | None:
    """Linux's ``cachestat`` (6.5+) of a byte range: its pages cached, dirty, under write-back; None without it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rng = (ctypes.c_uint64 * 2)(offset, nbytes)
    out = (ctypes.c_uint64 * 5)()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(ctypes.c_long(451), fd, rng, out, ctypes.c_uint(0)) != 0:  # 451: cachestat, every arch
            return None
    finally:
        os.close(fd)
    return dict(zip(("cached", "dirty", "writeback", "evicted", "recently_evicted"), out, strict=True))


def _fs_type(path: Path) -> str:
    """The type of the file system ``path`` is on (``/proc/self/mounts``: the longest mount point above it)."""
    best, kind = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            point, fstype = line.split()[1:3]
            point = point.replace("\\040", " ")
            if str(path).startswith(point.rstrip("/") + "/") and len(point) > len(best):
                best, kind = point, fstype
    return kind


@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="sync_file_range and cachestat are Linux's")
def test_a_task_starts_the_write_back_of_its_rows_so_the_final_fsync_finds_them_written(tmp_path):
    """The rows a task wrote are no longer dirty when it returns: the kernel is writing (or has written) them."""
    rng = np.random.default_rng(4)
    mel = MelSpectrogram(n_mels=64, n_fft=256, hop=64, sample_rate=8000)
    items, row = [], 0
    for k in range(6):
        write_wav(tmp_path / f"{k}.wav", rng.uniform(-0.5, 0.5, 40000), 8000)
        info = audio_info(tmp_path / f"{k}.wav")
        items.append((k, os.fsdecode(tmp_path / f"{k}.wav"), row, mel.n_frames(info.n_samples), info.n_samples, 8000))
        row += items[-1][3]
    data = tmp_path / "rows.bin"
    lead = 4096  # the features start past a header, as in a store
    with open(data, "wb") as f:
        f.truncate(lead + row * mel.n_bins * 4)
    if _cachestat(data, 0, 4096) is None:
        pytest.skip("no cachestat system call (Linux 6.5+) to look at the page cache with")
    fd = os.open(data, os.O_WRONLY)
    try:  # a plain write leaves its pages dirty until the kernel gets to them (30 s) or an fsync
        os.pwrite(fd, np.ones((row, mel.n_bins), np.float32), lead)
    finally:
        os.close(fd)
    if _fs_type(data) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is in memory: its pages are never written back")
    if _cachestat(data, lead, row * mel.n_bins * 4)["dirty"] <= 40:  # 6 files x 622 x 64 x 4 bytes: 234 pages
        pytest.skip("the kernel wrote a plain write's pages back at once (memory pressure): nothing to tell apart")
    results = extract.extract_task(os.fsdecode(data), lead, mel.n_bins, "float32", mel.to_json(), 8000, items)
    assert [r[0] for r in results if r[1] is not None] == list(range(6))
    state = _cachestat(data, lead, row * mel.n_bins * 4)
    assert state["dirty"] == 0, state
    stored = np.fromfile(data, np.float32, offset=lead).reshape(row, mel.n_bins)
    for _, path, first, n, _, _ in items:
        assert stored[first:first + n].tobytes() == mel(*read_audio(path, sample_rate=8000)).tobytes()


def test_files_extracted_in_this_process_keep_their_statistics_unpacked(tmp_path, monkeypatch):
    """Packing is for the trip from a worker: a workers=1 build neither packs nor unpacks (40 us per file)."""
    _short_clips(tmp_path / "audio", 6, "{}.wav")
    trips = []
    pack, unpack = RunningStats.packed, RunningStats.unpacked.__func__
    monkeypatch.setattr(RunningStats, "packed", lambda self: trips.append("packed") or pack(self))
    monkeypatch.setattr(RunningStats, "unpacked",
                        classmethod(lambda cls, t: trips.append("unpacked") or unpack(cls, t)))
    report = build.build_store(tmp_path / "audio", tmp_path / "s.h5", workers=1, progress=False)
    assert report.stored == 6 and trips == []


def test_tasks_hold_about_task_seconds_of_audio_and_the_plans_facts():
    new = np.zeros(5, dtype=[("offset", "<i8"), ("n_frames", "<i8"), ("n_samples", "<i8"), ("source_rate", "<i8")])
    new["n_frames"] = [10, 20, 30, 40, 50]
    new["offset"] = 100 + np.r_[0, np.cumsum(new["n_frames"])[:-1]]
    new["n_samples"] = [8000, 16000, 8000, 40000, 4000]  # 1 s, 1 s, 1 s, 5 s, 0.5 s
    new["source_rate"] = [8000, 16000, 8000, 8000, 8000]
    files = [f"f{i}.wav" for i in range(5)]
    got = list(extract.tasks(files, [0, 1, 2, 3, 4], Path("/r"), new, 2.0))
    assert [[item[0] for item in t] for t in got] == [[0, 1], [2, 3], [4]]
    assert got[1][1] == (3, os.fsdecode(Path("/r") / "f3.wav"), 160, 40, 40000, 8000)
    assert [[item[0] for item in t] for t in extract.tasks(files, [4, 2], Path("/r"), new, 60.0)] == [[4, 2]]


# --- where tasks run -------------------------------------------------------------------------

def test_one_worker_runs_in_this_process_and_a_callers_executor_is_used_as_it_is():
    with extract.local_executor(1, None) as runner:
        assert runner is None
    with cf.ThreadPoolExecutor(1) as mine, extract.local_executor(3, mine) as runner:
        assert runner is mine
        assert mine.submit(sum, [1, 2]).result() == 3  # still usable: it is the caller's to shut down


def _pids(pool: WorkerPool) -> list[int]:
    return sorted(pool.submit(os.getpid).result() for _ in range(8))


def _gone(pids) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    return False
        except FileNotFoundError:
            continue
    return True


def test_the_builds_own_pool_is_shut_down_after_it_and_killed_when_it_fails():
    with extract.local_executor(3, None) as pool:
        # all started up front; this process is the third worker
        assert isinstance(pool, WorkerPool) and len(pool._processes) == 2 and pool.with_parent
        pids = list(pool._processes)
    assert _gone(pids)
    with pytest.raises(KeyError, match="the build failed"), extract.local_executor(3, None) as pool:
        pids = list(pool._processes)
        busy = [pool.submit(time.sleep, 120) for _ in range(2)]
        deadline = time.monotonic() + 60
        while not all(f.running() for f in busy) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(f.running() for f in busy)  # handed to the workers: a shutdown would wait for them
        raise KeyError("the build failed")
    # killed, not waited for: a shut-down pool would have let both sleeps return None
    assert all(isinstance(f.exception(timeout=60), cf.process.BrokenProcessPool) for f in busy)
    assert _gone(pids)


def _kernels_loaded() -> list[int]:
    from memstore import spectral

    return [len(kernel.signatures) for kernel in (spectral._frame_window, spectral._mel_project)]


@pytest.mark.skipif(os.environ.get("MEMSTORE_DISABLE_JIT") == "1", reason="no kernels to load: they run as Python")
def test_the_builds_own_workers_load_the_feature_kernels_before_their_first_task():
    """Queued behind the start-up, so it runs while the building process plans; one worker runs tasks in order."""
    with extract.local_executor(2, None) as pool:
        assert pool.submit(_kernels_loaded).result() == [1, 1]


def _short_clips(root: Path, n: int, name: str, rate: int = 8000) -> None:
    """``n`` mono clips of 3 s in two class folders, named ``name.format(k)``."""
    for k in range(n):
        d = root / ("a" if k % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        write_wav(d / name.format(k), np.sin(np.arange(3 * rate) * (0.01 + k / 1000)).astype(np.float32), rate)


def _files_this_process_extracts(monkeypatch) -> list[str]:
    """The names of the files this process extracts from now on (spawned workers import their own, unpatched)."""
    mine: list[str] = []
    compute = extract.compute_files

    def counted(config_json, rate, n_bins, dtype, items):
        mine.extend(Path(path).name for _, path, *_ in items)
        return compute(config_json, rate, n_bins, dtype, items)

    monkeypatch.setattr(extract, "compute_files", counted)
    return mine


def test_with_workers_this_process_extracts_too_but_never_a_long_file(tmp_path, monkeypatch):
    """workers=2 starts one process and this one works beside it, on short tasks only; same bytes as workers=1."""
    _short_clips(tmp_path / "audio", 24, "{:02d}.wav")
    write_wav(tmp_path / "audio" / "a" / "long.wav", np.sin(np.arange(200 * 8000) / 9.0).astype(np.float32), 8000)
    compute = extract.compute_files
    mine = _files_this_process_extracts(monkeypatch)
    monkeypatch.setattr(extract, "IN_FLIGHT_PER_WORKER", 1)
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 6.0)  # tasks of two clips; the long file alone
    build.build_store(tmp_path / "audio", tmp_path / "two.h5", workers=2, progress=False)
    assert mine and "long.wav" not in mine and len(mine) < 25
    # while the pool is still starting this process takes every short task; the long file still goes
    mine.clear()
    monkeypatch.setattr(WorkerPool, "started", lambda self: False)
    monkeypatch.setattr(extract, "IN_FLIGHT_PER_WORKER", 4)
    build.build_store(tmp_path / "audio", tmp_path / "later.h5", workers=2, progress=False)
    assert sorted(mine) == [f"{k:02d}.wav" for k in range(24)]
    monkeypatch.setattr(extract, "compute_files", compute)
    build.build_store(tmp_path / "audio", tmp_path / "one.h5", workers=1, progress=False)
    for name in ("two.h5", "later.h5"):
        with open_store(tmp_path / name) as two, open_store(tmp_path / "one.h5") as one:
            assert np.array_equal(two.features[:], one.features[:])
            assert np.array_equal(two.index["checksum"], one.index["checksum"])


def test_when_every_task_is_handed_out_this_process_takes_back_the_ones_still_queued(tmp_path, monkeypatch):
    """Instead of waiting for a worker to work through its queue, this process runs what no worker has taken yet."""
    _short_clips(tmp_path / "audio", 16, "{:02d}.wav")
    mine = _files_this_process_extracts(monkeypatch)
    monkeypatch.setattr(extract, "POOL_MIN_AUDIO_SECONDS", 0.0)
    monkeypatch.setattr(extract, "IN_FLIGHT_PER_WORKER", 8)  # every task fits in the worker's queue
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 6.0)  # 8 tasks of two clips
    monkeypatch.setattr(WorkerPool, "started", lambda self: True)  # so each one goes to the pool first
    build.build_store(tmp_path / "audio", tmp_path / "two.h5", workers=2, progress=False)
    # the worker, still importing, has taken at most one task and the pool's call queue holds one more
    assert len(mine) >= 8 and len(mine) % 2 == 0, mine
    monkeypatch.undo()
    build.build_store(tmp_path / "audio", tmp_path / "one.h5", workers=1, progress=False)
    with open_store(tmp_path / "two.h5") as two, open_store(tmp_path / "one.h5") as one:
        assert np.array_equal(two.features[:], one.features[:])
        assert np.array_equal(two.index["checksum"], one.index["checksum"])


def test_a_small_build_does_not_wait_for_workers_it_would_not_need(tmp_path, monkeypatch):
    """Below POOL_MIN_AUDIO_SECONDS this process extracts everything and the pool, still starting, is stopped."""
    _short_clips(tmp_path / "audio", 6, "{}.wav")
    mine, pools = _files_this_process_extracts(monkeypatch), []

    class Kept(WorkerPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(extract, "WorkerPool", Kept)
    monkeypatch.setattr(extract, "POOL_MIN_AUDIO_SECONDS", 18.0)  # the folder holds exactly 18 s
    build.build_store(tmp_path / "audio", tmp_path / "s.h5", workers=2, progress=False)
    assert sorted(mine) == [f"{k}.wav" for k in range(6)]
    (pool,) = pools
    assert pool._broken  # stopped, not waited for (it never had a task)
    with open_store(tmp_path / "s.h5") as store:
        assert len(store.paths) == 6
    mine.clear()
    monkeypatch.setattr(extract, "POOL_MIN_AUDIO_SECONDS", 17.9)  # just below: the pool takes its share
    monkeypatch.setattr(extract, "IN_FLIGHT_PER_WORKER", 1)
    monkeypatch.setattr(build, "TASK_AUDIO_SECONDS", 3.0)
    monkeypatch.setattr(WorkerPool, "started", lambda self: True)  # as if up already: the pool gets tasks
    # and keeps them: this build is over before the worker has even imported memstore, so this process
    # would otherwise take back the task queued for it (see the test above)
    monkeypatch.setattr(extract, "_take_back", lambda running, submitted, task_seconds: None)
    build.build_store(tmp_path / "audio", tmp_path / "t.h5", workers=2, progress=False)
    assert len(mine) < 6


def _raise_memory_error(self, samples, sample_rate):
    raise MemoryError("injected")


@pytest.mark.parametrize(("workers", "threads", "advice"), [
    (1, False, r"more memory \(one file at a time already\)"),
    (2, True, r"fewer workers \(workers=2 now\) or more memory"),
])
def test_memory_running_out_says_what_to_change(tmp_path, monkeypatch, workers, threads, advice):
    """In this process, and on a caller's executor (threads here, so the injected failure reaches them)."""
    (tmp_path / "a" / "c").mkdir(parents=True)
    for k in range(2):
        write_wav(tmp_path / "a" / "c" / f"{k}.wav", np.full(2000, 0.1), 8000)
    monkeypatch.setattr(Spectrogram, "__call__", _raise_memory_error)
    with cf.ThreadPoolExecutor(2) as pool, pytest.raises(BuildError, match="memory ran out .*" + advice):
        build.build_store(tmp_path / "a", tmp_path / "s.h5", workers=workers, executor=pool if threads else None,
                          progress=False)


# --- tools use the public API ----------------------------------------------------------------

def _private_memstore_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "memstore":
            names = [a.name for a in node.names]
            found += [f"{node.module}.{n}" for n in names if n.startswith("_")]
            found += [node.module] if any(p.startswith("_") for p in node.module.split(".")) else []
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if a.name.split(".")[0] == "memstore" and any(p.startswith("_") for p in a.name.split("."))]
    return found


def test_bench_build_imports_no_private_name():
    assert _private_memstore_imports(TOOLS / "bench_build.py") == []


def _blas_threads() -> list[int]:
    import threadpoolctl

    return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]


def test_the_benchmarks_warm_workers_run_one_blas_thread_and_leave_the_environment(monkeypatch):
    pytest.importorskip("threadpoolctl")
    monkeypatch.syspath_prepend(str(TOOLS))
    import bench_build

    before = {k: os.environ.get(k) for k in bench_build.THREAD_VARS}
    pool = bench_build.warm_pool(2)
    try:
        assert {k: os.environ.get(k) for k in bench_build.THREAD_VARS} == before
        threads = pool.submit(_blas_threads).result()
        assert threads and set(threads) == {1}
    finally:
        pool.shutdown()


def _faults_of_freed_and_reallocated_arrays(rounds: int = 30) -> tuple[int, int]:
    """Minor page faults of ``rounds`` rounds of what a file's extraction does: a few ~1 MB arrays, then freed."""
    import resource

    def one_round():
        parts = [np.ones(1 << 17 + k % 2) for k in range(6)]  # 1 and 2 MB, 9 MB in all
        return sum(float(p[-1]) for p in parts)

    one_round()  # the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        one_round()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, rounds


def _plain_spawned_process_faults(conn) -> None:
    conn.send(_faults_of_freed_and_reallocated_arrays())


def test_a_build_worker_keeps_its_heap_between_files_instead_of_faulting_it_in_again():
    import ctypes
    import multiprocessing

    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("no glibc mallopt here: the allocator is left as it is")
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    plain = ctx.Process(target=_plain_spawned_process_faults, args=(theirs,))
    plain.start()
    untuned, rounds = ours.recv()
    plain.join()
    pool = WorkerPool(1)
    try:
        tuned, _ = pool.submit(_faults_of_freed_and_reallocated_arrays).result()
    finally:
        pool.shutdown()
    pages_per_round = 9 * 2**20 // 4096
    if untuned < rounds * pages_per_round // 4:
        pytest.skip(f"this allocator keeps its heap by default ({untuned} faults in {rounds} rounds)")
    assert tuned < pages_per_round, (tuned, untuned)  # at most one growth, not one per round


def _faults_per_file_of_a_build_after_other_work(audio_root: str, store: str, conn) -> None:
    import resource

    from memstore.build import build_store

    mel = MelSpectrogram(sample_rate=44100)
    for path in sorted(Path(audio_root).rglob("*.wav")):  # the caller's own feature work first, as in a notebook
        mel(read_audio(path, sample_rate=44100)[0], 44100)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    report = build_store(audio_root, store, workers=1, progress=False)
    conn.send(((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / report.stored, report.stored))


def test_a_build_in_this_process_keeps_its_heap_from_file_to_file(tmp_path, monkeypatch):
    """Measured in a fresh spawned process: a workers=1 build extracts in the caller's process."""
    import ctypes
    import multiprocessing

    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("no glibc mallopt here: the allocator is left as it is")
    monkeypatch.syspath_prepend(str(TOOLS))
    import bench_build

    bench_build.make_irmas_folder(tmp_path / "audio", 60)  # 3 s clips, stereo 16-bit, 44.1 kHz
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_faults_per_file_of_a_build_after_other_work,
                        args=(str(tmp_path / "audio"), str(tmp_path / "s.h5"), theirs))
    child.start()
    per_file, stored = ours.recv()
    child.join()
    assert stored == 60
    # a file's rows are 16 pages of the mapped store, written once; without a kept heap its ~1 MB arrays
    # were faulted in again for every file (about 510 faults per file here)
    assert per_file < 150, per_file


def test_a_failed_task_is_raised_after_the_results_beside_it_and_the_running_tasks_are_recorded():
    import threading

    def done(value=None, error=None):
        fut = cf.Future()
        fut.set_running_or_notify_cancel()
        if error is None:
            fut.set_result(value)
        else:
            fut.set_exception(error)
        return fut

    queued, running_one = cf.Future(), cf.Future()
    running_one.set_running_or_notify_cancel()  # a worker has it: it cannot be cancelled, only waited for
    finished = {done(["a"]), done(error=ValueError("bad file")), done(["b"])}
    running = {queued, running_one}
    threading.Timer(0.2, running_one.set_result, args=(["c"],)).start()
    recorded = []
    with cf.ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="bad file"):
        extract._take_results(pool, finished, running, recorded.append)
    assert sorted(recorded) == [["a"], ["b"], ["c"]]  # every extracted file keeps its flag
    assert queued.cancelled() and not running
