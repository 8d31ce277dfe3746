"""Shared fixtures: small real audio folders and stores written into tmp dirs; no orphans left behind."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

from memstore.build import build_store
from memstore.demo import make_demo_folder

#: every process this run starts inherits the mark, so an orphan (reparented away from
#: this process) can still be told apart from other runs' processes on the same machine
SESSION_MARK = "MEMSTORE_TEST_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex
#: how long orphans get to notice their parent is gone (a worker's watchdog looks every 0.5 s)
ORPHAN_GRACE_SECONDS = 30.0


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid``, from /proc/<pid>/task/*/children."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = {int(k) for k in f.read().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def orphans_of_this_run() -> dict[int, str]:
    """Live processes carrying this run's mark that are neither this process nor its descendants."""
    mark = f"{SESSION_MARK}={os.environ[SESSION_MARK]}".encode()
    mine = descendants(os.getpid()) | {os.getpid()}
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if mark not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                found[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone, or a zombie (its environ is empty)
    return found


@pytest.fixture(autouse=True)
def builds_use_their_pool(monkeypatch):
    """Test folders are small: a build with workers > 1 uses its pool however little audio it holds.

    Otherwise every such test would extract in its own process only
    (:data:`memstore.extract.POOL_MIN_AUDIO_SECONDS`), and the pool would go
    untested; ``test_extract`` tests the threshold itself.
    """
    import memstore.extract

    monkeypatch.setattr(memstore.extract, "POOL_MIN_AUDIO_SECONDS", 0.0)


@pytest.fixture(scope="session", autouse=True)
def no_orphan_processes():
    """Fail the run if any process it started outlives its parent (e.g. workers of a killed build)."""
    yield
    if not os.path.isdir("/proc/self/task"):
        return
    deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
    while (left := orphans_of_this_run()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes started by this test run outlived their parents: {left}"


def pytest_report_header(config):
    """Which SIMD kernels numpy and numba run: .ci/run repeats the suite on a second path (tools/cpu_paths.py)."""
    try:
        from numpy.lib._utils_impl import _opt_info  # "X86_V3* X86_V4?": * in use, ? present but switched off
        numpy_line = _opt_info()
    except ImportError:  # a numpy without the helper: the variable alone
        numpy_line = "?"
    disabled = os.environ.get("NPY_DISABLE_CPU_FEATURES", "")
    return [f"numpy SIMD targets: {numpy_line} (NPY_DISABLE_CPU_FEATURES={disabled!r}); "
            f"numba CPU: {os.environ.get('NUMBA_CPU_NAME', 'host')}"]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo folder: 6 classes x 3 files of 3 s."""
    return make_demo_folder(tmp_path_factory.mktemp("demo"), n_per_class=3, seed=1)


@pytest.fixture(scope="session")
def demo_store(demo_root, tmp_path_factory):
    """A store built from ``demo_root`` with two worker processes."""
    path = tmp_path_factory.mktemp("store") / "demo.h5"
    build_store(demo_root, path, workers=2, progress=False)
    return path


def varied_folder(root, rng=None):
    """Write WAVs of varied lengths, rates, channels and sample formats under root/<cls>/."""
    from memstore.audio import write_wav

    rng = rng or np.random.default_rng(0)
    specs = [("a", 8000, 1, "pcm16", 9000), ("a", 8000, 2, "pcm24", 300), ("b", 8000, 1, "float32", 20000),
             ("b", 8000, 3, "u8", 4000), ("c", 8000, 2, "pcm32", 12345), ("c", 8000, 1, "float64", 1)]
    paths = []
    for i, (cls, rate, ch, fmt, n) in enumerate(specs):
        (root / cls).mkdir(parents=True, exist_ok=True)
        p = root / cls / f"f{i} ü.wav"
        write_wav(p, rng.uniform(-0.5, 0.5, (n, ch)), rate, sample_format=fmt)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def signal():
    """A 3-second tone with vibrato and noise, float32, 132299 samples like the tutorial's file."""
    rng = np.random.default_rng(0)
    t = np.arange(132299) / 44100
    tone = sum(0.3 / k * np.sin(2 * np.pi * 440 * k * t + 3 * np.sin(2 * np.pi * 5 * t)) for k in range(1, 6))
    return (tone * np.exp(-t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
