"""PyTorch adapter (optional ``torch`` extra): BatchStream as an IterableDataset.

``BlockDataset`` yields whole batches, so use it with ``DataLoader(ds,
batch_size=None, num_workers=N)``. The epoch is sharded over the DDP ranks
(from ``torch.distributed`` when it is initialised, or the
``rank``/``world_size`` arguments): each rank takes a disjoint, equal share.
Within a rank, each DataLoader worker opens the store itself and assembles
every ``num_workers``-th batch of the rank's share, so the DataLoader (which
takes batches from its workers in turn) delivers the rank's batches in the
stream's order -- and the number of batches a rank has taken is a position
in the epoch. Call ``set_epoch(e)`` before each epoch, as with
``DistributedSampler``.

``state_dict(step)`` and ``load_state_dict`` resume an epoch at this or any
other world size (elastic resume, see :meth:`memstore.BatchStream.load_state_dict`):
all ranks checkpoint at the same step, so one rank's state is enough.

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
        self._resume: dict | None = None   # a loaded state, for the epoch it names
        self._taken: int | None = None     # batches yielded by an iteration in this process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self._resume is not None and self._resume.get("epoch") != self.epoch:
            self._resume = None

    def _ranks(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            else:
                rank, world = 0, 1
        return int(rank), int(world)

    def _stream(self, **extra):
        """This rank's stream, at this epoch and at the loaded state if it is for this epoch."""
        from .batches import BatchStream

        stream = BatchStream(self.store_path, shard=self._ranks(), **{**self.stream_args, **extra})
        try:
            stream.epoch = self.epoch
            if self._resume is not None and self._resume.get("epoch") == self.epoch:
                stream.load_state_dict(self._resume)
        except BaseException:
            stream.close()
            raise
        return stream

    def state_dict(self, step: int | None = None) -> dict:
        """The state after this rank has taken ``step`` batches of the current iteration.

        Parameters
        ----------
        step : int, optional
            Batches this rank has taken since the iteration began (since the resume point when
            the dataset was resumed with :meth:`load_state_dict`); the same on every rank.
            Required with DataLoader workers, whose iteration runs in other processes; without
            workers the batches yielded in this process are counted.

        Returns
        -------
        dict
            A :meth:`memstore.BatchStream.state_dict`: it loads into a ``BlockDataset`` or a
            ``BatchStream`` of any world size with the same settings.
        """
        from .errors import ParameterError

        if step is None:
            if self._taken is None:
                raise ParameterError("state_dict() needs step= (batches taken this iteration): with DataLoader "
                                     "workers the batches are taken in other processes")
            step = self._taken
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ParameterError(f"step={step!r} must be an integer >= 0")
        stream = self._stream(prefetch=False)
        try:
            left = stream._n_batches(stream._origin) - stream.iteration_step
            if step > left:
                raise ParameterError(f"step={step} is more than the {left} batches this iteration serves")
            stream.iteration_step += step
            return stream.state_dict()
        finally:
            stream.close()

    def load_state_dict(self, state: dict) -> None:
        """Resume at the state's epoch and position; iterate after ``set_epoch`` of that epoch (or none)."""
        self._resume = state
        self.epoch = int(state.get("epoch", 0)) if isinstance(state, dict) else 0
        try:
            self._stream(prefetch=False).close()  # refuses a state of other settings now, not in a worker
        except BaseException:
            self._resume = None
            raise
        self._taken = None

    def __iter__(self):
        info = _data.get_worker_info()
        workers, wid = (1, 0) if info is None else (info.num_workers, info.id)
        stream = self._stream()
        in_process = info is None
        if in_process:
            self._taken = 0
        try:
            first, n_batches, size = stream.iteration_step, stream._n_batches(stream._origin), stream.batch_size
            ids = stream.order(self.epoch)
            stream._take = (wid, workers)
            mine = range(first + wid, n_batches, workers)
            for b, item in zip(mine, stream, strict=False):  # (x, y), or (x, y, file) with return_file=True
                out = tuple(torch.from_numpy(a) for a in item)
                if self.with_ids:
                    out += (torch.from_numpy(ids[b * size:(b + 1) * size].copy()),)
                if in_process:
                    self._taken += 1
                yield out
        finally:
            stream.close()
