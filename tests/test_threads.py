"""Background threads never outlive what they serve.

A ``BatchStream`` or ``WindowReader`` dropped without ``close()`` must be
collectable (its producer thread must not keep it alive) and its thread must
end once it is collected. Every check polls to a deadline with joins that
time out; none sleeps for a fixed time and none asserts a duration.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import warnings
import weakref

import numpy as np
import pytest

from memstore.batches import BatchStream
from memstore.pager import WindowReader, plan_epoch
from memstore.store import open_store

N_STREAMS = 10
#: generous bound for threads to notice their stop event on a loaded 2-core machine
DEADLINE_S = 30.0


def memstore_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("memstore-")}


def leftover(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive at the deadline (collecting garbage meanwhile)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        gc.collect()
        left = [t for t in memstore_threads() - before if t.is_alive()]
        if not left or time.monotonic() > deadline:
            return left
        for t in left:
            t.join(timeout=0.05)


def ooc_limit(batch_size: int, t: int = 128) -> int:
    """Four batch buffers and two windows of ~680 rows: far below the demo store's features."""
    return 4 * batch_size * t * 96 * 4 + 2 * 680 * 96 * 4


@pytest.fixture(scope="module")
def store(demo_store):
    with open_store(demo_store) as s:
        yield s


_seen: set[threading.Thread] = set()


def note() -> None:
    """Record the threads running now (call it where the scenario's threads must be running)."""
    _seen.update(memstore_threads())


def check_dropped(make, use) -> None:
    """Make ``N_STREAMS`` objects, ``use`` each, drop them: all collected and all their threads gone."""
    before = memstore_threads()
    _seen.clear()
    refs = []
    for _ in range(N_STREAMS):
        obj = make()
        use(obj)
        note()
        refs.append(weakref.ref(obj))
        del obj
    started = _seen - before
    assert started, "the scenario never started a background thread, so it tests nothing"
    left = leftover(before)
    assert not left, f"{len(left)} of {len(started)} threads still alive: {sorted(t.name for t in left)}"
    assert all(r() is None for r in refs), "a dropped object is still referenced (by its thread?)"


@pytest.mark.parametrize("out_of_core", [False, True], ids=["memory", "pager"])
def test_streams_used_through_call_and_dropped_end_their_threads(store, out_of_core):
    def make():
        s = BatchStream(store, batch_size=4, memory_limit=ooc_limit(4) if out_of_core else None)
        assert s.out_of_core == out_of_core
        return s

    check_dropped(make, lambda s: s())  # the tutorial's db(): one batch, then the stream is forgotten


def test_unprefetched_out_of_core_streams_dropped_end_their_reader_threads(store):
    def make():
        s = BatchStream(store, batch_size=4, memory_limit=ooc_limit(4), prefetch=False)
        assert s.out_of_core
        return s

    check_dropped(make, lambda s: s())  # only the pager's reader thread runs; the stream holds its generator


def test_stream_that_owns_its_store_ends_its_thread_when_dropped(demo_store):
    check_dropped(lambda: BatchStream(demo_store, batch_size=4, memory_limit=ooc_limit(4)),
                  lambda s: (s(), s()))


@pytest.mark.parametrize("out_of_core", [False, True], ids=["memory", "pager"])
def test_for_loops_broken_off_early_end_their_threads(store, out_of_core):
    def use(s):
        for i, (x, _) in enumerate(s):
            assert len(x) == 4
            note()
            if i == 1:
                break

    check_dropped(lambda: BatchStream(store, batch_size=4, memory_limit=ooc_limit(4) if out_of_core else None),
                  use)


def test_epoch_iterators_left_unfinished_in_a_cycle_end_their_threads(store):
    def use(s):
        s.epoch_iterator = iter(s)  # stream -> iterator -> stream: freed only by the cyclic collector
        next(s.epoch_iterator)

    check_dropped(lambda: BatchStream(store, batch_size=4, memory_limit=ooc_limit(4)), use)


#: the lock every Python thread takes as it ends; ``threading.enumerate()`` holds it while it allocates
LIMBO = getattr(threading, "_active_limbo_lock", None)


@pytest.mark.skipif(LIMBO is None, reason="this Python's threading module has no _active_limbo_lock")
@pytest.mark.parametrize("out_of_core,prefetch", [(False, True), (True, True), (True, False)],
                         ids=["memory", "pager", "pager-unprefetched"])
