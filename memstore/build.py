"""Building a store from a folder of audio: plan, extract in parallel, finalise.

The build in four steps
-----------------------
1. **Scan and plan** from headers only: every file's exact frame count at the
   target rate (``transform.n_frames``) and so its row offset (a cumulative
   sum). Unreadable files are listed as skipped with their reason; with
   ``strict=True`` any skip stops the build before anything is written.
2. **Allocate** ``<store>.partial``: every dataset is created at its final
   size, contiguous, with its storage allocated up front and its disk space
   reserved (``posix_fallocate``), so a full disk is a :class:`BuildError`
   here and never a SIGBUS in a mapped write. The whole build holds the lock
   ``<store>.lock``: one writer per store.
3. **Extract** (:mod:`memstore.extract`) in worker processes (spawn-safe, or any
   ``concurrent.futures.Executor``). Each worker writes its files' rows at
   the planned offsets through its own ``np.memmap`` (one per task of several
   files; the plan's header facts travel with the task, so no header is read
   twice) and returns their crc32 and per-bin statistics; the parent merges
   the statistics (Chan et al.) in file order as files finish, so the bytes
   never depend on the workers, and sets a per-file done flag, also through a
   memory map and, like the rows, without ``msync``. HDF5 metadata never
   changes while workers run, so a ``kill -9`` at any moment cannot corrupt
   the partial file, and rerunning the same build resumes from the flags.
4. **Finalise**: write the index, statistics and report, mark the file
   complete, validate it, fsync it, rename it into place atomically and
   fsync the folder.

Appends are copy-on-write: a new ``.partial`` file receives the old rows
byte for byte at their old offsets, then the new files as a new segment, and
replaces the store in one rename. A killed append leaves the old store as it
was, and readers that have the old file open keep reading the old generation
(their mapping holds the old inode) until they reopen. The price is one
sequential copy of the store per append.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import fcntl
import functools
import hashlib
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import layout
from ._workers import one_native_thread
from .audio import audio_info, resampled_length
from .errors import AudioDecodeError, BuildError, MissingDependencyError, ParameterError, StoreFormatError
from .extract import extract_files, local_executor
from .features import MelSpectrogram, Spectrogram
from .labels import assign_labels, check_classes, fix_classes, label_index, scan_audio
from .labeltable import LabelTable, as_label_table
from .store import PARTIAL_SUFFIX, read_file_metadata, read_metadata

__all__ = ["BuildReport", "build_store"]

log = logging.getLogger(__name__)

#: audio seconds per extraction task (see memstore.extract.tasks): small files are batched to cut overhead
TASK_AUDIO_SECONDS = 60.0
#: rows copied per step when copying or checksumming existing data
COPY_ROWS = 1 << 16


@dataclasses.dataclass
class BuildReport:
    """What a build did."""

    stored: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    wall_seconds: float = 0.0
    audio_seconds: float = 0.0
    frames: int = 0
    bytes: int = 0
    target_rate: int = 0
    resampled: int = 0
    resumed: int = 0
    segment: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    #: files left out for their extension (not audio memstore reads), counted by extension ("" = none)
    ignored: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skipped"] = [list(s) for s in self.skipped]
        return d


# --- workers -------------------------------------------------------------------------------

def _file_stats(rows: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, co-moment) of the rows, in float64, a bounded chunk at a time."""
    stats = None
    for s in range(0, len(rows), COPY_ROWS):
        x = rows[s:s + COPY_ROWS].astype(np.float64)
        mean = x.mean(axis=0)
        x -= mean
        stats = _merge(stats, (len(x), mean, x.T @ x))
    return stats


def _merge(a, b):
    """Chan et al.'s parallel merge of (count, mean, m2) triples.

    ``m2`` is the co-moment matrix, or (1-D) only its diagonal, the per-bin sums
    of squared deviations.
    """
    if a is None:
        return b
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    delta = mb - ma
    spread = np.outer(delta, delta) if np.ndim(m2a) == 2 else delta**2
    return n, ma + delta * (nb / n), m2a + m2b + spread * (na * nb / n)


@functools.lru_cache(maxsize=8)
def _upper(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n)


