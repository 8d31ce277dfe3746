"""Building a store from a folder of audio: scan → plan → writer → extract → finalise.

This module is the orchestration; each step has its own room.

1. **Scan and plan** (:mod:`memstore.plan`) from headers only: every file's
   exact frame count at the target rate (``transform.n_frames``) and so its
   row offset. Unreadable files are listed as skipped with their reason; with
   ``strict=True`` any skip stops the build before anything is written.
2. **Allocate** ``<store>.partial`` (:class:`memstore.writer.StoreWriter`):
   every dataset at its final size, contiguous, its disk space reserved, so a
   full disk is a :class:`BuildError` here and never a SIGBUS in a mapped
   write. The whole build holds the lock ``<store>.lock``: one writer per store.
3. **Extract** (:mod:`memstore.extract`) in this process and worker processes (spawn-safe, or any
   ``concurrent.futures.Executor``). Each worker writes its files' rows at
   the planned offsets with ``pwrite`` (tasks of several files; the plan's
   header facts travel with the task, so no header is read twice), starts
   their write-back, and returns their crc32 and per-bin statistics; the parent merges
   the statistics (Chan et al.) in file order as files finish, so the bytes
   never depend on the workers, and sets a per-file done flag, also through a
   memory map and, like the rows, without ``msync``. HDF5 metadata never
   changes while workers run, so a ``kill -9`` at any moment cannot corrupt
   the partial file, and rerunning the same build resumes from the flags.
4. **Finalise** (the writer): drop the files that failed, write the index,
   statistics and report, mark the file complete, validate it, fsync it,
   rename it into place atomically and fsync the folder.

Appends are copy-on-write: a new ``.partial`` file receives the old rows
byte for byte at their old offsets, then the new files as a new segment, and
replaces the store in one rename. A killed append leaves the old store as it
was, and readers that have the old file open keep reading the old generation
(their mapping holds the old inode) until they reopen. The price is one
sequential copy of the store per append.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from . import layout, spectral
from ._workers import kept_heap, one_native_thread
from .errors import BuildError, ParameterError
from .extract import extract_files, local_executor
from .features import MelSpectrogram, Spectrogram
from .labels import check_classes, label_index
from .labeltable import LabelTable, as_label_table
from .plan import BuildPlan, make_plan, read_base
from .stats import Fold, RunningStats, merge, starts
from .writer import StoreContents, StoreWriter

__all__ = ["BuildReport", "build_store"]

#: audio seconds per extraction task (see memstore.extract.tasks): small files are batched to cut overhead
TASK_AUDIO_SECONDS = 60.0


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


# --- planning ------------------------------------------------------------------------------

#: the highest target rate a build takes (a transform's too: :data:`memstore.spectral.MAX_SAMPLE_RATE`):
#: 10**9 on a few seconds of audio allocated a 9 GB store
MAX_SAMPLE_RATE = spectral.MAX_SAMPLE_RATE

#: the most local worker processes a build starts per core (1000 on 2 cores would hold about 200 GB)
WORKERS_PER_CORE = 4


def _check_args(transform, labels, workers, sample_rate, dtype, mode) -> None:
    if not isinstance(transform, Spectrogram):
        raise ParameterError(f"transform={transform!r} must be a MelSpectrogram or Spectrogram")
    if not (callable(labels) or isinstance(labels, LabelTable) or labels in ("folder", "irmas", "none")):
        raise ParameterError(f"labels={labels!r} must be 'folder', 'irmas', 'none', a callable, a LabelTable "
                             "or the path of a .csv/.tsv/.jsonl table")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ParameterError(f"workers={workers!r} must be None or a positive integer")
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                    or not 0 < sample_rate <= MAX_SAMPLE_RATE):
        raise ParameterError(f"sample_rate={sample_rate!r} must be None or a positive integer up to "
                             f"{MAX_SAMPLE_RATE:,} Hz")
    if dtype not in layout.FEATURE_DTYPES:
        raise ParameterError(f"dtype={dtype!r} must be one of {layout.FEATURE_DTYPES}")
    if mode not in ("create", "append"):
        raise ParameterError(f"mode={mode!r} must be 'create' or 'append'")


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
        The store to write (``mode="create"`` replaces an existing one atomically at the end). A
        folder, a FIFO, or an existing file that is not HDF5 (an audio file, say) is refused
        before any work, with a ``ParameterError``.
    transform : MelSpectrogram or Spectrogram
        Feature configuration; its ``sample_rate`` is filled in with the target rate.
    labels : {"folder", "irmas", "none"}, callable, LabelTable or path
        See :mod:`memstore.labels`; a path ending in .csv, .tsv or .jsonl is
        read as ``LabelTable(path)`` (:mod:`memstore.labeltable`).
    workers : int, optional
        Processes that extract; ``None`` means all cores. ``1`` extracts in this process;
        ``N > 1`` spawns ``N - 1`` worker processes and this process extracts beside them
        (at most :data:`WORKERS_PER_CORE` per core without an ``executor``).
    sample_rate : int, optional
        Target rate, at most :data:`MAX_SAMPLE_RATE` (2 MHz); by default the transform's, else the
        most common rate of the files.
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
    if isinstance(audio_root, str | bytes) and not audio_root:  # Path("") is ".": the working folder was built
        raise ParameterError("audio_root='' names no folder; give the folder of audio files")
    labels = as_label_table(labels, audio_root) or labels
    _check_args(transform, labels, workers, sample_rate, dtype, mode)
    cores = os.cpu_count() or 1
    if executor is None and workers is not None and workers > WORKERS_PER_CORE * cores:
        raise ParameterError(f"workers={workers} is more than {WORKERS_PER_CORE} per core on this machine's {cores}: "
                             "each worker is a process of its own (about 200 MB), and the extraction is CPU-bound")
    if classes is not None:
        classes = check_classes(classes)
        if isinstance(labels, str) and labels == "none":
            raise ParameterError("classes= needs labels; labels='none' gives every file none")
    writer = StoreWriter(store_path)  # a store path the build cannot use is refused before any worker starts
    # the workers are spawned now (the main guard checked where they import the main script), so their
    # start-up overlaps the scan
    with local_executor(workers, executor) as runner:
        return _build_store(t0, audio_root, writer, transform=transform, labels=labels, workers=workers,
                            sample_rate=sample_rate, dtype=dtype, strict=strict, resume=resume, mode=mode,
                            executor=runner, progress=progress, classes=classes)


def _build_store(t0, audio_root, writer: StoreWriter, *, transform, labels, workers, sample_rate, dtype, strict,
                 resume, mode, executor, progress, classes) -> BuildReport:
    """Scan, plan, allocate, extract and finalise, holding the store's writer (and its lock) throughout."""
    with writer:
        base = (read_base(writer.store_path, sample_rate=sample_rate, dtype=dtype, classes=classes)
                if mode == "append" else None)
        plan = make_plan(audio_root, transform=transform, labels=labels, sample_rate=sample_rate, dtype=dtype,
                         classes=classes, strict=strict, base=base)
        report = BuildReport(skipped=list(plan.skipped), notes=list(plan.notes), ignored=plan.ignored,
                             target_rate=plan.rate, segment=plan.segment)
        if not plan.files:
            report.notes.append("no new files to append; the store is unchanged")
            report.wall_seconds = time.perf_counter() - t0
            return report
        writer.start(plan.contents(), n_build=len(plan.files), fingerprint=plan.fingerprint, resume=resume,
                     copy_from=plan.copy_from())
        stats, failed = _extract_all(plan, writer, report, workers=workers, executor=executor, progress=progress)
        return _finish(t0, plan, writer, report, stats, failed, strict=strict)


