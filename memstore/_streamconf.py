"""What a :class:`memstore.BatchStream` serves, fixed when it is made.

Small pure functions over the store and the validated settings: the checks
of the constructor's arguments (:func:`check_settings`), the train/valid
split (:func:`split_mask`), the label matrix, the normaliser and the choice
between the in-memory and the paged path (:func:`budget`). Messages name the
value and the rule; they are the ones tests and users match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ._validate import choice, flag, int_at_least, is_int
from .blocks import block_table
from .errors import ParameterError
from .pager import parse_memory, window_budget
from .stats import damaged, standardiser, whitener

__all__ = ["Settings", "check_settings", "Blocks", "split_blocks", "split_mask", "label_matrix", "normaliser", "budget",
           "LAYOUTS", "LABEL_KINDS", "NORMALIZE", "SPLITS", "BALANCE", "PREFETCH"]

LAYOUTS = ("NCTF", "NTFC", "NFTC", "NTF")
LABEL_KINDS = ("onehot", "index", "multihot")
NORMALIZE = (False, "standard", "pca")
SPLITS = ("train", "valid", "all")
BALANCE = (None, "class")
#: batches assembled ahead by the background thread
PREFETCH = 2
#: seeds the split, apart from every epoch's ``(seed, epoch)`` stream
_SPLIT_TAG = 0x5E11


@dataclass(frozen=True)
class Settings:
    """The constructor's arguments, checked and normalised (ints as ``int``, flags as ``bool``)."""

    batch_size: int
    time_context: int
    step: int
    split: str
    valid_fraction: float
    seed: int
    shuffle: bool
    drop_last: bool
    layout: str
    labels: str
    normalize: str | bool
    memory_limit: int | None
    shard: tuple[int, int] | None
    split_by: str
    tail: bool
    prefetch: bool
    return_file: bool
    balance: str | None


def check_settings(*, batch_size, time_context, step, split, valid_fraction, seed, shuffle, drop_last, layout,
                   labels, normalize, memory_limit, shard, split_by, tail, prefetch, return_file,
                   balance) -> Settings:
    """:class:`Settings` from ``BatchStream``'s arguments, or the ``ParameterError`` naming the first bad one."""
    ints = {name: int_at_least(name, v, low) for name, v, low in (
        ("batch_size", batch_size, 1), ("time_context", time_context, 1), ("step", step, 1), ("seed", seed, 0))}
    return_file, shuffle = flag("return_file", return_file), flag("shuffle", shuffle)
    for name, v, allowed in (("split", split, SPLITS), ("layout", layout, LAYOUTS), ("labels", labels, LABEL_KINDS),
                             ("normalize", normalize, NORMALIZE), ("split_by", split_by, ("file", "block"))):
        choice(name, v, allowed)
    choice("balance", balance, BALANCE)
    if balance is not None and not shuffle:
        raise ParameterError(f"balance={balance!r} draws a random multiset of blocks: it needs shuffle=True")
    number = int | float | np.integer | np.floating
    real = isinstance(valid_fraction, number) and not isinstance(valid_fraction, bool | np.bool_)
    if not (real and 0 <= valid_fraction < 1):
        raise ParameterError(f"valid_fraction={valid_fraction!r} must be in [0, 1)")
    if shard is not None:
        if (not isinstance(shard, tuple | list) or len(shard) != 2
                or not all(is_int(v) for v in shard) or not 0 <= shard[0] < shard[1]):
            raise ParameterError(f"shard={shard!r} must be (rank, world_size) with 0 <= rank < world_size")
        shard = (int(shard[0]), int(shard[1]))
    return Settings(**ints, split=split, valid_fraction=float(valid_fraction), shuffle=shuffle,
                    drop_last=flag("drop_last", drop_last), layout=layout, labels=labels, normalize=normalize,
                    memory_limit=parse_memory(memory_limit), shard=shard, split_by=split_by,
                    tail=flag("tail", tail), prefetch=flag("prefetch", prefetch), return_file=return_file,
                    balance=balance)


@dataclass(frozen=True, eq=False)
class Blocks:
    """The blocks a stream serves (one entry per block of its split) and the validation blocks."""

    file: np.ndarray        # int64: store file of each block
    start: np.ndarray       # int64: first frame of each block within its file
    row: np.ndarray         # int64: absolute store row where each block starts (sorted)
    valid: np.ndarray       # int64: real rows of each block (``time_context``, or fewer at a short file)
    held_out: tuple         # (file, start) of every validation block, in store order


