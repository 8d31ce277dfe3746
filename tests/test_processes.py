"""Worker processes of a local build: the main guard, death with the parent, the caller's environment.

Every script here is a real file run by ``sys.executable`` in a subprocess, on
small real WAV folders; nothing about processes is mocked.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import descendants
from test_build import _done_count, same_store

import memstore
from memstore._spawn import STARTS_WITHOUT_MAIN
from memstore._workers import (
    RESULT_PIPE_BYTES,
    THREAD_VARS,
    WORKER_GC_THRESHOLDS,
    WorkerPool,
    wait_any,
    widen_pipe,
)
from memstore.build import build_store
from memstore.demo import make_demo_folder
from memstore.store import open_store

REPO = Path(memstore.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """6 classes x 1 file of 1 s."""
    return make_demo_folder(tmp_path_factory.mktemp("tiny"), n_per_class=1, seed=3, duration=1.0)


def run_python(args, cwd, timeout=120, stdin=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, input=stdin)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def stored(path) -> int:
    with open_store(path) as s:
        return len(s)


# --- 1. no main module in a worker; the main guard where workers import it -------------------

ONCE = """import os
import sys
import memstore.extract
from memstore import build_store
memstore.extract.POOL_MIN_AUDIO_SECONDS = 0.0  # a small folder, built with the pool all the same
with open(sys.argv[3], "a") as log:
    log.write(f"{os.getpid()} {__name__}\\n")
build_store(sys.argv[1], sys.argv[2], workers=3, progress=False)
"""


@pytest.mark.skipif(not STARTS_WITHOUT_MAIN, reason="this Python's workers import the main module again")
@pytest.mark.parametrize("how", ["script", "module", "stdin"])
def test_an_unguarded_script_builds_once_and_its_workers_never_run_it(tiny_root, tmp_path, how):
    # workers start without the caller's main module: its module-level code runs once, in the caller
    log, store = tmp_path / "ran.log", tmp_path / "s.h5"
    args = [str(tiny_root), str(store), str(log)]
    if how == "script":
        done = run_python([str(write(tmp_path / "once.py", ONCE)), *args], cwd=tmp_path)
    elif how == "module":
        write(tmp_path / "pkg" / "__init__.py", "")
        write(tmp_path / "pkg" / "once.py", ONCE)
        done = run_python(["-m", "pkg.once", *args], cwd=tmp_path)
    else:
        done = run_python(["-", *args], cwd=tmp_path, stdin=ONCE)
    assert done.returncode == 0, done.stderr[-3000:]
    ran = log.read_text().splitlines()  # with multiprocessing's spawn, each worker adds a line "<pid> __mp_main__"
    assert len(ran) == 1 and ran[0].endswith(" __main__"), ran
    assert stored(store) == 6 and not (tmp_path / "s.h5.partial").exists()
    build_store(tiny_root, tmp_path / "serial.h5", workers=1, progress=False)
    same_store(store, tmp_path / "serial.h5")


def test_the_spawn_proxy_leaves_out_every_way_of_naming_the_main_module():
    from multiprocessing import spawn

    from memstore._spawn import _SpawnWithoutMain

    real = spawn.get_preparation_data("w")
    mine = _SpawnWithoutMain(spawn).get_preparation_data("w")
    assert mine == {k: v for k, v in real.items() if not k.startswith("init_main")}
    assert set(real) - set(mine) <= {"init_main_from_path", "init_main_from_name"}  # what 3.11-3.13 send
    assert _SpawnWithoutMain(spawn).get_command_line is spawn.get_command_line  # the rest is spawn's own


#: prepended to the scripts below: a pool then starts its workers with ``multiprocessing``'s own spawn, which
#: imports the main script again (as where ``STARTS_WITHOUT_MAIN`` is False), and the main guard is checked
PLAIN_SPAWN = """import memstore._spawn
memstore._spawn.STARTS_WITHOUT_MAIN = False
"""

UNGUARDED = PLAIN_SPAWN + """import sys
from memstore import build_store
build_store(sys.argv[1], sys.argv[2], workers=2, progress=False)
"""

UNGUARDED_IN_FUNCTION = PLAIN_SPAWN + """import sys
from memstore import build_store

