"""balance="class": equal class shares per epoch, in memory, out of core and sharded; balance=None unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memstore._balance
import memstore._pages
from memstore.audio import write_wav
from memstore.batches import BatchStream
from memstore.build import build_store
from memstore.errors import ParameterError
from memstore.order import balanced_counts, class_members, lane_ends
from memstore.pager import plan_epoch
from memstore.store import open_store

T, STEP, BINS = 16, 8, 96
#: relative path -> labels: a 9 files, b 3, c 1, two files [a, c] (rarest c), one [a, b] (rarest b), two unlabelled
LABELS = {**{f"a{i}.wav": "a" for i in range(9)}, **{f"b{i}.wav": "b" for i in range(3)}, "c0.wav": "c",
          "ac0.wav": ["a", "c"], "ac1.wav": ["a", "c"], "ab0.wav": ["a", "b"], "u0.wav": None, "u1.wav": None}
PATHS = ("memory", "pager")


def make_imbalanced_store(root, path):
    """Real WAVs of 0.5 to 2 s at 22050 Hz (about 2 to 10 blocks of 16 frames each), labelled by LABELS."""
    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    for name in LABELS:
        n = int(rng.integers(11025, 44100))
        write_wav(root / name, rng.uniform(-0.5, 0.5, n), 22050)
    build_store(root, path, labels=lambda rel: LABELS[rel], workers=1, progress=False)
    return path


def limit(path, batch_size):
    """None (in memory), or batch buffers plus two windows of 48 rows: the pager serves many small windows."""
    return None if path == "memory" else 4 * batch_size * T * BINS * 4 + 2 * 48 * BINS * 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("imbalanced")
    with open_store(make_imbalanced_store(d / "audio", d / "imbalanced.h5")) as s:
        yield s


def stream(store, path, batch=4, **kw):
    kw = {"time_context": T, "step": STEP, "split": "all", "drop_last": False, "balance": "class", **kw}
    out = BatchStream(store, batch_size=batch, memory_limit=limit(path, batch), **kw)
    assert out.out_of_core == (path == "pager")
    return out


def expected_class(store, s):
    """The balancing class of each block, worked out from the file names (not from memstore)."""
    cls = {c: i for i, c in enumerate(store.classes)}
    by_file = []
    for p in store.paths:
        lab = LABELS[p]
        by_file.append(-1 if lab is None else cls[lab] if isinstance(lab, str)
                       else cls["c"] if "c" in lab else cls["b"])
    return np.asarray(by_file)[s.block_file]


def test_multi_label_files_count_as_their_rarest_label_and_unlabelled_ones_as_none(store):
    s = stream(store, "memory")
    per_class = np.bincount(expected_class(store, s)[expected_class(store, s) >= 0])
    assert per_class[store.classes.index("c")] < per_class[store.classes.index("b")] < per_class[0]
    np.testing.assert_array_equal(s._block_class, expected_class(store, s))


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), epoch=st.integers(0, 50), batch=st.integers(1, 9))
def test_a_balanced_epoch_serves_every_class_equally_and_replays(store, path, seed, epoch, batch):
    s = stream(store, path, batch, seed=seed, return_file=True, labels="multihot")
    s.epoch = epoch
    order = s.order()
    n, k = len(s.block_file), len(store.classes)
    assert len(order) == n  # the unbalanced epoch length
    cls = expected_class(store, s)[order]
    assert np.all(cls >= 0)  # unlabelled files never served
    shares = np.bincount(cls, minlength=k)
    assert shares.max() - shares.min() <= 1 and shares.sum() == n
    served = np.bincount(order, minlength=n)
    for c in range(k):  # minority blocks repeated evenly, majority blocks at most once
        m = served[expected_class(store, s) == c]
        assert m.max() - m.min() <= 1
    rep = s.shuffle_report()["class_shares"]
    assert list(rep) == list(store.classes)
    np.testing.assert_allclose(list(rep.values()), shares / n, rtol=0, atol=1e-12)
    again = stream(store, path, batch, seed=seed)
    np.testing.assert_array_equal(again.order(epoch), order)  # a pure function of (seed, epoch)
    assert not np.array_equal(again.order(epoch + 1), order)
    files, xs = [], []
    for x, _, f in s:
        files.append(f)
        xs.append(x)
    np.testing.assert_array_equal(np.concatenate(files), s.block_file[order])
    x = np.concatenate(xs)
    for j in (0, len(order) // 2, len(order) - 1):  # the served block is that block's frames
        b = order[j]
        rows = store.frames(int(s.block_file[b]))[s.block_start[b]:s.block_start[b] + T]
        np.testing.assert_array_equal(x[j, 0, : len(rows)], rows)
    assert s.epoch == epoch + 1


def test_both_paths_draw_the_same_multiset(store):
    mem, paged = stream(store, "memory", seed=3), stream(store, "pager", seed=3)
    for epoch in range(3):
        a, b = mem.order(epoch), paged.order(epoch)
        np.testing.assert_array_equal(np.sort(a), np.sort(b))
        assert not np.array_equal(a, b)  # the pager orders by windows


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("world", [2, 3, 4])
def test_balanced_shards_are_equal_and_together_serve_the_epoch(store, path, world):
    whole = stream(store, path, seed=11).order(2)
    parts = []
    for r in range(world):
        s = stream(store, path, seed=11, shard=(r, world))
        parts.append(s.order(2))
        assert len(parts[-1]) == len(whole) // world == s.total_points
    together = np.bincount(np.concatenate(parts), minlength=len(whole))
    expected = np.bincount(whole, minlength=len(whole))
    assert np.all(together <= expected) and (expected - together).sum() <= world - 1
    # every rank's class counts are equal within sampling tolerance: a rank holds n_r of the epoch's
    # n blocks, about n / k of each class, so its count of a class is hypergeometric around n_r / k
    k, n = len(store.classes), len(whole)
    cls = expected_class(store, stream(store, path))
    for r in range(world):
        s = stream(store, path, seed=11, shard=(r, world))
        n_r = s.total_points
        sd = np.sqrt(n_r * (1 / k) * (1 - 1 / k) * (n - n_r) / (n - 1))
        counts = np.array([np.bincount(cls[s.order(e)], minlength=k) for e in range(12)])
        # out of core a rank serves a contiguous run of windows (sharding by pages: it reads only those),
        # i.e. a stretch of each lane, so its class counts vary more from epoch to epoch (about 3 sd with
        # this store's 3 lanes) -- while staying unbiased over epochs (the last assertion)
        spread = 3 if path == "pager" else 1
        assert np.all(np.abs(counts - n_r / k) < 4.5 * spread * sd + 1)
        assert np.all(np.abs(counts.mean(axis=0) - n_r / k) < 4.5 * sd / np.sqrt(12) + 1)


def test_balance_is_validated(store, tmp_path):
    for bad in ("classes", "", True, 1):
        with pytest.raises(ParameterError, match="balance="):
            stream(store, "memory", balance=bad)
    with pytest.raises(ParameterError, match="needs shuffle=True"):
        stream(store, "memory", shuffle=False)
    root = tmp_path / "none"
    root.mkdir()
    write_wav(root / "x.wav", np.zeros(30000), 22050)
    build_store(root, tmp_path / "none.h5", labels="none", workers=1, progress=False)
    with pytest.raises(ParameterError, match="needs labelled files"):
        BatchStream(tmp_path / "none.h5", batch_size=2, balance="class").close()


def _unbalanced_hash(demo_store, ml, shards) -> str:
    h = hashlib.sha256()
    for shard in shards:
        for ep in (0, 1):
            with BatchStream(demo_store, batch_size=4, memory_limit=ml, shard=shard, seed=7, split="all") as s:
                h.update(s.order(ep).astype("<i8").tobytes())
    return h.hexdigest()[:32]


def test_unbalanced_order_is_byte_for_byte_what_it_was(demo_store):
    """Pinned from the order before balance= existed (main at 70656b3): balance=None changes nothing.

    Out of core the pin was renewed when the paged plan became lanes (issue 12), with balance=None.
    Sharding by pages (issue 12) changed the sharded orders: they have pins of their own since, and
    the unsharded ones are the orders before it (recomputed over the unsharded cases alone). The
    paged pins were renewed when a window's blocks came to be shuffled by a kernel instead of
    ``rng.permutation`` (issue 12, the first batch of large stores); with the old shuffle the new
    plan gave the old pins (d82f1429... and 2ddd1b1b...).
    """
    paged = 4 * 4 * 128 * 96 * 4 + 2 * 680 * 96 * 4
    assert _unbalanced_hash(demo_store, None, [None]) == "cd3a60287e4092bebe70804f98df0771"
    assert _unbalanced_hash(demo_store, paged, [None]) == "bac0ea6b58a77bf3949a1c6d26beeda6"
    assert _unbalanced_hash(demo_store, None, [(1, 3)]) == "5b791c44c5f66a8dd449a076cea92dca"
    assert _unbalanced_hash(demo_store, paged, [(1, 3)]) == "52132681999afc51c12bda2c66aee1d3"


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=30), seed=st.integers(0, 99),
       extra=st.integers(0, 400), data=st.data())
def test_pager_serves_the_counts_from_windows_within_the_budget(lengths, seed, extra, data):
    t = 10
    valid = np.minimum(t, np.asarray(lengths))
    row = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    counts = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=len(row), max_size=len(row))), np.int64)
    window_rows = t + extra
    ws = plan_epoch(row, valid, window_rows=window_rows, seed=seed, epoch=1, counts=counts)
    served = np.concatenate([w.blocks for w in ws]) if ws else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.bincount(served, minlength=len(row)), counts)
    for w in ws:
        assert 0 < w.n_rows <= window_rows and len(w.blocks)  # no window read for nothing
        for b, src in zip(w.blocks.tolist(), w.src_row.tolist(), strict=True):
            k = int(np.searchsorted(w.buf_start, src, side="right") - 1)  # the page it is read from
            assert w.row_start[k] + src - w.buf_start[k] == row[b]
            assert row[b] + valid[b] <= w.row_stop[k]


def test_balanced_counts_split_the_draw_evenly():
    cls = np.array([0] * 10 + [1] * 3 + [2] + [-1] * 4)
    for epoch in range(20):
        c = balanced_counts(cls, 19, seed=1, epoch=epoch)
        assert c.sum() == 19 and np.all(c[cls < 0] == 0)
        per = np.bincount(cls[cls >= 0], weights=c[cls >= 0])
        assert per.max() - per.min() <= 1
        assert set(c[:10].tolist()) <= {0, 1} and set(c[10:13].tolist()) <= {2, 3} and c[13] in (6, 7)
    assert not np.array_equal(balanced_counts(cls, 19, seed=1, epoch=0), balanced_counts(cls, 19, seed=1, epoch=1))


@settings(max_examples=80, deadline=None)
@given(classes=st.lists(st.integers(-1, 6), min_size=0, max_size=300), n_draw=st.integers(0, 900),
       seed=st.integers(0, 99), epoch=st.integers(0, 5))
def test_every_class_gets_its_quota_spread_as_evenly_as_it_can(classes, n_draw, seed, epoch):
    """Each class present gets n_draw // K blocks, n_draw % K of them one more; inside a class of m
    blocks with quota q, every block is served q // m or q // m + 1 times (exactly q % m the latter)."""
    block_class = np.array(classes, np.int64)
    counts = balanced_counts(block_class, n_draw, seed=seed, epoch=epoch)
    assert counts.dtype == np.int64 and counts.shape == block_class.shape
    present = np.unique(block_class[block_class >= 0])
    if not len(present) or n_draw <= 0:
        assert not counts.any()
        return
    assert counts.sum() == n_draw and not counts[block_class < 0].any()
    k = len(present)
    quotas = []
    for c in present:
        mine = counts[block_class == c]
        q, m = int(mine.sum()), len(mine)
        quotas.append(q)
        assert set(mine.tolist()) <= {q // m, q // m + 1} and int((mine == q // m + 1).sum()) == q % m
    assert sorted(quotas) == sorted([n_draw // k + 1] * (n_draw % k) + [n_draw // k] * (k - n_draw % k))


def test_the_drawn_blocks_are_a_uniform_sample_of_their_class():
    """Selection sampling draws every subset of a class equally often: over 6,000 epochs, 7 of a class
    of 10 and 3 of a class of 4 (once more), each block's and each pair's share is as the uniform draw gives it.
    (The draws are fixed by the seeds, so this holds or fails the same way on every machine.)"""
    block_class = np.array([0] * 10 + [1] * 4 + [2] * 7)  # quota 7: 10 -> 7 drawn, 4 -> 1 each + 3, 7 -> all
    runs = 6000
    once_more = np.zeros((runs, 14), bool)
    for epoch in range(runs):
        counts = balanced_counts(block_class, 21, seed=3, epoch=epoch)
        assert np.all(counts[14:] == 1)
        once_more[epoch] = counts[:14] - np.r_[np.zeros(10, np.int64), np.ones(4, np.int64)] == 1
    for members, take in ((np.arange(10), 7), (np.arange(10, 14), 3)):
        m = len(members)
        share = once_more[:, members].mean(axis=0)
        p = take / m
        assert np.all(np.abs(share - p) < 4 * np.sqrt(p * (1 - p) / runs))  # each block: four sigma
        pairs = (once_more[:, members, None] & once_more[:, None, members]).mean(axis=0)[np.triu_indices(m, 1)]
        pp = take * (take - 1) / (m * (m - 1))
        assert np.all(np.abs(pairs - pp) < 4 * np.sqrt(pp * (1 - pp) / runs))  # each pair: four sigma


def test_the_draw_is_the_same_whatever_the_chunk_it_is_made_in(monkeypatch):
    """A class larger than the chunk of draws made at once draws the same blocks as it would in one chunk."""
    block_class = np.repeat(np.arange(3), [5000, 1234, 77])
    want = balanced_counts(block_class, 6000, seed=5, epoch=2)
    for chunk in (1, 7, 1000):
        monkeypatch.setattr(memstore._balance, "_SELECT_CHUNK", chunk)
        np.testing.assert_array_equal(balanced_counts(block_class, 6000, seed=5, epoch=2), want)


def test_a_class_too_large_to_draw_from_is_refused(monkeypatch):
    monkeypatch.setattr(memstore._balance, "_SELECT_MAX", 100)
    with pytest.raises(ParameterError, match="too large to draw from"):
        balanced_counts(np.zeros(150, np.int64), 10, seed=0, epoch=0)
    assert balanced_counts(np.zeros(99, np.int64), 10, seed=0, epoch=0).sum() == 10


def test_a_class_sort_of_another_table_is_refused_not_written_past():
    """balanced_counts writes by the ids of the class sort it is given: one of another table (longer,
    shorter, or with runs outside it) is a ParameterError, and nothing is written outside the counts."""
    block_class = np.repeat(np.arange(3), [50, 7, 20])
    longer = class_members(np.repeat(np.arange(3), [500, 70, 200]))
    present, by_class, first, last = class_members(block_class)
    for bad in (longer, (present, by_class, first, last + 5), (present, by_class, first[:2], last),
                (present, by_class[::-1] + 1, first, last), (present, by_class, last, first)):
        with pytest.raises(ParameterError, match="_classes must be"):
            balanced_counts(block_class, 90, seed=0, epoch=0, _classes=bad)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), min_size=0, max_size=40), seed=st.integers(0, 99))
