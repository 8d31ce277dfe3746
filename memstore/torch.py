"""PyTorch adapter (optional ``torch`` extra): BatchStream as an IterableDataset.

``BlockDataset`` yields whole batches, so use it with ``DataLoader(ds,
batch_size=None, num_workers=W)``. The epoch is sharded over the DDP ranks
(from ``torch.distributed`` when it is initialised, or the
``rank``/``world_size`` arguments) *and* their DataLoader workers: worker
``w`` of rank ``r`` opens the store itself and serves sub-shard
``r * W + w`` of ``world_size * W`` (:mod:`memstore.order`: a contiguous
chunk of the epoch), so out of core each worker reads only the pages of its
own blocks, about ``1 / (world_size * W)`` of the store. All sub-shards have
as many batches, and the DataLoader takes batches from its workers in turn,
so after a rank has taken ``k`` batches worker ``w`` has delivered
``k // W + (1 if w < k % W else 0)``. Call ``set_epoch(e)`` before each
epoch, as with ``DistributedSampler``.

``state_dict(step, num_workers=W)`` and ``load_state_dict`` resume an epoch
at this or any other world size and worker count (elastic resume, see
:meth:`memstore.BatchStream.load_state_dict`): all ranks checkpoint at the
same step, so one rank's state is enough.

Example
-------
>>> from torch.utils.data import DataLoader                      # doctest: +SKIP
>>> ds = BlockDataset("irmas.h5", batch_size=32, memory_limit="1GB")
>>> for x, y in DataLoader(ds, batch_size=None, num_workers=2):
...     ...
"""

from __future__ import annotations

from . import _streamstate as state
from ._validate import int_at_least
from .errors import ParameterError, require

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
        Override the DDP rank and world size, both or neither (default: torch.distributed, or 0 and 1).
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
        if (rank is None) != (world_size is None):
            raise ParameterError(f"rank={rank!r} and world_size={world_size!r}: give both or neither")
        if world_size is not None:
            world_size = int_at_least("world_size", world_size, 1)
            rank = int_at_least("rank", rank, 0)
            if rank >= world_size:
                raise ParameterError(f"rank={rank} must be below world_size={world_size}")
        self.store_path = str(store_path)
        self.stream_args = stream_args
        self.rank, self.world_size = rank, world_size
        self.with_ids = with_ids
        self.epoch = 0
        self._resume: dict | None = None   # a loaded state, for the epoch it names
        self._taken: int | None = None     # batches yielded by an iteration in this process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int_at_least("epoch", epoch, 0)
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

    def _stream(self, workers: int = 1, wid: int = 0, **extra):
        """Worker ``wid``'s stream of this rank, at this epoch and at the loaded state if it is for this epoch."""
        from .batches import BatchStream

        rank, world = self._ranks()
        stream = BatchStream(self.store_path, shard=(rank * workers + wid, world * workers),
                             **{**self.stream_args, **extra})
        try:
            stream.epoch = self.epoch
            if self._resume is not None and self._resume.get("epoch") == self.epoch:
                stream.load_state_dict(self._resume)
        except BaseException:
            stream.close()
            raise
        return stream

    def state_dict(self, step: int | None = None, num_workers: int | None = None) -> dict:
        """The state after this rank has taken ``step`` batches of the current iteration.

        Parameters
        ----------
        step : int, optional
            Batches this rank has taken since the iteration began (since the resume point when
            the dataset was resumed with :meth:`load_state_dict`); the same on every rank.
            Required with DataLoader workers, whose iteration runs in other processes; without
            workers the batches yielded in this process are counted.
        num_workers : int, optional
            The DataLoader's ``num_workers`` (0: none), required with ``step``: which worker
            served which of the ``step`` batches depends on it.

        Returns
        -------
        dict
            A :meth:`memstore.BatchStream.state_dict`: it loads into a ``BlockDataset`` or a
            ``BatchStream`` of any world size with the same settings.
        """
        if step is None:
            if self._taken is None:
                raise ParameterError("state_dict() needs step= (batches taken this iteration): with DataLoader "
                                     "workers the batches are taken in other processes")
            step, num_workers = self._taken, 0
        elif num_workers is None:
            raise ParameterError("state_dict(step=...) needs num_workers= (the DataLoader's num_workers, 0 "
                                 "without workers): each worker serves its own part of the epoch")
        step, num_workers = int_at_least("step", step, 0), int_at_least("num_workers", num_workers, 0)
        workers = max(1, num_workers)
        stream = self._stream(workers, prefetch=False)  # every worker's stream resumes at the same step
        try:
            first = stream.iteration_step
            left = workers * (stream._n_batches(stream._unserved) - first)
            if step > left:
                raise ParameterError(f"step={step} is more than the {left} batches this iteration serves")
            # the loader takes batches from its workers in turn: worker w has delivered these
            delivered = [first + step // workers + (1 if w < step % workers else 0) for w in range(workers)]
            return state.state_of(stream, [delivered[j % workers] for j in range(stream._world)])
        finally:
            stream.close()

    def load_state_dict(self, state: dict) -> None:
        """Resume at the state's epoch and position; iterate after ``set_epoch`` of that epoch (or none)."""
        if not isinstance(state, dict):
            raise ParameterError(f"state must be a dict from state_dict(), not {type(state).__name__}")
        epoch = int_at_least("state_dict epoch", state.get("epoch"), 0)  # the stream checks the rest
        self._resume = state
        self.epoch = epoch
        try:
            self._stream(prefetch=False).close()  # refuses a state of other settings now, not in a worker
        except BaseException:
            self._resume = None
            raise
        self._taken = None

    def __iter__(self):
        info = _data.get_worker_info()
        workers, wid = (1, 0) if info is None else (info.num_workers, info.id)
        stream = self._stream(workers, wid)  # this worker's own part of the rank's share
        in_process = info is None
        if in_process:
            self._taken = 0
        try:
            first, size = stream.iteration_step, stream.batch_size
            ids = stream.order(self.epoch)
            for b, item in enumerate(stream, start=first):  # (x, y), or (x, y, file) with return_file=True
                out = tuple(torch.from_numpy(a) for a in item)
                if self.with_ids:
                    out += (torch.from_numpy(ids[b * size:(b + 1) * size].copy()),)
                if in_process:
                    self._taken += 1
                yield out
        finally:
            stream.close()