def main():
    build_store(sys.argv[1], sys.argv[2], workers=2, progress=False)

main()
"""

UNGUARDED_IN_THREAD = PLAIN_SPAWN + """import sys
import threading
from memstore import build_store

errors = []

def build():
    try:
        build_store(sys.argv[1], sys.argv[2], workers=2, progress=False)
    except Exception as err:
        errors.append(err)

t = threading.Thread(target=build)
t.start()
t.join()
if errors:
    raise errors[0]
"""

GUARDED = PLAIN_SPAWN + """import sys
from memstore import build_store

def main():
    build_store(sys.argv[1], sys.argv[2], workers=2, progress=False)

if "__main__" == __name__:
    main()
"""


@pytest.mark.parametrize("how", ["script", "function", "thread", "module"])
def test_unguarded_script_fails_at_once_and_names_the_guard(tiny_root, tmp_path, how):
    store = tmp_path / "s.h5"
    if how == "module":
        write(tmp_path / "pkg" / "__init__.py", "")
        write(tmp_path / "pkg" / "unguarded.py", UNGUARDED)
        done = run_python(["-m", "pkg.unguarded", str(tiny_root), str(store)], cwd=tmp_path)
        script = tmp_path / "pkg" / "unguarded.py"
    else:
        text = {"script": UNGUARDED, "function": UNGUARDED_IN_FUNCTION, "thread": UNGUARDED_IN_THREAD}[how]
        script = write(tmp_path / "build.py", text)
        done = run_python([str(script), str(tiny_root), str(store)], cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("memstore.errors.BuildError: build_store with worker processes was called at module level")
    assert 'under `if __name__ == "__main__":`' in last and "workers=1" in last and str(script) in last
    assert "worker process died" not in done.stderr and "--multiprocessing-fork" not in done.stderr
    # it failed before anything started: no worker, no partial file
    assert not store.exists() and not (tmp_path / "s.h5.partial").exists()


def test_guarded_and_fileless_callers_keep_working(tiny_root, tmp_path):
    """A guarded script, ``-m`` of a guarded module, ``-m pkg`` (whose __main__ spawn never
    re-runs), ``python -c``, and an unguarded script with ``workers=1`` (also from stdin) all build."""
    write(tmp_path / "guarded.py", GUARDED)
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "guarded.py", GUARDED)
    write(tmp_path / "pkg" / "__main__.py", UNGUARDED)
    write(tmp_path / "serial.py", UNGUARDED.replace("workers=2", "workers=1"))
    root = str(tiny_root)
    runs = {
        "guarded": ["guarded.py", root, "a.h5"],
        "module": ["-m", "pkg.guarded", root, "b.h5"],
        "package": ["-m", "pkg", root, "c.h5"],
        "command": ["-c", UNGUARDED, root, "d.h5"],
        "stdin": ["-", root, "e.h5"],
        "serial": ["serial.py", root, "f.h5"],
    }
    for name, args in runs.items():
        stdin = UNGUARDED.replace("workers=2", "workers=1") if name == "stdin" else None
        done = run_python(args, cwd=tmp_path, stdin=stdin)
        assert done.returncode == 0, (name, done.stderr[-3000:])
        assert stored(tmp_path / args[-1]) == 6, name
    same_store(tmp_path / "a.h5", tmp_path / "f.h5")


def test_script_from_stdin_with_workers_fails_at_once(tiny_root, tmp_path):
    """``python -`` names its main file ``<stdin>``, which no spawned worker can import again."""
    done = run_python(["-", str(tiny_root), "s.h5"], cwd=tmp_path, stdin=GUARDED)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("memstore.errors.BuildError: the main script '<stdin>' is not a file")
    assert "workers=1" in last and "python -c" in last
    assert "worker process died" not in done.stderr and "--multiprocessing-fork" not in done.stderr
    assert not (tmp_path / "s.h5.partial").exists()


WORKER_REBUILDS = PLAIN_SPAWN + """import sys
from memstore import build_store

