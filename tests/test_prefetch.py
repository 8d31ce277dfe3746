"""The producer-thread lifecycle shared by the batch producer and the window reader (memstore.prefetch).

Every wait polls to a deadline or joins with a timeout; nothing sleeps for a fixed time and nothing
asserts a duration.
"""

from __future__ import annotations

import gc
import queue
import threading
import weakref

import pytest

from memstore import prefetch
from memstore.prefetch import FLUSH, Inline, Prefetcher, start, wait_get


class Source:
    """Yields 0, 1, ... up to ``n`` (or forever), then raises ``fail`` if given; counts its ``close()``."""

    def __init__(self, n=None, fail=None):
        self.n, self.fail, self.i, self.closed = n, fail, 0, 0
        self.closed_in = None

    def __iter__(self):
        return self

    def __next__(self):
        if self.n is not None and self.i >= self.n:
            if self.fail is not None:
                raise self.fail
            raise StopIteration
        self.i += 1
        return self.i - 1

    def close(self):
        self.closed += 1
        self.closed_in = threading.current_thread()


def threads_named(name):
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def ended(thread, timeout=30.0):
    thread.join(timeout)
    return not thread.is_alive()


@pytest.mark.parametrize("threaded,lazy", [(True, False), (True, True), (False, False)],
                         ids=["thread", "thread-lazy", "inline"])
def test_items_come_in_order_then_the_end_and_the_source_is_closed_once(threaded, lazy):
    src = Source(50)
    p = start(src, depth=2, name="memstore-test-order", what="test producer", threaded=threaded, lazy=lazy)
    assert isinstance(p, Prefetcher if threaded else Inline)
    assert list(p) == list(range(50))
    with pytest.raises(StopIteration):
        next(p)  # still the end, not an error
    p.close()
    p.close()
    assert src.closed == 1
    if threaded:
        assert src.closed_in is not threading.current_thread()  # the thread closes what it owns
        assert not threads_named("memstore-test-order")


@pytest.mark.parametrize("threaded,lazy", [(True, False), (True, True), (False, False)],
                         ids=["thread", "thread-lazy", "inline"])
def test_an_error_of_the_source_is_raised_in_the_consumer(threaded, lazy):
    src = Source(3, fail=KeyError("boom"))
    p = start(src, depth=2, name="memstore-test-error", what="test producer", threaded=threaded, lazy=lazy)
    assert [next(p) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError, match="boom") as info:
        next(p)
    assert any(f.name == "__next__" for f in info.traceback)  # the source's own frame travels with it
    p.close()
    assert src.closed == 1


@pytest.mark.parametrize("threaded,lazy", [(True, False), (True, True), (False, False)],
                         ids=["thread", "thread-lazy", "inline"])
def test_flush_is_never_an_item(threaded, lazy):
    def source():
        yield FLUSH
        yield 0
        yield FLUSH
        yield FLUSH
        yield 1
        yield FLUSH

    p = start(source(), depth=2, name="memstore-test-flush", what="test producer", threaded=threaded, lazy=lazy)
    assert list(p) == [0, 1]
    p.close()


def test_a_lazy_producer_hands_over_on_flush_before_it_waits(monkeypatch):
    """A lazy hand-over wakes the consumer only on a full queue -- or on FLUSH, which a source yields
    before a wait of its own (the batch producer before the next window). Here the source waits for
    the consumer to have item 0: without the wake on FLUSH, the consumer would sleep until its next
    poll (made an hour long here) and the source's wait would run out first."""
    monkeypatch.setattr(prefetch, "POLL_S", 3600.0)
    got_first = threading.Event()

    def source():
        yield 0
        yield FLUSH
        yield "starved" if not got_first.wait(30.0) else "served"

    p = start(source(), depth=2, name="memstore-test-lazy", what="test producer", lazy=True)
    assert next(p) == 0
    got_first.set()
    assert next(p) == "served"
    p.close()


def test_close_frees_a_producer_blocked_on_a_full_queue():
    src = Source()  # endless: the thread fills the queue and blocks
    p = Prefetcher(src, depth=2, name="memstore-test-full", what="test producer")
    assert next(p) == 0
    (thread,) = threads_named("memstore-test-full")
    p.close()
    assert not thread.is_alive() and src.closed == 1


def test_a_dropped_prefetcher_is_collected_and_its_thread_ends():
    src = Source()
    p = Prefetcher(src, depth=2, name="memstore-test-drop", what="test producer")
    next(p)
    (thread,) = threads_named("memstore-test-drop")
    ref = weakref.ref(p)
    del p
    gc.collect()
    assert ref() is None, "the thread keeps its Prefetcher alive"
    assert ended(thread) and src.closed == 1


def test_a_source_waiting_on_its_own_queue_ends_on_close():
    """The pager's pattern: the source waits for a free buffer with wait_get; close sets stop and wakes it."""
    stop, free = threading.Event(), queue.Queue()

    def source():
        while (slot := wait_get(free, stop)) is not None and slot >= 0:
            yield slot

    free.put(7)
    p = start(source(), depth=1, name="memstore-test-wait", what="test producer", stop=stop,
              wake=lambda: free.put(-1))
    assert next(p) == 7
    (thread,) = threads_named("memstore-test-wait")  # now blocked on the empty free queue
    p.close()
    assert not thread.is_alive() and stop.is_set()


