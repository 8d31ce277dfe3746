"""Verifying a store: recompute every file's checksum and check the index.

The feature bytes are read once, front to back, in large sequential reads
into one reused buffer (``chunk_bytes``), so memory stays bounded whatever
the store's size and the disk reads at full speed; nothing is memory-mapped,
so a verify of a store bigger than RAM does not grow the resident set.

What is checked
---------------
- every file's ``zlib.crc32`` of its feature rows against the index
  (a mismatch names the file by its source path);
- non-finite feature values (NaN or infinity);
- the index: offsets tile the features dataset, labels in range and equal to
  the multi-hot matrix, segments tile the files and frames, frame counts
  agree with the stored sample counts and the feature configuration, no
  duplicate paths, class names unique (sorted, unless the build fixed their order with ``classes=``);
- the statistics: finite, counted over every frame, and equal (to rounding)
  to the mean and standard deviation recomputed during the pass.

:func:`memstore.store.open_store` already refuses a store that breaks a rule
of :class:`memstore.store.StoreMeta` (a malformed header, dataset or index
offsets, labels out of range, or an empty segment: an append that stored
nothing, written by memstore before it stopped writing those); such a store is
reported as one problem, ``("<store>", reason)``.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import _progress
from ._validate import positive_int
from .stats import RunningStats, damaged, merge, starts
from .store import open_store

__all__ = ["VerifyReport", "verify_store"]

#: bytes per sequential read
CHUNK_BYTES = 64 * 2**20


@dataclass
class VerifyReport:
    """Result of :func:`verify_store`.

    Attributes
    ----------
    path : str
    files : int
        Files in the index.
    frames : int
        Feature rows read.
    problems : list of (str, str)
        ``(where, description)``: ``where`` is a file's source path, a dataset
        name (``"index"``, ``"stats"`` ...) or ``"<store>"``; empty if clean.
    """

    path: str
    files: int = 0
    frames: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def corrupt_files(self) -> list[str]:
        """Source paths whose feature rows fail their checksum."""
        return [where for where, what in self.problems if what.startswith("checksum mismatch")]


def verify_store(path, *, progress: bool | None = None, chunk_bytes: int = CHUNK_BYTES) -> VerifyReport:
    """Recompute checksums and check a store's consistency.

    Parameters
    ----------
    path : str or os.PathLike
    progress : bool or None
        A bar (bytes read) on stderr; ``None`` shows it when stderr is a
        terminal (the library's one rule, see ``memstore._progress``).
    chunk_bytes : int
        Size of each sequential read; memory use is about this much.

    Returns
    -------
    VerifyReport
        Never raises for a bad store: a store that cannot be opened gives one
        problem ``("<store>", reason)``.

    Example
    -------
    >>> report = verify_store("irmas.h5")            # doctest: +SKIP
    >>> report.ok, report.corrupt_files              # doctest: +SKIP
    (True, [])
    """
    chunk_bytes = positive_int("chunk_bytes", chunk_bytes)
    report = VerifyReport(os.fsdecode(path))
    try:
        store = open_store(path)
    except OSError as err:  # StoreFormatError is an OSError; so is a file we may not read
        report.problems.append(("<store>", str(err)))
        return report
    with store:
        report.files = len(store)
        _check_index(store, report.problems)
        sums = _check_features(store, report, progress, chunk_bytes)
        _check_stats(store, sums, report.problems)
    return report


def _check_features(store, report: VerifyReport, progress: bool | None, chunk_bytes: int):
    """One sequential pass: per-file crc32 and non-finite rows; returns the rows' RunningStats (m2's diagonal)."""
    idx = store.index
    row_bytes = store.n_bins * store.dtype.itemsize
    rows_per_chunk = max(1, chunk_bytes // max(row_bytes, 1))
    buf = bytearray(rows_per_chunk * row_bytes)
    view = memoryview(buf)
    total = store.n_frames_total
    ends = idx["offset"] + idx["n_frames"]  # open_store checked that files tile [0, total) in order
    crc = np.zeros(len(idx), np.uint32)
    crc_running = 0
    bad_rows = np.zeros(len(idx), np.int64)
    stats = None
    file_i = 0
    row = 0
    with open(store.source, "rb", buffering=0) as f, \
            _progress.bar(total=total * row_bytes, unit="B", unit_scale=True, desc="verifying",
                          progress=progress) as bar:
        f.seek(store.data_offset)
        while row < total:
            n = min(rows_per_chunk, total - row)
            got = f.readinto(view[: n * row_bytes])
            if got != n * row_bytes:
                report.problems.append(("features", f"file ends inside the features (row {row})"))
                break
            x = np.frombuffer(buf, dtype=store.dtype, count=n * store.n_bins).reshape(n, store.n_bins)
            # per-file crc over the byte ranges of this chunk (files may span chunks)
            pos = row
            while pos < row + n:
                stop = min(int(ends[file_i]), row + n)
                crc_running = zlib.crc32(view[(pos - row) * row_bytes:(stop - row) * row_bytes], crc_running)
                pos = stop
                if stop == ends[file_i]:
                    crc[file_i] = crc_running
                    crc_running = 0
                    file_i += 1
            finite = np.isfinite(x).all(axis=1)
            if not finite.all():
                owners = np.searchsorted(ends, row + np.flatnonzero(~finite), side="right")
                np.add.at(bad_rows, owners, 1)
            else:  # the whole chunk at once (not of_rows' default sub-chunks): the sums verify has always made
                stats = merge(stats, RunningStats.of_rows(x, diagonal=True, chunk_rows=n))
            row += n
            bar.update(n * row_bytes)
    report.frames = row
    stored = idx["checksum"]
    for i in np.flatnonzero(crc[:file_i] != stored[:file_i]):
        report.problems.append((store.paths[i], f"checksum mismatch (index {int(stored[i]):08x}, computed "
                                                f"{int(crc[i]):08x}): its feature rows are corrupt"))
    for i in np.flatnonzero(bad_rows):
        report.problems.append((store.paths[i], f"{int(bad_rows[i])} feature row(s) hold NaN or infinity"))
    return None if bad_rows.any() or row < total else stats


def _check_index(store, problems: list) -> None:
    idx, paths = store.index, store.paths
    classes = store.classes
    # build_store(..., classes=) keeps the order it is given, so order is no rule; uniqueness is
    if len(set(classes)) != len(classes):
        problems.append(("classes", f"class names must be unique: {classes}"))
    labels = store.labels
    if labels.size and labels.max() > 1:
        problems.append(("labels", "the multi-hot matrix holds values other than 0 and 1"))
    single = labels.sum(axis=1) == 1
    expected = np.where(single, labels.argmax(axis=1) if labels.shape[1] else -1, -1)
    for i in np.flatnonzero(expected != idx["label"])[:10]:
        problems.append((paths[i], f"index label {int(idx['label'][i])} disagrees with the labels matrix "
                                   f"(expected {int(expected[i])})"))
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p in seen:
            problems.append((p, f"source path stored twice (files {seen[p]} and {i})"))
        seen.setdefault(p, i)
    _check_segments(store, problems)
    _check_frame_counts(store, problems)


def _check_segments(store, problems: list) -> None:
    seg, idx = store.segments, store.index
    if len(idx) == 0:
        return
    first_file, first_frame = starts(seg["n_files"]), starts(seg["n_frames"])
    if (not len(seg) or np.any(seg["first_file"] != first_file) or np.any(seg["first_frame"] != first_frame)
            or seg["n_files"].sum() != len(idx) or seg["n_frames"].sum() != store.n_frames_total):
        problems.append(("segments", "the segments table does not tile the files and frames"))
        return
    owner = np.repeat(np.arange(len(seg)), seg["n_files"])
    if np.any(idx["segment"] != owner):
        problems.append(("index", "the segment column disagrees with the segments table"))
    for s in range(len(seg)):
        a, n = int(seg["first_file"][s]), int(seg["n_files"][s])
        if n and (idx["offset"][a] != seg["first_frame"][s]
                  or idx["n_frames"][a:a + n].sum() != seg["n_frames"][s]):
            problems.append(("segments", f"segment {s} does not match its files' offsets"))


def _check_frame_counts(store, problems: list) -> None:
    """A file's frame count follows from its sample count, rates and the configuration."""
    from .audio import resampled_length

    cfg = store.config
    idx = store.index
    for i in np.flatnonzero((idx["n_samples"] > 0) & (idx["sample_rate"] > 0) & (idx["source_rate"] > 0)):
        row = idx[i]
        if cfg.sample_rate and int(row["sample_rate"]) != cfg.sample_rate:
            problems.append((store.paths[i], f"computed at {int(row['sample_rate'])} Hz but the store's "
                                             f"configuration says {cfg.sample_rate} Hz"))
            continue
        n = resampled_length(int(row["n_samples"]), int(row["source_rate"]), int(row["sample_rate"]))
        want = cfg.n_frames(n)
        if want != int(row["n_frames"]):
            problems.append((store.paths[i], f"index says {int(row['n_frames'])} frames but {n} samples "
                                             f"give {want} with the store's configuration"))


def _check_stats(store, sums, problems: list) -> None:
    st = store.stats
    if not st:
        if store.n_frames_total:
            problems.append(("stats", "statistics are missing"))
        return
    bad = damaged(st, store.n_bins)
    problems.extend(("stats", f"{key} {why}") for key, why in bad.items())
    st = {key: value for key, value in st.items() if key not in bad}
    for key in ("mean", "std", "cov", "m2"):
        if key in st and not np.isfinite(st[key]).all():
            problems.append(("stats", f"{key} is not finite"))
    if "count" in st and int(st["count"]) != store.n_frames_total:
        problems.append(("stats", f"count {int(st['count'])} is not the {store.n_frames_total} frames stored"))
    if sums is None or "mean" not in st or "std" not in st:
        return
    mean, std = sums.mean, sums.std
    scale = max(float(np.abs(mean).max()), float(std.max()), 1e-30)
    for key, value in (("mean", mean), ("std", std)):
        err = float(np.abs(np.asarray(st[key], np.float64) - value).max())
        if not err <= 1e-6 * scale:
            problems.append(("stats", f"stored {key} differs from the features by up to {err:.3g}"))