def _packed(stats: tuple) -> tuple:
    """A file's statistics for the trip from a worker: the co-moment's upper triangle when it is symmetric.

    numpy computes ``x.T @ x`` as one triangle mirrored (BLAS ``syrk``), so
    half the matrix is exact; the check is on bytes, so even a ``-0.0``
    mirrored as ``0.0`` keeps the whole matrix. With 96 bins the whole one
    is 73 KB per file, pickled, piped and unpickled while the parent and the
    workers share the cores.
    """
    count, mean, m2 = stats
    if m2.ndim == 2 and m2.tobytes() == np.ascontiguousarray(m2.T).tobytes():
        return count, mean, None, m2[_upper(len(m2))]
    return stats


def _unpacked(stats: tuple) -> tuple:
    """The inverse of :func:`_packed`."""
    if len(stats) == 3:
        return stats
    count, mean, _, triangle = stats
    m2 = np.empty((len(mean), len(mean)), dtype=triangle.dtype)
    upper = _upper(len(mean))
    m2[upper] = triangle
    m2.T[upper] = triangle
    return count, mean, m2


# --- planning ------------------------------------------------------------------------------

def _check_args(transform, labels, workers, sample_rate, dtype, mode) -> None:
    if not isinstance(transform, Spectrogram):
        raise ParameterError(f"transform={transform!r} must be a MelSpectrogram or Spectrogram")
    if not (callable(labels) or isinstance(labels, LabelTable) or labels in ("folder", "irmas", "none")):
        raise ParameterError(f"labels={labels!r} must be 'folder', 'irmas', 'none', a callable, a LabelTable "
                             "or the path of a .csv/.tsv/.jsonl table")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ParameterError(f"workers={workers!r} must be None or a positive integer")
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                    or sample_rate <= 0):
        raise ParameterError(f"sample_rate={sample_rate!r} must be None or a positive integer")
    if dtype not in layout.FEATURE_DTYPES:
        raise ParameterError(f"dtype={dtype!r} must be one of {layout.FEATURE_DTYPES}")
    if mode not in ("create", "append"):
        raise ParameterError(f"mode={mode!r} must be 'create' or 'append'")


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def _dcpl():
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _allocate(path: Path, *, total: int, n_bins: int, dtype: str, index: np.ndarray,
              paths: list[str], labels: np.ndarray, classes: list[str], config_json: str,
              label_mode: str, segments: np.ndarray, generation: int, n_build: int) -> None:
    """Create a partial store with every dataset at its final size, its disk space reserved."""
    path = Path(os.fsdecode(path))
    with _open_h5(path, "w", track_order=False) as f:
        f.attrs[layout.ATTR_FORMAT] = layout.FORMAT_NAME
        f.attrs[layout.ATTR_VERSION] = np.int64(layout.FORMAT_VERSION)
        f.attrs[layout.ATTR_COMPLETE] = np.int64(0)
        f.attrs[layout.ATTR_CONFIG] = config_json
        f.attrs[layout.ATTR_CLASSES] = layout.dumps(classes)
        f.attrs[layout.ATTR_DTYPE] = dtype
        f.attrs[layout.ATTR_LABEL_MODE] = label_mode
        f.attrs[layout.ATTR_GENERATION] = np.int64(generation)
        f.create_dataset(layout.FEATURES, shape=(total, n_bins), dtype=dtype, dcpl=_dcpl(),
                         track_times=False)
        f.create_dataset(layout.INDEX, data=index, track_times=False)
        f.create_dataset(layout.PATHS, data=np.array([os.fsencode(p) for p in paths], dtype=object),
                         dtype=h5py.string_dtype("ascii"),  # raw bytes: non-UTF-8 names survive
                         track_times=False)
        f.create_dataset(layout.LABELS, data=labels, dtype=np.uint8, track_times=False)
        f.create_dataset(layout.SEGMENTS, data=segments, track_times=False)
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


#: errors of a full file system (or an exhausted quota, or a file-size limit)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: posix_fallocate errors of a file system that cannot reserve space this way
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)
#: bytes of zeros per write when a file system cannot fallocate
_ZERO_BYTES = 8 << 20


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """``(offset, nbytes)`` of every dataset that is written through a memory map."""
    ranges = []
    with _open_h5(path, "r") as f:
        for name in (layout.FEATURES, layout.BUILD_DONE, layout.BUILD_CHECKSUM):
            if name in f and f[name].id.get_offset() is not None:
                ranges.append((int(f[name].id.get_offset()), int(f[name].id.get_storage_size())))
    return ranges


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


#: how long a lock conflict on a file this build owns may last before it is reported, in seconds
LOCK_RETRY_SECONDS = 2.0


