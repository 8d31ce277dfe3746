"""Sharding by pages (issue 12): each rank, and each DataLoader worker, reads about 1/N of the store.

The I/O tests run every rank in a process of its own on a real store file, drop the file from the
page cache (``posix_fadvise DONTNEED``), iterate one epoch and count the bytes the process read from
the disk (``read_bytes`` in ``/proc/self/io``): bytes, never times. Each is measured twice: with the
system's own readahead (``read_ahead_kb``, 8 MB on the machine these were written on), which the
pager must keep from reading on into the next rank's stretch of a lane (``memstore.pager``), and
with the readahead turned off on every descriptor the pager opens (``POSIX_FADV_RANDOM`` right after
``open``), which measures what the dealing asks for.
The other tests check the dealing itself: disjoint equal shares, every block once, elastic resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pager import table

import memstore
from memstore._deal import _cut
from memstore.batches import BatchStream
from memstore.build import write_store_from_arrays
from memstore.features import MelSpectrogram
from memstore.order import deal, deal_windows, intervals, plan_epoch, remaining
from memstore.store import open_store

REPO = Path(memstore.__file__).resolve().parents[1]
BINS, T, BATCH = 32, 32, 16
#: two window buffers of about 1/40 of the store: many windows, so the shared edges are small
LIMIT = 2_000_000
#: bytes a process may read besides the store's pages (HDF5 metadata, the kernels' caches)
SLACK = 1_000_000


def _interleaved_store(path, *, files: int, frames: int, seed: int):
    """``files`` files of ``frames`` x BINS random float32, four classes interleaved, synced to disk."""
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((frames, BINS)).astype(np.float32) for _ in range(files)]
    hot = np.zeros((files, 4), np.uint8)
    hot[np.arange(files), np.arange(files) % 4] = 1
    write_store_from_arrays(path, feats, [f"c{i % 4}/f{i}.wav" for i in range(files)], list("abcd"), hot,
                            MelSpectrogram(n_mels=BINS, sample_rate=8000))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # no dirty pages: DONTNEED can drop them all
    finally:
        os.close(fd)
    return path


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """200 files of 1500 frames x 32 bins (38 MB of float32), four classes interleaved."""
    return _interleaved_store(tmp_path_factory.mktemp("shard_io") / "big.h5", files=200, frames=1500, seed=0)


def stream_args(**kw):
    return dict(batch_size=BATCH, time_context=T, step=T, split="all", drop_last=False, seed=1,
                memory_limit=LIMIT, **kw)


# run in a fresh process: one rank (or one DataLoader) reading one cold epoch
CHILD = textwrap.dedent("""
    import json, os, sys
    import memstore.pager as pager
    from memstore.batches import BatchStream

    def read_bytes():
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))

    class NoReadahead:  # the pager's os, with readahead off on each descriptor it opens
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def open(path, flags, *rest):
            fd = os.open(path, flags, *rest)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            return fd

    path, rank, world, workers, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    args = json.loads(sys.argv[6])
    if sys.argv[7] == "off":
        pager.os = NoReadahead()

    def drop_cache():
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    if workers == 0:
        with BatchStream(path, shard=(rank, world), **args) as s:  # compile the kernels before measuring
            next(iter(s))
        s = BatchStream(path, shard=(rank, world), **args)
        assert s.out_of_core
        drop_cache()
        before = read_bytes()
        blocks = sum(len(x) for x, _ in s)
        json.dump({"read_bytes": read_bytes() - before, "blocks": blocks}, open(out + "/0.json", "w"))
        s.close()
    else:
        import torch
        from memstore.torch import BlockDataset

        class Measured(BlockDataset):  # each worker counts its own process's reads
            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                before, blocks = read_bytes(), 0
                for item in super().__iter__():
                    blocks += len(item[0])
                    yield item
                json.dump({"read_bytes": read_bytes() - before, "blocks": blocks},
                          open(f"{out}/{info.id}.json", "w"))

        with BatchStream(path, **args) as s:  # compile the kernels before measuring
            next(iter(s))
        drop_cache()
        ds = Measured(path, rank=rank, world_size=world, **args)
        for _ in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers):
            pass