def test_a_stream_finalized_under_the_lock_ending_threads_take_does_not_wait_for_them(store, out_of_core,
                                                                                     prefetch):
    """A garbage collection inside ``threading.enumerate()`` runs finalizers while the collecting thread
    holds the lock a thread takes to end (CI, 2026-11-26: test above, 4 of 10 streams). A finalizer
    that joined the stream's threads then waited JOIN_S for threads that could not end, and warned;
    the finalizer only signals, and the threads end once the lock is free."""
    before = memstore_threads()
    s = BatchStream(store, batch_size=4, memory_limit=ooc_limit(4) if out_of_core else None, prefetch=prefetch)
    s()
    started = memstore_threads() - before
    assert started, "the scenario never started a background thread, so it tests nothing"
    ref = weakref.ref(s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with LIMBO:
            del s  # the last reference: the finalizer runs here, on this thread, under the lock
    assert ref() is None
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leftover(before)


@pytest.mark.skipif(LIMBO is None, reason="this Python's threading module has no _active_limbo_lock")
@pytest.mark.parametrize("out_of_core,prefetch", [(False, True), (True, True), (True, False)],
                         ids=["memory", "pager", "pager-unprefetched"])
def test_an_epoch_iterator_finalized_under_the_lock_ending_threads_take_does_not_wait_for_them(store, out_of_core,
                                                                                              prefetch):
    """The same place for a generator: an epoch iterator finalized there closes its producer in its
    ``finally`` (not a finalizer, so it may wait). It waits until the producer's work is done, not for
    the thread's very end, which needs the lock this thread holds."""
    before = memstore_threads()
    s = BatchStream(store, batch_size=4, memory_limit=ooc_limit(4) if out_of_core else None, prefetch=prefetch)
    it = iter(s)
    next(it)
    assert memstore_threads() - before, "the scenario never started a background thread, so it tests nothing"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with LIMBO:
            del it  # the last reference: the generator's finally runs here, on this thread, under the lock
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert s._active is None  # the producer was closed, not left running
    s.close()
    assert not leftover(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
@pytest.mark.parametrize("out_of_core", [False, True], ids=["memory", "pager"])
def test_a_forked_child_restarts_a_stream_whose_producer_ran_in_the_parent(store, out_of_core):
    """A forked child has none of the parent's threads: the producer it inherited will never report
    its end, and closing it (as iter() does first) must not wait for that (a DataLoader worker)."""
    s = BatchStream(store, batch_size=4, memory_limit=ooc_limit(4) if out_of_core else None)
    want = s()  # a producer runs in the parent, and is running when the process forks
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x, _ = next(iter(s))  # closes the inherited producer, starts its own
            ok = not [w_ for w_ in caught if issubclass(w_.category, ResourceWarning)] and x.shape == want[0].shape
            code = 0 if ok else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        told = f.read()
    _, status = os.waitpid(pid, 0)
    s.close()
    assert told == b"\x00" and os.waitstatus_to_exitcode(status) == 0, (told, status)


def test_an_epoch_iterator_closes_only_its_own_producer(store):
    """Dropping an older epoch iterator of a stream must not close the newer one's producer; the older
    one, when used again, says why it ended."""
    s = BatchStream(store, batch_size=4, memory_limit=ooc_limit(4))
    old = iter(s)
    next(old)
    new = iter(s)
    next(new)  # starts the newer producer, ending the older one's
    with pytest.raises(RuntimeError, match="ended by the stream"):
        next(old)
    del old
    gc.collect()
    x, _ = next(new)  # still served
    assert len(x) == 4
    s.close()


def test_stream_in_a_reference_cycle_is_collected_and_its_thread_ends(store):
    def make():
        s = BatchStream(store, batch_size=4)
        s.me = s  # only the cyclic collector can free it
        return s

    check_dropped(make, lambda s: s())


def test_reader_dropped_mid_epoch_ends_its_thread(tmp_path):
    data = np.arange(6000 * 5, dtype=np.float32).reshape(6000, 5)
    path = tmp_path / "raw.bin"
    path.write_bytes(data.tobytes())
    starts = np.arange(0, 6000 - 64, 30, dtype=np.int64)
    windows = plan_epoch(starts, np.full(len(starts), 64, np.int64), window_rows=400, seed=0, epoch=0)
    assert len(windows) > 4  # the thread is still busy (blocked on a full buffer) when dropped

    def use(reader):
        w, buf = next(reader)
        np.testing.assert_array_equal(buf[: w.row_stop[0] - w.row_start[0]], data[w.row_start[0]:w.row_stop[0]])

    check_dropped(lambda: WindowReader(path, 0, 5, np.float32, windows, 400), use)


def test_torch_adapter_loops_broken_off_early_end_their_threads(demo_store):
    torch = pytest.importorskip("torch")
    from memstore.torch import BlockDataset

    def use(loader):
        for i, (x, _) in enumerate(loader):
            assert isinstance(x, torch.Tensor)
            note()
            if i == 1:
                break

    check_dropped(lambda: torch.utils.data.DataLoader(
        BlockDataset(demo_store, batch_size=4, memory_limit=ooc_limit(4)), batch_size=None, num_workers=0), use)