def _open_h5(path: Path, mode: str, **kwargs) -> h5py.File:
    """``h5py.File``, with HDF5's lock conflict told as another build writing the file.

    A conflict is retried for :data:`LOCK_RETRY_SECONDS` first: a process
    forked by another thread of this process (a second build's workers, any
    ``subprocess``) holds a copy of our last HDF5 handle, and so its lock,
    from its fork until it closes its descriptors just before ``exec``.
    """
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        try:
            return h5py.File(path, mode, **kwargs)
        except BlockingIOError as err:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise BuildError(f"another build is writing {path} (HDF5 cannot lock it: {err}); wait for it to "
                             f"finish and run this build again") from err


class _store_lock:
    """Exclusive lock ``<store>.lock`` held for a whole build or append of that store.

    ``flock`` on a lock file of its own, not on the store or its partial file:
    HDF5 takes ``flock`` locks on those itself, and they are replaced by
    rename. The lock dies with its process, so a killed build leaves no stale
    lock; the file is removed on release, and a taker checks that the file it
    locked is still the one at the path (else a releaser removed it first).
    """

    def __init__(self, store_path: Path):
        self.store_path = store_path
        self.path = store_path.with_name(store_path.name + ".lock")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                os.close(fd)
                raise BuildError(f"another build is writing {self.store_path} (it holds {self.path}); wait "
                                 f"for it to finish and run this build again") from err
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)


def _locked(build):
    """Run ``_build_store(t0, audio_root, store_path, ...)`` holding the store's lock."""
    @functools.wraps(build)
    def locked(t0, audio_root, store_path, **kwargs):
        with _store_lock(Path(os.fsdecode(store_path))):
            return build(t0, audio_root, store_path, **kwargs)
    return locked


def _build_maps(path: Path, n_build: int):
    with _open_h5(path, "r") as f:
        offs = [f[name].id.get_offset() for name in (layout.BUILD_DONE, layout.BUILD_CHECKSUM,
                                                       layout.FEATURES)]
        total, n_bins = f[layout.FEATURES].shape
        dtype = f[layout.FEATURES].dtype
    n = max(n_build, 1)
    done = np.memmap(path, dtype=np.uint8, mode="r+", offset=offs[0], shape=(n,))
    checksum = np.memmap(path, dtype="<u4", mode="r+", offset=offs[1], shape=(n,))
    return done, checksum, (offs[2] or 0, total, n_bins, dtype)


def _copy_rows(src: np.ndarray, dst: np.ndarray) -> None:
    for s in range(0, len(src), COPY_ROWS):
        dst[s:s + COPY_ROWS] = src[s:s + COPY_ROWS]


# --- the build -----------------------------------------------------------------------------

