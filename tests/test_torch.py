"""The PyTorch adapter with a real DataLoader and two worker processes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from memstore.batches import BatchStream  # noqa: E402
from memstore.store import open_store  # noqa: E402
from memstore.torch import BlockDataset  # noqa: E402


@pytest.mark.parametrize("memory_limit", [None, 3_000_000])
def test_every_block_once_per_epoch_across_workers(demo_store, memory_limit):
    ds = BlockDataset(demo_store, batch_size=4, drop_last=False, split="all", with_ids=True,
                      memory_limit=memory_limit, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    with open_store(demo_store) as store:
        full = BatchStream(store, batch_size=4, split="all", time_context=128, step=50)
        n_blocks = len(full.block_file)
        for epoch in range(2):
            ds.set_epoch(epoch)
            ids, firsts = [], []
            for x, y, b in loader:
                assert isinstance(x, torch.Tensor) and x.shape[1:] == (1, 128, 96) and y.shape[1] == 6
                ids.append(b.numpy())
                f, s = int(full.block_file[b[0]]), int(full.block_start[b[0]])
                np.testing.assert_array_equal(x[0, 0, : min(128, store.index["n_frames"][f] - s)].numpy(),
                                              store.frames(f)[s:s + 128])
                firsts.append(int(b[0]))
            ids = np.concatenate(ids)
            assert len(ids) == len(np.unique(ids)) == n_blocks // 2 * 2  # equal halves, at most 1 dropped
            assert n_blocks - len(ids) <= 1


def test_rank_sharding_is_disjoint(demo_store):
    parts = []
    for rank in range(2):
        ds = BlockDataset(demo_store, batch_size=3, drop_last=False, rank=rank, world_size=2, with_ids=True)
        parts.append(np.concatenate([b.numpy() for _, _, b in ds]))
    assert len(parts[0]) == len(parts[1]) and not set(parts[0]) & set(parts[1])


def test_bad_epochs_states_and_ranks_are_refused_by_name(demo_store):
    from memstore.errors import ParameterError

    kw = dict(batch_size=4, time_context=32, step=16)
    ds = BlockDataset(demo_store, **kw)
    for bad in (-1, 2.9, "x"):  # -1 failed later inside numpy; 2.9 was silently epoch 2
        with pytest.raises(ParameterError, match=f"epoch={bad!r} must be an integer >= 0"):
            ds.set_epoch(bad)
    with pytest.raises(ParameterError, match="state must be a dict from state_dict"):
        ds.load_state_dict(None)  # was a silent no-op
    good = BlockDataset(demo_store, **kw).state_dict(step=3, num_workers=0)
    for epoch in (1.5, "x", None):  # 1.5 skipped the state's check and was dropped without a word
        with pytest.raises(ParameterError, match=f"state_dict epoch={epoch!r} must be an integer >= 0"):
            ds.load_state_dict(dict(good, epoch=epoch))
    ds.load_state_dict(good)
    assert ds.epoch == 0
    for rank, world, match in ((0.7, 2, "rank=0.7 must be an integer"), (0, "2", "world_size='2' must be"),
                               (2, 2, "rank=2 must be below world_size=2"), (1, None, "give both or neither")):
        with pytest.raises(ParameterError, match=match):  # rank=0.7, world_size='2' was rank 0 of 2
            BlockDataset(demo_store, rank=rank, world_size=world, **kw)
