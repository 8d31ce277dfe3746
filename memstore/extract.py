"""Feature extraction for a build: per-file compute, tasks, and where they run (this process or a pool).

``build_store`` plans every file's rows before anything is computed, then
hands the files still to do to :func:`extract_files`. This module owns the
rest of extraction; the store file, the plan and the statistics fold belong
to the build.

**Per file** (:func:`compute_files`): the samples come from
:mod:`memstore.audio` (a long WAV at the target rate is decoded lazily, chunk
by chunk, as :func:`~memstore.audio.decodes_lazily` decides from the plan's
header facts; nothing here knows an audio format), then the transform runs.
Only a file's own failures are skips: it cannot be read or decoded, or its
features are not finite (or overflow float16). A :class:`MemoryError` gets
the file's name and stops the build; any other exception is a bug and
propagates.

**Per task** (:func:`extract_task`): files are grouped into tasks of about
``task_seconds`` of audio (:func:`tasks`). A task writes its files' rows at
their planned offsets into the partial store with ``pwrite``, starts their
write-back to disk (:class:`_Rows`), and returns, per file, the crc32 of its
rows and its statistics (:meth:`RunningStats.packed
<memstore.stats.RunningStats.packed>` when they travel from a worker), or the
reason it was skipped. The parent sets the done flags and checksums and
folds the statistics in file order, so the store's bytes never depend on
which worker ran what.

**Where tasks run** (:func:`local_executor`, :func:`extract_files`): in this
process (``workers=1``); in this process *and* a
:class:`~memstore._workers.WorkerPool` of ``workers - 1`` spawned
single-threaded workers that lives as long as one build (this process takes
tasks from the start, so the ~1 s start-up of a spawned interpreter is not
lost time; a build of at most :data:`POOL_MIN_AUDIO_SECONDS` of audio stops the
pool unused and runs here alone); on a caller's ``concurrent.futures``
executor; or on a Dask cluster
(:mod:`memstore.distributed`, imported only then). The pool machinery itself
(thread limits, workers that die with their parent, a pool that cannot hang
on a dead worker) is :mod:`memstore._workers`, and how they start (without
the caller's main module, the main guard where that cannot be) is
:mod:`memstore._spawn`.

Imports: audio, features (the transform from its JSON), stats, errors,
``_workers``, ``_spawn`` and ``_progress``; never the store or build modules.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import errno
import functools
import os
import zlib

import numpy as np

from . import _progress, _spawn
from ._spawn import GUARD_ADVICE, check_main_guard
from ._workers import WorkerPool, wait_any
from .audio import decodes_lazily, open_signal, read_audio
from .errors import AudioDecodeError, BuildError
from .features import MelSpectrogram, transform_from_json
from .stats import RunningStats

__all__: list[str] = []  # the build's machinery; the public entry point is memstore.build.build_store

#: a build's own pool is used only for more audio than this (seconds): below it this process alone is
#: done about as soon as a spawned worker has started (~1 s of imports, while this process extracts
#: 3,000-5,000 audio seconds per second), and waiting for the workers would cost more than they give
POOL_MIN_AUDIO_SECONDS = 3000.0
#: tasks in flight per worker on a local executor: enough to keep every worker busy, few enough to
#: bound the results waiting in the parent
IN_FLIGHT_PER_WORKER = 4


class _Skip(Exception):
    """This one file cannot be stored; ``reason`` goes into the report's skipped list."""

    def __init__(self, err: Exception):
        self.reason = f"{type(err).__name__}: {err}"
        super().__init__(self.reason)