def build_store(audio_root, store_path, *, transform: Spectrogram = MelSpectrogram(),  # noqa: B008 - frozen
                labels="folder", workers: int | None = None, sample_rate: int | None = None,
                dtype: str = "float32", strict: bool = False, resume: bool = True,
                mode: str = "create", executor=None, progress: bool | None = None,
                classes=None) -> BuildReport:
    """Build one HDF5 feature store from a folder of audio.

    Parameters
    ----------
    audio_root : str or os.PathLike
        Folder scanned recursively for audio (``.wav``; FLAC/OGG/MP3 with the ``audio`` extra).
    store_path : str or os.PathLike
        The store to write (``mode="create"`` replaces an existing one atomically at the end).
    transform : MelSpectrogram or Spectrogram
        Feature configuration; its ``sample_rate`` is filled in with the target rate.
    labels : {"folder", "irmas", "none"}, callable, LabelTable or path
        See :mod:`memstore.labels`; a path ending in .csv, .tsv or .jsonl is
        read as ``LabelTable(path)`` (:mod:`memstore.labeltable`).
    workers : int, optional
        Worker processes; ``None`` means all cores. ``1`` extracts in this process.
    sample_rate : int, optional
        Target rate; by default the transform's, else the most common rate of the files.
    dtype : {"float32", "float16"}
    strict : bool
        Any skipped file raises :class:`BuildError` before anything is written.
    resume : bool
        Continue an interrupted build of the same plan from its ``.partial`` file.
    mode : {"create", "append"}
        ``append`` adds the new files of ``audio_root`` as a new segment.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Runs the extraction tasks instead of a local process pool.
    progress : bool or None
        A bar on stderr while files are extracted; ``None`` shows it when
        stderr is a terminal (the library's one rule, see ``memstore._progress``).
    classes : list of str, optional
        Fix the class list and its order (by default: the sorted set of labels
        found). The store's ``classes`` and label columns follow it exactly, a
        class no file has included; a file with a label outside it is skipped
        with that reason (so ``strict=True`` stops the build); a file with no
        label is stored without one, as usual. Use it to build a test store
        that lines up with a training store: ``classes=train.classes``. An
        append with ``classes=`` must give the store's list.

    Returns
    -------
    BuildReport

    Example
    -------
    >>> report = build_store("IRMAS/Training", "irmas.h5", workers=2)   # doctest: +SKIP
    >>> report.stored, report.skipped[:1]                               # doctest: +SKIP
    >>> train_classes = open_store("irmas.h5").classes                   # doctest: +SKIP
    >>> build_store("IRMAS/Testing", "test.h5", labels="irmas", classes=train_classes)  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    labels = as_label_table(labels, audio_root) or labels
    _check_args(transform, labels, workers, sample_rate, dtype, mode)
    if classes is not None:
        classes = check_classes(classes)
        if isinstance(labels, str) and labels == "none":
            raise ParameterError("classes= needs labels; labels='none' gives every file none")
    # the main guard is checked and the workers spawned now, so their start-up overlaps the scan
    with local_executor(workers, executor) as runner:
        return _build_store(t0, audio_root, store_path, transform=transform, labels=labels, workers=workers,
                            sample_rate=sample_rate, dtype=dtype, strict=strict, resume=resume, mode=mode,
                            executor=runner, progress=progress, classes=classes)


@_locked
def _build_store(t0, audio_root, store_path, *, transform, labels, workers, sample_rate, dtype, strict,
                 resume, mode, executor, progress, classes) -> BuildReport:
    store_path = Path(os.fsdecode(store_path))
    if store_path.name.endswith(PARTIAL_SUFFIX):
        raise ParameterError(f"store_path={str(store_path)!r} must not end in {PARTIAL_SUFFIX}")
    root = Path(os.fsdecode(audio_root))
    report = BuildReport()
    old = None
    if mode == "append":
        if not store_path.exists():
            raise BuildError(f"cannot append: {store_path} does not exist (use mode='create')")
        old = read_metadata(store_path)
        if old["config"].sample_rate and sample_rate and sample_rate != old["config"].sample_rate:
            raise BuildError(f"sample_rate={sample_rate} differs from the store's {old['config'].sample_rate}")
        sample_rate = sample_rate or old["config"].sample_rate
        if dtype != str(old["dtype"]):
            raise BuildError(f"dtype={dtype!r} differs from the store's {old['dtype']}")
        report.segment = len(old["segments"])
        if classes is not None and classes != old["classes"]:
            raise BuildError(f"classes={classes} differs from the store's {old['classes']}; "
                             "an append with classes= must give the store's list (in its order)")

    scan = scan_audio(root)
    report.skipped.extend(scan.skipped)
    report.ignored = scan.ignored
    if scan.ignored:
        report.notes.append("not audio by extension, not read: "
                            + ", ".join(f"{ext or '(none)'} {n}" for ext, n in scan.ignored.items()))
    files = scan.files
    table = labels if isinstance(labels, LabelTable) else None
    if table is not None:
        tagged, missing = table.match(root, files + [p for p, _ in scan.skipped])
        report.skipped.extend((p, f"no row in {table.name}") for p in files if p not in tagged)
        report.skipped.extend((p, f"listed in {table.name} but not found") for p in missing)
        files = [p for p in files if p in tagged]
        labels = tagged.__getitem__
    if old is not None:
        present = set(old["paths"])
        report.skipped.extend((p, "already in store") for p in files if p in present)
        files = [p for p in files if p not in present]

    infos = {}
    for p in files:
        try:
            infos[p] = audio_info(root / p)
        except (AudioDecodeError, MissingDependencyError) as err:  # what audio_info raises for one file
            report.skipped.append((p, str(err).removeprefix(str(root / p) + ": ")))
    files = [p for p in files if p in infos]
    fixed = classes
    if fixed is not None:
        # labels first, so a file outside the list is a skip like any other: before strict, before the rate
        unreadable: list[tuple[str, str]] = []
        found, multihot = assign_labels(root, files, labels, problems=unreadable)
        multihot, outside = fix_classes(found, multihot, fixed)
        keep = [i for i, out in enumerate(outside) if not out]
        report.skipped.extend((files[i], f"label(s) {', '.join(out)} not in classes=")
                              for i, out in enumerate(outside) if out)
        files, multihot = [files[i] for i in keep], multihot[keep]
        kept = set(files)
        unreadable = [(p, why) for p, why in unreadable if p in kept]

    rate = sample_rate or transform.sample_rate
    if rate is None:
        if not files:
            rate = 0
        else:
            counts = collections.Counter(infos[p].sample_rate for p in files)
            rate = max(sorted(counts), key=lambda r: counts[r])
            if len(counts) > 1:
                report.notes.append(f"mixed sample rates {dict(sorted(counts.items()))}: "
                                    f"resampling to the most common, {rate} Hz")
    report.target_rate = int(rate)
    if files:
        transform = dataclasses.replace(transform, sample_rate=int(rate))
        if isinstance(transform, MelSpectrogram) and transform.fmax is not None and transform.fmax > rate / 2:
            raise ParameterError(f"fmax={transform.fmax} must be <= half the target rate {rate}")
    if old is not None and files and transform != old["config"]:
        raise BuildError("the feature configuration differs from the store's; append needs the same one:\n"
                         f"  store: {old['config'].to_json()}\n  build: {transform.to_json()}")
    n_frames = np.array([transform.n_frames(resampled_length(infos[p].n_samples, infos[p].sample_rate, rate))
                         for p in files], dtype=np.int64)
    report.skipped.sort()
    if strict and report.skipped:
        listed = "\n".join(f"  {p}: {why}" for p, why in report.skipped[:20])
        raise BuildError(f"strict build: {len(report.skipped)} file(s) would be skipped; nothing was written:\n"
                         f"{listed}")
    if not files:
        if old is not None:
            report.notes.append("no new files to append; the store is unchanged")
            report.wall_seconds = time.perf_counter() - t0
            return report
        raise BuildError(f"no readable audio files under {root}; skipped: {report.skipped[:5]}")

    label_mode = "table" if table is not None else labels if isinstance(labels, str) else "custom"
    if fixed is None:
        unreadable = []
        classes, multihot = assign_labels(root, files, labels, problems=unreadable)
    for p, why in unreadable:
        report.notes.append(f"{p}: label file unreadable ({why}); stored without a label")
    if strict and unreadable:
        raise BuildError(f"strict build: {len(unreadable)} label file(s) could not be read; nothing was written:\n"
                         + "\n".join(f"  {p}: {why}" for p, why in unreadable[:20]))
    n_bins = transform.n_bins
    config_json = transform.to_json()
    old_n = 0 if old is None else len(old["index"])
    old_total = 0 if old is None else old["total"]
    if old is not None:
        # the store's order stays when nothing new comes (a fixed list is kept); new classes sort in as before
        all_classes = (old["classes"] if set(classes) <= set(old["classes"])
                       else sorted(set(old["classes"]) | set(classes)))
        remap = lambda cls, m: _remap(cls, m, all_classes)  # noqa: E731
        old_labels = remap(old["classes"], old["labels"])
        multihot = remap(classes, multihot)
        classes = all_classes
        label_mode = old["label_mode"] if old["label_mode"] == label_mode else "mixed"

    index = np.zeros(old_n + len(files), dtype=layout.INDEX_DTYPE)
    if old is not None:
        index[:old_n] = old["index"]
    new = index[old_n:]
    new["n_frames"] = n_frames
    new["offset"] = old_total + np.concatenate([[0], np.cumsum(n_frames)[:-1]])
    new["segment"] = report.segment
    new["sample_rate"] = rate
    new["source_rate"] = [infos[p].sample_rate for p in files]
    new["n_samples"] = [infos[p].n_samples for p in files]
    new["channels"] = [infos[p].channels for p in files]
    all_labels = multihot if old is None else np.concatenate([old_labels, multihot])
    index["label"] = label_index(all_labels)
    all_paths = ([] if old is None else old["paths"]) + files
    total = old_total + int(n_frames.sum())
    seg_row = np.array([(old_n, len(files), old_total, int(n_frames.sum()))], dtype=layout.SEGMENT_DTYPE)
    segments = seg_row if old is None else np.concatenate([old["segments"], seg_row])
    fingerprint = _fingerprint(
        layout.FORMAT_VERSION, config_json, dtype, classes, label_mode,
        [(p, infos[p], os.stat(root / p).st_mtime_ns) for p in files],
        None if old is None else (old["generation"], old["file_size"], old_total),
        # a table's rows can change without the class list changing; the partial file holds the labels
        *([hashlib.sha256(all_labels.tobytes()).hexdigest()] if table is not None else []),
        *([("classes=", fixed)] if fixed is not None else []),
    )

    partial = store_path.with_name(store_path.name + PARTIAL_SUFFIX)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    if resume and _partial_matches(partial, fingerprint):
        _reserve(partial, fresh=False)  # a partial of an older memstore, or a disk that was full
    else:
        if partial.exists():
            log.warning("discarding %s: it belongs to another build plan", partial)
            partial.unlink()
        _allocate(partial, total=total, n_bins=n_bins, dtype=dtype, index=index, paths=all_paths,
                  labels=all_labels, classes=classes, config_json=config_json, label_mode=label_mode,
                  segments=segments, generation=0 if old is None else old["generation"] + 1,
                  n_build=len(files))
        if old is not None and old_total:
            _, _, (data_offset, _, _, _) = _build_maps(partial, len(files))
            src = np.memmap(store_path, dtype=dtype, mode="r", offset=old["data_offset"],
                            shape=(old_total, n_bins))
            dst = np.memmap(partial, dtype=dtype, mode="r+", offset=data_offset, shape=(old_total, n_bins))
            _copy_rows(src, dst)
            dst.flush()
            del src, dst
        with _open_h5(partial, "r+") as f:
            f.attrs[layout.ATTR_FINGERPRINT] = fingerprint

    done, checksum, (data_offset, _, _, _) = _build_maps(partial, len(files))
    stats = None
    if old is not None and old["stats"].get("count"):
        stats = (int(old["stats"]["count"]), old["stats"]["mean"], old["stats"]["m2"])
    failed: dict[int, str] = {}
    pending = [i for i in range(len(files)) if not done[i]]
    report.resumed = len(files) - len(pending)
    if report.resumed:
        report.notes.append(f"resumed: {report.resumed} file(s) were already extracted")
        failed.update((i, "failed in an earlier run of this build") for i in np.flatnonzero(done[: len(files)] == 2))
    fold = _StatsFold(stats, new, functools.partial(np.memmap, partial, dtype=dtype, mode="r", offset=data_offset,
                                                    shape=(total, n_bins)), done, pending)
    with one_native_thread():  # this process's matrix products (workers=1, resumed files) on one BLAS thread
        fold.advance()
        extract_files(files, pending, root, partial, data_offset, n_bins, dtype, config_json, rate, new,
                      done, checksum, fold, failed, workers, executor, progress, task_seconds=TASK_AUDIO_SECONDS)
    stats = fold.result()
    del fold
    ok = [i for i in range(len(files)) if i not in failed]
    report.skipped.extend((files[i], failed[i]) for i in sorted(failed))
    report.skipped.sort()
    report.stored = len(ok)
    report.resampled = sum(1 for i in ok if infos[files[i]].sample_rate != rate)
    report.frames = int(new["n_frames"][ok].sum()) if ok else 0
    report.bytes = report.frames * n_bins * np.dtype(dtype).itemsize
    report.audio_seconds = float(sum(infos[files[i]].n_samples / infos[files[i]].sample_rate for i in ok))
    new["checksum"] = checksum[: len(files)]
    new["status"] = layout.STATUS_STORED
    del done, checksum
    if strict and failed:
        raise BuildError(f"strict build: {len(failed)} file(s) failed during extraction: "
                         f"{[files[i] for i in sorted(failed)][:10]}; the store was not written")
    if not ok:
        partial.unlink()
        if old is None:
            raise BuildError(f"no file of {root} could be extracted; skipped: {report.skipped[:5]}")
        # an empty segment would not open: the store keeps its bytes and generation
        report.notes.append(f"none of the {len(files)} new file(s) could be extracted; the store is unchanged")
        report.wall_seconds = time.perf_counter() - t0
        return report
    if failed:
        keep = np.r_[np.arange(old_n), old_n + np.array(ok, dtype=np.int64)]
        partial = _compact(partial, store_path, index, keep, all_paths, all_labels, classes, config_json,
                           label_mode, segments, report.segment, old_n, dtype, n_bins,
                           0 if old is None else old["generation"] + 1)
        index = index[keep]
        all_paths = [all_paths[k] for k in keep]
        all_labels = all_labels[keep]
    report.wall_seconds = time.perf_counter() - t0
    reports = ([] if old is None else list(old["report"])) + [report.to_dict()]
    _finalize(partial, store_path, index, stats, reports)
    report.wall_seconds = time.perf_counter() - t0
    return report


def _remap(classes: list[str], m: np.ndarray, all_classes: list[str]) -> np.ndarray:
    out = np.zeros((len(m), len(all_classes)), dtype=np.uint8)
    for j, c in enumerate(classes):
        out[:, all_classes.index(c)] = m[:, j]
    return out


def _partial_matches(partial: Path, fingerprint: str) -> bool:
    if not partial.exists():
        return False
    try:
        with _open_h5(partial, "r") as f:  # locked by another writer: BuildError, never discarded
            return (str(f.attrs.get(layout.ATTR_FINGERPRINT, "")) == fingerprint
                    and layout.BUILD_DONE in f)
    except BuildError:
        raise
    except (OSError, KeyError, RuntimeError) as err:
        log.warning("cannot reuse %s (%s); starting over", partial, err)
        return False


class _StatsFold:
    """The build's statistics: per-file statistics merged in file order while files finish.

    Chan's merge is not associative in floating point, so the order is fixed:
    file by file in index order, after an append's old statistics, exactly as
    one process extracting the files in order would merge them (the store's
    statistics are the same bytes with any number of workers, or Dask). A
    file that finishes before an earlier one waits in ``early``; a file done
    in an earlier run of a resumed build has its statistics read back from
    the partial file when its turn comes. So the parent holds statistics only
    for files that finished out of order, not for the whole build, and does
    its merging while the workers run instead of after them.
    """

    def __init__(self, stats, new: np.ndarray, open_features, done: np.ndarray, pending: list[int]):
        self.stats = stats
        self.new = new
        self.open_features = open_features  # the partial file's features, mapped when a resumed file needs them
        self.feats = None
        self.done = done
        self.pending = set(pending)
        self.early: dict[int, tuple | None] = {}
        self.next = 0

    def add(self, i: int, file_stats: tuple | None) -> None:
        """File ``i`` of this run finished: its statistics, or None when it was skipped."""
        self.early[i] = file_stats
        self.advance()

    def advance(self) -> None:
        while self.next < len(self.new):
            i = self.next
            if i in self.early:
                file_stats = self.early.pop(i)
            elif i in self.pending:
                return  # not finished yet
            else:  # done in an earlier run of this build: 1 stored, 2 skipped
                o, n = int(self.new["offset"][i]), int(self.new["n_frames"][i])
                file_stats = None
                if self.done[i] == 1:
                    if self.feats is None:
                        self.feats = self.open_features()
                    file_stats = _file_stats(np.asarray(self.feats[o:o + n]))
            if file_stats is not None:
                self.stats = _merge(self.stats, file_stats)
            self.next += 1

    def result(self):
        self.feats = None
        if self.next != len(self.new):
            raise BuildError(f"bug: statistics merged for {self.next} of {len(self.new)} files")
        return self.stats


def _compact(partial: Path, store_path: Path, index, keep, paths, labels, classes, config_json,
             label_mode, segments, segment, old_n, dtype, n_bins, generation) -> Path:
    """Copy the kept files' rows into a new partial file (files that failed are dropped)."""
    src_index = index
    kept = index[keep].copy()
    kept["offset"] = np.concatenate([[0], np.cumsum(kept["n_frames"])[:-1]])
    segments = segments.copy()
    new_rows = kept["segment"] == segment
    segments[-1] = (old_n, int(new_rows.sum()), int(kept["offset"][new_rows][0]) if new_rows.any() else 0,
                    int(kept["n_frames"][new_rows].sum()))
    dst = partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)] + ".compact" + PARTIAL_SUFFIX)
    total = int(kept["n_frames"].sum())
    _allocate(dst, total=total, n_bins=n_bins, dtype=dtype, index=kept,
              paths=[paths[k] for k in keep], labels=labels[keep], classes=classes,
              config_json=config_json, label_mode=label_mode, segments=segments,
              generation=generation, n_build=0)
    _, _, (s_off, s_total, _, _) = _build_maps(partial, 1)
    _, _, (d_off, _, _, _) = _build_maps(dst, 0)
    src = np.memmap(partial, dtype=dtype, mode="r", offset=s_off, shape=(s_total, n_bins))
    out = np.memmap(dst, dtype=dtype, mode="r+", offset=d_off, shape=(max(total, 1), n_bins))
    for k, row in zip(keep, kept, strict=True):
        o, d, n = int(src_index["offset"][k]), int(row["offset"]), int(row["n_frames"])
        _copy_rows(src[o:o + n], out[d:d + n])
    out.flush()
    del src, out
    os.replace(dst, partial)
    return partial


