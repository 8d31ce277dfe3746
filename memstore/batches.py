"""BatchStream: shuffled training batches from a store, the tutorial's interface.

``BatchStream`` replaces the tutorial's ``MyDataset``: the same blocks
(``time_context``, ``step``), the same batches ((N, 1, T, F) and one-hot
labels), ``stream()`` for the next batch, ``get_data()`` and
``get_validation()`` -- but read from a store on disk, under a memory budget.

Two paths, one set of guarantees
--------------------------------
*In memory* (``memory_limit=None`` or the split fits): blocks are shuffled
globally and gathered straight from the store's memory map.

*Out of core* (the split does not fit): the pager (:mod:`memstore.pager`)
reads windows of shuffled pages into two buffers within the budget and
shuffles blocks inside each window.

On both, every block of the split is served exactly once per epoch (with
``drop_last=False``; with ``drop_last=True`` the last incomplete batch is
dropped), the order is a pure function of ``(seed, epoch)``, and
``state_dict()``/``load_state_dict()`` resume mid-epoch exactly.

``balance="class"`` replaces "every block once" by a class-balanced draw of
the same length (a multiset of blocks, :mod:`memstore.order`), which both
paths serve. Shards deal one global sequence per epoch in contiguous chunks,
so out of core each rank reads only the pages of its own blocks; a state
records which positions of the epoch are left, so it resumes at any world
size (elastic resume, :meth:`BatchStream.load_state_dict`).

The stream hands out its work (ffcv's ``Loader`` is the model): the checks,
split, labels, normaliser and budget are in ``memstore._streamconf``; the
order of every epoch, on both paths, in :class:`memstore.order.EpochOrder`;
batch assembly in ``memstore._assemble``; the producer thread in
:mod:`memstore.prefetch`; states in ``memstore._streamstate``.

Batches are assembled by a background thread (the numba kernel releases the
GIL) one or two batches ahead. Every batch is a new array: it stays valid as
long as you keep it. The thread reads a snapshot of the stream's arrays,
never the stream itself, so a stream dropped without ``close()`` is garbage
collected and its finalizer stops the thread (and the pager's reader thread
behind it) without waiting for it: a finalizer runs wherever a garbage
collection happens, perhaps under a lock the thread needs to end
(:mod:`memstore.prefetch`). ``close()`` ends and joins them at a moment of
your choosing.
"""

from __future__ import annotations

import weakref

import numpy as np

from . import _streamstate as state
from ._assemble import Job, produce, shape
from ._streamconf import BALANCE as BALANCE  # the names below were defined here before: kept importable
from ._streamconf import LABEL_KINDS as LABEL_KINDS
from ._streamconf import LAYOUTS as LAYOUTS
from ._streamconf import NORMALIZE as NORMALIZE
from ._streamconf import PREFETCH as PREFETCH
from ._streamconf import SPLITS as SPLITS
from ._streamconf import budget, check_settings, label_matrix, normaliser, split_blocks
from ._streamstate import STATE_FORMAT as STATE_FORMAT
from ._validate import int_at_least
from .errors import ParameterError
from .order import EpochOrder, balance_classes, order_report
from .pager import served_rows
from .prefetch import no_wait
from .prefetch import start as start_producer
from .slicer import gather_blocks

__all__ = ["BatchStream"]


