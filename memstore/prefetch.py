"""Producer threads: one lifecycle for the batch producer and the pager's window reader.

:func:`start` runs a *source* (any iterator; its ``close()``, if it has one,
is called once when it ends) ahead of its consumer:

- **threaded**: a daemon thread moves the source's items into a queue of
  ``depth`` items. The consumer waits in bounded steps, so a thread that ended
  without a word is a ``RuntimeError``, never a hang. An exception raised by
  the source is handed over and raised in the consumer, with its traceback.
- **inline** (``threaded=False``): the consumer pulls from the source itself;
  same interface, no thread.

The hand-over. The queue is a deque and two raw locks used as doorbells
(:class:`_Channel`), not a ``queue.Queue``: waking a sleeping thread costs a
system call (about 7 us on this project's 2-core VM) and ``queue.Queue`` adds
a ``Condition`` and a fresh lock per wait on each side. With ``lazy=True``
the producer rings the consumer's doorbell only when the queue is full, at
the end, and when the source yields :data:`FLUSH` (which it does before it
waits on something of its own, such as the next window from disk): a
consumer that is faster than its producer then wakes once per ``depth``
items instead of once per item. A lazy hand-over never costs throughput; an
item may reach a waiting consumer one item later than it could. A source
that yields ``FLUSH`` gets it skipped on both paths.

Stopping. ``close()`` sets the stop event, calls ``wake`` (to free a source
blocked on something of its own, such as the pager's free-buffer queue),
drains the queue (freeing a producer blocked on a full one) and waits until
the producer has closed its source (after ``JOIN_S`` it gives up with a
``ResourceWarning``), then for the thread's end -- not on a thread that holds
the lock every ending Python thread takes, nor once another thread has held
it for ``ENDING_S`` (see :func:`_join`). A source that waits on anything
should poll ``stop`` with :func:`wait_get`.

Who waits for whom. ``close()`` joins the thread. A finalizer never waits:
it may run on any thread, at any allocation, while that thread holds a lock
that the producer needs in order to end (``threading.enumerate()`` holds the
lock every thread takes as it exits, and allocates a list, so a garbage
collection there is ordinary). The finalizer of a :class:`Prefetcher` only
signals (sets ``stop``, calls ``wake``, drains the queue); an owner's
finalizer closes what it owns inside :func:`no_wait`, where ``close()``
signals the same way and returns; the thread sees ``stop`` and ends on its
own. ``wake`` must itself never block (``queue.SimpleQueue.put`` is
reentrant; ``queue.Queue.put`` takes a lock the woken thread may hold). A
producer thread joins only the producers it started (the batch producer its
window reader): a ``close()`` on another producer's thread signals and
returns, so no two threads ever wait for each other. And nothing closed
during a garbage collection waits (a ``gc.callbacks`` hook marks the
collecting thread): a generator finalized there -- an epoch iterator left in
a reference cycle -- closes its producer in its ``finally``, which is not a
finalizer but runs in the same place.

Garbage collection. The thread holds the source, the queue and the stop
event, never the :class:`Prefetcher` (nor the object that owns it): a thread
is a garbage-collection root, so a thread holding its owner would keep both
alive forever. A ``weakref.finalize`` on the :class:`Prefetcher` stops the
thread when it is collected, so an owner dropped without ``close()`` -- a
``BatchStream`` or ``WindowReader`` forgotten mid-epoch, even in a reference
cycle -- still ends its thread (``tests/test_threads.py``).
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import gc
import os
import queue
import threading
import time
import warnings
import weakref

__all__ = ["Prefetcher", "Inline", "start", "wait_get", "no_wait", "FLUSH", "POLL_S", "JOIN_S", "ENDING_S"]

#: how often blocked producers and consumers look at their stop event / the other side
POLL_S = 0.1
#: how long stopping waits for a producer before giving up with a warning
JOIN_S = 30.0
#: how long an ending thread may wait for the lock every ending thread takes before stopping stops
#: waiting for it (see ``_join``)
ENDING_S = 1.0

_END = object()
#: a source yields it to hand over what it has produced now (before a wait of its own); never an item
FLUSH = object()
#: idents of the threads running :func:`_pump`, each entered and removed by that thread itself (so
#: an ident that the system gives to a new thread is never removed under it). An ident,
#: not a ``threading.local`` flag or the ``Thread`` object: while a thread is torn down, its
#: thread-locals are already cleared and ``threading.current_thread()`` answers a new dummy.
_producers: set[int] = set()
#: ident -> depth of the :func:`no_wait` blocks running on that thread
_not_waiting: dict[int, int] = {}
#: the lock every Python thread takes as it ends (CPython's; None where there is no such lock)
_LIMBO = getattr(threading, "_active_limbo_lock", None)


class _Channel:
    """A bounded hand-over from one producer thread to one consumer: a deque and two doorbells.

    A doorbell is a raw lock that is *unlocked* while a ring is pending: ringing releases it (a
    ring already pending is left as is), waiting acquires it. A waiter re-checks the deque after
    every wake, so a stale ring costs one more loop, never an item, and a missed one at most a
    wait of ``POLL_S`` (the consumer looks at the deque after every timed-out wait).
    """

    __slots__ = ("items", "depth", "lazy", "filled", "freed")

    def __init__(self, depth: int, lazy: bool):
        self.items: collections.deque = collections.deque()
        self.depth = depth
        self.lazy = lazy
        self.filled = _thread.allocate_lock()  # rung by the producer: items to take
        self.freed = _thread.allocate_lock()   # rung by the consumer: room to put
        self.filled.acquire()
        self.freed.acquire()

    def put(self, item, stop: threading.Event) -> bool:
        """Append ``item`` once there is room, unless ``stop`` is set first; False if it was not put."""
        items = self.items
        while len(items) >= self.depth:
            if stop.is_set():
                return False
            self.freed.acquire(timeout=POLL_S)
        if stop.is_set():
            return False
        items.append(item)
        if not self.lazy or len(items) >= self.depth:
            _ring(self.filled)
        return True

    def flush(self) -> None:
        """Wake the consumer for what is queued (a lazy producer, before it waits or ends)."""
        _ring(self.filled)

    def get(self, timeout: float):
        """The next item, or ``_NOTHING`` when none came within ``timeout``."""
        items = self.items
        if not items:
            self.filled.acquire(timeout=timeout)
            if not items:
                return _NOTHING
        item = items.popleft()
        _ring(self.freed)
        return item

    def clear(self) -> None:
        """Drop every item (their memory) and free a producer waiting for room."""
        self.items.clear()
        _ring(self.freed)


def _ring(bell) -> None:
    try:
        bell.release()
    except RuntimeError:  # rung already and not yet heard
        pass


_NOTHING = object()


class _Raised:
    """An exception of the source, on its way to the consumer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