""")


def cold_epoch(path, tmp_path, rank, world, workers=0, readahead="default", args=None) -> list[dict]:
    """Run one rank's cold epoch in a new process; ``read_bytes`` and blocks of it (or of each worker).

    ``readahead="off"`` turns it off on the pager's descriptors; "default" leaves the system's.
    """
    out = tmp_path / f"r{rank}of{world}w{workers}{readahead}"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", CHILD, str(path), str(rank), str(world), str(workers), str(out),
                    json.dumps(args or stream_args()), readahead], env=env, check=True, timeout=300)
    return [json.loads((out / f"{w}.json").read_text()) for w in range(max(1, workers))]


def needs_io_counters():
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("os.posix_fadvise is missing: the page cache cannot be dropped")
    try:
        with open("/proc/self/io") as f:
            if "read_bytes:" not in f.read():
                raise OSError
    except OSError:
        pytest.skip("/proc/self/io with read_bytes is missing: a process's disk reads cannot be counted")


@pytest.mark.parametrize("readahead", ["default", "off"])
@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_reads_about_one_nth_of_the_store(big_store, tmp_path, world, readahead):
    """The issue's target, 1.2 / N of the store per rank, with the system's readahead too."""
    needs_io_counters()
    with open_store(big_store) as s:
        feature_bytes = int(np.asarray(s.features).nbytes)
        n_blocks = len(BatchStream(s, **stream_args()).block_file)
    got = [cold_epoch(big_store, tmp_path, r, world, readahead=readahead)[0] for r in range(world)]
    assert all(g["blocks"] == n_blocks // world for g in got)
    for g in got:
        assert g["read_bytes"] <= 1.2 / world * feature_bytes + SLACK, (g, feature_bytes)
    # and together they read the store about once, not world times
    assert sum(g["read_bytes"] for g in got) <= 1.2 * feature_bytes + world * SLACK


@pytest.fixture(scope="module")
def long_store(tmp_path_factory):
    """160 files of 6000 frames x 32 bins (123 MB): with 1024-frame blocks and windows of 1500 rows the epoch is one
    lane, so a rank's stretch (61 MB) is longer than twice what the readahead reads ahead (2 x read_ahead_kb)."""
    return _interleaved_store(tmp_path_factory.mktemp("shard_io_long") / "long.h5", files=160, frames=6000, seed=3)


def test_ranks_with_long_stretches_read_about_half_each(long_store, tmp_path):
    """Rank 0 reads its stretch with the readahead, then its end without: no readahead runs on past it."""
    needs_io_counters()
    args = dict(batch_size=4, time_context=1024, step=1024, split="all", drop_last=False, seed=1,
                memory_limit=4 * 4 * 1024 * BINS * 4 + 2 * 1500 * BINS * 4)
    with open_store(long_store) as s:
        feature_bytes = int(np.asarray(s.features).nbytes)
        stream = BatchStream(s, **args)
        ws = stream._order.windows(0, (0, 2))
        assert stream.out_of_core and max(len(w.row_start) for w in ws) == 1  # one lane
    got = [cold_epoch(long_store, tmp_path, r, 2, args=args)[0] for r in range(2)]
    for g in got:  # 1500-row windows: the window shared at the edge adds almost nothing to a half
        assert g["read_bytes"] <= 1.1 / 2 * feature_bytes + SLACK, (g, feature_bytes)