if __name__ == "__mp_main__":
    # what a spawned worker runs when the script lacks a guard the parent's check could see
    build_store(sys.argv[1], sys.argv[2] + ".again.h5", workers=2, progress=False)

if __name__ == "__main__":
    import memstore.extract
    memstore.extract.POOL_MIN_AUDIO_SECONDS = 0.0  # a small folder, built with the pool all the same
    build_store(sys.argv[1], sys.argv[2], workers=2, progress=False)
"""


def test_worker_that_starts_a_build_while_starting_is_reported_as_the_guard(tiny_root, tmp_path):
    script = write(tmp_path / "rebuild.py", WORKER_REBUILDS)
    store = tmp_path / "s.h5"
    done = run_python([str(script), str(tiny_root), str(store)], cwd=tmp_path)
    assert done.returncode == 1
    # each worker says why it stopped ...
    assert "build_store was called while a worker process was starting" in done.stderr
    # ... and so does the parent's error, which is the one the user reads last
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("memstore.errors.BuildError: a worker process died while starting")
    assert 'under `if __name__ == "__main__":`' in last and "workers=1" in last
    assert not store.exists() and not (tmp_path / "s.h5.again.h5").exists()


SERIAL_IN_ANY_CHILD = """import multiprocessing
import sys
from memstore import build_store

if __name__ == "__mp_main__":
    # an unguarded workers=1 build, run again by a child process of some other library
    build_store(sys.argv[1], sys.argv[2], workers=1, progress=False)

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=print)
    child.start()
    child.join()
    sys.exit(child.exitcode)
"""


def test_no_build_runs_in_a_process_that_is_still_starting(tiny_root, tmp_path):
    """Siblings re-running one unguarded build would all write the same partial file: refused."""
    script = write(tmp_path / "child.py", SERIAL_IN_ANY_CHILD)
    done = run_python([str(script), str(tiny_root), str(tmp_path / "s.h5")], cwd=tmp_path)
    assert done.returncode == 1
    assert "BuildError: build_store was called while a worker process was starting" in done.stderr
    assert 'under `if __name__ == "__main__":`' in done.stderr
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.partial").exists()


# --- 2. workers die with their parent ------------------------------------------------------

KILLED_BUILD = """import sys
import memstore.build as b

if __name__ == "__main__":
    import memstore.extract
    memstore.extract.POOL_MIN_AUDIO_SECONDS = 0.0  # a small folder, built with the pool all the same
    b.TASK_AUDIO_SECONDS = 1.0   # one file per task: progress shows early, and no file is short enough for the parent
    b.build_store(sys.argv[1], sys.argv[2], workers=3, progress=False)
