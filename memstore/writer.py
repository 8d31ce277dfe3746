"""Writing a store: the one writer behind ``build_store``, legacy import and the tools.

A :class:`StoreWriter` owns ``<store>.partial`` from the lock to the rename:

1. **Lock** ``<store>.lock`` while the writer is open: one writer per store;
   a killed writer leaves no stale lock.
2. **Allocate** every dataset at its final size, contiguous, its disk space
   reserved (``posix_fallocate``): a full disk is a :class:`BuildError` here,
   never a SIGBUS in a mapped write. A partial file of the same plan (same
   fingerprint) is resumed instead.
3. **Rows** go in at their planned offsets through a memory map (:meth:`~StoreWriter.write`),
   or from a build's tasks that write :attr:`~StoreWriter.partial` themselves
   (``pwrite``, :mod:`memstore.extract`);
   per-file done flags and checksums are mapped, so HDF5 metadata never
   changes while rows are written, and a resumed build reads them back.
4. **Compact** (optional): files that failed are dropped.
5. **Finalise**: index, statistics and report; mark complete, validate,
   fsync, rename over the store, fsync the folder. A file that does not
   validate is never renamed.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import zlib
from pathlib import Path

import h5py
import numpy as np

from . import layout
from ._locks import StoreLock, open_h5
from .errors import BuildError, ParameterError, StoreFormatError
from .stats import RunningStats, starts
from .store import PARTIAL_SUFFIX, read_file_metadata

__all__ = ["StoreContents", "StoreWriter"]

log = logging.getLogger(__name__)

#: rows copied per step when copying existing data
COPY_ROWS = 1 << 16
#: errors of a full file system (or an exhausted quota, or a file-size limit)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: posix_fallocate errors of a file system that cannot reserve space this way
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)
#: bytes of zeros per write when a file system cannot fallocate
_ZERO_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True)
class StoreContents:
    """What a store holds besides its feature rows and statistics, known before any row is written.

    Parameters
    ----------
    index : ndarray [shape=(n_files,)] of ``layout.INDEX_DTYPE``
        One row per file; ``offset`` and ``n_frames`` place its rows, files one
        after another. Checksums and status may still be zero.
    paths : list of str
        Source paths, relative to the audio root.
    labels : ndarray [shape=(n_files, n_classes)], uint8
        Multi-hot labels of ``classes``.
    classes : list of str
    config_json : str
        ``transform.to_json()``.
    n_bins : int
    dtype : {"float32", "float16"}
    label_mode : str
        ``"folder"``, ``"irmas"``, ``"table"``, ...
    segments : ndarray of ``layout.SEGMENT_DTYPE``, optional
        By default one segment of every file.
    generation : int
        0 for a new store, one more per append.
    """

    index: np.ndarray
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    config_json: str
    n_bins: int
    dtype: str = "float32"
    label_mode: str = "custom"
    segments: np.ndarray | None = None
    generation: int = 0

    def __post_init__(self):
        if self.dtype not in layout.FEATURE_DTYPES:
            raise ParameterError(f"dtype={self.dtype!r} must be one of {layout.FEATURE_DTYPES}")
        if self.segments is None:
            one = np.array([(0, len(self.index), 0, self.total)], dtype=layout.SEGMENT_DTYPE)
            object.__setattr__(self, "segments", one)

    @property
    def total(self) -> int:
        """Rows of the feature matrix."""
        return int(self.index["n_frames"].sum())


class StoreWriter:
    """The one way to write a store: lock, allocate, rows, flags, compact, validate, rename.

    Parameters
    ----------
    store_path : str or os.PathLike
        The store to write; it is replaced (atomically) only by :meth:`finalize`.
        The work happens in ``<store_path>.partial``.

    Attributes
    ----------
    partial : Path
        The partial file; a build's tasks (in workers too) write rows into it themselves.
    data_offset : int
        Byte offset of the feature matrix in :attr:`partial`.
    done, checksum : np.memmap [shape=(n_build,)]
        Per-file done flags (0 pending, 1 stored, 2 failed) and crc32 of the
        files being built, written through a map (no ``msync``: the page cache
        outlives a killed process, and :meth:`finalize` fsyncs the file).

    Example
    -------
    >>> import numpy as np, tempfile, os
    >>> from memstore import MelSpectrogram, layout, open_store
    >>> from memstore.stats import RunningStats, starts
    >>> from memstore.writer import StoreContents, StoreWriter
    >>> rows = [np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32)]
    >>> index = np.zeros(2, layout.INDEX_DTYPE)
    >>> index["n_frames"] = [len(r) for r in rows]
    >>> index["offset"] = starts(index["n_frames"])
    >>> index["status"] = layout.STATUS_STORED
    >>> contents = StoreContents(index=index, paths=["a.wav", "b.wav"], labels=np.eye(2, dtype=np.uint8),
    ...                          classes=["a", "b"], n_bins=4,
    ...                          config_json=MelSpectrogram(n_mels=4, sample_rate=8000).to_json())
    >>> path = os.path.join(tempfile.mkdtemp(), "s.h5")
    >>> with StoreWriter(path) as writer:
    ...     _ = writer.start(contents)
    ...     for i, x in enumerate(rows):
    ...         index["checksum"][i] = writer.write(int(index["offset"][i]), x)
    ...     writer.finalize(index, RunningStats.of_rows(np.concatenate(rows)), [{"stored": 2}])
    >>> with open_store(path) as store:
    ...     store.frames(0).tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(self, store_path):
        if not isinstance(store_path, str | bytes | os.PathLike) or not os.fsdecode(store_path).strip():
            raise ParameterError(f"store_path={store_path!r} must name the store file to write")
        self.store_path = Path(os.fsdecode(store_path))
        if self.store_path.name.endswith(PARTIAL_SUFFIX):
            raise ParameterError(f"store_path={str(self.store_path)!r} must not end in {PARTIAL_SUFFIX}")
        self.partial = self.store_path.with_name(self.store_path.name + PARTIAL_SUFFIX)
        _check_target(self.store_path, self.partial)
        self.contents: StoreContents | None = None
        self.data_offset = 0
        self.done = self.checksum = None
        self._out = None
        self._lock = None

    def __enter__(self) -> StoreWriter:
        self._lock = StoreLock(self.store_path).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._unmap()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(*exc)

    def start(self, contents: StoreContents, *, n_build: int = 0, fingerprint: str | None = None,
              resume: bool = False, copy_from: tuple | None = None) -> bool:
        """Allocate the partial file, or take up the one an interrupted run of the same plan left.

        ``n_build`` files get done flags and checksums in the file. With
        ``resume=True``, a partial file of the same ``fingerprint`` is resumed
        (returns True); any other partial file is discarded. ``copy_from=(path,
        data_offset, n_rows)`` copies an old store's rows to the start, byte
        for byte, before the fingerprint is set (an append).
        """
        if self._lock is None:
            raise BuildError("StoreWriter.start needs the writer's lock: use it in a `with` block")
        self._unmap()
        self.contents = contents
        if fingerprint is None or not resume:
            why = "it is not resumed (resume=False)" if fingerprint is not None else "a new build starts"
        else:
            why = _partial_unusable(self.partial, fingerprint, contents, n_build)
        resumed = why is None
        if resumed:
            _reserve(self.partial, fresh=False)  # a partial of an older memstore, or a disk that was full
        else:
            if self.partial.exists():
                log.warning("discarding %s: %s", self.partial, why)
                self.partial.unlink()
            _allocate(self.partial, contents, n_build=n_build)
            if copy_from is not None and copy_from[2]:
                path, data_offset, n_rows = copy_from
                _, _, offset = _build_maps(self.partial, n_build)
                src = np.memmap(path, dtype=contents.dtype, mode="r", offset=data_offset,
                                shape=(n_rows, contents.n_bins))
                dst = np.memmap(self.partial, dtype=contents.dtype, mode="r+", offset=offset,
                                shape=(n_rows, contents.n_bins))
                _copy_rows(src, dst)
                dst.flush()
                del src, dst
            if fingerprint is not None:
                with open_h5(self.partial, "r+") as f:
                    f.attrs[layout.ATTR_FINGERPRINT] = fingerprint
        self.done, self.checksum, self.data_offset = _build_maps(self.partial, n_build)
        return resumed

    def features(self, mode: str = "r") -> np.memmap:
        """The partial file's feature matrix [shape=(total, n_bins)], mapped."""
        c = self._started()
        return np.memmap(self.partial, dtype=c.dtype, mode=mode, offset=self.data_offset,
                         shape=(max(c.total, 1), c.n_bins))

    def write(self, row: int, rows: np.ndarray) -> int:
        """Write ``rows`` [shape=(n, n_bins)] at feature row ``row``; returns their crc32 as stored."""
        c = self._started()
        rows = np.ascontiguousarray(rows, dtype=c.dtype)
        if rows.ndim != 2 or rows.shape[1] != c.n_bins or not 0 <= row <= c.total - len(rows):
            raise ParameterError(f"rows of shape {rows.shape} at row {row} must be (n, {c.n_bins}) "
                                 f"within the {c.total} rows of {self.partial}")
        if self._out is None:
            self._out = self.features("r+")
        self._out[row:row + len(rows)] = rows
        return zlib.crc32(rows.data)

    def compact(self, index: np.ndarray, keep) -> np.ndarray:
        """Drop every file not in ``keep`` (positions in ``index``), by copying the kept rows to a new partial.

        The last segment is the one being written: its counts follow the kept
        files. Returns the kept rows of ``index``.
        """
        c = self._started()
        self._unmap()
        keep = np.asarray(keep, dtype=np.int64)
        kept = index[keep].copy()
        kept["offset"] = starts(kept["n_frames"])
        segments = c.segments.copy()
        segment, first_file = len(segments) - 1, int(segments[-1]["first_file"])
        new_rows = kept["segment"] == segment
        segments[-1] = (first_file, int(new_rows.sum()), int(kept["offset"][new_rows][0]) if new_rows.any() else 0,
                        int(kept["n_frames"][new_rows].sum()))
        small = dataclasses.replace(c, index=kept, paths=[c.paths[k] for k in keep], labels=c.labels[keep],
                                    segments=segments)
        dst = self.partial.with_name(self.partial.name[: -len(PARTIAL_SUFFIX)] + ".compact" + PARTIAL_SUFFIX)
        _allocate(dst, small, n_build=0)
        _, _, d_off = _build_maps(dst, 0)
        src = self.features("r")
        out = np.memmap(dst, dtype=c.dtype, mode="r+", offset=d_off, shape=(max(small.total, 1), c.n_bins))
        for k, row in zip(keep, kept, strict=True):
            o, d, n = int(index["offset"][k]), int(row["offset"]), int(row["n_frames"])
            _copy_rows(src[o:o + n], out[d:d + n])
        out.flush()
        del src, out
        os.replace(dst, self.partial)
        self.contents, self.data_offset = small, d_off
        return index[keep]

    def finalize(self, index: np.ndarray, stats: RunningStats | None, reports: list) -> None:
        """Write ``index`` (offsets laid end to end), ``stats`` and ``reports``; validate, fsync and rename.

        A partial file that does not validate raises :class:`BuildError` and
        leaves the store at ``store_path`` as it was.
        """
        self._started()
        self._unmap()
        _finalize(self.partial, self.store_path, index, stats, reports)
        self.contents = None  # the partial file is the store now: nothing more goes through this writer

    def discard(self) -> None:
        """Delete the partial file (nothing of it is worth keeping)."""
        self._unmap()
        self.partial.unlink(missing_ok=True)
        self.contents = None

    def _started(self) -> StoreContents:
        if self.contents is None:
            raise BuildError(f"{self.partial}: StoreWriter.start was not called")
        return self.contents

    def _unmap(self) -> None:
        if self._out is not None:
            self._out.flush()
        self._out = self.done = self.checksum = None