def start(source, *, depth: int, name: str, what: str, threaded: bool = True,
          stop: threading.Event | None = None, wake=None, lazy: bool = False) -> Prefetcher | Inline:
    """A :class:`Prefetcher` over ``source``, or an :class:`Inline` one when ``threaded`` is False.

    Parameters
    ----------
    source : iterator
        Closed (``source.close()``, if it has one) once it ends, whatever happens.
    depth : int
        Items produced ahead (the queue's size).
    name : str
        The thread's name (``memstore-...``).
    what : str
        Names the producer in errors and warnings (``"batch producer"``).
    stop : threading.Event, optional
        The stop event, when the source polls it too (default: a new one).
    wake : callable, optional
        Called on close, after ``stop`` is set, to free a source blocked on its own queue.
    lazy : bool
        Wake a waiting consumer only when the queue is full, at the end and on :data:`FLUSH`
        (see "The hand-over" in the module notes). False: on every item.
    """
    if not threaded:
        return Inline(source)
    return Prefetcher(source, depth=depth, name=name, what=what, stop=stop, wake=wake, lazy=lazy)


class Inline:
    """The consumer pulls from ``source`` itself: the interface of :class:`Prefetcher`, no thread."""

    def __init__(self, source):
        self._source = source

    def __iter__(self):
        return self

    def __next__(self):
        while (item := next(self._source)) is FLUSH:
            pass
        return item

    def close(self) -> None:
        """Close the source (once)."""
        source, self._source = self._source, iter(())
        _close_source(source)


class Prefetcher:
    """Iterate ``source`` in a daemon thread, ``depth`` items ahead (see the module notes)."""

    def __init__(self, source, *, depth: int, name: str, what: str, stop: threading.Event | None = None,
                 wake=None, lazy: bool = False):
        self._queue = _Channel(depth, lazy)
        self._stop = stop if stop is not None else threading.Event()
        self._what = what
        self._done = False
        self._ended = threading.Event()  # set by the thread once its work is done (the source closed)
        # the thread takes the source out of the box: its ``Thread`` object keeps the box, not the source
        box = [source]
        self._thread = threading.Thread(target=_pump, args=(box, self._queue, self._stop, self._ended),
                                        name=name, daemon=True)
        try:
            self._thread.start()
        except BaseException:  # perhaps after the thread was launched (an interrupt while it starts)
            self._stop.set()
            try:
                source = box.pop()  # atomic: taken here, or already by the thread, which then closes it
            except IndexError:
                pass
            else:
                _close_source(source)
            raise
        self._creator = threading.get_ident()
        # the finalizer only signals (see "Who waits for whom"); ``close()`` runs it, then joins
        self._finalizer = weakref.finalize(self, _signal, self._queue, self._stop, wake)

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        # bounded waits: a producer that died without a word is an error, not a hang
        while (item := self._queue.get(POLL_S)) is _NOTHING:
            if not self._thread.is_alive() and not self._queue.items:
                self.close()
                raise RuntimeError(f"the {self._what} thread ended without a result")
        if item is _END:
            self._done = True
            self.close()
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread and wait for it to end (idempotent); inside :func:`no_wait`, only stop it."""
        self._finalizer()
        _join(self._thread, self._ended, self._queue, self._what, self._creator)


def wait_get(q: queue.Queue | queue.SimpleQueue, stop: threading.Event):
    """The next item of ``q``, or None once ``stop`` is set: a wait that a stop always ends."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None