def test_the_drawn_blocks_table_is_the_one_numpy_spells(lengths, seed):
    """_drawn gives, in one pass, the drawn blocks' ids, counts, offsets, rows and lane ends."""
    rng = np.random.default_rng(seed)
    row = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64) if lengths else np.zeros(0, np.int64)
    valid = np.minimum(np.asarray(lengths, np.int64), 20) if lengths else np.zeros(0, np.int64)
    counts = rng.integers(0, 3, len(row)).astype(np.int64)
    ids, reps, cum, drawn_row, ends = memstore._pages._drawn(counts, row, valid)
    want = np.flatnonzero(counts > 0)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_array_equal(reps, counts[want])
    np.testing.assert_array_equal(cum, np.r_[0, np.cumsum(counts[want])])
    np.testing.assert_array_equal(drawn_row, row[want])
    np.testing.assert_array_equal(ends, lane_ends(row[want], valid[want]))


@settings(max_examples=40, deadline=None)
@given(classes=st.lists(st.integers(-1, 5), min_size=0, max_size=300), n_draw=st.integers(0, 400),
       seed=st.integers(0, 9), epoch=st.integers(0, 3))
def test_a_draw_with_the_class_sort_kept_is_the_draw_without_it(classes, n_draw, seed, epoch):
    """EpochOrder keeps class_members across epochs; balanced_counts given it draws the same counts."""
    block_class = np.array(classes, np.int64)
    kept = class_members(block_class)
    np.testing.assert_array_equal(balanced_counts(block_class, n_draw, seed=seed, epoch=epoch, _classes=kept),
                                  balanced_counts(block_class, n_draw, seed=seed, epoch=epoch))


@settings(max_examples=60, deadline=None)
@given(classes=st.lists(st.one_of(st.integers(-1, 6), st.integers(-40000, 40000)), min_size=0, max_size=200),
       small=st.booleans())
def test_class_members_are_the_sorted_classes_and_their_runs(classes, small):
    """Against the plain spelling (np.unique, a 64-bit stable argsort, searchsorted), on both of
    class_members' paths: labels from -1 to 32766 (sorted as 16 bits) and any other int64."""
    block_class = np.array([c % 7 - 1 for c in classes] if small else classes, np.int64)
    present, by_class, first, last = class_members(block_class)
    order = np.argsort(block_class, kind="stable")
    want = np.unique(block_class[block_class >= 0])
    np.testing.assert_array_equal(by_class, order)
    np.testing.assert_array_equal(present, want)
    np.testing.assert_array_equal(first, np.searchsorted(block_class[order], want))
    np.testing.assert_array_equal(last, np.searchsorted(block_class[order], want, side="right"))
    assert present.dtype == first.dtype == last.dtype == np.int64
