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
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import layout
from ._workers import one_native_thread
from .audio import audio_info, resampled_length
from .errors import AudioDecodeError, BuildError, MissingDependencyError, ParameterError
from .extract import extract_files, local_executor
from .features import MelSpectrogram, Spectrogram
from .labels import assign_labels, check_classes, fix_classes, label_index, scan_audio
from .labeltable import LabelTable, as_label_table
from .stats import RunningStats, merge, starts
from .store import read_metadata
from .writer import StoreContents, StoreWriter

__all__ = ["BuildReport", "build_store"]

log = logging.getLogger(__name__)

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


def _build_store(t0, audio_root, store_path, **kwargs) -> BuildReport:
    """Run the build holding the store's writer (and so its lock) from the scan to the rename."""
    with StoreWriter(store_path) as writer:
        return _build_locked(t0, audio_root, writer, **kwargs)


def _build_locked(t0, audio_root, writer, *, transform, labels, workers, sample_rate, dtype, strict,
                  resume, mode, executor, progress, classes) -> BuildReport:
    store_path = writer.store_path
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

    contents = StoreContents(index=index, paths=all_paths, labels=all_labels, classes=classes,
                             config_json=config_json, n_bins=n_bins, dtype=dtype, label_mode=label_mode,
                             segments=segments, generation=0 if old is None else old["generation"] + 1)
    writer.start(contents, n_build=len(files), fingerprint=fingerprint, resume=resume,
                 copy_from=None if old is None else (store_path, old["data_offset"], old_total))
    partial, done, checksum, data_offset = writer.partial, writer.done, writer.checksum, writer.data_offset
    stats = None
    if old is not None and old["stats"].get("count"):
        stats = RunningStats(int(old["stats"]["count"]), old["stats"]["mean"], old["stats"]["m2"])
    failed: dict[int, str] = {}
    pending = [i for i in range(len(files)) if not done[i]]
    report.resumed = len(files) - len(pending)
    if report.resumed:
        report.notes.append(f"resumed: {report.resumed} file(s) were already extracted")
        failed.update((i, "failed in an earlier run of this build") for i in np.flatnonzero(done[: len(files)] == 2))
    fold = _StatsFold(stats, new, writer.features, done, pending)
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
        writer.discard()
        if old is None:
            raise BuildError(f"no file of {root} could be extracted; skipped: {report.skipped[:5]}")
        # an empty segment would not open: the store keeps its bytes and generation
        report.notes.append(f"none of the {len(files)} new file(s) could be extracted; the store is unchanged")
        report.wall_seconds = time.perf_counter() - t0
        return report
    if failed:
        index = writer.compact(index, np.r_[np.arange(old_n), old_n + np.array(ok, dtype=np.int64)])
    report.wall_seconds = time.perf_counter() - t0
    reports = ([] if old is None else list(old["report"])) + [report.to_dict()]
    writer.finalize(index, stats, reports)
    report.wall_seconds = time.perf_counter() - t0
    return report


def _remap(classes: list[str], m: np.ndarray, all_classes: list[str]) -> np.ndarray:
    out = np.zeros((len(m), len(all_classes)), dtype=np.uint8)
    for j, c in enumerate(classes):
        out[:, all_classes.index(c)] = m[:, j]
    return out


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
        self.early: dict[int, RunningStats | None] = {}
        self.next = 0

    def add(self, i: int, file_stats: RunningStats | tuple | None) -> None:
        """File ``i`` of this run finished: its statistics, or None when it was skipped."""
        if isinstance(file_stats, tuple):  # a worker's (count, mean, m2) of the old helpers (until extract.py)
            file_stats = RunningStats(*file_stats)
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
            self.stats = merge(self.stats, file_stats)
            self.next += 1

    def result(self):
        self.feats = None
        if self.next != len(self.new):
            raise BuildError(f"bug: statistics merged for {self.next} of {len(self.new)} files")
        return self.stats


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