# --- the partial file ----------------------------------------------------------------------

def _dcpl():
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _allocate(path: Path, c: StoreContents, *, n_build: int) -> None:
    """Create a partial store with every dataset at its final size, its disk space reserved."""
    _check_file_size(path, int(c.total) * int(c.n_bins) * np.dtype(c.dtype).itemsize)
    with open_h5(path, "w", track_order=False) as f:
        f.attrs[layout.ATTR_FORMAT] = layout.FORMAT_NAME
        f.attrs[layout.ATTR_VERSION] = np.int64(layout.FORMAT_VERSION)
        f.attrs[layout.ATTR_COMPLETE] = np.int64(0)
        f.attrs[layout.ATTR_CONFIG] = c.config_json
        f.attrs[layout.ATTR_CLASSES] = layout.dumps(c.classes)
        f.attrs[layout.ATTR_DTYPE] = c.dtype
        f.attrs[layout.ATTR_LABEL_MODE] = c.label_mode
        f.attrs[layout.ATTR_GENERATION] = np.int64(c.generation)
        f.create_dataset(layout.FEATURES, shape=(c.total, c.n_bins), dtype=c.dtype, dcpl=_dcpl(),
                         track_times=False)
        f.create_dataset(layout.INDEX, data=c.index, track_times=False)
        f.create_dataset(layout.PATHS, data=np.array([os.fsencode(p) for p in c.paths], dtype=object),
                         dtype=h5py.string_dtype("ascii"),  # raw bytes: non-UTF-8 names survive
                         track_times=False)
        f.create_dataset(layout.LABELS, data=c.labels, dtype=np.uint8, track_times=False)
        f.create_dataset(layout.SEGMENTS, data=c.segments, track_times=False)
        f.create_dataset(layout.BUILD_DONE, shape=(max(n_build, 1),), dtype=np.uint8, dcpl=_dcpl(),
                         track_times=False)
        f.create_dataset(layout.BUILD_CHECKSUM, shape=(max(n_build, 1),), dtype="<u4", dcpl=_dcpl(),
                         track_times=False)
    try:
        _reserve(path, fresh=True)
    except BaseException:
        path.unlink(missing_ok=True)  # nothing was extracted into it yet: the next run starts it again
        raise
    # FILL_TIME_NEVER leaves whatever the file system gives: zero the flags explicitly
    done, checksum, _ = _build_maps(path, n_build)
    done[:] = 0
    checksum[:] = 0
    done.flush()
    checksum.flush()


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """``(offset, nbytes)`` of every dataset that is written through a memory map."""
    ranges = []
    with open_h5(path, "r") as f:
        for name in (layout.FEATURES, layout.BUILD_DONE, layout.BUILD_CHECKSUM):
            if name in f and f[name].id.get_offset() is not None:
                ranges.append((int(f[name].id.get_offset()), int(f[name].id.get_storage_size())))
    return ranges


