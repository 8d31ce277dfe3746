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