def split_blocks(store, c: Settings, valid_files) -> Blocks:
    """The block table of ``store`` cut to the split ``c.split`` (see :func:`split_mask`)."""
    if len(store) == 0:
        raise ParameterError(f"{store.path} holds no files")
    n_frames = store.index["n_frames"]
    bf, bs = block_table(n_frames, c.time_context, c.step, tail=c.tail)
    held = split_mask(store, bf, seed=c.seed, split_by=c.split_by, valid_fraction=c.valid_fraction,
                      valid_files=valid_files)
    chosen = {"train": ~held, "valid": held, "all": np.ones_like(held)}[c.split]
    file, start = bf[chosen], bs[chosen]
    return Blocks(file, start, store.index["offset"][file] + start, np.minimum(c.time_context, n_frames[file] - start),
                  (bf[held], bs[held]))


def split_mask(store, block_file: np.ndarray, *, seed: int, split_by: str, valid_fraction: float,
               valid_files) -> np.ndarray:
    """Which blocks of the whole block table are held out for validation (bool, one per block).

    ``valid_files`` (``store.paths`` entries) when given; else ``split_by="block"``: a random
    ``valid_fraction`` of the blocks (the tutorial's split); else ``"file"``: that share of
    the files of each label (``store.label_index``), drawn from ``(seed, 0x5E11)``.
    """
    rng = np.random.default_rng((seed, _SPLIT_TAG))
    if valid_files is not None:
        where = {p: i for i, p in enumerate(store.paths)}
        missing = [p for p in valid_files if p not in where]
        if missing:
            raise ParameterError(f"valid_files {missing[:5]} are not in the store")
        files = np.zeros(len(store), bool)
        files[[where[p] for p in valid_files]] = True
        return files[block_file]
    if split_by == "block":
        mask = np.zeros(len(block_file), bool)
        mask[rng.permutation(len(block_file))[: int(round(valid_fraction * len(block_file)))]] = True
        return mask
    files = np.zeros(len(store), bool)
    strata = store.label_index
    for c in np.unique(strata):
        members = np.flatnonzero(strata == c)
        k = int(round(valid_fraction * len(members)))
        files[rng.permutation(members)[:k]] = True
    return files[block_file]


def label_matrix(store, kind: str) -> np.ndarray:
    """One row of labels per store file: int64 index, float32 multi-hot or float32 one-hot."""
    if kind == "index":
        return store.label_index.astype(np.int64)
    if kind == "multihot":
        return store.labels.astype(np.float32)
    onehot = np.zeros((len(store), len(store.classes)), np.float32)
    idx = store.label_index
    onehot[np.flatnonzero(idx >= 0), idx[idx >= 0]] = 1.0
    return onehot


def normaliser(store, normalize) -> dict:
    """The slicer's normalisation arguments: ``{}``, ``{mean, scale}`` or ``{mean, proj}`` (float32)."""
    if not normalize:
        return {}
    st = store.stats
    if "mean" not in st:
        raise ParameterError(f"{store.path} has no statistics to normalise with")
    needs = ("mean", "std") if normalize == "standard" else ("mean", "cov")
    bad = {key: why for key, why in damaged(st, store.n_bins).items() if key in needs}
    bad.update({key: "is missing" for key in needs if key not in st})
    if bad:
        what = "; ".join(f"stats/{key} {why}" for key, why in bad.items())
        raise ParameterError(f"cannot normalize={normalize!r}: the statistics of {store.path} are damaged ({what}); "
                             "`memstore verify` checks the whole store")
    if normalize == "standard":
        mean, scale = standardiser(st["mean"], st["std"])
        return {"mean": mean, "scale": scale}
    mean, proj = whitener(st["mean"], st["cov"])
    return {"mean": mean, "proj": proj}


def budget(store, block_file: np.ndarray, *, batch_size: int, time_context: int,
           memory_limit: int | None) -> tuple[bool, int]:
    """``(out_of_core, window_rows)``: page the split when its rows and the batch buffers exceed the limit.

    ``window_rows`` is 0 in memory. Out of core, a limit that cannot hold two windows of one
    block besides the batch buffers raises ``ParameterError`` (:func:`memstore.pager.window_budget`).
    """
    row_bytes = store.n_bins * store.dtype.itemsize
    batch_bytes = batch_size * time_context * store.n_bins * 4
    n_frames = store.index["n_frames"]
    split_bytes = int(n_frames[np.unique(block_file)].sum()) * row_bytes
    n_buffers = PREFETCH + 2
    if batch_bytes > _physical_memory():  # no limit can page this: the first batch would fail to allocate
        raise ParameterError(f"one batch of {batch_size} blocks of {time_context} x {store.n_bins} is "
                             f"{batch_bytes / 2**30:.1f} GiB, more than this machine's memory: use a smaller "
                             "batch_size or time_context")
    if memory_limit is None or split_bytes + n_buffers * batch_bytes <= memory_limit:
        return False, 0
    return True, window_budget(memory_limit, row_bytes=row_bytes, batch_bytes=batch_bytes,
                               n_batch_buffers=n_buffers, time_context=time_context)


def _physical_memory() -> float:
    """This machine's RAM in bytes (infinity where the system does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return float("inf")
