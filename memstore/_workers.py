"""The local build's worker pool: single-threaded workers that end with their parent.

``build_store(..., workers=N)`` extracts in the building process and ``N - 1``
processes started with the ``spawn`` method (fork is unsafe with HDF5 handles
and threads):
:func:`memstore.extract.local_executor` starts one :class:`WorkerPool` per
build and :mod:`memstore.extract` runs the tasks on it. Three things about
those processes are looked after apart from the build and its tasks:
how they start (:mod:`memstore._spawn`: without the caller's main module,
or behind its main guard), and, here, the two below.

**Single-threaded workers, without touching the caller's environment.**
N workers on N cores must not each run a BLAS thread pool (measured: two
workers with two OpenBLAS threads each were 3x slower than one process).
The workers used to inherit ``OMP_NUM_THREADS=1`` and friends from a
temporary change of the parent's ``os.environ``, which raced between two
builds in two threads and flickered the user's environment. Now each worker
sets the variables in its *own* environment before it imports numpy (so its
BLAS starts one thread), and, for a worker that imported the main script
and with it numpy first, limits every loaded BLAS/OpenMP library at run
time through its own ``*_set_num_threads`` function (the libraries are
found in ``/proc/self/maps``). memstore's numba
kernels are not parallel, so numba's thread pool is never started.

**Workers die with their parent.** The call queue's pipe is held open by
every worker, so a worker never sees end-of-file: after a ``kill -9`` of the
build, its workers used to wait forever (reparented to init, ~180 MB each),
and so did multiprocessing's resource tracker, which exits only when every
holder of its pipe is gone. Each worker asks Linux for ``SIGKILL`` when its
parent dies (``prctl(PR_SET_PDEATHSIG)``) and runs a watchdog thread on
``os.getppid()`` (portable, and covers a parent that died before the
``prctl``). ``PR_SET_PDEATHSIG`` fires when the *thread* that started the
child exits: the pool belongs to one ``build_store`` call and every worker is
started by the thread running that call (``ProcessPoolExecutor`` starts
spawn-context workers on ``submit``, in the submitting thread, and only the
build's thread submits), which outlives the pool.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import ctypes
import gc
import multiprocessing
import os
import re
import signal
import sys
import threading
import time

from . import _spawn

#: thread-count variables each worker sets to 1 in its own environment
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
#: how often a worker's watchdog looks at its parent, in seconds
WATCHDOG_SECONDS = 0.5
#: a worker's garbage-collector thresholds (``gc.set_threshold``; Python's default is 700, 10, 10)
WORKER_GC_THRESHOLDS = (50_000, 20, 100)

_PR_SET_PDEATHSIG = 1
#: shared libraries whose thread count is set at run time in a worker
_NATIVE_POOLS = re.compile(r"(openblas|mkl_rt|libmkl|blis|gomp|iomp|libomp)[^/]*\.(so|dylib)", re.I)
_SETTERS = tuple(f"{p}openblas_set_num_threads{s}" for p in ("", "scipy_") for s in ("", "64_", "_64")) + (
    "MKL_Set_Num_Threads", "bli_thread_set_num_threads", "omp_set_num_threads")
#: the getter of each setter, same order (for :func:`one_native_thread`, which restores)
_GETTERS = tuple(f"{p}openblas_get_num_threads{s}" for p in ("", "scipy_") for s in ("", "64_", "_64")) + (
    "MKL_Get_Max_Threads", "bli_thread_get_num_threads", "omp_get_max_threads")


# --- the pool ------------------------------------------------------------------------------

class WorkerPool(cf.ProcessPoolExecutor):
    """A spawn-context pool of single-threaded workers that end when this process ends.

    All workers are started at once (a spawn-context pool would start one per
    waiting task), from the calling thread, which must outlive the pool.
    ``warm``, a picklable function, is queued right behind the start-up
    tasks, once per worker: its first real task then finds its imports done
    (a build's pool loads its feature kernels while the building process
    still scans the folder). It is only a head start: what it returns, or
    raises, is never looked at, and which worker runs which copy is up to the
    pool.

    Workers start without the caller's main module where this Python allows
    (:data:`memstore._spawn.STARTS_WITHOUT_MAIN`): a script's own imports (torch, ...) and
    module-level code stay out of them, and a build needs no main guard. Its
    tasks are memstore's functions; ``main=True`` starts workers as
    ``multiprocessing``'s spawn does, main module and all, for functions
    defined there (without it, such a task cannot be unpickled and the worker
    dies: ``BrokenProcessPool``). The script's module-level settings (warning
    filters, logging) do not reach such workers either; the environment,
    ``sys.path``, ``sys.argv`` and the working directory do.
    """

    def __init__(self, n_workers: int, *, with_parent: bool = False, warm=None, main: bool = False):
        #: whether the workers import the caller's main module again (``multiprocessing``'s own spawn)
        self.imports_main = main or not _spawn.STARTS_WITHOUT_MAIN
        super().__init__(n_workers, mp_context=multiprocessing.get_context("spawn") if self.imports_main else
                         _spawn._WorkerContext(),
                         initializer=_init_worker, initargs=(os.getpid(),))
        #: how many processes the pool started
        self.n_workers = n_workers
        #: whether the process that submits runs tasks too (a build's own pool: ``extract.local_executor``)
        self.with_parent = with_parent
        widen_pipe(getattr(getattr(self, "_result_queue", None), "_reader", None), RESULT_PIPE_BYTES)
        try:
            self._startup = [self.submit(os.getpid) for _ in range(n_workers)]
            if warm is not None:
                for _ in range(n_workers):
                    self.submit(warm)
        except BaseException:
            # A worker that dies while the next one starts breaks the pool before the new one is known
            # to the executor's manager thread, which then waits for it forever (seen in CI): kill all.
            self.break_down()
            self.shutdown(wait=True, cancel_futures=True)
            raise

    def started(self) -> bool:
        """Whether every worker has started (run its first task), or failed to."""
        return all(f.done() for f in self._startup)

    def wait_started(self) -> None:
        """Wait until :meth:`started` (a worker that dies meanwhile breaks the pool; that ends the wait too)."""
        waiting = set(self._startup)
        while waiting:
            _, waiting = wait_any(self, waiting)

    def died_at_startup(self) -> bool:
        """Whether the pool broke before every worker had run its first task."""
        return any(f.done() and not f.cancelled() and f.exception() is not None for f in self._startup)

    def dead_workers(self) -> list[int]:
        """Pids of workers that have exited (the pool never retires workers, so any exit is a death)."""
        procs = getattr(self, "_processes", None) or {}
        return [pid for pid, p in list(procs.items()) if p.exitcode is not None]

    def break_down(self) -> None:
        """Kill every worker and close this process's end of the result pipe.

        A worker killed while writing its reply leaves half a message in the
        result pipe. ``ProcessPoolExecutor``'s manager thread has then started
        to read it and waits for the rest forever: no end-of-file ever comes,
        because the other workers and this process hold the pipe's write end
        (CPython 3.11 behaviour). With every writer gone the read fails, the
        manager thread marks the pool broken, and every pending future gets
        ``BrokenProcessPool``, as after any other worker death. Uses two private
        attributes of ``ProcessPoolExecutor`` (``_processes``, ``_result_queue``);
        :func:`wait_any` gives up by itself if they ever change.
        """
        for p in list((getattr(self, "_processes", None) or {}).values()):
            if p.exitcode is None:
                p.kill()
        writer = getattr(getattr(self, "_result_queue", None), "_writer", None)
        if writer is not None and not writer.closed:
            writer.close()
        # a task the queue's feeder thread is still writing to the dead workers fails instead of blocking
        reader = getattr(getattr(self, "_call_queue", None), "_reader", None)
        if reader is not None and not reader.closed:
            reader.close()


#: the buffer a pool asks for its result pipe, in bytes (Linux gives 64 KiB; unprivileged processes may ask
#: for up to ``/proc/sys/fs/pipe-max-size``, 1 MiB by default): a build's task returns 0.5-1.5 MB of
#: statistics, and with 64 KiB a worker waits in its write until the building process, busy extracting, has
#: read most of it
RESULT_PIPE_BYTES = 1 << 20


def widen_pipe(conn, nbytes: int) -> int:
    """Ask for a buffer of ``nbytes`` for the pipe under the connection ``conn``; its size after, 0 if unknown.

    Linux only (``F_SETPIPE_SZ``); capped at ``/proc/sys/fs/pipe-max-size``, and
    never made smaller than it is.
    Anything the system refuses (another platform, a user's pipe quota) leaves
    the pipe as it was: a larger buffer only saves a writer some waiting.
    """
    try:
        import fcntl

        fd = conn.fileno()
        with contextlib.suppress(OSError, ValueError):
            with open("/proc/sys/fs/pipe-max-size") as f:
                nbytes = min(nbytes, int(f.read()))
        size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        if nbytes > size:  # never smaller: a system whose maximum is below the default keeps its default
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, nbytes)
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (ImportError, AttributeError, OSError, ValueError):
        return 0


#: seconds a dead worker may go unnoticed by the pool before the build breaks the pool itself
DEAD_WORKER_GRACE = 5.0
#: how often :func:`wait_any` looks at the workers while no task finishes, in seconds
POLL_SECONDS = 0.5


def wait_any(pool, running: set) -> tuple[set, set]:
    """``cf.wait(running, return_when=FIRST_COMPLETED)`` that cannot hang on a worker killed mid-reply.

    A :class:`WorkerPool` whose worker has died is normally marked broken by
    the executor within milliseconds. If that has not happened after
    :data:`DEAD_WORKER_GRACE` seconds, the executor is stuck reading a
    half-written reply: the pool is broken down (:meth:`WorkerPool.break_down`),
    and if even that does not end the wait, ``BrokenProcessPool`` is raised here.
    Other executors are waited on as they are.
    """
    if not isinstance(pool, WorkerPool):
        return cf.wait(running, return_when=cf.FIRST_COMPLETED)
    dead_since = broken_at = None
    while True:
        done, rest = cf.wait(running, timeout=POLL_SECONDS, return_when=cf.FIRST_COMPLETED)
        if done:
            return done, rest
        if not pool.dead_workers():
            continue
        now = time.monotonic()
        dead_since = dead_since or now
        if broken_at is None and now - dead_since > DEAD_WORKER_GRACE:
            pool.break_down()
            broken_at = now
        elif broken_at is not None and now - broken_at > DEAD_WORKER_GRACE:
            raise cf.process.BrokenProcessPool("a worker process died and the pool did not notice")


# --- inside a worker -----------------------------------------------------------------------

#: ``mallopt`` parameter number of glibc's ``M_TOP_PAD`` (malloc.h)
_M_TOP_PAD = -2
#: freed heap a worker's allocator keeps for the next file instead of handing it back (see :func:`keep_heap`)
TOP_PAD_BYTES = 64 << 20
#: glibc's own ``M_TOP_PAD`` (``mallopt(3)``), set back when the last build in a process ends
DEFAULT_TOP_PAD_BYTES = 128 << 10


def _init_worker(parent_pid: int) -> None:
    """Runs first in every worker: one native thread, fewer collections, an end with the parent, a quick exit.

    The cyclic garbage collector's first threshold goes from 700 to
    :data:`WORKER_GC_THRESHOLDS`' 50,000 allocations: a worker's imports and
    kernel loads (scipy, numba) allocate a few hundred thousand objects, and
    with the default thresholds it collected dozens of times while they ran,
    about 0.05 s of its 0.55 s start-up (measured). Extraction makes few
    cycles; it still collects, only less often.
    """
    for k in THREAD_VARS:
        os.environ[k] = "1"  # this process only: libraries loaded from now on start one thread
    limit_native_threads(1)
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    global _heap_kept_for_life
    _heap_kept_for_life = keep_heap()
    _die_with_parent(parent_pid)
    if "coverage" not in sys.modules:  # coverage saves a worker's data at exit: let it
        atexit.register(_exit_now)


def keep_heap(pad: int = TOP_PAD_BYTES) -> bool:
    """Have glibc's allocator keep ``pad`` bytes of freed heap; False where there is no glibc ``mallopt``.

    Extracting a file allocates a few arrays of about a megabyte (samples,
    frames, spectra) and frees them. glibc's default returns the top of the
    heap to the kernel whenever more than twice its (adaptive) mmap threshold
    is free, so every file faulted its pages in again: measured 480-720 minor
    faults per 3 s clip, and 0.35-0.65 s of system time per 1,000 files in
    each worker, about half the work. With ``M_TOP_PAD`` the heap keeps the
    pad when it shrinks and grows by it, so the pages stay mapped from one
    file to the next (about 0 faults per file). A worker keeps this for
    life; the building process only while it extracts (:func:`kept_heap`).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_TOP_PAD, int(pad)) == 1


