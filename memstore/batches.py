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
paths serve. Shards deal one global sequence per epoch; a state records the
epoch's global position, so it resumes at any world size (elastic resume,
:meth:`BatchStream.load_state_dict`).

Batches are assembled by a background thread (the numba kernel releases the
GIL) one or two batches ahead. Every batch is a new array: it stays valid as
long as you keep it.

The thread reads a snapshot of the stream's arrays (``_Job``), never the
stream itself, so a stream dropped without ``close()`` is garbage collected
and its finalizer stops and joins the thread (and the pager's reader thread
behind it). ``close()`` still ends them at a moment of your choosing.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
import weakref
from dataclasses import dataclass

import numpy as np

from .blocks import block_table
from .errors import ParameterError
from .order import balance_classes, balanced_counts, deal
from .pager import Window, WindowReader, parse_memory, plan_epoch, shuffle_quality, window_budget
from .slicer import gather_blocks

__all__ = ["BatchStream"]

LAYOUTS = ("NCTF", "NTFC", "NFTC", "NTF")
LABEL_KINDS = ("onehot", "index", "multihot")
NORMALIZE = (False, "standard", "pca")
SPLITS = ("train", "valid", "all")
BALANCE = (None, "class")
#: version of ``state_dict()``; a state without ``"format"`` is format 1 (same shard only)
STATE_FORMAT = 2
#: batches assembled ahead by the background thread
PREFETCH = 2
_STD_FLOOR = 1e-8


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
        Disjoint, equal-size parts of every epoch.
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
        self.store = open_store(store) if self._own else store
        for name, v, low in (("batch_size", batch_size, 1), ("time_context", time_context, 1),
                             ("step", step, 1), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
                raise ParameterError(f"{name}={v!r} must be an integer >= {low}")
        if not isinstance(return_file, bool | np.bool_):
            raise ParameterError(f"return_file={return_file!r} must be True or False")
        checks = (("split", split, SPLITS), ("layout", layout, LAYOUTS), ("labels", labels, LABEL_KINDS),
                  ("normalize", normalize, NORMALIZE), ("split_by", split_by, ("file", "block")))
        for name, v, allowed in checks:
            if v not in allowed or isinstance(v, bool) and v is not False:
                raise ParameterError(f"{name}={v!r} must be one of {allowed}")
        if not (isinstance(balance, str) or balance is None) or balance not in BALANCE:
            raise ParameterError(f"balance={balance!r} must be one of {BALANCE}")
        if balance is not None and not shuffle:
            raise ParameterError(f"balance={balance!r} draws a random multiset of blocks: it needs shuffle=True")
        if not (isinstance(valid_fraction, int | float) and 0 <= valid_fraction < 1):
            raise ParameterError(f"valid_fraction={valid_fraction!r} must be in [0, 1)")
        if shard is not None:
            if (not isinstance(shard, tuple | list) or len(shard) != 2
                    or not all(isinstance(v, int) for v in shard) or not 0 <= shard[0] < shard[1]):
                raise ParameterError(f"shard={shard!r} must be (rank, world_size) with 0 <= rank < world_size")
            shard = (int(shard[0]), int(shard[1]))
        self.batch_size, self.time_context, self.step = int(batch_size), int(time_context), int(step)
        self.split, self.valid_fraction, self.seed = split, float(valid_fraction), int(seed)
        self.shuffle, self.drop_last, self.layout = bool(shuffle), bool(drop_last), layout
        self.label_kind, self.normalize, self.shard = labels, normalize, shard
        self.split_by, self.tail, self.prefetch = split_by, bool(tail), bool(prefetch)
        self.return_file = bool(return_file)
        self.balance = balance
        self.memory_limit = parse_memory(memory_limit)
        self.epoch = 0
        self.iteration_step = 0
        # global position where this epoch's dealing began: 0, or the point of an elastic resume
        self._origin = 0
        # (offset, stride): of the batches from the current step on, assemble only every stride-th,
        # from the offset-th (a torch DataLoader worker's share of its rank's batches)
        self._take = (0, 1)
        # (source, thread, stop) of the running epoch; the finalizer shares the list, so it
        # always stops the current producer when the stream is garbage collected
        self._holder: list = [None]
        self._finalizer = weakref.finalize(self, _stop_active, self._holder)

        s = self.store
        n_frames = s.index["n_frames"]
        if len(s) == 0:
            raise ParameterError(f"{s.path} holds no files")
        bf, bs = block_table(n_frames, self.time_context, self.step, tail=self.tail)
        valid_set = self._split_mask(bf, valid_files)
        chosen = {"train": ~valid_set, "valid": valid_set, "all": np.ones_like(valid_set)}[split]
        self._other = valid_set if split == "train" else None
        self.block_file = bf[chosen]
        self.block_start = bs[chosen]
        self.block_row = s.index["offset"][self.block_file] + self.block_start
        self.block_valid = np.minimum(self.time_context, n_frames[self.block_file] - self.block_start)
        self._valid_blocks = (bf[valid_set], bs[valid_set])
        n = len(self.block_file)
        if shard is not None:
            n = n // shard[1]
        self.total_points = int(n)
        self.iteration_size = (n // self.batch_size if self.drop_last else -(-n // self.batch_size))
        self._norm = self._normalisation()
        self._labels_all = self._label_matrix()
        self._block_class = balance_classes(self.block_file, s.label_index, s.labels)
        if balance is not None and not np.any(self._block_class >= 0):
            raise ParameterError(f"balance={balance!r} needs labelled files; the {split} split of {s.path} "
                                 "has none")

        row_bytes = s.n_bins * s.dtype.itemsize
        self._batch_bytes = self.batch_size * self.time_context * s.n_bins * 4
        split_bytes = int(n_frames[np.unique(self.block_file)].sum()) * row_bytes
        n_batch_buffers = PREFETCH + 2
        self.out_of_core = (self.memory_limit is not None and
                            split_bytes + n_batch_buffers * self._batch_bytes > self.memory_limit)
        if self.out_of_core:
            self._window_rows = window_budget(self.memory_limit, row_bytes=row_bytes,
                                              batch_bytes=self._batch_bytes,
                                              n_batch_buffers=n_batch_buffers,
                                              time_context=self.time_context)
        elif self.memory_limit is not None and n_batch_buffers * self._batch_bytes > self.memory_limit:
            raise ParameterError(f"memory_limit={self.memory_limit} bytes is smaller than "
                                 f"{n_batch_buffers} batches ({n_batch_buffers * self._batch_bytes} bytes)")

    # --- set-up -----------------------------------------------------------------------------
    def _split_mask(self, bf: np.ndarray, valid_files) -> np.ndarray:
        s = self.store
        rng = np.random.default_rng((self.seed, 0x5E11))
        if valid_files is not None:
            where = {p: i for i, p in enumerate(s.paths)}
            missing = [p for p in valid_files if p not in where]
            if missing:
                raise ParameterError(f"valid_files {missing[:5]} are not in the store")
            files = np.zeros(len(s), bool)
            files[[where[p] for p in valid_files]] = True
            return files[bf]
        if self.split_by == "block":
            mask = np.zeros(len(bf), bool)
            mask[rng.permutation(len(bf))[: int(round(self.valid_fraction * len(bf)))]] = True
            return mask
        files = np.zeros(len(s), bool)
        strata = s.label_index
        for c in np.unique(strata):
            members = np.flatnonzero(strata == c)
            k = int(round(self.valid_fraction * len(members)))
            files[rng.permutation(members)[:k]] = True
        return files[bf]

    def _normalisation(self) -> dict:
        if not self.normalize:
            return {}
        st = self.store.stats
        if "mean" not in st:
            raise ParameterError(f"{self.store.path} has no statistics to normalise with")
        mean = np.asarray(st["mean"], np.float64)
        if self.normalize == "standard":
            std = np.maximum(np.asarray(st["std"], np.float64), _STD_FLOOR)
            return {"mean": mean.astype(np.float32), "scale": (1.0 / std).astype(np.float32)}
        cov = np.asarray(st["cov"], np.float64)
        eig, vec = np.linalg.eigh(cov)
        eps = 1e-6 * max(float(eig.max()), _STD_FLOOR)  # keeps near-silent directions bounded
        return {"mean": mean.astype(np.float32), "proj": (vec / np.sqrt(np.maximum(eig, 0) + eps)).astype(np.float32)}

    def _label_matrix(self) -> np.ndarray:
        s = self.store
        if self.label_kind == "index":
            return s.label_index.astype(np.int64)
        if self.label_kind == "multihot":
            return s.labels.astype(np.float32)
        onehot = np.zeros((len(s), len(s.classes)), np.float32)
        idx = s.label_index
        onehot[np.flatnonzero(idx >= 0), idx[idx >= 0]] = 1.0
        return onehot

    # --- order ------------------------------------------------------------------------------
    def _counts(self, epoch: int) -> np.ndarray | None:
        """Times each block is served in ``epoch`` (balanced), or None (every block once)."""
        if self.balance is None:
            return None
        return balanced_counts(self._block_class, len(self.block_file), seed=self.seed, epoch=epoch)

    def _windows(self, epoch: int, start: int = 0) -> list[Window]:
        """This rank's windows of ``epoch``, dealt from global position ``start`` (see memstore.order)."""
        counts = self._counts(epoch)
        if self.out_of_core:
            return plan_epoch(self.block_row, self.block_valid, window_rows=self._window_rows,
                              seed=self.seed, epoch=epoch, shard=self.shard, shuffle=self.shuffle,
                              counts=counts, start=start)
        n = len(self.block_file)
        if counts is not None:
            order = np.random.default_rng((self.seed, int(epoch))).permutation(
                np.repeat(np.arange(n, dtype=np.int64), counts))
        else:
            order = (np.random.default_rng((self.seed, int(epoch))).permutation(n) if self.shuffle
                     else np.arange(n))
        if self.shard is not None or start:
            rank, world = self.shard or (0, 1)
            order = order[deal(n, rank, world, start)]
        empty = np.zeros(0, np.int64)
        return [Window(empty, empty, empty, 0, order, self.block_row[order])]

    @property
    def _world(self) -> int:
        return 1 if self.shard is None else self.shard[1]

    def _n_batches(self, start: int) -> int:
        """Batches of this rank in an epoch dealt from global position ``start``."""
        n = max(0, (len(self.block_file) - start) // self._world)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Block ids (into this split's block table) in serving order for ``epoch``.

        A block repeated by ``balance="class"`` appears as often as it is served. For the
        current epoch after an elastic resume (``load_state_dict`` of a state saved at another
        shard or position), the order starts at the resume point.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        ws = self._windows(epoch, self._origin if epoch == self.epoch else 0)
        return np.concatenate([w.blocks for w in ws]) if ws else np.zeros(0, np.int64)

    # --- batches ----------------------------------------------------------------------------
    def _job(self) -> _Job:
        s = self.store
        return _Job(batch_size=self.batch_size, time_context=self.time_context, n_bins=s.n_bins,
                    n_batches=self._n_batches(self._origin), take=self._take, layout=self.layout,
                    block_valid=self.block_valid,
                    block_file=self.block_file, labels=self._labels_all, norm=self._norm,
                    features=None if self.out_of_core else np.asarray(s.features),
                    path=s.source, data_offset=s.data_offset, dtype=s.dtype,
                    window_rows=self._window_rows if self.out_of_core else 0, return_file=self.return_file)

    def _start(self, epoch: int, first_batch: int):
        self._stop_active()
        stop = threading.Event()
        # the producer gets a snapshot of the arrays it reads, never ``self``: a thread is a GC
        # root, and a thread holding the stream would keep it (and itself) alive forever
        gen = _produce(self._job(), self._windows(epoch, self._origin), first_batch, stop)
        if not self.prefetch:
            self._holder[0] = (gen, None, stop)
            return
        q: queue.Queue = queue.Queue(maxsize=PREFETCH)
        t = threading.Thread(target=_run_producer, args=(gen, q, stop), name="memstore-batches", daemon=True)
        self._holder[0] = (q, t, stop)
        t.start()

    @property
    def _active(self):
        return self._holder[0]

    def _next_item(self):
        src, thread, _ = self._active
        if thread is None:
            return next(src, _END)
        while True:  # bounded waits: a producer that died without a word is an error, not a hang
            try:
                item = src.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not thread.is_alive() and src.empty():
                    raise RuntimeError("the batch producer thread ended without a result") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def _stop_active(self) -> None:
        _stop_active(self._holder)

    def __iter__(self):
        """One epoch of ``(x, y)`` (or ``(x, y, file)``) batches, from the current position."""
        epoch, first = self.epoch, self.iteration_step
        self._start(epoch, first)
        try:
            while True:
                item = self._next_item()
                if item is _END:
                    break
                self.iteration_step += 1
                yield item
        finally:
            self._stop_active()
        if self.iteration_step >= self._n_batches(self._origin):
            self._next_epoch()

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.iteration_step = 0
        self._origin = 0

    def __call__(self):
        """The next batch, rolling over into the next epoch (the tutorial's ``db()``)."""
        if self.iteration_size == 0:
            raise ParameterError(f"the split has {self.total_points} blocks, fewer than one batch of "
                                 f"{self.batch_size}")
        if self._active is None:
            self._start(self.epoch, self.iteration_step)
        item = self._next_item()
        if item is _END:
            self._stop_active()
            self._next_epoch()
            self._start(self.epoch, 0)
            item = self._next_item()
        self.iteration_step += 1
        return item

    def __len__(self) -> int:
        return self.iteration_size

    # --- state ------------------------------------------------------------------------------
    def _fingerprint(self) -> list:
        """What fixes the epochs' global sequences (the shard does not: states load at any world size)."""
        return [len(self.block_file), self.batch_size, self.time_context, self.step, self.split,
                self.valid_fraction, self.shuffle, self.drop_last, self.out_of_core,
                self._window_rows if self.out_of_core else 0, self.balance, str(self.store.path),
                self.store.generation]

    def _fingerprint_v1(self) -> list:
        """The format-1 fingerprint (before elastic resume), which included the shard."""
        return [len(self.block_file), self.batch_size, self.time_context, self.step, self.split,
                self.valid_fraction, self.shuffle, self.drop_last, list(self.shard or []), self.out_of_core,
                str(self.store.path), self.store.generation]

    def state_dict(self) -> dict:
        """A few scalars that resume the epoch where it is, at this or any other world size.

        ``position`` is the epoch's global position: blocks consumed by all ranks together
        (``iteration_step * batch_size * world_size`` on a fresh epoch). All ranks take the same
        number of steps, so the state of any one rank describes them all; it loads into a
        stream with ``shard=(rank, M)`` for any ``M`` (see :meth:`load_state_dict`). A state
        saved after an epoch's last batch points at the start of the next epoch.
        """
        if self.iteration_step >= self._n_batches(self._origin):
            epoch, position = self.epoch + 1, 0
        else:
            epoch = self.epoch
            position = self._origin + self.iteration_step * self.batch_size * self._world
        return {"format": STATE_FORMAT, "epoch": int(epoch), "position": int(position), "seed": self.seed,
                "shard": list(self.shard) if self.shard else None, "iteration_step": self.iteration_step,
                "fingerprint": self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`, possibly saved at another world size (elastic resume).

        The rest of the saved epoch, from its global position on, is dealt round-robin among
        this stream's ``world_size`` ranks: no block is served twice and none is lost beyond the
        at most ``world_size - 1`` that equal shares drop. Settings other than ``shard``
        (split, seed, batch size, ``memory_limit``'s window size, ``balance``, the store) must
        match. A format-1 state (saved before elastic resume, it has no ``"format"`` key) loads
        only at the shard it was saved with; otherwise it raises ``ParameterError``.
        """
        if not isinstance(state, dict):
            raise ParameterError(f"state must be a dict from state_dict(); got {type(state).__name__}")
        if "format" not in state:
            self._load_v1(state)
            return
        if state.get("format") != STATE_FORMAT:
            raise ParameterError(f"state_dict format {state.get('format')!r} is not supported "
                                 f"(this memstore reads formats 1 and {STATE_FORMAT})")
        if state.get("fingerprint") != self._fingerprint() or state.get("seed") != self.seed:
            raise ParameterError("this state_dict belongs to a stream with other settings or another store")
        epoch, position = state.get("epoch"), state.get("position")
        n = len(self.block_file)
        for name, v, high in (("epoch", epoch, None), ("position", position, n)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0 or (high is not None and v > high):
                raise ParameterError(f"state_dict {name}={v!r} must be an integer in [0, {high or 'inf'}]")
        self._stop_active()
        self.epoch = int(epoch)
        per_step = self.batch_size * self._world
        if position % per_step == 0:  # a step boundary of this world size: the epoch's own dealing
            self._origin, self.iteration_step = 0, int(position) // per_step
        else:
            self._origin, self.iteration_step = int(position), 0

    def _load_v1(self, state: dict) -> None:
        fingerprint = state.get("fingerprint")
        if self.balance is not None:
            raise ParameterError("a format-1 state_dict (no 'format' key) predates balance= and cannot resume "
                                 "a balanced stream")
        if (isinstance(fingerprint, list) and len(fingerprint) == 12 and state.get("seed") == self.seed
                and fingerprint[8] != list(self.shard or []) and
                fingerprint[:8] + fingerprint[9:] == self._fingerprint_v1()[:8] + self._fingerprint_v1()[9:]):
            raise ParameterError(f"this format-1 state_dict (no 'format' key) was saved with shard="
                                 f"{fingerprint[8] or None} and loads only at that shard; load it there and save "
                                 "it again to resume at another world size")
        if fingerprint != self._fingerprint_v1() or state.get("seed") != self.seed:
            raise ParameterError("this state_dict belongs to a stream with other settings or another store")
        self._stop_active()
        self.epoch = int(state["epoch"])
        self.iteration_step = int(state["iteration_step"])
        self._origin = 0

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
        return _shape(out, self.layout), self._labels_all[bf]

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
        order = self.order(epoch)
        rng = np.random.default_rng((self.seed, 0x610B))
        glob = rng.permutation(len(self.block_file))[: len(order)]
        cls = self._block_class[order]
        shares = np.bincount(cls[cls >= 0], minlength=len(self.store.classes)) / max(len(order), 1)
        return {
            "stream": shuffle_quality(self.block_file[order], self.block_row[order], self.batch_size),
            "global_shuffle": shuffle_quality(self.block_file[glob], self.block_row[glob], self.batch_size),
            "out_of_core": self.out_of_core,
            "balance": self.balance,
            "class_shares": {str(c): float(v) for c, v in zip(self.store.classes, shares, strict=True)},
        }

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


_END = object()
#: how often blocked producers and consumers look at their stop event / the other side
_POLL_S = 0.1
#: how long stopping waits for a producer before giving up with a warning
_JOIN_S = 30.0


@dataclass(frozen=True, eq=False)
class _Job:
    """What a producer reads: arrays and scalars of the stream, but not the stream itself."""

    batch_size: int
    time_context: int
    n_bins: int
    n_batches: int
    take: tuple       # (offset, stride): assemble only batches b with (b - first) % stride == offset
    layout: str
    block_valid: np.ndarray
    block_file: np.ndarray
    labels: np.ndarray
    norm: dict
    features: np.ndarray | None   # the store's mapping (in memory), or None (out of core)
    path: object
    data_offset: int
    dtype: np.dtype
    window_rows: int
    return_file: bool


def _shape(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NCTF":
        return x[:, None]
    if layout == "NTFC":
        return x[..., None]
    if layout == "NFTC":
        return np.ascontiguousarray(x.transpose(0, 2, 1))[..., None]
    return x


def _produce(job: _Job, ws: list[Window], first_batch: int, stop: threading.Event):
    """Yield (x, y) or (x, y, file) from the windows ``ws`` of an epoch, from batch ``first_batch`` on."""
    counts = np.array([len(w.blocks) for w in ws], np.int64)
    cum = np.r_[0, np.cumsum(counts)]
    if job.n_batches == 0 or first_batch >= job.n_batches:
        return
    first_pos = first_batch * job.batch_size
    w_idx = int(np.searchsorted(cum, first_pos, side="right") - 1)
    if job.features is None:
        reader = WindowReader(job.path, job.data_offset, job.n_bins, job.dtype, ws[w_idx:], job.window_rows)
        windows = iter(reader)
    else:
        reader = None
        windows = iter([(ws[0], job.features)])
    try:
        w, buf = next(windows)
        total = int(cum[-1])
        offset, stride = job.take
        for b in range(first_batch, job.n_batches):
            if stop.is_set():
                return
            if (b - first_batch) % stride != offset:
                continue
            pos = b * job.batch_size
            size = min(job.batch_size, total - pos)
            out = np.empty((size, job.time_context, job.n_bins), np.float32)
            ids = np.empty(size, np.int64)
            filled = 0
            while filled < size:
                while pos >= cum[w_idx + 1]:
                    w, buf = next(windows)
                    w_idx += 1
                k = pos - int(cum[w_idx])
                take = min(size - filled, int(cum[w_idx + 1]) - pos)
                blk = w.blocks[k:k + take]
                gather_blocks(buf, w.src_row[k:k + take], job.block_valid[blk], out[filled:filled + take],
                              **job.norm)
                ids[filled:filled + take] = blk
                filled += take
                pos += take
            files = job.block_file[ids]
            if job.return_file:
                yield _shape(out, job.layout), job.labels[files], files
            else:
                yield _shape(out, job.layout), job.labels[files]
    finally:
        if reader is not None:
            reader.close()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; False if it was not put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _run_producer(gen, q: queue.Queue, stop: threading.Event) -> None:
    """Thread target: move batches from ``gen`` into ``q`` until the end, an error or ``stop``."""
    try:
        for item in gen:
            if not _put(q, item, stop):
                return
        _put(q, _END, stop)
    except BaseException as err:  # handed to the consumer
        _put(q, err, stop)
    finally:
        gen.close()


def _stop_active(holder: list) -> None:
    """Stop the producer in ``holder[0]`` and wait for its thread (also the stream's finalizer)."""
    active = holder[0]
    holder[0] = None
    if active is None:
        return
    src, thread, stop = active
    stop.set()
    if thread is None:
        src.close()
        return
    if thread is threading.current_thread():
        return  # collected by the producer's own garbage collection: it sees ``stop`` and ends
    deadline = time.monotonic() + _JOIN_S
    while thread.is_alive():
        try:  # free the queue's memory; the producer itself stops on ``stop`` within _POLL_S
            while True:
                src.get_nowait()
        except queue.Empty:
            pass
        if time.monotonic() > deadline:
            warnings.warn(f"memstore: batch producer thread did not stop within {_JOIN_S:.0f} s",
                          ResourceWarning, stacklevel=2)
            return
        thread.join(timeout=_POLL_S)
