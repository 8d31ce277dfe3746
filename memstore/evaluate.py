"""Per-file evaluation: block scores pooled into one score row per file.

A model sees blocks (``time_context`` frames), but labels belong to files:
IRMAS and ESC-50 are scored per file. Stream the test store with
``return_file=True`` to learn which file each block came from, collect the
model's block scores, and pool them with :func:`aggregate_by_file`.

Files that gave no block (not in the split, or in a shard served by another
rank) get a row of NaN, not zeros: a zero row would pass for a real score and
``argmax`` would quietly call it class 0, while NaN stays visible and
``np.isnan(out).any(axis=1)`` lists such files.
"""

from __future__ import annotations

import numpy as np

from ._validate import choice, int_at_least
from .errors import ParameterError

__all__ = ["aggregate_by_file", "HOW"]

#: pooling rules accepted by :func:`aggregate_by_file`
HOW = ("mean", "max", "vote")


def aggregate_by_file(scores, file, *, n_files: int, how: str = "mean") -> np.ndarray:
    """Pool per-block scores into per-file scores.

    Parameters
    ----------
    scores : array_like [shape=(n_blocks, n_classes)]
        Real numbers per block and class (logits, probabilities, one-hot rows ...).
    file : array_like of int [shape=(n_blocks,)]
        Store file index of each block, in ``[0, n_files)``: the third element that
        ``BatchStream(..., return_file=True)`` yields, concatenated over batches.
    n_files : int
        Number of rows of the result, usually ``len(store)``.
    how : {"mean", "max", "vote"}
        ``"mean"`` and ``"max"`` pool each class over the file's blocks; ``"vote"``
        gives the share of the file's blocks whose top class (``argmax``, the lowest
        index on ties) is each class, so a row sums to 1.

    Returns
    -------
    ndarray [shape=(n_files, n_classes)], float64
        Files with no block have a row of NaN.

    Raises
    ------
    ParameterError
        For scores that are not a finite real 2-D array, file indices of the wrong
        length, type or range, a bad ``n_files`` or an unknown ``how``.

    Example
    -------
    >>> aggregate_by_file([[0.2, 0.8], [0.6, 0.4], [1.0, 0.0]], [0, 0, 2], n_files=3)
    array([[0.4, 0.6],
           [nan, nan],
           [1. , 0. ]])
    """
    how = choice("how", how, HOW)
    n_files = int_at_least("n_files", n_files, 0)
    if np.ma.is_masked(scores):  # np.asarray drops the mask: the masked values would be pooled
        raise ParameterError("scores has masked values; drop their blocks (and their file entries) first")
    try:
        s = np.asarray(scores)
    except ValueError as err:  # ragged rows
        raise ParameterError(f"scores must be a 2-D array (n_blocks, n_classes): {err}") from err
    if s.dtype.kind not in "biuf":
        raise ParameterError(f"scores of dtype {s.dtype} must be real numbers")
    if s.ndim != 2 or s.shape[1] < 1:
        raise ParameterError(f"scores of shape {s.shape} must be 2-D (n_blocks, n_classes) with n_classes >= 1")
    f = np.asarray(file)
    if f.ndim != 1 or (f.size and f.dtype.kind not in "iu"):
        raise ParameterError(f"file (shape {f.shape}, dtype {f.dtype}) must be a 1-D array of integer file indices")
    if len(f) != len(s):
        raise ParameterError(f"file has {len(f)} entries but scores has {len(s)} rows: one file index per block")
    try:
        out = np.full((n_files, s.shape[1]), np.nan)
    except MemoryError as err:  # numpy refuses at once what no machine holds (n_files=10**12)
        raise ParameterError(f"n_files={n_files} with {s.shape[1]} classes needs a result of "
                             f"{n_files * s.shape[1] * 8 / 1e9:.3g} GB, more than this machine can allocate; "
                             "n_files is usually len(store)") from err
    if len(s) == 0:
        return out
    bad = np.flatnonzero((f < 0) | (f >= n_files))  # on the given dtype: a uint64 past 2**63 is shown as given
    if len(bad):
        raise ParameterError(f"file[{bad[0]}]={f[bad[0]]} must be in [0, n_files={n_files})")
    f = f.astype(np.int64)
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        row = int(np.flatnonzero(~np.isfinite(s).all(axis=1))[0])
        raise ParameterError(f"scores[{row}] holds NaN or infinity; scores must be finite")
    if how == "vote":
        top = s.argmax(axis=1)
        s = np.zeros_like(s)
        s[np.arange(len(s)), top] = 1.0
    order = np.argsort(f, kind="stable")
    f, s = f[order], s[order]
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])  # first block of each file present
    if how == "max":
        pooled = np.maximum.reduceat(s, starts, axis=0)
    else:
        count = np.diff(np.r_[starts, len(f)])
        with np.errstate(over="ignore"):  # found and mended below
            pooled = np.add.reduceat(s, starts, axis=0) / count[:, None]
        if not np.isfinite(pooled).all():  # a sum of finite scores overflowed: divide each score first
            pooled = np.add.reduceat(s / np.repeat(count, count)[:, None], starts, axis=0)
    out[f[starts]] = pooled
    return out