#: stores from this size up are first tried as an empty file of their size (FAT refuses 4 GiB, ext4 16 TiB)
_PROBE_BYTES = 1 << 31
#: room beyond the features for HDF5's metadata and the small datasets after them
_PROBE_MARGIN = 1 << 26


def _check_file_size(path: Path, nbytes: int) -> None:
    """Refuse a store larger than one file may be where it is written, before HDF5 tries to make it.

    HDF5 meets the file system's limit (``EFBIG``) inside its allocation, raises a
    bare ``OSError`` and prints errors from every handle it then drops. A sparse
    ``ftruncate`` to the features' size and a margin asks the file system first;
    it writes nothing, and the HDF5 file made next replaces the probe.
    """
    if nbytes < _PROBE_BYTES:
        return
    why = "past any file offset"  # an off_t is 64 bits, signed
    size = nbytes + _PROBE_MARGIN
    if size < 2**63:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            return
        except OSError as err:
            path.unlink()  # whatever failed, the probe is not left where the partial file goes
            if err.errno not in (errno.EFBIG, errno.EINVAL):
                raise
            why = os.strerror(err.errno)
        finally:
            os.close(fd)
    raise BuildError(f"the store's features take {nbytes:,} bytes, more than one file may hold in {path.parent} "
                     f"({why}); fewer frames (a larger hop) or fewer bins make a smaller store")