def _compute(audio_path: str, transform, rate: int, n_frames: int, n_bins: int, dtype: str,
             n_samples: int, source_rate: int) -> np.ndarray:
    """One file's feature rows in the store dtype.

    Raises :class:`_Skip` when this file cannot be read or decoded, or its
    features are unusable (not finite, or beyond float16). Anything else is
    not about the file and propagates: a bug, or memory running out.

    Whether the file is decoded lazily (so memory holds its features, not its
    samples) comes from the plan (``n_samples``, ``source_rate``): the header
    was read once, when the build was planned, and is not read again here.
    """
    try:
        if decodes_lazily(audio_path, n_samples=n_samples, source_rate=source_rate, sample_rate=rate):
            samples = open_signal(audio_path)
        else:
            samples, _ = read_audio(audio_path, sample_rate=rate)
    except OSError as err:  # AudioDecodeError, or the OS refusing to open or read this file
        raise _Skip(err) from err
    try:
        feats = transform(samples, rate)
    except AudioDecodeError as err:  # a lazily decoded long WAV meets its bad chunk here
        raise _Skip(err) from err
    if feats.shape != (n_frames, n_bins):  # the plan and the transform disagree: a bug, not the file
        raise BuildError(f"{audio_path}: computed {feats.shape} frames, planned {(n_frames, n_bins)}")
    if not np.isfinite(feats).all():
        raise _Skip(BuildError(f"{audio_path}: features contain NaN or infinity"))
    rows = np.ascontiguousarray(feats.astype(dtype, copy=False))
    if dtype == "float16" and not np.isfinite(rows).all():
        raise _Skip(BuildError(f"{audio_path}: features overflow float16; build with dtype='float32'"))
    return rows


def compute_files(config_json: str, rate: int, n_bins: int, dtype: str, items):
    """Yield ``(i, planned row, rows)`` per file of a task, or ``(i, planned row, reason)`` when it is skipped.

    ``items`` are ``(i, path, first row, n_frames, n_samples, source_rate)``
    from the plan (see :func:`tasks`). Only :class:`_Skip` becomes a skip. A
    :class:`MemoryError` gets the file's name and propagates, so the build
    stops (resumably) instead of losing the file; any other exception is a
    bug and propagates as it is.
    """
    transform = transform_from_json(config_json)
    for i, audio_path, row, n_frames, n_samples, source_rate in items:
        try:
            rows = _compute(audio_path, transform, rate, n_frames, n_bins, dtype, n_samples, source_rate)
        except _Skip as skip:
            yield i, row, skip.reason
            continue
        except MemoryError as err:
            raise MemoryError(f"{audio_path} ({n_frames} x {n_bins} features): {err}") from err
        yield i, row, rows


def extract_task(partial: str, data_offset: int, n_bins: int, dtype: str, config_json: str,
                 rate: int, items: list[tuple[int, str, int, int, int, int]], *, packed: bool = True) -> list[tuple]:
    """Local worker: compute and write the rows of several files at their planned offsets.

    Returns ``(i, crc32, statistics)`` per stored file and ``(i, None,
    reason)`` per skipped one. The statistics are
    :meth:`RunningStats.packed <memstore.stats.RunningStats.packed>` for the
    trip from a worker, or with ``packed=False`` (a task this process runs
    itself) the :class:`~memstore.stats.RunningStats` as they are: packing
    costs 10-20 us per file, for nothing, in the process that also records
    every worker's results (whose :class:`~memstore.stats.Fold` merges a
    packed triangle as it is). The rows go in through :class:`_Rows`.
    """
    results = []
    with _Rows(partial, data_offset, n_bins * np.dtype(dtype).itemsize) as out:
        for i, row, rows in compute_files(config_json, rate, n_bins, dtype, items):
            if isinstance(rows, str):
                results.append((i, None, rows))
                continue
            out.put(row, rows)
            stats = RunningStats.of_rows(rows)
            results.append((i, zlib.crc32(rows.data), stats.packed() if packed else stats))
    return results


