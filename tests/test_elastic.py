"""Elastic resume: a state saved at shard=(r, N) resumes the epoch at shard=(r, M) for any M.

N ranks are simulated as N streams over the same store in one process. Before the checkpoint every
rank takes the same number of batches; one rank's state then loads into M new streams, which serve
the rest. Together: no block twice, and none lost beyond the at most M - 1 that equal shares drop.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_balance import STEP, T, limit, make_imbalanced_store

from memstore.batches import BatchStream
from memstore.errors import ParameterError
from memstore.store import open_store

PATHS = ("memory", "pager")
BALANCE = (None, "class")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("elastic")
    with open_store(make_imbalanced_store(d / "audio", d / "elastic.h5")) as s:
        yield s


def stream(store, path, shard, balance=None, batch=3, **kw):
    out = BatchStream(store, batch_size=batch, time_context=T, step=STEP, split="all", drop_last=False,
                      seed=5, memory_limit=limit(path, batch), shard=shard, balance=balance, prefetch=False, **kw)
    assert out.out_of_core == (path == "pager")
    return out


def epoch_multiset(store, path, balance, epoch=0):
    """Block id -> times served in the whole (unsharded) epoch."""
    s = stream(store, path, None, balance)
    return np.bincount(s.order(epoch), minlength=len(s.block_file))


def remaining(s):
    """Block ids a stream will still serve this epoch (its order from the current step on)."""
    return s.order()[s.iteration_step * s.batch_size:]


def check_union(served, whole, world):
    got = np.bincount(np.concatenate(served), minlength=len(whole))
    assert np.all(got <= whole), "a block was served more often than the epoch holds it"
    assert (whole - got).sum() <= world - 1, f"{(whole - got).sum()} blocks lost"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("balance", BALANCE)
@pytest.mark.parametrize("old, new", [(4, 2), (2, 3)])
def test_checkpoint_at_every_step_resumes_at_another_world_size(store, path, balance, old, new):
    whole = epoch_multiset(store, path, balance)
    ranks = [stream(store, path, (r, old), balance) for r in range(old)]
    for k in range(ranks[0].iteration_size + 1):  # every checkpoint of the epoch, its end included
        served = [ranks[r].order()[: k * 3] for r in range(old)]  # k batches of 3 per rank
        ranks[0].iteration_step = k
        state = ranks[0].state_dict()
        assert state["position"] == (k * 3 * old if k < ranks[0].iteration_size else 0)
        after = []
        for r in range(new):
            s = stream(store, path, (r, new), balance)
            s.load_state_dict(state)
            if k == ranks[0].iteration_size:
                assert s.epoch == 1 and s.iteration_step == 0  # the end of an epoch resumes the next one
                continue
            after.append(remaining(s))
        if k < ranks[0].iteration_size:
            assert len({len(a) for a in after}) == 1  # equal shares for the new ranks
            check_union(served + after, whole, new)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("balance", BALANCE)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), batch=st.integers(1, 5))
def test_served_batches_across_two_resizes_cover_the_epoch_once(store, path, balance, data, batch):
    """Really iterate: 4 ranks, then 2, then 3 in the same epoch; the files served match the orders."""
    whole = epoch_multiset(store, path, balance)
    served, state = [], None
    for world in (4, 2, 3):
        ranks = [stream(store, path, (r, world), balance, batch, return_file=True) for r in range(world)]
        if state is not None:
            for s in ranks:
                s.load_state_dict(state)
        left = [remaining(s) for s in ranks]
        n_left = -(-len(left[0]) // batch)
        take = n_left if world == 3 else data.draw(st.integers(0, max(0, n_left - 1)), label=f"steps at {world}")
        for s, ids in zip(ranks, left, strict=True):
            files = []
            for i, (x, _, f) in enumerate(s if take else ()):
                files.append(f)
                b = ids[i * batch]  # first block of the batch: its frames
                rows = store.frames(int(s.block_file[b]))[s.block_start[b]:s.block_start[b] + T]
                np.testing.assert_array_equal(x[0, 0, : len(rows)], rows)
                if i + 1 == take:  # a batch counts as taken once it is yielded
                    break
            got = np.concatenate(files) if files else np.zeros(0, np.int64)
            np.testing.assert_array_equal(got, s.block_file[ids[: len(got)]])
            served.append(ids[: len(got)])
        state = ranks[0].state_dict()
        assert all(s.state_dict()["position"] == state["position"] for s in ranks)  # one rank's state is enough
    check_union(served, whole, 3)
    assert state["epoch"] == 1 and state["position"] == 0


@pytest.mark.parametrize("path", PATHS)
def test_same_world_resume_is_the_uninterrupted_epoch(store, path):
    full = stream(store, path, (1, 2), "class")
    ref = [x.copy() for x, _ in full]
    a = stream(store, path, (1, 2), "class")
    got = []
    for i, (x, _) in enumerate(a):
        got.append(x.copy())
        if i == 4:
            break
    b = stream(store, path, (1, 2), "class")
    b.load_state_dict(a.state_dict())
    assert b.iteration_step == 5  # a step boundary: the state maps back to the epoch's own steps
    got += [x.copy() for x, _ in b]
    assert len(got) == len(ref)
    for u, v in zip(got, ref, strict=True):
        np.testing.assert_array_equal(u, v)


def test_unsharded_states_load_sharded_and_back(store):
    one = stream(store, "memory", None)
    one.iteration_step = 7  # 21 blocks served
    two = [stream(store, "memory", (r, 2)) for r in range(2)]
    for s in two:
        s.load_state_dict(one.state_dict())
        assert s.iteration_step == 0 and s.state_dict()["position"] == 21  # 21 is no step boundary of 2 x 3
    served = [one.order()[:21]] + [s.order()[:6] for s in two]
    for s in two:
        s.iteration_step = 2  # both ranks took 2 more batches of 3: position 33
    back = stream(store, "memory", None)
    back.load_state_dict(two[1].state_dict())
    # 33 blocks served, but two chunks' heads (not a prefix): dealt anew, not step 11 of the epoch
    assert back.iteration_step == 0 and back.state_dict()["position"] == 33
    check_union(served + [remaining(back)], epoch_multiset(store, "memory", None), 1)


def test_format_1_states_load_at_their_shard_and_are_refused_at_another(store):
    old = stream(store, "memory", (1, 2))
    v1 = {"epoch": 0, "iteration_step": 4, "seed": 5, "fingerprint": old._fingerprint_v1()}  # as saved before
    again = stream(store, "memory", (1, 2))
    again.load_state_dict(v1)
    # its 4 steps were taken under round-robin dealing: the prefix of 4 x 3 x 2 blocks is consumed
    glob = stream(store, "memory", None).order()
    per = (len(glob) - 24) // 2
    assert again.iteration_step == 0 and again.state_dict()["position"] == 24
    np.testing.assert_array_equal(remaining(again), glob[24 + per:24 + 2 * per])
    v2 = {"format": 2, "epoch": 0, "position": 24, "seed": 5, "shard": [1, 2], "iteration_step": 4,
          "fingerprint": again.state_dict()["fingerprint"]}  # a format-2 state: the same prefix consumed
    from_v2 = stream(store, "memory", (1, 2))
    from_v2.load_state_dict(v2)
    assert from_v2.state_dict() == again.state_dict()
    with pytest.raises(ParameterError, match=r"saved with shard=\[1, 2\] and loads only at that shard"):
        stream(store, "memory", (0, 3)).load_state_dict(v1)
    with pytest.raises(ParameterError, match="predates balance="):
        stream(store, "memory", (1, 2), "class").load_state_dict(v1)
    with pytest.raises(ParameterError, match="other settings"):
        stream(store, "memory", (1, 2), batch=4).load_state_dict(v1)


def test_bad_states_are_refused(store):
    s = stream(store, "memory", (0, 2))
    good = s.state_dict()
    n = len(s.block_file)
    cases = [({**good, "format": 4}, "format 4"), ({**good, "position": n + 1}, "position="),
             ({**good, "position": -1}, "position="), ({**good, "epoch": "1"}, "epoch="),
             ({**good, "seed": 6}, "other settings"), (["no"], "must be a dict")]
    for state, match in cases:
        with pytest.raises(ParameterError, match=match):
            s.load_state_dict(state)
    with pytest.raises(ParameterError, match="other settings"):  # another memory_limit pages differently
        stream(store, "pager", (0, 2)).load_state_dict(good)
    with pytest.raises(ParameterError, match="other settings"):
        stream(store, "memory", (0, 2), "class").load_state_dict(good)


def test_a_balanced_state_from_before_selection_sampling_is_refused_with_the_reason(store):
    """A balanced state saved before the draw became selection sampling names its balance "class": part way
    through an epoch it was another multiset, so it is refused (saying why), never resumed with other blocks;
    at an epoch's start it loads, and that epoch is drawn anew."""
    s = stream(store, "memory", (0, 2), "class")
    next(iter(s))
    state = s.state_dict()
    assert state["fingerprint"][10] == "class/select" and state["position"] > 0
    s.load_state_dict(state)  # today's state loads

    def before(st):
        return {**st, "fingerprint": st["fingerprint"][:10] + ["class"] + st["fingerprint"][11:]}

    with pytest.raises(ParameterError, match="earlier memstore, whose balance='class' drew other blocks"):
        stream(store, "memory", (0, 2), "class").load_state_dict(before(state))
    with pytest.raises(ParameterError, match="other settings"):  # into an unbalanced stream: other settings
        stream(store, "memory", (0, 2)).load_state_dict(before(state))
    with pytest.raises(ParameterError, match="other settings"):  # another seed: other settings, not the draw
        stream(store, "memory", (0, 2), "class").load_state_dict({**before(state), "seed": 6})
    for _ in s:  # the rest of epoch 0: the state points at epoch 1, nothing of it served
        pass
    fresh = s.state_dict()
    assert fresh["epoch"] == 1 and fresh["position"] == 0
    again = stream(store, "memory", (0, 2), "class")
    again.load_state_dict(before(fresh))
    assert again.epoch == 1 and again.iteration_step == 0
    np.testing.assert_array_equal(again.order(), stream(store, "memory", (0, 2), "class").order(1))