def _finalize(partial: Path, store_path: Path, index: np.ndarray, stats, reports: list) -> None:
    """Complete the partial file, validate it, make it durable, and only then rename it over the store.

    A partial file that does not validate is a bug, not bad input: it raises
    :class:`BuildError` and the store at ``store_path`` (an append's old
    generation) is left as it was. The partial file stays for inspection; the
    next build discards it (its plan fingerprint is gone).
    """
    partial, store_path = Path(os.fsdecode(partial)), Path(os.fsdecode(store_path))
    with _open_h5(partial, "r+") as f:
        offsets = np.concatenate([[0], np.cumsum(index["n_frames"])[:-1]]).astype(np.int64)
        index = index.copy()
        index["offset"] = offsets
        f[layout.INDEX][...] = index
        if layout.BUILD in f:
            del f[layout.BUILD]
        if layout.ATTR_FINGERPRINT in f.attrs:
            del f.attrs[layout.ATTR_FINGERPRINT]
        g = f.create_group(layout.STATS, track_order=False)
        if stats is not None:
            count, mean, m2 = stats
            cov = m2 / max(count - 1, 1)
            g.create_dataset("count", data=np.int64(count), track_times=False)
            g.create_dataset("mean", data=mean, track_times=False)
            g.create_dataset("m2", data=m2, track_times=False)
            g.create_dataset("cov", data=cov, track_times=False)
            g.create_dataset("std", data=np.sqrt(np.maximum(np.diag(m2) / max(count, 1), 0.0)),
                             track_times=False)
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