def _extract_all(plan: BuildPlan, writer: StoreWriter, report: BuildReport, *, workers, executor, progress):
    """Extract the files not done yet; returns the statistics merged in file order and the failed files."""
    n = len(plan.files)
    done = writer.done
    failed: dict[int, str] = {}
    pending = [i for i in range(n) if not done[i]]
    report.resumed = n - len(pending)
    if report.resumed:
        report.notes.append(f"resumed: {report.resumed} file(s) were already extracted")
        failed.update((i, "failed in an earlier run of this build") for i in np.flatnonzero(done[:n] == 2))
    fold = _StatsFold(plan.base_stats, plan.new, writer.features, done, pending)
    # this process's matrix products on one BLAS thread, and its freed heap kept from file to file
    with one_native_thread(), kept_heap():
        fold.advance()
        extract_files(plan.files, pending, plan.root, writer.partial, writer.data_offset, plan.transform.n_bins,
                      plan.dtype, plan.transform.to_json(), plan.rate, plan.new, done, writer.checksum, fold, failed,
                      workers, executor, progress, task_seconds=TASK_AUDIO_SECONDS)
    return fold.result(), failed


def _finish(t0, plan: BuildPlan, writer: StoreWriter, report: BuildReport, stats, failed: dict[int, str], *,
            strict: bool) -> BuildReport:
    """Report the extraction; drop the files that failed; finalise (or leave an append's store as it was)."""
    files, headers, n = plan.files, plan.headers, len(plan.files)
    ok = [i for i in range(n) if i not in failed]
    report.skipped.extend((files[i], failed[i]) for i in sorted(failed))
    report.skipped.sort()
    report.stored = len(ok)
    report.resampled = sum(1 for i in ok if headers[i].sample_rate != plan.rate)
    report.frames = int(plan.new["n_frames"][ok].sum()) if ok else 0
    report.bytes = report.frames * plan.transform.n_bins * np.dtype(plan.dtype).itemsize
    report.audio_seconds = float(sum(headers[i].n_samples / headers[i].sample_rate for i in ok))
    index = plan.index.copy()
    index["checksum"][plan.n_old:] = writer.checksum[:n]
    index["status"][plan.n_old:] = layout.STATUS_STORED
    if strict and failed:
        raise BuildError(f"strict build: {len(failed)} file(s) failed during extraction: "
                         f"{[files[i] for i in sorted(failed)][:10]}; the store was not written")
    if not ok:
        writer.discard()
        if plan.base is None:
            raise BuildError(f"no file of {plan.root} could be extracted; skipped: {report.skipped[:5]}")
        # an empty segment would not open: the store keeps its bytes and generation
        report.notes.append(f"none of the {n} new file(s) could be extracted; the store is unchanged")
        report.wall_seconds = time.perf_counter() - t0
        return report
    if failed:
        index = writer.compact(index, np.r_[np.arange(plan.n_old), plan.n_old + np.array(ok, dtype=np.int64)])
    report.wall_seconds = time.perf_counter() - t0
    reports = ([] if plan.base is None else list(plan.base.report)) + [report.to_dict()]
    writer.finalize(index, stats, reports)
    report.wall_seconds = time.perf_counter() - t0
    return report


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
        self.stats = Fold(stats)
        self.new = new
        self.open_features = open_features  # the partial file's features, mapped when a resumed file needs them
        self.feats = None
        self.done = done
        self.pending = set(pending)
        self.early: dict[int, RunningStats | tuple | None] = {}  # a worker's statistics stay packed until merged
        self.next = 0

    def add(self, i: int, file_stats: RunningStats | tuple | None) -> None:
        """File ``i`` of this run finished: its statistics (or :meth:`RunningStats.packed
        <memstore.stats.RunningStats.packed>`), or None when it was skipped."""
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
                    file_stats = RunningStats.of_rows(np.asarray(self.feats[o:o + n]))
            self.stats.add(file_stats)
            self.next += 1

    def result(self):
        self.feats = None
        if self.next != len(self.new):
            raise BuildError(f"bug: statistics merged for {self.next} of {len(self.new)} files")
        return self.stats.result()