@contextlib.contextmanager
def kept_heap():
    """Run the body with :func:`keep_heap` in effect; then glibc's default pad again, and the heap trimmed.

    For the building process, which extracts too (``workers=1``, and beside
    the pool with more): measured there 480-720 minor faults per 3 s clip, and
    builds up to 2x slower without it, worst in a process that had built
    before. Overlapping builds (threads) share it; the last one out restores
    the pad and gives the freed heap back (``malloc_trim``). One thing cannot
    be put back: setting any ``mallopt`` parameter ends glibc's *adaptive*
    mmap threshold for the process, which stays at the value it had reached
    (``mallopt(3)``). Allocations behave the same; only the size above which
    glibc maps a block directly stops moving.
    """
    with _heap_kept.held():
        yield


def _give_heap_back(_) -> None:
    if keep_heap(DEFAULT_TOP_PAD_BYTES):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)


def _exit_now() -> None:
    """End a worker at interpreter exit without tearing its modules down.

    The pool's shutdown waits for every worker to exit, and a worker that has
    imported numpy, scipy, numba and h5py spends 0.7 s of CPU in interpreter
    finalisation, measured on 2 busy cores: a fixed cost of every parallel
    build. Registered last, this runs first at exit, after multiprocessing has
    run its own exit handlers and the worker loop has returned; nothing is
    left to save (rows and flags went through shared maps to the page cache;
    no HDF5 file is open in a worker). The exit status is 0: the pool reads
    workers' deaths from their sentinels, never their status.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def limit_native_threads(n: int) -> int:
    """Set every loaded BLAS/OpenMP library of this process to ``n`` threads; return how many calls worked.

    Libraries are found in ``/proc/self/maps`` (Linux); elsewhere this does
    nothing and the environment variables set for later loads are all there is.
    """
    pools = _native_pools()
    for set_threads, _ in pools:
        set_threads(n)
    return len(pools)


def _native_pools() -> list[tuple]:
    """``(set_threads, get_threads)`` of every loaded BLAS/OpenMP library (``get_threads`` may be None)."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split(None, 5)[5].strip() for line in f
                            if len(line.split(None, 5)) == 6 and _NATIVE_POOLS.search(line)})
    except OSError:
        return []
    pools = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same handle, nothing new runs
        except OSError:
            continue
        for set_name, get_name in zip(_SETTERS, _GETTERS, strict=True):
            set_threads, get_threads = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if set_threads is not None:
                set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
                if get_threads is not None:
                    get_threads.argtypes, get_threads.restype = [], ctypes.c_int
                pools.append((set_threads, get_threads))
    return pools