def _reserve(path: Path, *, fresh: bool) -> None:
    """Give every byte of the partial file real disk blocks before anything is written through a map.

    Allocated HDF5 datasets are holes in a sparse file; a write through
    ``np.memmap`` into a hole on a full disk kills the process with SIGBUS (no
    exception, no message). ``posix_fallocate`` over the whole file reserves the
    blocks now, so a full disk fails here with a :class:`BuildError` naming the
    bytes needed and free. On a file that is already reserved (a resumed build)
    it allocates nothing and changes no byte. File systems without fallocate get
    the mapped datasets written with zeros instead, on a fresh file only (a
    resumed file holds extracted rows, and was reserved when it was created).
    Free space is not checked in advance: ``statvfs`` only explains the
    failure, because root may use reserved blocks and a quota is not visible there.
    """
    ranges = _mapped_ranges(path)
    st = path.stat()
    size = max([st.st_size] + [o + n for o, n in ranges])
    needed = max(size - st.st_blocks * 512, 0)
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as err:
            if err.errno not in _NO_FALLOCATE:
                raise
            if fresh:
                log.info("%s: no fallocate here (%s); writing zeros to reserve %d bytes", path, err, size)
                zeros = bytes(_ZERO_BYTES)
                for o, n in ranges:
                    end = o + n
                    while o < end:
                        o += os.pwrite(fd, zeros[: min(_ZERO_BYTES, end - o)], o)  # short on a full disk
                os.fsync(fd)  # delayed allocation: make the file system find its blocks now
    except OSError as err:
        if err.errno not in _NO_SPACE:
            raise
        vfs = os.statvfs(path.parent)
        raise BuildError(f"not enough disk space for {path}: it needs {needed} more bytes "
                         f"({size} in all) but {path.parent} has {vfs.f_bavail * vfs.f_frsize} bytes free "
                         f"({os.strerror(err.errno)}); free some space and run the same command again") from err
    finally:
        os.close(fd)


