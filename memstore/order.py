"""Epoch order helpers shared by both paths: class-balanced draws and elastic dealing.

Balanced epochs (``balance="class"``)
--------------------------------------
Every block gets one *balancing class*: its file's label, or for a
multi-label file its rarest label (fewest blocks over the split, counting a
multi-label file towards each of its labels; ties go to the lower class
index). Files without a label get ``-1`` and take no part in a balanced epoch.

An epoch of ``n_draw`` blocks gives each of the ``K`` classes present
``n_draw // K`` blocks, and one more to ``n_draw % K`` classes chosen at
random. A class of ``m`` blocks with quota ``q`` serves every block
``q // m`` times and ``q % m`` distinct blocks once more, drawn without
replacement: a minority class's blocks are repeated as evenly as possible, a
majority class is sampled down, and the class shares of an epoch are equal
within one block. The draw is a pure function of ``(seed, epoch)``; it
returns per-block multiplicities (``counts``), which either path turns into an
order (a permutation of the multiset in memory; the pager's windows out of
core, see :func:`memstore.pager.plan_epoch`).

Elastic dealing
---------------
An epoch is one global sequence of blocks, the same for every world size.
With ``shard=(rank, world)`` it is dealt round-robin from a start position
``start`` (0 for a fresh epoch): rank ``r`` gets positions
``start + r, start + r + world, ...``, cut to ``(n - start) // world`` each.
After ``k`` blocks per rank the ranks together have consumed exactly the
prefix ``[start, start + k * world)``, so one number -- the global position --
says what is left, and the rest can be dealt among any number of ranks
(:func:`deal`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["balance_classes", "balanced_counts", "deal"]

#: separates the balanced draw's random stream from the shuffle's ``(seed, epoch)`` stream
_BALANCE_TAG = 0xBA1A


def balance_classes(block_file: np.ndarray, label_index: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The balancing class of each block (int64, ``-1`` for a file without a label).

    Parameters
    ----------
    block_file : int64 array [shape=(n_blocks,)]
        Store file of each block of the split.
    label_index : int array [shape=(n_files,)]
        Single label per file, ``-1`` for none or several.
    labels : uint8 array [shape=(n_files, n_classes)]
        Multi-hot labels per file.
    """
    block_file = np.asarray(block_file, dtype=np.int64)
    hot = np.asarray(labels, dtype=bool)
    blocks_per_file = np.bincount(block_file, minlength=len(hot))
    # rarity over the split: blocks carrying each label, a multi-label file counting for each of its labels
    per_class = blocks_per_file @ hot.astype(np.int64) if hot.shape[1] else np.zeros(0, np.int64)
    big = np.iinfo(np.int64).max
    rarest = (np.where(hot, per_class[None, :], big).argmin(axis=1) if hot.shape[1]
              else np.zeros(len(hot), np.int64))
    file_class = np.where(hot.any(axis=1), rarest, -1)
    single = np.asarray(label_index, dtype=np.int64)
    file_class = np.where(single >= 0, single, file_class).astype(np.int64)
    return file_class[block_file]


def balanced_counts(block_class: np.ndarray, n_draw: int, *, seed: int, epoch: int) -> np.ndarray:
    """How many times each block is served in a balanced epoch of ``n_draw`` blocks.

    Returns an int64 array [shape=(n_blocks,)] summing to ``n_draw``; blocks of
    class ``-1`` get 0. A pure function of its arguments (see the module notes).
    """
    block_class = np.asarray(block_class, dtype=np.int64)
    counts = np.zeros(len(block_class), np.int64)
    present = np.unique(block_class[block_class >= 0])
    if n_draw <= 0 or not len(present):
        return counts
    rng = np.random.default_rng((int(seed), int(epoch), _BALANCE_TAG))
    k = len(present)
    quota = np.full(k, n_draw // k, np.int64)
    quota[rng.permutation(k)[: n_draw % k]] += 1
    by_class = np.argsort(block_class, kind="stable")
    first = np.searchsorted(block_class[by_class], present)
    last = np.searchsorted(block_class[by_class], present, side="right")
    for q, a, b in zip(quota.tolist(), first.tolist(), last.tolist(), strict=True):
        members = by_class[a:b]
        counts[members] = q // len(members)
        extra = q % len(members)
        if extra:
            counts[rng.choice(members, extra, replace=False)] += 1
    return counts


def deal(n: int, rank: int, world: int, start: int = 0) -> np.ndarray:
    """Positions in an ``n``-long global sequence that ``rank`` of ``world`` serves from ``start`` on.

    ``start + rank + world * j`` for ``j < (n - start) // world``: every rank gets as many,
    and at most ``world - 1`` positions of ``[start, n)`` go to nobody.
    """
    per_rank = max(0, (n - start) // world)
    return start + rank + world * np.arange(per_rank, dtype=np.int64)