"""


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def long_root(tmp_path_factory):
    return make_demo_folder(tmp_path_factory.mktemp("long"), n_per_class=4, seed=8, duration=8.0)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc")
def test_sigkill_of_the_build_leaves_no_process_behind(long_root, tmp_path):
    script = write(tmp_path / "build.py", KILLED_BUILD)
    store = tmp_path / "s.h5"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(long_root), str(store)], env=env,
                            stderr=subprocess.DEVNULL)
    kids: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            kids = descendants(proc.pid)
            workers = [k for k in kids if "spawn_main" in cmdline(k)]
            if len(workers) == 2 and _done_count(tmp_path / "s.h5.partial") >= 1:
                break
            time.sleep(0.01)
        kids = descendants(proc.pid)
        assert proc.poll() is None, "the build ended before it could be killed: give it more audio"
        assert sum("spawn_main" in cmdline(k) for k in kids) == 2
        assert any("resource_tracker" in cmdline(k) for k in kids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.time() + 20
        while time.time() < deadline and any(running(k) for k in kids):
            time.sleep(0.05)
        left = {k: cmdline(k) for k in kids if running(k)}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in kids:  # never leave them to the rest of the suite, whatever happened above
            if running(k) and sys.executable in cmdline(k):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert not left, f"processes outlived the killed build by 20 s: {left}"
    # and the killed build resumes as usual
    report = build_store(long_root, store, workers=2, progress=False)
    assert report.resumed >= 1 and report.stored == 24


# --- 3. the caller's environment -----------------------------------------------------------

def worker_threads():
    """Runs in a pool worker: its thread settings, as the libraries report them."""
    from threadpoolctl import threadpool_info

    return {k: os.environ.get(k) for k in THREAD_VARS}, threadpool_info()


def test_workers_collect_garbage_less_often_and_the_caller_keeps_its_thresholds():
    import gc

    before = gc.get_threshold()
    pool = WorkerPool(1)
    try:
        assert pool.submit(gc.get_threshold).result(timeout=120) == WORKER_GC_THRESHOLDS
    finally:
        pool.shutdown(wait=True)
    assert gc.get_threshold() == before


def test_workers_run_one_blas_thread(monkeypatch):
    pytest.importorskip("threadpoolctl")
    # the worker sets its own variables before it first imports numpy (the test below covers a worker
    # that imported numpy earlier); the caller's values must stay as they are
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    pool = WorkerPool(2)
    try:
        results = [f.result(timeout=120) for f in [pool.submit(worker_threads) for _ in range(4)]]
    finally:
        pool.shutdown(wait=True)
    for env, pools in results:
        assert env == dict.fromkeys(THREAD_VARS, "1")
        assert any(p["user_api"] == "blas" for p in pools)
        assert [p["num_threads"] for p in pools] == [1] * len(pools), pools
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2" and os.environ["OMP_NUM_THREADS"] == "2"


BLAS_PROBE = """import json
import os
import sys

import numpy  # noqa: F401 - loaded (with its BLAS) again by every worker, before the pool's initializer

from memstore._workers import THREAD_VARS, WorkerPool


def probe():
    from threadpoolctl import threadpool_info

    return {k: os.environ.get(k) for k in THREAD_VARS}, threadpool_info()


if __name__ == "__main__":
    pool = WorkerPool(2, main=True)  # multiprocessing's own spawn: each worker imports this script, numpy first
    results = [f.result(timeout=120) for f in [pool.submit(probe) for _ in range(4)]]
    pool.shutdown()
    print(json.dumps({"workers": results, "parent": {k: os.environ.get(k) for k in THREAD_VARS}}))
"""


def test_workers_whose_blas_loaded_early_are_limited_at_run_time(tmp_path):
    """A script that imports numpy is imported again by each worker before the pool's initializer:
    its OpenBLAS starts with the caller's thread count, and only the run-time limit brings it to one."""
    pytest.importorskip("threadpoolctl")
    script = write(tmp_path / "probe.py", BLAS_PROBE)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("MKL_NUM_THREADS", None)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["parent"]["OPENBLAS_NUM_THREADS"] == "2" and out["parent"]["MKL_NUM_THREADS"] is None
    for env_seen, pools in out["workers"]:
        assert env_seen == dict.fromkeys(THREAD_VARS, "1")
        assert any(p["user_api"] == "blas" for p in pools)
        assert [p["num_threads"] for p in pools] == [1] * len(pools), pools