def dataset(store, rank, world, balance=None, **kw):
    from memstore.torch import BlockDataset

    return BlockDataset(store.path, rank=rank, world_size=world, with_ids=True, batch_size=3, time_context=T,
                        step=STEP, split="all", drop_last=False, seed=5, balance=balance, **kw)


@pytest.mark.parametrize("balance", BALANCE)
def test_torch_datasets_resume_at_another_world_size(store, balance):
    pytest.importorskip("torch")
    whole = epoch_multiset(store, "memory", balance)
    old = [dataset(store, r, 4, balance) for r in range(4)]
    served = []
    for ds in old:
        it = iter(ds)
        served += [next(it)[-1].numpy() for _ in range(5)]
        it.close()
    state = old[2].state_dict()  # counted in this process: 5 batches
    assert state["position"] == 5 * 3 * 4
    assert state == old[0].state_dict(step=5, num_workers=0)  # any rank's will do: the same state
    new = [dataset(store, r, 2, balance) for r in range(2)]
    for ds in new:
        ds.load_state_dict(state)
        served += [ids.numpy() for *_, ids in ds]
    check_union(served, whole, 2)
    with pytest.raises(ParameterError, match="other settings"):
        dataset(store, 0, 2, balance, memory_limit=limit("pager", 3)).load_state_dict(state)


