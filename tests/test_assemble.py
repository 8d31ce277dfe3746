"""The batch producer (memstore._assemble): where it hands batches over early.

The order and contents of the batches are pinned elsewhere (test_batches_golden, test_outofcore,
test_elastic); here, the :data:`memstore.prefetch.FLUSH` marks that let a lazy hand-over deliver the
first batch and every batch made before a wait for the disk without delay.
"""

from __future__ import annotations

import numpy as np
import pytest

import memstore.order
from memstore._assemble import produce
from memstore.batches import BatchStream
from memstore.prefetch import FLUSH
from memstore.store import open_store


def ooc_limit(batch_size: int, t: int = 128) -> int:
    """Four batch buffers and two windows of ~680 rows: far below the demo store's features."""
    return 4 * batch_size * t * 96 * 4 + 2 * 680 * 96 * 4


def expected_marks(window_sizes, batch_size, n_batches):
    """'B' per batch, 'F' after the first batch and before each batch that needs a new window."""
    cum = np.cumsum(window_sizes)[:-1]  # where windows 1, 2, ... start in the epoch's sequence
    served = n_batches * batch_size
    kinds = []
    for b in range(n_batches):
        kinds += ["F"] * int(np.count_nonzero((cum >= b * batch_size) & (cum < min(served, (b + 1) * batch_size))))
        kinds.append("B")
        if b == 0:
            kinds.append("F")
    return kinds


def test_flush_follows_the_first_batch_and_comes_before_every_wait_for_a_window(demo_store):
    with open_store(demo_store) as s:
        stream = BatchStream(s, batch_size=8, split="all", memory_limit=ooc_limit(8), prefetch=False)
        assert stream.out_of_core
        ws = stream._order.windows(0, None, None)
        assert len(ws) > 2, "the budget should split the epoch into several windows"
        job = stream._job()
        items = list(produce(job, ws, 0))
        stream.close()
    kinds = ["F" if it is FLUSH else "B" for it in items]
    assert kinds == expected_marks([len(w.blocks) for w in ws], 8, job.n_batches)


def test_in_memory_the_only_flush_follows_the_first_batch(demo_store):
    with open_store(demo_store) as s, BatchStream(s, batch_size=8, split="all") as stream:
        assert not stream.out_of_core
        items = list(produce(stream._job(), stream._order.windows(0, None, None), 3))
    kinds = ["F" if it is FLUSH else "B" for it in items]
    assert kinds == ["B", "F"] + ["B"] * (stream.iteration_size - 4)


def assert_stretches_serve_the_whole_plans_batches(job, whole, stretches):
    """produce over ``stretches()`` gives produce over ``whole``'s batches, from the first batch and from later
    ones (a resume)."""
    for first_batch in (0, 1, job.n_batches // 2, job.n_batches - 1):
        want = [it for it in produce(job, whole, first_batch) if it is not FLUSH]
        got = [it for it in produce(job, stretches(), first_batch, len(whole.blocks)) if it is not FLUSH]
        assert len(got) == len(want) == job.n_batches - first_batch
        for g, w in zip(got, want, strict=True):
            for a, b in zip(g, w, strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shard", [(0, 2), (1, 2), (2, 3)])
def test_a_shard_read_in_two_stretches_serves_its_whole_plans_batches(demo_store, shard, monkeypatch):
    """produce over a shard's stretches (its first windows, then the rest: what BatchStream runs sharded)
    equals produce over its whole windows, from the first batch, a batch in the first stretch and later."""
    monkeypatch.setattr(memstore.order, "STRETCH_FIRST", 2)  # the demo store's shards have a few windows
    with open_store(demo_store) as s:
        stream = BatchStream(s, batch_size=8, split="all", memory_limit=ooc_limit(8), prefetch=False,
                             return_file=True, shard=shard)
        whole = stream._order.windows(1, shard, None)
        parts = list(stream._order.stretches(1, shard))
        assert len(whole) > memstore.order.STRETCH_FIRST and [len(p) for p in parts] == [
            memstore.order.STRETCH_FIRST, len(whole) - memstore.order.STRETCH_FIRST]
        assert_stretches_serve_the_whole_plans_batches(stream._job(), whole, lambda: stream._order.stretches(1, shard))
        stream.close()


def test_an_epoch_read_a_stretch_at_a_time_serves_the_whole_plans_batches(demo_store, monkeypatch):
    """produce over plan_stretches (what BatchStream runs unsharded) equals produce over plan_epoch's windows,
    from the first batch and from batches inside later stretches (a resume)."""
    monkeypatch.setattr(memstore.order, "STRETCH_FIRST", 1)  # stretches of 1, 2, 4, ... windows: many of them
    with open_store(demo_store) as s:
        stream = BatchStream(s, batch_size=8, split="all", memory_limit=ooc_limit(8), prefetch=False,
                             return_file=True)
        whole = stream._order.windows(1, None, None)
        assert len(whole) > 8, "the budget should split the epoch into several stretches"
        parts = list(stream._order.stretches(1))
        assert len(parts) > 3
        assert_stretches_serve_the_whole_plans_batches(stream._job(), whole, lambda: stream._order.stretches(1))
        stream.close()
