"""Opening a store: validated, read-only, memory-mapped.

:func:`read_metadata` reads the metadata with h5py into a frozen
:class:`StoreMeta`, which checks everything that a later read relies on
(format version, shapes, every offset and length against the dataset and the
file size, JSON attributes with size limits) when it is made: every
``StoreMeta`` is a valid one, whoever made it. :func:`open_store` then closes
the HDF5 handle and maps the contiguous ``features`` dataset with
:class:`numpy.memmap` at its byte offset. No HDF5 handle is kept, so nothing
is shared across ``fork``; the mapping itself is re-created in a child
process the first time it is used there.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import layout
from ._validate import is_int
from .errors import ParameterError, StoreFormatError
from .features import Spectrogram, as_stored, transform_from_dict

__all__ = ["Store", "StoreMeta", "open_store", "read_metadata"]

PARTIAL_SUFFIX = ".partial"


def _fail(path, why: str) -> StoreFormatError:
    return StoreFormatError(f"{os.fsdecode(path)}: {why}")


@dataclass(frozen=True, eq=False)
class StoreMeta:
    """A store's metadata, validated: everything but the feature bytes.

    Made by :func:`read_metadata` (or :meth:`from_dict`); the rules are checked
    when it is made, so an invalid one never exists. The fields are those of
    the dict that ``read_metadata`` returned before, and ``meta["index"]`` still
    reads ``meta.index``.

    Attributes
    ----------
    path : Path
    dtype : numpy.dtype
        ``float32`` or ``float16``.
    total : int
        Feature rows (frames) in the store.
    n_bins : int
    data_offset : int
        Byte offset of the ``features`` dataset in the file.
    file_size : int
        Size of the file the metadata was read from.
    config : Spectrogram
        The feature transform (a dict is rebuilt with ``transform_from_dict``).
    classes : list of str
    index : ndarray [shape=(n_files,)], :data:`memstore.layout.INDEX_DTYPE`
    paths : list of str
        Source paths (bytes are decoded with :func:`os.fsdecode`).
    labels : ndarray [shape=(n_files, n_classes)], uint8
    segments : ndarray [shape=(n_segments,)], :data:`memstore.layout.SEGMENT_DTYPE`
    stats : dict of ndarray
        ``count``, ``mean``, ``std``, ``cov``, ``m2``, those the store holds.
    report : list of dict
        The build report of each segment.
    generation : int
    label_mode : str
    fd : int or None
        A descriptor of the file read (``read_metadata(keep_fd=True)``); the
        :class:`Store` made from it owns and closes it.

    Raises
    ------
    StoreFormatError
        For anything that is not a complete, consistent store of this format version.
    """

    path: Path
    dtype: np.dtype
    total: int
    n_bins: int
    data_offset: int
    file_size: int
    config: Spectrogram
    classes: list[str]
    index: np.ndarray
    paths: list[str]
    labels: np.ndarray
    segments: np.ndarray
    stats: dict[str, Any]
    report: list
    generation: int
    label_mode: str
    fd: int | None = None

    def __post_init__(self):
        path = Path(os.fsdecode(self.path))
        self._set("path", path)
        self._set("dtype", _parse_dtype(path, self.dtype))
        self._set("config", _parse_config(path, self.config))
        self._set("classes", _parse_classes(path, self.classes))
        for name in ("total", "n_bins", "data_offset", "file_size", "generation"):
            if not is_int(getattr(self, name)):
                raise _fail(path, f"{name}={getattr(self, name)!r} must be an integer")
            self._set(name, int(getattr(self, name)))
        if self.generation < 0:  # 0 for a new store, one more per append: -5 was shown by info and passed verify
            raise _fail(path, f"generation={self.generation} must be >= 0 (0, then one more per append)")
        for name in ("index", "labels", "segments"):
            self._set(name, np.asarray(getattr(self, name)))
        _check_bins(path, self.n_bins, self.config)
        _check_extent(path, self.total, self.n_bins, self.dtype, self.data_offset, self.file_size)
        _check_index_dtype(path, self.index)
        _check_tables(path, self.index, self.paths, self.labels, self.segments, len(self.classes), self.total)
        if not isinstance(self.stats, dict):
            raise _fail(path, "statistics must be a dict of arrays")
        if self.stats.get("mean") is not None and np.shape(self.stats["mean"]) != (self.n_bins,):
            raise _fail(path, "statistics have the wrong shape")
        self._set("paths", [p if isinstance(p, str) else os.fsdecode(bytes(p)) for p in self.paths])
        self._set("label_mode", str(self.label_mode))

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # a frozen dataclass normalises its own fields once, when made

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreMeta:
        """Make and validate a StoreMeta from a dict of its fields (the inverse of :meth:`to_dict`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(names - set(d) - {"fd"})
        if unknown or missing:
            raise ParameterError(f"store metadata has unknown keys {unknown} and lacks {missing}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (arrays not copied); ``fd`` only when there is one."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if d["fd"] is None:
            del d["fd"]
        return d

    def __getitem__(self, key: str):
        """``meta[key]``: the field ``key``, as the dict ``read_metadata`` returned before."""
        if (key == "fd" and self.fd is None) or key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


def _parse_dtype(path, value) -> np.dtype:
    name = str(value)
    if name not in layout.FEATURE_DTYPES:
        raise _fail(path, f"dtype {name!r} must be one of {layout.FEATURE_DTYPES}")
    return np.dtype(name)


def _parse_config(path, value) -> Spectrogram:
    if isinstance(value, Spectrogram):
        return value
    try:
        with as_stored():  # a store from before a setting's upper bound still opens
            config = transform_from_dict(value)
    except ParameterError as err:
        raise _fail(path, f"bad feature configuration: {err}") from err
    # a store records every setting (to_json writes them all): one missing was lost, and its default may
    # describe other features (n_fft=2048 read back as 1024, unnoticed by verify)
    missing = sorted(set(config.to_dict()) - set(value))
    if missing:
        raise _fail(path, f"bad feature configuration: it lacks {', '.join(missing)}")
    return config


def _parse_classes(path, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _fail(path, "classes attribute must be a JSON list of strings")
    return value


def _check_bins(path, n_bins: int, config: Spectrogram) -> None:
    if n_bins != config.n_bins:
        raise _fail(path, f"features have {n_bins} bins but the configuration gives {config.n_bins}")


def _check_extent(path, total: int, n_bins: int, dtype: np.dtype, offset: int, size: int) -> None:
    nbytes = total * n_bins * dtype.itemsize
    if offset + nbytes > size:
        raise _fail(path, f"features need bytes {offset}..{offset + nbytes} but the file has {size}")


def _check_index_dtype(path, index) -> None:
    """``index`` is the dataset (checked before it is read) or the array."""
    if index.dtype != layout.INDEX_DTYPE or index.ndim != 1:
        raise _fail(path, f"index dtype {index.dtype} is not the version {layout.FORMAT_VERSION} index")


def _check_tables(path, index: np.ndarray, paths, labels: np.ndarray, segments: np.ndarray, n_classes: int,
                  total: int) -> None:
    """The index, paths, labels and segments agree with each other and tile the features."""
    n = len(index)
    if len(paths) != n or labels.shape != (n, n_classes) or labels.dtype != np.uint8:
        raise _fail(path, f"index ({n} rows), paths ({len(paths)}) and labels {labels.shape} disagree")
    if segments.dtype != layout.SEGMENT_DTYPE or segments.ndim != 1:
        raise _fail(path, "segments table has the wrong dtype or shape")
    empty = np.flatnonzero((segments["n_files"] < 1) | (segments["n_frames"] < 1))
    if len(empty):
        s = segments[empty[0]]
        raise _fail(path, f"segment {int(empty[0])} is empty ({int(s['n_files'])} files, {int(s['n_frames'])} "
                          "frames): every build or append must add at least one file")
    off, nf = index["offset"], index["n_frames"]
    if n and (off.min() < 0 or nf.min() < 1):
        raise _fail(path, "index has negative offsets or empty files")
    if n and (off[0] != 0 or np.any(off[1:] != off[:-1] + nf[:-1]) or off[-1] + nf[-1] != total):
        raise _fail(path, "index offsets do not tile the features dataset contiguously")
    if n == 0 and total != 0:
        raise _fail(path, "features without an index")
    if np.any(index["status"] != layout.STATUS_STORED):
        raise _fail(path, "index holds files that were not stored")
    lab = index["label"]
    if n and (lab.min() < -1 or lab.max() >= n_classes):
        raise _fail(path, "index labels out of range")


def read_metadata(path, *, keep_fd: bool = False) -> StoreMeta:
    """Read and validate a store's metadata; the features are not touched (``keep_fd``: see
    :func:`read_file_metadata`).

    Returns
    -------
    StoreMeta

    Raises
    ------
    StoreFormatError
        For anything that is not a complete, consistent store of this format version.
    """
    path = Path(os.fsdecode(path))
    if path.name.endswith(PARTIAL_SUFFIX):
        raise _fail(path, "is a partial build; finish it with 'memstore build' (it resumes)")
    return read_file_metadata(path, keep_fd=keep_fd)


def read_file_metadata(path, *, keep_fd: bool = False) -> StoreMeta:
    """:func:`read_metadata` whatever the file's name: the builder validates its
    finished ``.partial`` file with it before renaming it over the store.

    The size checked against the metadata is that of the file HDF5 opened
    (``fstat`` of its descriptor), never of whatever the path names a moment
    later: a build renames a new generation over the store at any time. With
    ``keep_fd=True`` the metadata's ``fd`` is a duplicate of that descriptor,
    which :class:`Store` reads through so that it keeps one generation.
    """
    path = Path(os.fsdecode(path))
    if not path.is_file():
        if path.is_dir():
            raise _fail(path, "is a folder, not a store file")
        if not os.path.lexists(path):
            raise _fail(path, "no such store file")
        raise _fail(path, "is a broken symlink" if path.is_symlink() and not path.exists() else
                    "is not a regular file (a FIFO or device is never opened)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise _fail(path, f"not an HDF5 file or truncated ({err})") from err
    fd = None
    try:
        with f:
            handle = f.id.get_vfd_handle()
            size = os.fstat(handle).st_size
            fields = _read(f, path, size)
            if keep_fd:
                fd = os.dup(handle)
                os.set_inheritable(fd, False)
            return StoreMeta(**fields, fd=fd)
    except BaseException as err:
        if fd is not None:
            os.close(fd)
        if isinstance(err, StoreFormatError) or not isinstance(err, _UNREADABLE):
            raise
        raise _fail(path, f"unreadable store metadata ({type(err).__name__}: {err})") from err


#: what h5py and numpy raise for a file whose metadata cannot be read as a store's (ArithmeticError: an
#: edited number too large for a float, such as a configuration's sample rate of 10**400)
_UNREADABLE = (OSError, KeyError, ValueError, TypeError, RuntimeError, ArithmeticError)


def _attr(f, name: str, path):
    if name not in f.attrs:
        raise _fail(path, f"missing attribute {name!r}")
    return f.attrs[name]


def _read(f: h5py.File, path: Path, size: int) -> dict[str, Any]:
    """The fields of a StoreMeta, read from an open file.

    What only the file can tell (format, version, completeness, the datasets and
    the features' HDF5 layout) is checked here; the rules a StoreMeta checks are
    applied as soon as their values are read too, so that nothing more of a bad
    file is read (a foreign file's large datasets, say), and the first error is
    the one it has always been.
    """
    fmt = _attr(f, layout.ATTR_FORMAT, path)
    if (fmt.decode() if isinstance(fmt, bytes) else str(fmt)) != layout.FORMAT_NAME:
        raise _fail(path, f"format {fmt!r} is not {layout.FORMAT_NAME!r}")
    version = _attr(f, layout.ATTR_VERSION, path)
    if not isinstance(version, np.integer | int) or int(version) != layout.FORMAT_VERSION:
        raise _fail(path, f"format version {version}; this memstore reads version {layout.FORMAT_VERSION}")
    if int(f.attrs.get(layout.ATTR_COMPLETE, 0)) != 1:
        raise _fail(path, "the build did not complete")
    dtype = _parse_dtype(path, _attr(f, layout.ATTR_DTYPE, path))
    config = _parse_config(path, layout.loads(_attr(f, layout.ATTR_CONFIG, path), "config attribute"))
    classes = _parse_classes(path, layout.loads(_attr(f, layout.ATTR_CLASSES, path), "classes attribute"))
    for name in (layout.FEATURES, layout.INDEX, layout.PATHS, layout.LABELS, layout.SEGMENTS):
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise _fail(path, f"missing dataset {name!r}")
    feats = f[layout.FEATURES]
    if feats.ndim != 2 or feats.dtype != dtype:
        raise _fail(path, f"features dataset has shape {feats.shape} and dtype {feats.dtype}")
    total, n_bins = (int(s) for s in feats.shape)
    _check_bins(path, n_bins, config)
    if feats.chunks is not None or feats.compression is not None:
        raise _fail(path, "features dataset must be contiguous and uncompressed")
    offset = feats.id.get_offset()
    if total * n_bins and offset is None:
        raise _fail(path, "features dataset has no storage allocated")
    offset = int(offset or 0)
    _check_extent(path, total, n_bins, dtype, offset, size)
    _check_index_dtype(path, f[layout.INDEX])
    tables = dict(index=f[layout.INDEX][()], paths=f[layout.PATHS][()], labels=f[layout.LABELS][()],
                  segments=f[layout.SEGMENTS][()])
    _check_tables(path, **tables, n_classes=len(classes), total=total)
    stats = {}
    if layout.STATS in f:
        g = f[layout.STATS]
        stats = {key: g[key][()] for key in ("count", "mean", "std", "cov", "m2") if key in g}
    return dict(
        path=path, dtype=dtype, total=total, n_bins=n_bins, data_offset=offset, file_size=size,
        config=config, classes=classes, **tables, stats=stats,
        report=layout.loads(f[layout.REPORT][()], "report") if layout.REPORT in f else [],
        generation=int(f.attrs.get(layout.ATTR_GENERATION, 0)),
        label_mode=str(f.attrs.get(layout.ATTR_LABEL_MODE, "")),
    )


class Store:
    """A read-only, memory-mapped feature store. Use :func:`open_store`.

    Made from a :class:`StoreMeta` (a dict of its fields is validated into one
    first); it owns the StoreMeta's ``fd``.

    Attributes
    ----------
    index : ndarray [shape=(n_files,)], :data:`memstore.layout.INDEX_DTYPE`
    paths : list of str
        Source paths relative to the audio root.
    classes : list of str
    labels : ndarray [shape=(n_files, n_classes)], uint8 multi-hot
    label_index : ndarray [shape=(n_files,)], int32; -1 for none or several labels
    config : the feature transform, rebuilt from JSON
    stats : dict of ``count``, ``mean``, ``std``, ``cov`` (float64)
    report : list of per-segment build reports (dicts)
    """

    def __init__(self, meta: StoreMeta):
        if not isinstance(meta, StoreMeta):
            meta = StoreMeta.from_dict(meta)
        self.path: Path = meta.path
        self.index: np.ndarray = meta.index
        self.index.flags.writeable = False
        self.paths: list[str] = meta.paths
        self.classes: list[str] = meta.classes
        self.labels: np.ndarray = meta.labels
        self.labels.flags.writeable = False
        self.label_index: np.ndarray = self.index["label"].astype(np.int32)
        self.config = meta.config
        self.dtype: np.dtype = meta.dtype
        self.n_bins: int = meta.n_bins
        self.n_frames_total: int = meta.total
        self.data_offset: int = meta.data_offset
        self.stats: dict[str, Any] = meta.stats
        self.report: list[dict] = meta.report
        self.generation: int = meta.generation
        self.segments: np.ndarray = meta.segments
        self._map = None
        self._pid = None
        # The generation opened: a descriptor of the file HDF5 read the metadata from. The mapping and the
        # pager read through it (``/proc/self/fd``), so a build renaming a new generation over the path
        # never mixes this metadata with other bytes; elsewhere the path itself is read.
        fd = meta.fd
        self._fd_closer = weakref.finalize(self, os.close, fd) if fd is not None else None
        self._source: str = (f"/proc/self/fd/{fd}" if fd is not None and os.path.isdir("/proc/self/fd")
                             else os.fspath(self.path))
        self._closed = False

    @property
    def source(self) -> str:
        """The path the features are read through: the kept descriptor's ``/proc/self/fd`` entry where there is one.

        Raises :class:`~memstore.errors.ParameterError` once the store is
        closed: the descriptor's number may by then belong to another file.
        """
        self.require_open()
        return self._source

    def require_open(self) -> None:
        """Raise :class:`~memstore.errors.ParameterError` if the store is closed."""
        if self._closed:
            raise ParameterError(f"store {str(self.path)!r} is closed; open it again with open_store()")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called; a closed store serves no more features."""
        return self._closed

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return (f"<Store {str(self.path)!r}: {len(self)} files, {self.n_frames_total} frames x "
                f"{self.n_bins} {self.dtype}, {len(self.classes)} classes>")

    @property
    def features(self) -> np.ndarray:
        """The whole ``(total_frames, n_bins)`` feature matrix, memory-mapped read-only."""
        if self._map is None or self._pid != os.getpid():
            source = self.source  # raises once closed, before any mapping of what the number now names
            if self.n_frames_total == 0:
                self._map = np.zeros((0, self.n_bins), dtype=self.dtype)
            else:
                self._map = np.memmap(source, dtype=self.dtype, mode="r", offset=self.data_offset,
                                      shape=(self.n_frames_total, self.n_bins))
            self._pid = os.getpid()
        return self._map

    def frames(self, i: int) -> np.ndarray:
        """Features of file ``i``: a zero-copy ``(n_frames, n_bins)`` view of the mapping."""
        if not is_int(i) or not -len(self) <= i < len(self):
            raise ParameterError(f"file index {i!r} must be an integer in [-{len(self)}, {len(self)})")
        row = self.index[int(i)]
        return self.features[row["offset"]: row["offset"] + row["n_frames"]]

    def close(self) -> None:
        """Drop the mapping and the file descriptor (views already handed out stay valid until released).

        Reading features afterwards (:meth:`frames`, :attr:`features`, a
        stream's next epoch) raises :class:`~memstore.errors.ParameterError`;
        the metadata (index, paths, classes, statistics) stays readable.
        """
        self._closed = True
        self._map = None
        if self._fd_closer is not None:
            self._fd_closer()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        raise TypeError("a Store is not picklable; pass its path and open it in the other process")


def open_store(path) -> Store:
    """Open a store read-only.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Store

    Raises
    ------
    StoreFormatError
        If the file is missing, partial, corrupt or of another format version.

    Example
    -------
    >>> with open_store("irmas.h5") as store:          # doctest: +SKIP
    ...     x = store.frames(0)
    """
    return Store(read_metadata(path, keep_fd=True))
