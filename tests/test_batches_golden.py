"""Golden checks: BatchStream's batches equal a plain numpy oracle, and its orders are pinned bytes.

The oracle builds each epoch with nothing but numpy: the in-memory order is
``default_rng((seed, epoch)).permutation`` of the split (or of a balanced
draw's multiset), dealt to ranks in contiguous chunks: of the positions
``start, start + 1, ...``, rank ``r`` of ``w`` takes the ``r``-th of ``w`` equal runs;
every batch is the store's frames of its blocks (zero-padded), normalised by
the store's statistics with the formulas written out here. The paged order is
a function of the pager's windows, so its bytes are pinned (hashes taken from
main at 62c5729, before order.py and prefetch.py took over): the redesign of
issue 11 changes no order. Sharding by pages (issue 12) changed the sharded
orders only: their pins were taken anew at that change, the unsharded ones
are the orders before it (recomputed over the unsharded cases alone). The paged
pins were renewed once more when a window's blocks came to be shuffled by a
kernel (raw 64-bit draws) instead of ``rng.permutation``: the same windows,
another order inside each.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from memstore.batches import BatchStream
from memstore.order import balanced_counts
from memstore.store import open_store

T, STEP = 32, 16


@pytest.fixture(scope="module")
def store(demo_store):
    with open_store(demo_store) as s:
        yield s


def paged_limit(batch: int) -> int:
    """Four batch buffers and two windows of 150 rows: the demo store is paged in many windows."""
    return 4 * batch * T * 96 * 4 + 2 * 150 * 96 * 4


def oracle_order(s: BatchStream, epoch: int, start: int = 0) -> np.ndarray:
    """The in-memory order of ``s`` in ``epoch``, from numpy alone (and the balanced draw's counts)."""
    n = len(s.block_file)
    rng = np.random.default_rng((s.seed, epoch))
    if s.balance:
        counts = balanced_counts(s._block_class, n, seed=s.seed, epoch=epoch)
        seq = rng.permutation(np.repeat(np.arange(n), counts))
    else:
        seq = rng.permutation(n) if s.shuffle else np.arange(n)
    rank, world = s.shard or (0, 1)
    per = (n - start) // world
    return seq[start + rank * per:start + (rank + 1) * per]


def oracle_batches(store, s: BatchStream, order: np.ndarray):
    """x [shape=(len(order), T, F)] float32, labels and files of ``order``, as the stream serves them."""
    x = np.zeros((len(order), T, store.n_bins), np.float32)
    for j, b in enumerate(order):
        rows = store.frames(int(s.block_file[b]))[s.block_start[b]:s.block_start[b] + T]
        x[j, : len(rows)] = rows
    files = s.block_file[order]
    labels = {"index": store.label_index.astype(np.int64), "multihot": store.labels.astype(np.float32)}.get(
        s.label_kind)
    if labels is None:
        labels = np.eye(len(store.classes), dtype=np.float32)[store.label_index]
    return x, labels[files], files


def old_normaliser(store, how):
    """``BatchStream._normalisation`` as it was written before stats.standardiser and stats.whitener."""
    st = store.stats
    mean = np.asarray(st["mean"], np.float64)
    if how == "standard":
        std = np.maximum(np.asarray(st["std"], np.float64), 1e-8)
        return {"mean": mean.astype(np.float32), "scale": (1.0 / std).astype(np.float32)}
    eig, vec = np.linalg.eigh(np.asarray(st["cov"], np.float64))
    eps = 1e-6 * max(float(eig.max()), 1e-8)
    return {"mean": mean.astype(np.float32), "proj": (vec / np.sqrt(np.maximum(eig, 0) + eps)).astype(np.float32)}


def as_ntf(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NCTF":
        return x[:, 0]
    if layout == "NTFC":
        return x[..., 0]
    return x[..., 0].transpose(0, 2, 1) if layout == "NFTC" else x


def served(s: BatchStream, epochs: int = 2):
    """Concatenated x (as NTF), y and files of ``epochs`` whole epochs, and the orders they follow."""
    xs, ys, fs, orders = [], [], [], []
    for _ in range(epochs):
        orders.append(s.order())
        for x, y, f in s:
            xs.append(as_ntf(x, s.layout))
            ys.append(y)
            fs.append(f)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(fs), orders


CASES = {
    "plain": dict(batch_size=8),
    "all, index labels, NTFC": dict(batch_size=5, split="all", labels="index", layout="NTFC", drop_last=False),
    "valid, multihot, NFTC, tail": dict(batch_size=3, split="valid", valid_fraction=0.34, labels="multihot",
                                        layout="NFTC", tail=True, drop_last=False),
    "unshuffled NTF": dict(batch_size=7, split="all", shuffle=False, layout="NTF", drop_last=False),
    "shard 1 of 3": dict(batch_size=4, shard=(1, 3), drop_last=False, seed=4),
    "balanced, shard 0 of 2": dict(batch_size=4, balance="class", shard=(0, 2), seed=9, split="all"),
    "split by block, no prefetch": dict(batch_size=6, split_by="block", prefetch=False, seed=2),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("paged", [False, True], ids=["memory", "pager"])
def test_two_epochs_of_batches_equal_the_numpy_oracle(store, case, paged):
    kw = {"time_context": T, "step": STEP, "return_file": True, **CASES[case]}
    s = BatchStream(store, memory_limit=paged_limit(kw["batch_size"]) if paged else None, **kw)
    assert s.out_of_core == paged
    x, y, f, orders = served(s)
    if not paged:
        for epoch, order in enumerate(orders):
            np.testing.assert_array_equal(order, oracle_order(s, epoch))
    order = np.concatenate([o[: s.iteration_size * s.batch_size] if s.drop_last else o for o in orders])
    ox, oy, of = oracle_batches(store, s, order)
    np.testing.assert_array_equal(f, of)
    np.testing.assert_array_equal(y, oy)
    assert y.dtype == oy.dtype and x.dtype == np.float32
    np.testing.assert_array_equal(x, ox)  # a copy of the store's bytes: exact


@pytest.mark.parametrize("how", ["standard", "pca"])
@pytest.mark.parametrize("paged", [False, True], ids=["memory", "pager"])
def test_normalised_batches_follow_the_old_normaliser(store, how, paged):
    s = BatchStream(store, batch_size=8, time_context=T, step=STEP, normalize=how, layout="NTF", return_file=True,
                    memory_limit=paged_limit(8) if paged else None)
    norm = old_normaliser(store, how)
    for key, value in norm.items():  # the same bytes as before stats.standardiser / stats.whitener
        assert s._norm[key].dtype == value.dtype and s._norm[key].tobytes() == value.tobytes()
    x, _, _, orders = served(s, 1)
    raw, _, _ = oracle_batches(store, s, orders[0][: len(x)])
    pad = np.zeros_like(raw, dtype=bool)
    for j, b in enumerate(orders[0][: len(x)]):
        pad[j, s.block_valid[b]:] = True  # padding rows stay zero, unnormalised
    centred = raw.astype(np.float64) - norm["mean"]
    want = centred * norm["scale"] if how == "standard" else centred @ norm["proj"].astype(np.float64)
    want[pad] = 0
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("paged", [False, True], ids=["memory", "pager"])
def test_a_resumed_stream_serves_the_rest_of_the_uninterrupted_run(store, paged):
    kw = dict(batch_size=4, time_context=T, step=STEP, seed=3, return_file=True,
              memory_limit=paged_limit(4) if paged else None)
    whole = served(BatchStream(store, **kw))
    a = BatchStream(store, **kw)
    head = []
    for i, (x, _, _) in enumerate(a):
        head.append(x[:, 0])
        if i == 4:
            break
    b = BatchStream(store, **kw)
    b.load_state_dict(a.state_dict())
    rest = served(b)
    np.testing.assert_array_equal(np.concatenate(head + [rest[0]])[: len(whole[0])], whole[0])
    np.testing.assert_array_equal(rest[2][: len(whole[2]) - 5 * 4], whole[2][5 * 4:])


def test_elastic_resume_in_memory_is_the_oracles_dealing(store):
    one = BatchStream(store, batch_size=4, time_context=T, step=STEP, seed=6)
    one.iteration_step = 7  # 28 blocks served: no step boundary of 3 ranks x 4
    for rank in range(3):
        s = BatchStream(store, batch_size=4, time_context=T, step=STEP, seed=6, shard=(rank, 3))
        s.load_state_dict(one.state_dict())
        np.testing.assert_array_equal(s.order(), oracle_order(s, 0, start=28))


def order_hash(store, limit, shards) -> str:
    h = hashlib.sha256()
    for kw in (dict(), dict(shuffle=False), dict(tail=True, split="all"), dict(balance="class"),
               dict(split_by="block", seed=8)):
        for shard in shards:
            s = BatchStream(store, batch_size=4, time_context=T, step=STEP, memory_limit=limit, shard=shard,
                            **{"seed": 5, **kw})
            for epoch in (0, 1):
                h.update(s.order(epoch).astype("<i8").tobytes())
            one = BatchStream(store, batch_size=4, time_context=T, step=STEP, memory_limit=limit,
                              **{"seed": 5, **kw})
            one.iteration_step = 7
            s.load_state_dict(one.state_dict())  # elastic: 28 blocks of the epoch served
            h.update(s.order().astype("<i8").tobytes())
    return h.hexdigest()


def test_orders_on_both_paths_are_the_pinned_bytes(store):
    # in memory: pinned from main at 62c5729, before the redesign of issue 11
    assert order_hash(store, None, [None])[:32] == "5a91d276856a97e034de6560cd0b0cae"
    # out of core: pinned when the paged plan became lanes (issue 12: read at the disk's sequential speed);
    # an order may change only with a reason like that one, and stays a pure function of (seed, epoch, settings)
    # Renewed when each window's blocks came to be shuffled by one kernel for the whole epoch (issue 12: the
    # first batch of a 100 GB store waited 0.2 s for 60,000 rng.permutation calls). Windows and pages are
    # unchanged: with the old per-window permutations the new plan gave the old pins, 14d41537... and c53f5b68...
    assert order_hash(store, paged_limit(4), [None])[:32] == "a4526ec3d6c321f80535cef9fb479bb2"
    # sharded: pinned at sharding by pages (issue 12: each rank reads only its pages); the unsharded pins
    # above are the orders before it, recomputed over the unsharded cases alone
    assert order_hash(store, None, [(1, 3)])[:32] == "44086b3bdef1e13f9c965ca70f4914d1"
    assert order_hash(store, paged_limit(4), [(1, 3)])[:32] == "aff692f1784722c30cc2c41cf8785994"