class _Rows:
    """A task's rows, written into the partial store at their planned offsets; their write-back started at the end.

    ``pwrite``, not a memory map: mapped writes fault every page of the rows
    in and the kernel zeroes it before the copy; measured on 6,705 files of
    259 x 96 float32, 0.26 s against 0.12 s. Neither calls ``msync`` or
    ``fsync``: the page cache outlives a killed process, and the finished
    store is fsynced once before its rename. That fsync used to write the
    whole store (0.2 s for 670 MB here, with both cores idle); each task now
    starts the write-back of its own rows (:func:`start_writeback`), so the
    disk works while the next files are computed and the final fsync finds
    them written.
    """

    def __init__(self, partial: str, data_offset: int, row_bytes: int):
        self._fd = os.open(partial, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        self._data_offset, self._row_bytes = data_offset, row_bytes
        self._lo = self._hi = -1

    def __enter__(self) -> _Rows:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._hi > self._lo and exc[0] is None:
                start_writeback(self._fd, self._lo, self._hi - self._lo)
        finally:
            os.close(self._fd)

    def put(self, row: int, rows: np.ndarray) -> None:
        """Write ``rows`` (C-contiguous, the store's dtype) at feature row ``row``."""
        pos = self._data_offset + row * self._row_bytes
        data = memoryview(rows).cast("B")
        self._lo = pos if self._lo < 0 else min(self._lo, pos)
        self._hi = max(self._hi, pos + len(data))
        while data:
            n = os.pwrite(self._fd, data, pos)
            if n <= 0:  # a regular file never does this; never loop on it
                raise OSError(errno.EIO, f"pwrite wrote {n} bytes at byte {pos} of the partial store")
            data, pos = data[n:], pos + n


#: ``sync_file_range`` flag: start writing the range's dirty pages, wait for nothing (``<fcntl.h>``)
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` of ``fd`` to disk, without waiting; True if asked.

    Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; elsewhere (or if it
    fails) nothing happens, and the final fsync writes these pages instead.
    Durability is not its job: it only spreads the store's write-back over
    the build.
    """
    call = _sync_file_range()
    return call is not None and call(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) == 0


@functools.cache
def _sync_file_range():
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux, or no such symbol
        return None
    call.argtypes, call.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    return call


def warm_up() -> None:
    """A new worker's first job: the features' imports and numba kernels, loaded before its first task.

    Measured in a spawned worker: importing this module takes 0.3 s and the
    first file another 0.2 s (numba loads its cached kernels and its own
    registries). Queued right behind the pool's start-up
    (:class:`~memstore._workers.WorkerPool`'s ``warm``), this runs while the
    building process scans and plans the folder, when the worker would
    otherwise wait for its first task. Zeros at 8 kHz: the kernels' argument
    types are the same for every transform and rate.
    """
    MelSpectrogram(sample_rate=8000)(np.zeros(4096, np.float32), 8000)


def tasks(files, pending, root, new, task_seconds: float):
    """Group the files still to do into tasks of about ``task_seconds`` of audio each (small files batched).

    Yields lists of ``(i, path, first row, n_frames, n_samples, source_rate)``,
    the plan's facts for each file (``new`` is the plan's index of this run's
    files), so a worker reads no header again.
    """
    batch, seconds = [], 0.0
    for i in pending:
        batch.append((i, os.fsdecode(root / files[i]), int(new["offset"][i]), int(new["n_frames"][i]),
                      int(new["n_samples"][i]), int(new["source_rate"][i])))
        seconds += float(new["n_samples"][i]) / int(new["source_rate"][i])  # planned rates are positive
        if seconds >= task_seconds:
            yield batch
            batch, seconds = [], 0.0
    if batch:
        yield batch


@contextlib.contextmanager
def local_executor(workers: int | None, executor):
    """The executor a build extracts with: the caller's, a new pool of ``workers - 1`` processes, or None.

    None means this process alone (``workers=1``, or one core). Otherwise a
    :class:`~memstore._workers.WorkerPool` of ``workers - 1`` spawned
    processes starts now, so their start-up (interpreters, numpy, numba, about
    1 s of CPU each) overlaps the build's scan and plan, and this process is
    the last worker (:func:`extract_files`): it extracts from the first task
    on, while the others are still starting. The pool is the build's own,
    killed if the build fails (a broken pool's queues may never drain) and shut
    down when it ends. Before any worker starts, the main guard is checked
    where workers import the main script again
    (:func:`~memstore._spawn.check_main_guard`).
    """
    n_workers = workers or os.cpu_count() or 1
    check_main_guard(spawns=executor is None and n_workers > 1)
    if executor is not None or n_workers == 1:
        yield executor
        return
    try:
        pool = WorkerPool(n_workers - 1, with_parent=True, warm=warm_up)
    except cf.process.BrokenProcessPool as err:
        guard = "" if _spawn.STARTS_WITHOUT_MAIN else f"If the script has no main guard: {GUARD_ADVICE}; otherwise "
        raise BuildError(f"a worker process died while starting ({err}); nothing was written. {guard}run the same "
                         "build again") from err
    try:
        yield pool
    except BaseException:
        pool.break_down()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def extract_files(files, pending, root, partial, data_offset, n_bins, dtype, config_json, rate, new,
                  done, checksum, fold, failed, workers, executor, progress, *, task_seconds: float) -> None:
    """Extract the ``pending`` files of the plan into the partial store, recording each as it finishes.

    ``executor`` is what :func:`local_executor` gave: None runs the tasks in
    this process, a Dask client on the cluster, anything else is a
    ``concurrent.futures`` executor. A stored file gets ``done[i] = 1``, its
    ``checksum[i]`` and its statistics folded (``fold.add``); a skipped one
    ``done[i] = 2``, its reason in ``failed[i]`` and ``fold.add(i, None)``.
    Memory running out anywhere is a :class:`BuildError` saying how to resume.
    """
    bar = _progress.bar(total=len(files), initial=len(files) - len(pending), unit="file", desc="extracting",
                        progress=progress)
    args = (os.fsdecode(partial), int(data_offset), int(n_bins), dtype, config_json, int(rate))

    def record(results):
        # flags go through the map without msync, like the rows: the page cache outlives a killed
        # process, and the finished store is fsynced before its rename (an msync per task cost the
        # parent 0.3 ms per file, in series with the workers)
        for i, crc, packed_or_reason in results:
            if crc is None:
                failed[i] = packed_or_reason
                done[i] = 2
                fold.add(i, None)
            else:
                checksum[i] = crc
                done[i] = 1
                fold.add(i, packed_or_reason)  # RunningStats, or a worker's packed tuple: the fold reads both
        bar.update(len(results))

    if isinstance(executor, WorkerPool) and executor.with_parent and \
            _audio_seconds(new, pending) <= POOL_MIN_AUDIO_SECONDS:
        executor.break_down()  # still starting, and never given a task: nothing of the store is lost
        executor = None
    run = tasks(files, pending, root, new, task_seconds)
    n_workers = workers or os.cpu_count() or 1
    dask = _is_dask_client(executor)
    try:
        if executor is None:
            for items in run:
                record(extract_task(*args, items, packed=False))
        elif dask:
            from .distributed import extract_on_cluster

            extract_on_cluster(executor, args, run, record)
        else:
            _extract_on_executor(executor, n_workers, args, run, record, partial, task_seconds)
    except MemoryError as err:
        n_done = int(np.count_nonzero(done[: len(files)]))
        if dask:
            advice = "fewer tasks at once per Dask worker or more memory per worker"
        elif executor is not None and n_workers > 1:
            advice = f"fewer workers (workers={n_workers} now) or more memory"
        else:  # this process (or a caller's executor with workers=1)
            advice = "more memory (one file at a time already)"
        raise BuildError(f"memory ran out while extracting features: {err}. Run the same build again with "
                         f"{advice}; it resumes from the {n_done} file(s) already done in {partial}") from err
    finally:
        bar.close()


def _audio_seconds(new, pending) -> float:
    """Seconds of audio in the ``pending`` files of the plan's index ``new`` (planned rates are positive)."""
    rows = new[np.asarray(pending, dtype=np.int64)]
    return float((rows["n_samples"] / rows["source_rate"]).sum())


def _is_dask_client(executor) -> bool:
    """A ``distributed.Client`` (told by its methods: distributed is imported only when one is given)."""
    return hasattr(executor, "gather") and hasattr(executor, "scheduler_info")


def _extract_on_executor(pool, n_workers, args, run, record, partial, task_seconds: float) -> None:
    """Run tasks on a ``concurrent.futures`` executor, at most :data:`IN_FLIGHT_PER_WORKER` per worker at once.

    On the build's own pool (``with_parent``) this process is a worker too:
    until the pool's workers have started, and whenever they have their tasks
    in flight, it runs the next task itself instead of waiting, so nothing
    waits for the pool's start-up. It takes a task only if it is no longer
    than what each worker has queued (:func:`_parent_takes`), so a worker
    never idles while this process is busy. When every task is handed out, it
    takes back the tasks still queued for a worker, newest first
    (:func:`_take_back`), instead of waiting for them. The build still ends
    only once every worker has started: one that could not start fails it,
    as it would a larger build.
    """
    running: set = set()
    submitted: dict = {}  # future -> its items, in the order they were submitted, until taken (for _take_back)
    with_parent = isinstance(pool, WorkerPool) and pool.with_parent
    cap = IN_FLIGHT_PER_WORKER * (pool.n_workers if with_parent else n_workers)

    def settle(finished: set) -> None:
        for fut in finished:  # a finished future holds its result (statistics): not kept once recorded
            submitted.pop(fut, None)
        _take_results(pool, finished, running, record)

    try:
        for items in run:
            if with_parent:
                finished = {fut for fut in running if fut.done()}
                running -= finished
                settle(finished)
                if (len(running) >= cap or not pool.started()) and _parent_takes(items, task_seconds):
                    record(extract_task(*args, items, packed=False))
                    continue
            fut = pool.submit(extract_task, *args, items)
            running.add(fut)
            if with_parent:
                submitted[fut] = items
            if len(running) > cap or (len(running) == cap and not with_parent):
                finished, running = wait_any(pool, running)
                settle(finished)
        while running:
            items = _take_back(running, submitted, task_seconds) if with_parent else None
            if items is not None:
                record(extract_task(*args, items, packed=False))
                continue
            finished, running = wait_any(pool, running)
            settle(finished)
        if with_parent:
            # a small build may be done before the pool has started; a worker that could not start (where
            # workers import the main script: one without a guard, run again in it) must still fail it
            pool.wait_started()
            if pool.died_at_startup():
                raise cf.process.BrokenProcessPool("a worker process died while starting")
    except cf.process.BrokenProcessPool as err:
        raise _broken_pool_error(pool, err, partial) from err
    finally:
        for fut in running:  # after a failure, queued tasks must not go on writing into the partial file
            fut.cancel()


def _take_results(pool, finished: set, running: set, record) -> None:
    """Record the tasks of ``finished`` that succeeded; if one failed, raise its error once the rest is settled.

    Settled means: every task that succeeded beside it is recorded (its rows
    are in the file, and its done flag lets a rerun resume after it), tasks
    still queued are cancelled, and tasks already running have ended and are
    recorded too. So a failing build leaves no write in progress in the
    partial file, and loses no file that was extracted (a set's order used to
    decide whether a result finished beside the failure was recorded).
    """
    failed = [fut for fut in finished if fut.exception() is not None]
    for fut in finished:
        if fut.exception() is None:
            record(fut.result())
    if not failed:
        return
    for fut in running:
        fut.cancel()
    rest = {fut for fut in running if not fut.cancelled()}
    while rest:
        done, rest = wait_any(pool, rest)
        for fut in done:
            if fut.exception() is None:
                record(fut.result())
    running.clear()
    failed[0].result()


def _take_back(running: set, submitted: dict, task_seconds: float):
    """The items of the newest task still waiting for a worker, cancelled so no worker ever runs it; or None.

    Once every task is handed out, this process would otherwise wait for the
    workers' queues to drain (up to :data:`IN_FLIGHT_PER_WORKER` tasks each)
    while its own core idles. A task a worker has already taken (or that sits
    in the pool's call queue) cannot be cancelled and is left to it.
    """
    for fut in reversed(submitted):
        if fut in running and _parent_takes(submitted[fut], task_seconds) and fut.cancel():
            running.discard(fut)
            return submitted.pop(fut)
    return None


def _parent_takes(items, task_seconds: float) -> bool:
    """Whether this process may run a task itself: an ordinary task of short files, not a long file.

    Each worker has :data:`IN_FLIGHT_PER_WORKER` tasks queued when this
    process takes one, and :func:`tasks` closes a task once it holds
    ``task_seconds`` of audio, so one of at most twice that ends before they do.
    """
    return sum(n_samples / rate for _, _, _, _, n_samples, rate in items) <= 2 * task_seconds


def _broken_pool_error(pool, err: BaseException, partial) -> BuildError:
    """The error for a broken local pool: the main guard if workers died starting, else resume."""
    if isinstance(pool, WorkerPool) and pool.died_at_startup() and pool.imports_main:
        return BuildError(f"a worker process died while starting ({err}). If the script that calls "
                          f"build_store has no main guard, every worker runs it again and fails: {GUARD_ADVICE}. "
                          f"If a worker was killed, run the same build again to resume from {partial}")
    return BuildError(f"a worker process died ({err}); run the same build again to resume from {partial}")