def test_builds_in_two_threads_never_change_the_callers_environment(demo_root, demo_store, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    for k in THREAD_VARS[:1] + THREAD_VARS[2:]:
        monkeypatch.delenv(k, raising=False)
    before = dict(os.environ)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            now = dict(os.environ)
            if now != before:
                seen.append({k: now.get(k) for k in THREAD_VARS})
            time.sleep(0.001)

    errors = []

    def build(name):
        try:
            build_store(demo_root, tmp_path / name, workers=2, progress=False)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    watcher = threading.Thread(target=watch)
    watcher.start()
    builders = [threading.Thread(target=build, args=(n,)) for n in ("a.h5", "b.h5")]
    try:
        for t in builders:
            t.start()
        for t in builders:
            t.join(timeout=300)
    finally:
        stop.set()
        watcher.join()
    assert not errors
    assert not seen, f"the environment changed during the builds: {seen[:3]}"
    assert dict(os.environ) == before
    same_store(tmp_path / "a.h5", demo_store)
    same_store(tmp_path / "b.h5", demo_store)


def _reply_half_and_die():
    """In a pool worker: write the start of a reply into the result pipe, then die as ``kill -9`` makes it."""
    import gc
    import multiprocessing.queues
    import struct

    results = next(o for o in gc.get_objects() if isinstance(o, multiprocessing.queues.SimpleQueue))
    os.write(results._writer.fileno(), struct.pack("!i", 1000) + b"half a reply")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_reply_breaks_the_pool_instead_of_hanging():
    """The executor's manager thread waits forever for the rest of a half-written reply (the hang seen in
    test_kill_9_then_resume[worker] under load); the build's wait must break the pool and fail instead."""
    pool = WorkerPool(2)
    fut = pool.submit(_reply_half_and_die)
    assert not cf.wait([fut], timeout=3.0)[0], "the plain executor noticed: this test reproduces nothing"
    box = {}
    waiter = threading.Thread(target=lambda: box.update(done=wait_any(pool, {fut})[0]), daemon=True)
    waiter.start()
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "wait_any hung on a worker killed mid-reply"
    assert box["done"] == {fut} and isinstance(fut.exception(), cf.process.BrokenProcessPool)
    closer = threading.Thread(target=pool.shutdown, kwargs=dict(wait=True), daemon=True)
    closer.start()
    closer.join(timeout=60)
    assert not closer.is_alive(), "shutdown hung after the pool was broken down"


def _big_reply(n):
    return bytes(range(256)) * (n // 256)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe buffer sizes are Linux's F_SETPIPE_SZ")
def test_a_pools_result_pipe_holds_a_tasks_reply_and_larger_ones_still_arrive():
    # a build task returns 0.5-1.5 MB of statistics: with Linux's 64 KiB pipe the worker waited in its write
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            cap = int(f.read())
    except OSError:
        cap = RESULT_PIPE_BYTES
    import fcntl

    pool = WorkerPool(1)
    try:
        size = fcntl.fcntl(pool._result_queue._reader.fileno(), fcntl.F_GETPIPE_SZ)
        assert size >= min(RESULT_PIPE_BYTES, cap)
        for n in (1 << 10, 3 * RESULT_PIPE_BYTES):  # one that fits, one that takes several reads
            assert pool.submit(_big_reply, n).result(timeout=120) == _big_reply(n)
    finally:
        pool.shutdown(wait=True)


def test_widen_pipe_leaves_what_it_cannot_widen_alone(tmp_path):
    assert widen_pipe(None, RESULT_PIPE_BYTES) == 0  # a pool without the private queue it looks for
    with open(tmp_path / "not-a-pipe", "wb") as f:  # a file, not a pipe: the system refuses, nothing raises
        assert widen_pipe(f, RESULT_PIPE_BYTES) == 0
    if sys.platform.startswith("linux"):
        import fcntl

        r, w = os.pipe()
        try:
            with open(r, closefd=False) as conn:
                before = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
                assert widen_pipe(conn, 4096) == before  # asking for less than it has never shrinks it
        finally:
            os.close(r)
            os.close(w)