def _build_maps(path: Path, n_build: int) -> tuple[np.memmap, np.memmap, int]:
    """The done flags and checksums of ``path``, mapped for writing, and its features' byte offset."""
    with open_h5(path, "r") as f:
        offs = [f[name].id.get_offset() for name in (layout.BUILD_DONE, layout.BUILD_CHECKSUM,
                                                       layout.FEATURES)]
    n = max(n_build, 1)
    done = np.memmap(path, dtype=np.uint8, mode="r+", offset=offs[0], shape=(n,))
    checksum = np.memmap(path, dtype="<u4", mode="r+", offset=offs[1], shape=(n,))
    return done, checksum, offs[2] or 0


def _copy_rows(src: np.ndarray, dst: np.ndarray) -> None:
    for s in range(0, len(src), COPY_ROWS):
        dst[s:s + COPY_ROWS] = src[s:s + COPY_ROWS]


#: where an HDF5 file's signature may start (a user block moves it to 512, 1024, 2048 ...)
_HDF5_SIGNATURE, _SIGNATURE_AT = b"\x89HDF\r\n\x1a\n", (0, 512, 1024, 2048, 4096)


def _check_target(store_path: Path, partial: Path) -> None:
    """Refuse, before any work, a store path a build would fail on at its end or must not replace.

    A folder (at the path or at its partial file's) would fail only at the
    rename, after every file was extracted. A file there that is not HDF5 (an
    audio file, even one of the build's own inputs) is not a store to replace:
    a build replaces only what is, or might once have been, a store.
    """
    if store_path.is_dir():
        raise ParameterError(f"{store_path} is a folder; the store is one file, such as {store_path / 'store.h5'}")
    if partial.is_dir():
        raise ParameterError(f"{partial}, where the build writes, is a folder: remove it")
    if not os.path.lexists(store_path) or (store_path.is_symlink() and not store_path.exists()):
        return
    if not store_path.is_file():
        raise ParameterError(f"{store_path} is not a regular file (a FIFO or device); choose another path")
    with open(store_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        signed = size == 0
        for at in _SIGNATURE_AT:
            if signed or at + len(_HDF5_SIGNATURE) > size:
                break
            f.seek(at)
            signed = f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
    if not signed:
        raise ParameterError(f"{store_path} exists and is not an HDF5 file (an audio file?); a build replaces "
                             "only a store: remove it or choose another path")


def _partial_unusable(partial: Path, fingerprint: str, c: StoreContents, n_build: int) -> str | None:
    """Why ``partial`` cannot be resumed, or None: it is this plan's, with every dataset :func:`_allocate`
    made, in its shape and type.

    A partial of the same plan that lost a dataset (a damaged file, a hand edit) was resumed: every
    file was extracted again, and the build then failed in its last step, at every run.
    """
    if not partial.exists():
        return "there is none"
    want = {layout.FEATURES: ((c.total, c.n_bins), np.dtype(c.dtype)),
            layout.INDEX: ((len(c.index),), np.dtype(layout.INDEX_DTYPE)),
            layout.LABELS: (np.shape(c.labels), np.dtype(np.uint8)),
            layout.SEGMENTS: (np.shape(c.segments), np.dtype(layout.SEGMENT_DTYPE)),
            layout.PATHS: ((len(c.paths),), None),
            layout.BUILD_DONE: ((max(n_build, 1),), np.dtype(np.uint8)),
            layout.BUILD_CHECKSUM: ((max(n_build, 1),), np.dtype("<u4"))}
    try:
        with open_h5(partial, "r") as f:  # locked by another writer: BuildError, never discarded
            if str(f.attrs.get(layout.ATTR_FINGERPRINT, "")) != fingerprint:
                return "it belongs to another build plan"
            for name, (shape, dtype) in want.items():
                d = f.get(name)
                if not isinstance(d, h5py.Dataset) or d.shape != shape or (dtype is not None and d.dtype != dtype):
                    return f"its {name} is missing or damaged; starting over"
            return None
    except BuildError:
        raise
    except (OSError, KeyError, RuntimeError) as err:
        return f"it cannot be read ({err}); starting over"


# --- finishing -----------------------------------------------------------------------------

def _finalize(partial: Path, store_path: Path, index: np.ndarray, stats: RunningStats | None,
              reports: list) -> None:
    """Complete the partial file, validate it, make it durable, and only then rename it over the store.

    A partial file that does not validate is a bug, not bad input: it raises
    :class:`BuildError` and the store at ``store_path`` (an append's old
    generation) is left as it was. The partial file stays for inspection; the
    next build discards it (its plan fingerprint is gone).
    """
    partial, store_path = Path(os.fsdecode(partial)), Path(os.fsdecode(store_path))
    with open_h5(partial, "r+") as f:
        index = index.copy()
        index["offset"] = starts(index["n_frames"])
        f[layout.INDEX][...] = index
        if layout.BUILD in f:
            del f[layout.BUILD]
        if layout.ATTR_FINGERPRINT in f.attrs:
            del f.attrs[layout.ATTR_FINGERPRINT]
        g = f.create_group(layout.STATS, track_order=False)
        if stats is not None:
            g.create_dataset("count", data=np.int64(stats.count), track_times=False)
            g.create_dataset("mean", data=stats.mean, track_times=False)
            g.create_dataset("m2", data=stats.m2, track_times=False)
            g.create_dataset("cov", data=stats.cov, track_times=False)
            g.create_dataset("std", data=stats.std, track_times=False)
        f.create_dataset(layout.REPORT, data=layout.dumps(reports), dtype=h5py.string_dtype("utf-8"),
                         track_times=False)
        f.attrs[layout.ATTR_COMPLETE] = np.int64(1)
    try:
        read_file_metadata(partial)
    except StoreFormatError as err:
        raise BuildError(f"the finished store does not validate, so {store_path} was left as it was "
                         f"(the rejected file is {partial}): {err}") from err
    _fsync(partial, os.O_RDONLY)
    os.replace(partial, store_path)
    # the rename is durable only once the directory entry is: until then a power cut may undo it
    _fsync(store_path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), directory=True)


def _fsync(path: Path, flags: int, *, directory: bool = False) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as err:
        if not (directory and err.errno in (errno.EINVAL, errno.EBADF)):  # some file systems refuse on folders
            raise
    finally:
        os.close(fd)