def _close_source(source) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


def _pump(box: list, q: _Channel, stop: threading.Event, ended: threading.Event) -> None:
    """Thread target: move items from the source in ``box`` into ``q`` until the end, an error or ``stop``."""
    me = threading.get_ident()
    _producers.add(me)
    source = box.pop()
    item = None
    try:
        put = q.put
        for item in source:
            if item is FLUSH:
                q.flush()
            elif not put(item, stop):
                return
        put(_END, stop)
    except BaseException as err:  # handed to the consumer
        q.put(_Raised(err), stop)
    finally:
        try:
            q.flush()  # the end, an error, or whatever a lazy producer left unannounced
            _close_source(source)
        finally:
            source = item = None  # dropped before ``ended``: the source's buffers are freed when close() returns
            _producers.discard(me)
            ended.set()


@contextlib.contextmanager
def no_wait():
    """Inside this block (on this thread), ``close()`` stops producers without waiting for them.

    For finalizers that close what their object owns: a finalizer must never wait (see "Who waits
    for whom" in the module notes), and what it closes may close further producers itself (a
    source generator's ``finally`` closing its window reader).
    """
    me = threading.get_ident()
    _enter_no_wait(me)
    try:
        yield
    finally:
        _leave_no_wait(me)


def _enter_no_wait(me: int) -> None:
    _not_waiting[me] = _not_waiting.get(me, 0) + 1


def _leave_no_wait(me: int) -> None:
    depth = _not_waiting.get(me, 1) - 1
    if depth > 0:
        _not_waiting[me] = depth
    else:
        _not_waiting.pop(me, None)


def _during_collection(phase: str, info: dict) -> None:
    """``gc.callbacks`` hook: nothing closed during a garbage collection waits for a thread.

    A collection runs wherever an allocation triggers it, perhaps under a lock a producer needs
    (numba's compiler lock, an import lock, the lock every ending thread takes): a generator
    finalized there (an epoch iterator, a loader's) closes its producer in its ``finally``, which,
    unlike a finalizer, would otherwise wait.
    """
    me = threading.get_ident()
    if phase == "start":
        _enter_no_wait(me)
    else:
        _leave_no_wait(me)


gc.callbacks.append(_during_collection)


def _after_fork_in_child() -> None:
    """A forked child has only the thread that forked: forget every other thread's marks."""
    me = threading.get_ident()
    _producers.intersection_update({me})
    for ident in [k for k in _not_waiting if k != me]:
        _not_waiting.pop(ident, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _signal(q: _Channel, stop: threading.Event, wake) -> None:
    """Tell the producer to stop, waiting for nothing (the :class:`Prefetcher`'s finalizer)."""
    stop.set()
    if wake is not None:
        wake()
    q.clear()  # free the items' memory and a producer waiting for room


def _join(thread: threading.Thread, ended: threading.Event, q: _Channel, what: str, creator: int) -> None:
    """Wait for a signalled producer's thread to end (``Prefetcher.close``), where waiting is safe.

    Once the thread has done its work (``ended``: its source closed), all it still needs is the lock
    that every ending thread takes (``threading``'s ``_active_limbo_lock``). A thread that holds
    that lock stops waiting at once; any other joins the thread, unless another thread holds the
    lock for ``ENDING_S`` (it may be waiting for this one): then the producer ends once it is free.
    """
    me = threading.get_ident()
    if thread.ident == me or me in _not_waiting:
        return  # its own garbage collection, or a finalizer: it sees ``stop`` and ends
    if me in _producers and me != creator:
        return  # another producer (see "Who waits for whom"): it may be waiting for this one
    deadline = time.monotonic() + JOIN_S
    # a thread that is not alive may never set ``ended``: one of the parent's, in a forked child
    while thread.is_alive() and not ended.wait(POLL_S):
        q.clear()  # items put since the signal, and room for a producer waiting to put
        if time.monotonic() > deadline:
            warnings.warn(f"memstore: {what} thread did not stop within {JOIN_S:.0f} s", ResourceWarning,
                          stacklevel=3)
            return
    if _holding_limbo():
        return
    while thread.is_alive():
        thread.join(timeout=POLL_S)
        if thread.is_alive() and _limbo_held_by_another():
            return  # its holder may be waiting for this thread: the producer ends once it is free
        if time.monotonic() > deadline:
            warnings.warn(f"memstore: {what} thread did not end within {JOIN_S:.0f} s", ResourceWarning,
                          stacklevel=3)
            return


def _holding_limbo() -> bool:
    """Whether this thread holds the lock every ending thread takes (perhaps, where its holder is unknown)."""
    if _LIMBO is None:
        return False
    owned = getattr(_LIMBO, "_is_owned", None)  # an RLock since Python 3.11 (taken again by finalizers)
    return owned() if owned is not None else _LIMBO.locked()


def _limbo_held_by_another() -> bool:
    """Whether another thread holds the lock every ending thread takes for ``ENDING_S`` (waited here)."""
    if _LIMBO is None:
        return False
    if not _LIMBO.acquire(timeout=ENDING_S):
        return True
    _LIMBO.release()
    return False
