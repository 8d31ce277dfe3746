"""Running feature statistics: one place for the maths the build, verify and the stream share.

A :class:`RunningStats` is the triple ``(count, mean, m2)`` of Chan, Golub
and LeVeque's parallel algorithm, in float64. ``m2`` is the co-moment
matrix ``sum((x - mean).T @ (x - mean))`` of shape ``(n_bins, n_bins)``, or
only its diagonal (the per-bin sums of squared deviations) when the full
matrix is not needed (``verify`` checks mean and std only).

Chan's merge is not associative in floating point. A store's statistics are
the same bytes with any number of workers because the build always merges
per-file statistics in file order (see ``build``); this module only supplies
the steps, in one spelling, so that the order is the only thing left to get
right.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._jit import njit

__all__ = ["RunningStats", "Fold", "merge", "starts", "offsets", "standardiser", "whitener", "damaged", "CHUNK_ROWS",
           "STD_FLOOR"]

CHUNK_ROWS = 1 << 16  # rows converted to float64 at a time: bounds the temporary at 64 Ki rows
STD_FLOOR = 1e-8  # a bin with a smaller standard deviation is scaled as if it had this one


@dataclass(frozen=True)
class RunningStats:
    """Count, mean and co-moment (or its diagonal) of a set of feature rows.

    Parameters
    ----------
    count : int
        Number of rows.
    mean : ndarray [shape=(n_bins,)], float64
    m2 : ndarray [shape=(n_bins, n_bins) or (n_bins,)], float64
        Co-moment matrix, or its diagonal.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of_rows(cls, rows: np.ndarray, *, diagonal: bool = False,
                chunk_rows: int = CHUNK_ROWS) -> RunningStats | None:
        """Statistics of ``rows`` [shape=(n, n_bins)], a bounded chunk at a time; None when ``n`` is 0."""
        stats = None
        for s in range(0, len(rows), chunk_rows):
            x = rows[s:s + chunk_rows].astype(np.float64)
            mean = x.mean(axis=0)
            if diagonal:
                part = cls(len(x), mean, ((x - mean) ** 2).sum(axis=0))
            else:
                x -= mean
                part = cls(len(x), mean, x.T @ x)
            stats = merge(stats, part)
        return stats

    def merge(self, other: RunningStats) -> RunningStats:
        """Chan et al.'s merge: the statistics of both sets of rows together."""
        na, nb = self.count, other.count
        n = na + nb
        delta = other.mean - self.mean
        spread = np.outer(delta, delta) if np.ndim(self.m2) == 2 else delta**2
        return RunningStats(n, self.mean + delta * (nb / n), self.m2 + other.m2 + spread * (na * nb / n))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per bin (divides by ``count``)."""
        m2 = np.diag(self.m2) if np.ndim(self.m2) == 2 else self.m2
        return np.sqrt(np.maximum(m2 / max(self.count, 1), 0.0))

    @property
    def cov(self) -> np.ndarray:
        """Sample covariance (divides by ``count - 1``); needs the full co-moment."""
        return self.m2 / max(self.count - 1, 1)

    def packed(self) -> tuple:
        """A compact tuple for the trip from a worker: the co-moment's upper triangle when it is symmetric.

        numpy computes ``x.T @ x`` as one triangle mirrored (BLAS ``syrk``), so
        half the matrix is exact; the check is on bytes, so even a ``-0.0``
        mirrored as ``0.0`` keeps the whole matrix. With 96 bins the whole one
        is 73 KB per file, pickled, piped and unpickled while the parent and
        the workers share the cores.
        """
        m2 = self.m2
        if m2.ndim == 2:
            upper, lower = _triangles(len(m2))
            flat = m2.reshape(-1)
            triangle = flat[upper]
            if triangle.tobytes() == flat[lower].tobytes():  # m2 equals its transpose, byte for byte
                return self.count, self.mean, None, triangle
        return self.count, self.mean, m2

    @classmethod
    def unpacked(cls, t: tuple) -> RunningStats:
        """The inverse of :meth:`packed`."""
        if len(t) == 3:
            return cls(*t)
        count, mean, _, triangle = t
        n = len(mean)
        upper, lower = _triangles(n)
        m2 = np.empty(n * n, dtype=triangle.dtype)
        m2[upper] = triangle
        m2[lower] = triangle
        return cls(count, mean, m2.reshape(n, n))


def merge(a: RunningStats | None, b: RunningStats | None) -> RunningStats | None:
    """``a.merge(b)``, where either side may be None (no rows)."""
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)


class Fold:
    """Statistics merged one set after another in place: the bytes of ``merge(merge(a, b), c) ...``.

    The build folds one file's statistics at a time, in file order, in the
    process that also records every worker's results, so each step is on
    that process's clock: :func:`merge` made four temporaries of the whole
    co-moment matrix per file (the outer product, its scaling and two sums;
    31-34 us for 96 bins), and a worker's packed matrix was unpacked into a
    fifth first (9-11 us). :meth:`add` updates its own matrix in one pass
    instead, straight from a packed upper triangle when it gets one (what
    :meth:`RunningStats.packed` sends from a worker). Every element is
    computed with the same operations in the same order as :meth:`merge
    <RunningStats.merge>` (``(a + b) + (d_i * d_j) * c``, the factor ``c``
    from the same Python expression), so the result is the same bytes: a
    store's statistics do not change.

    Anything else -- diagonal-only statistics, means or matrices that are not
    float64, shapes that are not those of the held bins (a damaged store's
    statistics) -- goes through :func:`merge` as it is, with its promotions,
    its broadcasting or its error; the kernels only ever see arrays whose
    shapes :meth:`_fits` checked.
    """

    def __init__(self, stats: RunningStats | None = None):
        self._count, self._mean, self._m2 = 0, None, None
        if stats is not None:
            self._own(stats.count, stats.mean, stats.m2)

    def _own(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Start from a copy of these statistics (the caller's arrays are never written to)."""
        self._count, self._mean, self._m2 = count, np.array(mean, copy=True), np.array(m2, order="C", copy=True)

    def add(self, other) -> None:
        """Merge ``other`` after what is held: a :class:`RunningStats`, a :meth:`RunningStats.packed` tuple, or None."""
        if other is None:
            return
        if isinstance(other, RunningStats):
            count, mean, m2, triangle = other.count, other.mean, other.m2, None
        elif len(other) == 3:
            (count, mean, m2), triangle = other, None
        else:
            count, mean, _, triangle = other
            m2 = None
        if self._mean is None:
            self._own(count, mean, m2 if triangle is None else RunningStats.unpacked(other).m2)
            return
        if not self._fits(mean, m2, triangle):
            if m2 is None:
                m2 = RunningStats.unpacked(other).m2
            merged = RunningStats(self._count, self._mean, self._m2).merge(RunningStats(count, mean, m2))
            self._own(merged.count, merged.mean, merged.m2)
            return
        na, nb = self._count, count
        n = na + nb
        delta = np.ascontiguousarray(mean - self._mean)
        new_mean = self._mean + delta * (nb / n)
        c = na * nb / n
        if triangle is not None:
            _fold_triangle(self._m2, np.ascontiguousarray(triangle), delta, c)
        else:
            _fold_full(self._m2, np.ascontiguousarray(m2), delta, c)
        self._count, self._mean = n, new_mean

    def _fits(self, mean, m2, triangle) -> bool:
        """Whether the kernels take this step: float64 throughout, every shape that of the held ``n`` bins.

        Anything else is :func:`merge`'s (its dtype promotions, its broadcasting or its error): a
        float32 difference of means, for one, is squared in float32 by numpy and in float64 by numba.
        """
        if self._mean.ndim != 1:
            return False
        n = len(self._mean)
        f8 = np.dtype(np.float64)
        return (self._mean.dtype == f8 and self._m2.dtype == f8
                and self._m2.shape == (n, n) and isinstance(mean, np.ndarray) and mean.dtype == f8
                and mean.shape == (n,)
                and (m2 is None or (isinstance(m2, np.ndarray) and m2.dtype == f8 and m2.shape == (n, n)))
                and (triangle is None or (isinstance(triangle, np.ndarray) and triangle.dtype == f8
                                          and triangle.shape == (n * (n + 1) // 2,))))

    def result(self) -> RunningStats | None:
        """The statistics of everything added (None if nothing with rows was); a copy, so adding may go on."""
        if self._mean is None:
            return None
        return RunningStats(self._count, self._mean.copy(), self._m2.copy())


@njit(nogil=True, cache=True)
def _fold_full(acc, m2, delta, c):  # pragma: no cover - jitted
    """``acc[i, j] = (acc[i, j] + m2[i, j]) + (delta[i] * delta[j]) * c``: merge's matrix step, in place.

    The caller (:meth:`Fold.add`) checks the shapes: ``acc`` and ``m2`` (n, n), ``delta`` (n,).
    """
    n = delta.shape[0]
    for i in range(n):
        di = delta[i]
        for j in range(n):
            acc[i, j] = (acc[i, j] + m2[i, j]) + (di * delta[j]) * c


@njit(nogil=True, cache=True)
def _fold_triangle(acc, triangle, delta, c):  # pragma: no cover - jitted
    """:func:`_fold_full` with ``m2`` given as its upper triangle, row by row (``RunningStats.packed``).

    Each value goes to ``(i, j)`` and its mirror ``(j, i)``, each updated
    from its own ``acc`` element. The caller (:meth:`Fold.add`) checks the
    shapes: ``acc`` (n, n), ``triangle`` (n (n + 1) / 2,), ``delta`` (n,).
    """
    n = delta.shape[0]
    k = 0
    for i in range(n):
        di = delta[i]
        for j in range(i, n):
            t = triangle[k]
            k += 1
            acc[i, j] = (acc[i, j] + t) + (di * delta[j]) * c
            if j != i:
                acc[j, i] = (acc[j, i] + t) + (delta[j] * di) * c


@functools.lru_cache(maxsize=8)
def _triangles(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions in an ``(n, n)`` matrix of its upper triangle (row by row) and of their mirror images.

    Flat positions, not ``np.triu_indices``'s pair of arrays: gathering and
    scattering with one index array is about 3x faster, and the building
    process unpacks one matrix per file while it extracts files itself.
    """
    rows, cols = np.triu_indices(n)
    return rows * n + cols, cols * n + rows


def starts(counts) -> np.ndarray:
    """Start offset of each run of ``counts`` rows laid end to end (int64, ``starts[0] == 0``):
    :func:`offsets` without where the last run ends."""
    return offsets(counts)[:-1]


def offsets(counts, base: int = 0) -> np.ndarray:
    """``base`` plus the start of each run of ``counts`` laid end to end, and where the last one ends
    (int64 [shape=(len(counts) + 1,)]): run ``i`` spans ``offsets[i]:offsets[i + 1]``."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.empty(len(counts) + 1, dtype=np.int64)
    out[0] = base
    np.cumsum(counts, out=out[1:])
    if base:
        out[1:] += base
    return out


#: the shape of each statistic a store saves, ``"F"`` standing for its number of bins
SAVED_SHAPES = {"count": (), "mean": ("F",), "std": ("F",), "cov": ("F", "F"), "m2": ("F", "F")}


def damaged(stats: dict, n_bins: int) -> dict[str, str]:
    """What makes a store's saved statistics unusable, by name; ``{}`` when every one present is usable.

    A statistic is usable when it holds real numbers in the shape its name
    says (:data:`SAVED_SHAPES`): ``count`` one non-negative integer, ``mean``
    and ``std`` ``(n_bins,)``, ``cov`` and ``m2`` ``(n_bins, n_bins)``. A
    damaged file can hold anything there (text, another shape); whoever reads
    the statistics asks this first, so that a kernel never gets a vector of
    the wrong length and a report says what is wrong instead of failing.
    Whether the numbers are finite, or right, is ``verify``'s question.
    """
    found = {}
    for key, dims in SAVED_SHAPES.items():
        if key not in stats:
            continue
        value = np.asarray(stats[key])
        want = tuple(n_bins if d == "F" else d for d in dims)
        if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
            found[key] = f"holds {value.dtype} values, not numbers"
        elif value.shape != want:
            found[key] = f"has shape {value.shape}, not {want}"
        elif key == "count" and not (np.issubdtype(value.dtype, np.integer) and int(value) >= 0):
            found[key] = f"is {value.item()!r}, not a count of frames"
    return found


def standardiser(mean, std, *, floor: float = STD_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, 1 / max(std, floor))`` as float32: ``(x - mean) * scale`` has unit variance per bin."""
    std = np.maximum(np.asarray(std, np.float64), floor)
    return np.asarray(mean, np.float64).astype(np.float32), (1.0 / std).astype(np.float32)


def whitener(mean, cov, *, floor: float = STD_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, proj)`` as float32 for PCA whitening: ``(x - mean) @ proj`` has identity covariance.

    Eigenvalues are lifted by ``1e-6`` of the largest, which keeps the scale
    of near-silent directions bounded.
    """
    eig, vec = np.linalg.eigh(np.asarray(cov, np.float64))
    eps = 1e-6 * max(float(eig.max()), floor)
    proj = vec / np.sqrt(np.maximum(eig, 0) + eps)
    return np.asarray(mean, np.float64).astype(np.float32), proj.astype(np.float32)