def write_store_from_arrays(store_path, features: list[np.ndarray], paths: list[str], classes: list[str],
                            multihot: np.ndarray, transform: Spectrogram, *, label_mode: str = "custom",
                            dtype: str = "float32", notes: list[str] | None = None) -> BuildReport:
    """Write a complete store from in-memory feature matrices (used by legacy import).

    Same layout, checksums, statistics and atomic rename as :func:`build_store`:
    both write through :class:`memstore.writer.StoreWriter`.
    """
    t0 = time.perf_counter()
    if dtype not in layout.FEATURE_DTYPES:
        raise ParameterError(f"dtype={dtype!r} must be one of {layout.FEATURE_DTYPES}")
    if not features:
        raise BuildError("no feature matrices to write")
    n_bins = transform.n_bins
    for p, x in zip(paths, features, strict=True):
        if x.ndim != 2 or x.shape[1] != n_bins or x.shape[0] < 1:
            raise ParameterError(f"{p}: features of shape {x.shape} must be (n_frames >= 1, {n_bins})")
    index = np.zeros(len(features), dtype=layout.INDEX_DTYPE)
    index["n_frames"] = [len(x) for x in features]
    index["offset"] = starts(index["n_frames"])
    index["label"] = label_index(multihot)
    index["sample_rate"] = transform.sample_rate or 0
    index["source_rate"] = transform.sample_rate or 0
    index["status"] = layout.STATUS_STORED
    contents = StoreContents(index=index, paths=paths, labels=multihot, classes=classes,
                             config_json=transform.to_json(), n_bins=n_bins, dtype=dtype, label_mode=label_mode)
    with StoreWriter(store_path) as writer:
        writer.start(contents)
        stats = None
        for i, x in enumerate(features):
            index["checksum"][i] = writer.write(int(index["offset"][i]), x)
            stats = merge(stats, RunningStats.of_rows(np.asarray(x, dtype=dtype)))
        report = BuildReport(stored=len(features), frames=contents.total,
                             bytes=contents.total * n_bins * np.dtype(dtype).itemsize,
                             target_rate=int(transform.sample_rate or 0), notes=list(notes or []))
        report.wall_seconds = time.perf_counter() - t0
        writer.finalize(index, stats, [report.to_dict()])
    return report