def write_store_from_arrays(store_path, features: list[np.ndarray], paths: list[str], classes: list[str],
                            multihot: np.ndarray, transform: Spectrogram, *, label_mode: str = "custom",
                            dtype: str = "float32", notes: list[str] | None = None) -> BuildReport:
    """Write a complete store from in-memory feature matrices (used by legacy import).

    Same layout, checksums, statistics and atomic rename as :func:`build_store`.
    """
    t0 = time.perf_counter()
    store_path = Path(os.fsdecode(store_path))
    if dtype not in layout.FEATURE_DTYPES:
        raise ParameterError(f"dtype={dtype!r} must be one of {layout.FEATURE_DTYPES}")
    if not features:
        raise BuildError("no feature matrices to write")
    n_bins = transform.n_bins
    for p, x in zip(paths, features, strict=True):
        if x.ndim != 2 or x.shape[1] != n_bins or x.shape[0] < 1:
            raise ParameterError(f"{p}: features of shape {x.shape} must be (n_frames >= 1, {n_bins})")
    n_frames = np.array([len(x) for x in features], np.int64)
    index = np.zeros(len(features), dtype=layout.INDEX_DTYPE)
    index["n_frames"] = n_frames
    index["offset"] = np.r_[0, np.cumsum(n_frames)[:-1]]
    index["label"] = label_index(multihot)
    index["sample_rate"] = transform.sample_rate or 0
    index["source_rate"] = transform.sample_rate or 0
    index["status"] = layout.STATUS_STORED
    total = int(n_frames.sum())
    segments = np.array([(0, len(features), 0, total)], dtype=layout.SEGMENT_DTYPE)
    partial = store_path.with_name(store_path.name + PARTIAL_SUFFIX)
    with _store_lock(store_path):
        _allocate(partial, total=total, n_bins=n_bins, dtype=dtype, index=index, paths=paths, labels=multihot,
                  classes=classes, config_json=transform.to_json(), label_mode=label_mode, segments=segments,
                  generation=0, n_build=0)
        _, _, (offset, _, _, _) = _build_maps(partial, 0)
        out = np.memmap(partial, dtype=dtype, mode="r+", offset=offset, shape=(total, n_bins))
        stats = None
        for i, x in enumerate(features):
            rows = np.ascontiguousarray(x, dtype=dtype)
            out[index["offset"][i]: index["offset"][i] + len(rows)] = rows
            index["checksum"][i] = zlib.crc32(rows.data)
            stats = _merge(stats, _file_stats(rows))
        out.flush()
        del out
        report = BuildReport(stored=len(features), frames=total, bytes=total * n_bins * np.dtype(dtype).itemsize,
                             target_rate=int(transform.sample_rate or 0), notes=list(notes or []))
        report.wall_seconds = time.perf_counter() - t0
        _finalize(partial, store_path, index, stats, [report.to_dict()])
    return report