class BatchStream:
    """Shuffled batches of ``time_context``-frame blocks from a store.

    Parameters
    ----------
    store : Store or path
        A path is opened (and closed with the stream).
    batch_size : int
    time_context, step : int
        Block length and hop in frames (the tutorial's 128 and 50).
    split : {"train", "valid", "all"}
    valid_fraction : float
        Share of files (``split_by="file"``, stratified by class) or of blocks
        (``split_by="block"``, the tutorial's split) held out for validation.
    seed : int
        Seeds the split and every epoch's order.
    shuffle, drop_last : bool
    layout : {"NCTF", "NTFC", "NFTC", "NTF"}
    labels : {"onehot", "index", "multihot"}
    normalize : {False, "standard", "pca"}
        Per-bin standardisation or PCA whitening from the store's statistics.
    memory_limit : int or str, optional
        Budget for resident feature data, e.g. ``"2GB"``.
    shard : (rank, world_size), optional
        Disjoint, equal-size parts of every epoch: contiguous chunks of its global sequence,
        so out of core each rank reads only the pages of its blocks (:mod:`memstore.order`).
    valid_files : list of str, optional
        Explicit validation files (``store.paths`` entries).
    tail : bool
        Also serve a last block ending at each file's end (see :mod:`memstore.blocks`).
    prefetch : bool
        Assemble batches in a background thread.
    return_file : bool
        Yield ``(x, y, file)``: ``file`` is an int64 array [shape=(N,)] with the store
        file index (row of ``store.index``) of each block, for per-file evaluation
        (:func:`memstore.aggregate_by_file`). With ``shuffle=False`` blocks come file
        by file in store order and by start frame within a file, on both paths.
    balance : {None, "class"}
        ``"class"``: every epoch draws as many blocks as the split holds (the unbalanced
        epoch length, labelled or not), in equal shares per class -- a minority class's
        blocks are repeated, a majority class is sampled down (:mod:`memstore.order`).
        A multi-label file counts as its rarest label (fewest blocks in the split).
        **Files without a label are left out of a balanced epoch.** Deterministic in
        ``(seed, epoch)``, in memory, out of core and with shards; needs ``shuffle=True``.
        ``None`` serves every block once. ``get_data()`` is never balanced.

    Example
    -------
    >>> stream = BatchStream(store, batch_size=32)     # doctest: +SKIP
    >>> for x, y in stream:                           # one epoch
    ...     x.shape                                   # (32, 1, 128, 96)
    """

    def __init__(self, store, *, batch_size: int, time_context: int = 128, step: int = 50,
                 split: str = "train", valid_fraction: float = 0.2, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, layout: str = "NCTF", labels: str = "onehot", normalize=False,
                 memory_limit=None, shard=None, split_by: str = "file", valid_files=None,
                 tail: bool = False, prefetch: bool = True, return_file: bool = False, balance=None):
        from .store import Store, open_store

        self._own = not isinstance(store, Store)
        self.store = s = open_store(store) if self._own else store
        s.require_open()  # a closed store fails here, not at the first batch
        c = check_settings(batch_size=batch_size, time_context=time_context, step=step, split=split,
                           valid_fraction=valid_fraction, seed=seed, shuffle=shuffle, drop_last=drop_last,
                           layout=layout, labels=labels, normalize=normalize, memory_limit=memory_limit,
                           shard=shard, split_by=split_by, tail=tail, prefetch=prefetch, return_file=return_file,
                           balance=balance)
        self.batch_size, self.time_context, self.step = c.batch_size, c.time_context, c.step
        self.split, self.valid_fraction, self.seed = c.split, c.valid_fraction, c.seed
        self.shuffle, self.drop_last, self.layout = c.shuffle, c.drop_last, c.layout
        self.label_kind, self.normalize, self.shard = c.labels, c.normalize, c.shard
        self.split_by, self.tail, self.prefetch = c.split_by, c.tail, c.prefetch
        self.return_file, self.balance, self.memory_limit = c.return_file, c.balance, c.memory_limit
        self._epoch = 0
        self.iteration_step = 0
        # positions of this epoch's sequence dealt to the ranks: None (all), or what an elastic resume left
        self._unserved = None
        # the running epoch's producer; the finalizer shares the list, so it always stops the
        # current producer when the stream is garbage collected
        self._holder: list = [None]
        self._finalizer = weakref.finalize(self, _drop_active, self._holder)

        b = split_blocks(s, c, valid_files)
        self.block_file, self.block_start, self.block_row, self.block_valid = b.file, b.start, b.row, b.valid
        self._valid_blocks = b.held_out
        self.total_points = len(self.block_file) // self._world
        n = self.total_points
        self.iteration_size = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        self._norm = normaliser(s, self.normalize)
        self._labels_all = label_matrix(s, self.label_kind)
        self._block_class = balance_classes(self.block_file, s.label_index, s.labels)
        if self.balance is not None and not np.any(self._block_class >= 0):
            raise ParameterError(f"balance={self.balance!r} needs labelled files; the {self.split} split of "
                                 f"{s.path} has none")
        self.out_of_core, self._window_rows = budget(s, self.block_file, batch_size=self.batch_size,
                                                     time_context=self.time_context, memory_limit=self.memory_limit)
        self._order = EpochOrder(self.block_row, self.block_valid, self.seed, self.shuffle,
                                 self._block_class if self.balance else None,
                                 self._window_rows if self.out_of_core else None)
        # out of core, a shard's reader keeps the readahead out of the rows that other ranks read
        self._served = served_rows(self.block_row, self.block_valid) if self.out_of_core and self._world > 1 else None

    # --- order ------------------------------------------------------------------------------
    @property
    def _world(self) -> int:
        return 1 if self.shard is None else self.shard[1]

    def _n_batches(self, unserved) -> int:
        """Batches of this rank when the positions ``unserved`` (None: all) of an epoch are dealt."""
        n = self._order.per_rank(self._world, unserved)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def epoch(self) -> int:
        """The current epoch: the one the next batch belongs to (an integer >= 0 when set)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value) -> None:
        self._epoch = int_at_least("epoch", value, 0)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Block ids (into this split's block table) in serving order for ``epoch``.

        A block repeated by ``balance="class"`` appears as often as it is served. For the
        current epoch after an elastic resume (``load_state_dict`` of a state saved at another
        shard or position), the order starts at the resume point.
        """
        epoch = self.epoch if epoch is None else int_at_least("epoch", epoch, 0)
        return self._order.blocks(epoch, self.shard, self._unserved if epoch == self.epoch else None)

    # --- batches ----------------------------------------------------------------------------
    def _job(self) -> Job:
        """What the producer reads: a snapshot of the stream's arrays, never ``self``."""
        s = self.store
        return Job(batch_size=self.batch_size, time_context=self.time_context, n_bins=s.n_bins,
                   n_batches=self._n_batches(self._unserved), layout=self.layout,
                   block_valid=self.block_valid, block_file=self.block_file, labels=self._labels_all, norm=self._norm,
                   features=None if self.out_of_core else np.asarray(s.features), path=s.source,
                   data_offset=s.data_offset, dtype=s.dtype, window_rows=self._window_rows,
                   return_file=self.return_file, served=self._served)

    def _start(self, epoch: int, first_batch: int) -> None:
        self._stop_active()
        batches = produce(self._job(), self._order.stretches(epoch, self.shard, self._unserved), first_batch,
                          self._order.per_rank(self._world, self._unserved))
        self._holder[0] = start_producer(batches, depth=PREFETCH, name="memstore-batches", what="batch producer",
                                         threaded=self.prefetch, lazy=True)

    @property
    def _active(self):
        return self._holder[0]

    def _stop_active(self) -> None:
        _close_active(self._holder)

    def __iter__(self):
        """One epoch of ``(x, y)`` (or ``(x, y, file)``) batches, from the current position.

        The stream has one position: a newer ``iter()``, ``close()`` or ``load_state_dict`` ends
        an iterator still running (its next step raises ``RuntimeError``), and an iterator closes
        only the producer it started.
        """
        self._start(self.epoch, self.iteration_step)
        mine = self._holder[0]
        try:
            while True:
                if self._holder[0] is not mine:
                    raise RuntimeError("this epoch iterator was ended by the stream: close(), load_state_dict() "
                                       "or a newer iter() of the same stream came after it")
                item = next(mine, None)
                if item is None:
                    break
                self.iteration_step += 1
                yield item
        finally:
            if self._holder[0] is mine:
                self._stop_active()
        if self.iteration_step >= self._n_batches(self._unserved):
            self._next_epoch()

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.iteration_step = 0
        self._unserved = None

    def __call__(self):
        """The next batch, rolling over into the next epoch (the tutorial's ``db()``)."""
        if self.iteration_size == 0:
            raise ParameterError(f"the split has {self.total_points} blocks, fewer than one batch of "
                                 f"{self.batch_size}")
        if self._active is None:
            self._start(self.epoch, self.iteration_step)
        item = next(self._active, None)
        if item is None:
            self._stop_active()
            self._next_epoch()
            self._start(self.epoch, 0)
            item = next(self._active)
        self.iteration_step += 1
        return item

    def __len__(self) -> int:
        return self.iteration_size

    # --- state ------------------------------------------------------------------------------
    def _fingerprint_v1(self) -> list:
        return state.fingerprint_v1(self)

    def state_dict(self) -> dict:
        """What is left of the epoch, to resume it at this or any other world size.

        ``{"format": 3, "epoch", "position", "remaining", "seed", "fingerprint"}``: ``remaining``
        lists the ``[lo, hi)`` positions of the epoch's global sequence no rank has served yet
        (the blocks equal shares dropped included), ``position`` counts the served ones
        (``iteration_step * batch_size * world_size`` on a fresh epoch). All ranks take the same
        number of steps, so every rank saves the same state; it loads into a stream with
        ``shard=(rank, M)`` for any ``M`` (see :meth:`load_state_dict`). A state saved after an
        epoch's last batch points at the start of the next epoch.
        """
        return state.state_of(self)

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume from :meth:`state_dict`, possibly saved at another world size (elastic resume).

        The saved epoch's remaining positions are dealt in contiguous chunks among this stream's
        ``world_size`` ranks: no block is served twice and none is lost beyond the at most
        ``world_size - 1`` that equal shares drop. A state that a fresh epoch at this world size
        leaves after ``k`` steps resumes at ``iteration_step == k`` of the epoch's own dealing
        (the uninterrupted order); otherwise ``iteration_step`` counts from the resume point and
        ``order()`` of that epoch starts there. Format-2 states (a global position) load as
        that prefix consumed. Settings other than ``shard``
        (split, seed, batch size, ``memory_limit``'s window size, ``balance``, the store) must
        match. A format-1 state (saved before elastic resume, it has no ``"format"`` key) loads
        only at the shard it was saved with; otherwise it raises ``ParameterError``.
        """
        epoch, unserved, step = state.resume_point(self, state_dict)
        self._stop_active()
        self.epoch, self._unserved, self.iteration_step = epoch, unserved, step

    # --- whole arrays (the tutorial's getData) ----------------------------------------------
    def _materialise(self, bf: np.ndarray, bs: np.ndarray):
        s = self.store
        nbytes = len(bf) * self.time_context * s.n_bins * 4
        if self.memory_limit is not None and nbytes > self.memory_limit:
            raise ParameterError(f"get_data needs {nbytes} bytes ({nbytes / 1e9:.2f} GB) of blocks but "
                                 f"memory_limit is {self.memory_limit}; iterate the stream instead")
        out = np.empty((len(bf), self.time_context, s.n_bins), np.float32)
        rows = s.index["offset"][bf] + bs
        valid = np.minimum(self.time_context, s.index["n_frames"][bf] - bs)
        gather_blocks(np.asarray(s.features), rows, valid, out, **self._norm)
        return shape(out, self.layout), self._labels_all[bf]

    def get_validation(self):
        """``(features_valid, labels_valid)``: every validation block, in store order."""
        return self._materialise(*self._valid_blocks)

    def get_data(self):
        """``(features, labels, features_valid, labels_valid)`` of this split and the validation split."""
        x, y = self._materialise(self.block_file, self.block_start)
        return (x, y) + self.get_validation()

    # --- diagnostics ------------------------------------------------------------------------
    def shuffle_report(self, epoch: int | None = None) -> dict:
        """Shuffle quality of this stream's order against a true global shuffle of the same split.

        ``"class_shares"`` maps each class name to the fraction of the blocks this stream serves
        in ``epoch`` (this rank's, when sharded) that belong to it -- by a multi-label file's
        rarest label, as ``balance="class"`` counts; blocks of unlabelled files count in no class,
        so the shares sum to less than 1 when the split has some (unbalanced streams only).
        """
        rep = order_report(self.order(epoch), block_file=self.block_file, block_row=self.block_row,
                           block_class=self._block_class, classes=self.store.classes, batch_size=self.batch_size,
                           seed=self.seed)
        return {"stream": rep["stream"], "global_shuffle": rep["global_shuffle"], "out_of_core": self.out_of_core,
                "balance": self.balance, "class_shares": rep["class_shares"]}

    def close(self) -> None:
        """Stop the background thread; close the store if the stream opened it."""
        self._stop_active()
        if self._own:
            self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"<BatchStream {self.split}: {self.total_points} blocks, {self.iteration_size} batches of "
                f"{self.batch_size}, {'out of core' if self.out_of_core else 'in memory'}, epoch {self.epoch}>")


def _close_active(holder: list) -> None:
    """Stop the producer in ``holder[0]`` and wait for its thread."""
    active, holder[0] = holder[0], None
    if active is not None:
        active.close()


def _drop_active(holder: list) -> None:
    """The stream's finalizer: stop the producer in ``holder[0]``, waiting for no thread."""
    with no_wait():
        _close_active(holder)
