"""PyTorch adapter (optional ``torch`` extra): BatchStream as an IterableDataset.

``BlockDataset`` yields whole batches, so use it with ``DataLoader(ds,
batch_size=None, num_workers=N)``. Each DataLoader worker opens the store
itself and takes a disjoint, equal share of every epoch: the stream is
sharded over ``world_size * num_workers`` parts, ranks first (from
``torch.distributed`` when it is initialised, or the ``rank``/``world_size``
arguments). Call ``set_epoch(e)`` before each epoch, as with
``DistributedSampler``.

Example
-------
>>> from torch.utils.data import DataLoader                      # doctest: +SKIP
>>> ds = BlockDataset("irmas.h5", batch_size=32, memory_limit="1GB")
>>> for x, y in DataLoader(ds, batch_size=None, num_workers=2):
...     ...
"""

from __future__ import annotations

from .errors import require

torch = require("torch", "torch")
_data = require("torch.utils.data", "torch")

__all__ = ["BlockDataset"]


class BlockDataset(_data.IterableDataset):
    """Batches of blocks from a store, sharded over DataLoader workers and DDP ranks.

    Parameters
    ----------
    store_path : str or os.PathLike
        Opened in each worker process (stores are never pickled).
    rank, world_size : int, optional
        Override the DDP rank and world size (default: torch.distributed, or 0 and 1).
    with_ids : bool
        Also yield the block ids (indices into the split's block table) of each batch, last.
        With ``return_file=True`` in ``stream_args`` each item is ``(x, y, file[, ids])``.
    **stream_args
        Passed to :class:`memstore.BatchStream` (``batch_size`` is required).
    """

    def __init__(self, store_path, *, rank: int | None = None, world_size: int | None = None,
                 with_ids: bool = False, **stream_args):
        super().__init__()
        if "shard" in stream_args:
            raise TypeError("BlockDataset shards by worker and rank itself; do not pass shard")
        self.store_path = str(store_path)
        self.stream_args = stream_args
        self.rank, self.world_size = rank, world_size
        self.with_ids = with_ids
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _shard(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            else:
                rank, world = 0, 1
        info = _data.get_worker_info()
        workers, wid = (1, 0) if info is None else (info.num_workers, info.id)
        return rank * workers + wid, world * workers

    def __iter__(self):
        from .batches import BatchStream

        part, parts = self._shard()
        stream = BatchStream(self.store_path, shard=(part, parts), **self.stream_args)
        try:
            stream.epoch = self.epoch
            ids = stream.order(self.epoch)
            pos = 0
            for item in stream:  # (x, y), or (x, y, file) with return_file=True
                n = len(item[0])
                out = tuple(torch.from_numpy(a) for a in item)
                if self.with_ids:
                    out += (torch.from_numpy(ids[pos:pos + n].copy()),)
                yield out
                pos += n
        finally:
            stream.close()