def test_wait_get_returns_none_once_stopped():
    stop, q = threading.Event(), queue.Queue()
    q.put(1)
    assert wait_get(q, stop) == 1
    stop.set()
    q.put(2)
    assert wait_get(q, stop) is None


def test_a_thread_that_cannot_start_closes_its_source(monkeypatch):
    def refuse(self):
        raise RuntimeError("can't start new thread")

    src = Source(5)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError, match="can't start"):
        Prefetcher(src, depth=2, name="memstore-test-nostart", what="test producer")
    assert src.closed == 1  # e.g. the window reader's file descriptor


def test_a_producer_that_died_without_a_word_is_an_error_not_a_hang():
    src = Source()
    p = Prefetcher(src, depth=1, name="memstore-test-silent", what="test producer")
    (thread,) = threads_named("memstore-test-silent")
    p._stop.set()  # the producer ends without handing over the end or an error
    assert ended(thread)
    p._queue.clear()  # whatever it put before it saw the stop
    with pytest.raises(RuntimeError, match="the test producer thread ended without a result"):
        next(p)



def test_a_producer_never_waits_for_a_producer_it_did_not_start(monkeypatch):
    """A finalizer runs on whatever thread collects garbage: a window reader's thread may close a dropped
    stream's batch producer while that producer waits for the reader. Here A's thread closes B, which
    waits for something only A gives after the close: joining B from A would hang until JOIN_S."""
    monkeypatch.setattr(prefetch, "JOIN_S", 5.0)
    release = threading.Event()

    def b_source():
        yield 0
        while not release.wait(0.05):  # waits for A, as a batch producer waits for its reader
            pass
        yield 1

    b = Prefetcher(b_source(), depth=1, name="memstore-test-b", what="test producer b")
    assert next(b) == 0
    (b_thread,) = threads_named("memstore-test-b")

    def a_source():
        b.close()  # on A's thread: must not wait for B
        release.set()
        yield "done"

    a = Prefetcher(a_source(), depth=1, name="memstore-test-a", what="test producer a")
    assert next(a) == "done"  # before: a ResourceWarning (an error here) after JOIN_S
    a.close()
    assert ended(b_thread)


def test_a_producer_joins_the_producer_it_started():
    """The batch producer closing its window reader waits for it: the reader's thread is gone after close."""
    seen = {}

    def outer():
        inner = Prefetcher(Source(), depth=2, name="memstore-test-inner", what="test inner")
        next(inner)
        (seen["thread"],) = threads_named("memstore-test-inner")
        inner.close()
        yield seen["thread"].is_alive()

    p = Prefetcher(outer(), depth=1, name="memstore-test-outer", what="test outer")
    assert next(p) is False
    p.close()


def test_close_inside_no_wait_stops_the_producer_without_waiting_for_it(monkeypatch):
    """What a finalizer does: it may run under a lock the producer needs in order to end, so it only
    signals. Here the producer cannot end before ``release``: a close that waited would run into
    JOIN_S and warn (an error here); inside ``no_wait`` it returns with the thread still running."""
    monkeypatch.setattr(prefetch, "JOIN_S", 5.0)
    release = threading.Event()

    def source():
        yield 0
        while not release.wait(0.05):
            pass
        yield 1

    p = Prefetcher(source(), depth=1, name="memstore-test-nowait", what="test producer")
    assert next(p) == 0
    (thread,) = threads_named("memstore-test-nowait")
    with prefetch.no_wait():
        with prefetch.no_wait():  # nested, as a finalizer closing an owner that closes its reader
            p.close()
        p.close()
    assert thread.is_alive(), "close() inside no_wait waited for the thread"
    assert threading.get_ident() not in prefetch._not_waiting  # the block left nothing behind
    release.set()
    assert ended(thread)
    p.close()  # outside no_wait, on an ended thread: returns


def test_a_producer_is_registered_while_it_runs_and_by_itself_only():
    """A producer enters and removes its own ident: no other thread removes an ident that the system
    may already have given to a new producer (a joiner did that before, unregistering a running
    reader, which then waited for its own batch producer from a finalizer)."""
    seen = {}

    def source():
        seen["ident"] = threading.get_ident()
        seen["registered"] = threading.get_ident() in prefetch._producers
        yield 0

    p = Prefetcher(source(), depth=1, name="memstore-test-reg", what="test producer")
    assert list(p) == [0]
    (thread,) = threads_named("memstore-test-reg") or [None]
    assert thread is None or ended(thread)
    assert seen["registered"]
    assert seen["ident"] not in prefetch._producers


def test_nothing_closed_during_a_garbage_collection_waits():
    """A collection runs wherever an allocation triggers it, perhaps under a lock a producer needs: a
    generator finalized there closes its producer without waiting. The mark holds for the collection
    only, on its thread only."""
    assert prefetch._during_collection in gc.callbacks
    seen = []

    def probe(phase, info):
        seen.append((phase, threading.get_ident() in prefetch._not_waiting))

    gc.callbacks.append(probe)  # after memstore's hook: runs inside the marked span
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(probe)
    assert ("start", True) in seen
    assert threading.get_ident() not in prefetch._not_waiting