def test_torch_workers_deliver_the_ranks_batches_in_order_and_resume_elastically(store):
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader
    whole = epoch_multiset(store, "pager", "class")
    kw = dict(memory_limit=limit("pager", 3))
    served = []
    first = [dataset(store, r, 2, "class", **kw) for r in range(2)]
    for r, ds in enumerate(first):
        got = []
        for i, (*_, ids) in enumerate(loader(ds, batch_size=None, num_workers=2)):
            got.append(ids.numpy())
            if i + 1 == 7:
                break
        # each worker serves its own sub-shard (2r + w of 4); the loader takes their batches in turn
        parts = [stream(store, "pager", (2 * r + w, 4), "class").order() for w in range(2)]
        want = np.concatenate([parts[i % 2][i // 2 * 3:(i // 2 + 1) * 3] for i in range(7)])
        np.testing.assert_array_equal(np.concatenate(got), want)
        served += got
    with pytest.raises(ParameterError, match="needs step="):
        first[0].state_dict()
    with pytest.raises(ParameterError, match="needs num_workers="):
        first[0].state_dict(step=7)
    state = first[1].state_dict(step=7, num_workers=2)
    assert state == first[0].state_dict(step=7, num_workers=2)
    assert state["position"] == 7 * 3 * 2
    for r in range(3):
        ds = dataset(store, r, 3, "class", **kw)
        ds.load_state_dict(state)
        ds.set_epoch(0)  # the state's epoch: the resume stands
        served += [ids.numpy() for *_, ids in loader(ds, batch_size=None, num_workers=2)]
    check_union(served, whole, 3)