class _WhileUsed:
    """A process-wide setting held while any of several overlapping users (builds in threads) runs.

    The first user in calls ``apply()``; the last one out calls ``undo(what apply returned)``.
    """

    def __init__(self, apply, undo):
        self._apply, self._undo = apply, undo
        self._lock = threading.Lock()
        self._users = 0
        self._token = None

    @contextlib.contextmanager
    def held(self):
        with self._lock:
            if self._users == 0:
                self._token = self._apply()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    token, self._token = self._token, None
                    self._undo(token)


def _one_thread_apply() -> list[tuple]:
    # a library without a getter is left alone: what it had could not be restored
    saved = [(set_threads, get_threads()) for set_threads, get_threads in _native_pools() if get_threads is not None]
    for set_threads, _ in saved:
        set_threads(1)
    return saved


def _one_thread_undo(saved: list[tuple]) -> None:
    for set_threads, n in saved:
        set_threads(n)


_one_thread = _WhileUsed(_one_thread_apply, _one_thread_undo)
_heap_kept = _WhileUsed(keep_heap, _give_heap_back)
#: a worker keeps its heap for life (``_init_worker``)
_heap_kept_for_life = False


def heap_kept() -> bool:
    """Whether glibc keeps this process's freed heap now (a build's worker, or its own process while it extracts)."""
    return _heap_kept_for_life or bool(_heap_kept._token)


@contextlib.contextmanager
def one_native_thread():
    """Run the body with every loaded BLAS/OpenMP library at one thread; restore their counts after.

    A build that extracts in its own process (``workers=1``) runs many small
    matrix products (each file's co-moment matrix). With a multi-threaded
    BLAS each product wakes a thread pool, and on a loaded machine the
    threads wait for each other's cores: measured on 2 busy cores, 6 ms per
    product instead of 0.1 ms, and a build 5x slower. The counts are restored
    when the last of the overlapping users (builds in several threads) leaves,
    so concurrent builds never leave the process single-threaded, and
    products give the same bytes either way (the store is byte-identical).
    """
    with _one_thread.held():
        yield


def _die_with_parent(parent_pid: int) -> None:
    direct = os.getppid() == parent_pid  # False if the parent is already gone, or a wrapper sits between
    if not direct and not _alive(parent_pid):
        os._exit(1)
    if direct and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker
        if os.getppid() != parent_pid:  # the parent died before the prctl took effect
            os._exit(1)

    def watch() -> None:
        while (os.getppid() == parent_pid) if direct else _alive(parent_pid):
            time.sleep(WATCHDOG_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="memstore-parent-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