def test_two_dataloader_workers_each_read_about_half(big_store, tmp_path):
    pytest.importorskip("torch")
    needs_io_counters()
    with open_store(big_store) as s:
        feature_bytes = int(np.asarray(s.features).nbytes)
        n_blocks = len(BatchStream(s, **stream_args()).block_file)
    got = cold_epoch(big_store, tmp_path, 0, 1, workers=2)  # the system's readahead
    assert [g["blocks"] for g in got] == [n_blocks // 2] * 2
    for g in got:
        assert g["read_bytes"] <= 1.2 / 2 * feature_bytes + SLACK, (g, feature_bytes)


def test_a_ranks_windows_hold_only_its_pages(big_store):
    """Without I/O: the pages in a rank's windows add up to about 1/N of the store's rows."""
    with open_store(big_store) as s:
        base = BatchStream(s, **stream_args())
        rows = int(np.asarray(s.features).shape[0])
        for world in (2, 4, 8):
            for r in range(world):
                ws = base._order.windows(0, (r, world))
                read = sum(int((w.row_stop - w.row_start).sum()) for w in ws)
                assert read <= rows / world + 2 * base._window_rows, (world, r)
                for w in ws:  # every served block lies inside one of the window's pages
                    page = np.searchsorted(w.buf_start, w.src_row, side="right") - 1
                    assert np.array_equal(w.src_row - w.buf_start[page] + w.row_start[page], base.block_row[w.blocks])
                    assert np.all(w.src_row + base.block_valid[w.blocks] <= w.buf_start[page]
                                  + (w.row_stop - w.row_start)[page])
                    assert len(np.unique(page)) == len(w.row_start)  # no page without a block of this rank


def as_set(iv) -> set[int]:
    return {p for lo, hi in np.asarray(iv).reshape(-1, 2).tolist() for p in range(lo, hi)}


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), batch=st.integers(1, 7),
       stages=st.lists(st.tuples(st.integers(1, 6), st.floats(0, 1)), min_size=1, max_size=4))
def test_dealing_and_chained_resumes_cover_the_epoch_once(n, batch, stages):
    """Ranks take disjoint equal chunks; resumes N -> M -> K serve every position at most once."""
    unserved = intervals(None, n)
    served: list[int] = []
    for i, (world, frac) in enumerate(stages):
        chunks = [deal(unserved, r, world) for r in range(world)]
        per = len(as_set(unserved)) // world
        assert all(len(c) == per and np.all(np.diff(c) > 0) for c in chunks)  # equal, ascending
        flat = np.concatenate(chunks)
        assert len(set(flat.tolist())) == len(flat) and set(flat.tolist()) <= as_set(unserved)
        steps = -(-per // batch)
        last = i == len(stages) - 1
        k = steps if last else int(frac * steps)  # every rank takes the same k steps
        consumed = min(k * batch, per)
        served += [p for c in chunks for p in c[:consumed].tolist()]
        left = remaining(unserved, world, [consumed] * world)
        assert as_set(left) == as_set(unserved) - {p for c in chunks for p in c[:consumed].tolist()}
        unserved = left
    assert len(served) == len(set(served)) and set(served) <= set(range(n))
    assert n - len(served) <= stages[-1][0] - 1  # lost: at most what the last dealing drops


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 400), min_size=1, max_size=30), world=st.integers(1, 5),
       seed=st.integers(0, 3), lo=st.integers(0, 50), span=st.integers(0, 400))
def test_dealt_windows_serve_their_positions_from_their_pages(lengths, world, seed, lo, span):
    rows, valid = table(lengths, 8, 8)
    whole = plan_epoch(rows, valid, window_rows=64, seed=seed, epoch=0)
    seq = np.concatenate([w.blocks for w in whole])
    unserved = intervals([[min(lo, len(seq)), min(lo + span, len(seq))]], len(seq))
    for r in range(world):
        ws = deal_windows(whole, (r, world), unserved)
        got = np.concatenate([np.zeros(0, np.int64)] + [w.blocks for w in ws])
        np.testing.assert_array_equal(got, seq[deal(unserved, r, world)])
        for w in ws:
            page = np.searchsorted(w.buf_start, w.src_row, side="right") - 1
            np.testing.assert_array_equal(w.src_row - w.buf_start[page] + w.row_start[page], rows[w.blocks])
            assert w.n_rows == int((w.row_stop - w.row_start).sum()) and w.buf_start[0] == 0


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 400), min_size=1, max_size=30), world=st.integers(1, 4),
       seed=st.integers(0, 3), cuts=st.lists(st.integers(0, 10**6), max_size=8), at_bounds=st.booleans())
def test_dealt_windows_equal_each_window_cut_on_its_own(lengths, world, seed, cuts, at_bounds):
    """deal_windows keeps runs of whole windows as slices and cuts the rest: the same as cutting window by window.

    ``at_bounds``: the unserved intervals start and end where windows do, so whole windows lie
    next to windows with nothing to serve (a run of whole windows must end there).
    """
    rows, valid = table(lengths, 8, 8)
    whole = plan_epoch(rows, valid, window_rows=64, seed=seed, epoch=0)
    n = len(whole.blocks)
    bounds = np.r_[0, np.cumsum([len(w.blocks) for w in whole])]
    edges = sorted({int(bounds[c % len(bounds)]) if at_bounds else c % (n + 1) for c in cuts})
    unserved = intervals(list(zip(edges[0::2], edges[1::2], strict=False)), n) if len(edges) > 1 else None
    for r in range(world):
        pos = deal(intervals(unserved, n), r, world)
        want = []
        for i, w in enumerate(whole):  # the rule written out: every window with a position of this rank, cut to them
            keep = pos[(pos >= bounds[i]) & (pos < bounds[i + 1])] - bounds[i]
            if len(keep):
                want.append(_cut(w, keep))
        got = deal_windows(whole, (r, world), unserved)
        assert len(got) == len(want)
        for g, e in zip(got, want, strict=True):
            for name in ("row_start", "row_stop", "buf_start", "n_rows", "blocks", "src_row"):
                np.testing.assert_array_equal(getattr(g, name), getattr(e, name))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_chained_elastic_resumes_on_the_pager_serve_every_block_once(big_store, data):
    """Really iterate out of core: 2 ranks, then 4, then 3; one state from any rank; every block once."""
    with open_store(big_store) as s:
        whole = len(BatchStream(s, **stream_args()).block_file)
        served, state = [], None
        for world in (2, 4, 3):
            ranks = [BatchStream(s, shard=(r, world), prefetch=False, return_file=True, **stream_args())
                     for r in range(world)]
            for rank in ranks:
                if state is not None:
                    rank.load_state_dict(state)
            n_left = ranks[0]._n_batches(ranks[0]._unserved) - ranks[0].iteration_step
            take = n_left if world == 3 else data.draw(st.integers(0, n_left - 1), label=f"steps at {world}")
            for rank in ranks:
                ids = rank.order()[rank.iteration_step * BATCH:]
                got = []
                for i, (x, _, f) in enumerate(rank if take else ()):
                    b = ids[i * BATCH]  # the first block's frames: the right bytes were read
                    np.testing.assert_array_equal(x[0, 0], s.frames(int(rank.block_file[b]))[
                        rank.block_start[b]:rank.block_start[b] + T])
                    got.append(f)
                    if i + 1 == take:
                        break
                n_got = sum(len(f) for f in got)
                np.testing.assert_array_equal(np.concatenate(got) if got else [], rank.block_file[ids[:n_got]])
                served.append(ids[:n_got])
            states = [rank.state_dict() for rank in ranks]
            assert all(st_ == states[0] for st_ in states)  # the state does not depend on the rank
            state = states[0]
        all_served = np.concatenate(served)
        assert len(np.unique(all_served)) == len(all_served)
        assert whole - len(all_served) <= 2
        assert state["epoch"] == 1 and state["remaining"] == [[0, whole]]
