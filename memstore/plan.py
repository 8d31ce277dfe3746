"""Planning a build from headers only: which files, at which rate, at which rows, with which labels.

:func:`make_plan` turns a folder (and, for an append, the store it adds to,
read by :func:`read_base`) into a frozen :class:`BuildPlan` before anything
is written:

- **scan**: every audio file under the root, matched against a label table
  if there is one, minus the files an append's store already holds; each
  header read once (:func:`memstore.audio.audio_info`). A file that cannot
  be read is listed as skipped with its reason.
- **labels first** when the class list is fixed (``classes=``), so a file
  outside it is a skip like any other;
- **rate**: the one asked for, the transform's, or the most common one;
  every file's exact frame count at that rate (``transform.n_frames``) and
  so its row offset;
- **strict**: any skip stops the build here, before anything is written;
- **layout**: the index rows, paths, multi-hot labels, classes and segments
  of the whole store (an append's old files first, their labels remapped to
  the merged class list), and the plan's fingerprint, which names the plan
  in its ``.partial`` file so that only the same plan resumes it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import layout
from .audio import AudioInfo, audio_info, resampled_length
from .errors import AudioDecodeError, BuildError, MissingDependencyError, ParameterError
from .features import MelSpectrogram, Spectrogram
from .labels import assign_labels, fix_classes, label_index, scan_audio
from .labeltable import LabelTable
from .spectral import MAX_SAMPLE_RATE
from .stats import RunningStats, damaged, starts
from .store import StoreMeta, read_metadata
from .writer import StoreContents

__all__ = ["BuildPlan", "make_plan", "read_base"]

#: the most a file is upsampled to the target rate: 172 Hz to 44.1 kHz, far past any recording's need
MAX_UPSAMPLING = 256


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """What a build writes, decided before anything is written.

    Attributes
    ----------
    root : Path
        The audio folder; ``files`` are relative to it.
    files : list of str
        The new files, in index order.
    headers : list of AudioInfo
        Their headers, read once.
    rate : int
        Target sample rate (0 when there is no file).
    transform : Spectrogram
        The feature configuration, its ``sample_rate`` set to ``rate``.
    dtype : str
    index : ndarray [shape=(n_files,)] of ``layout.INDEX_DTYPE``, read-only
        Every file of the store to be (an append's old files first), offsets planned.
    paths, labels, classes, label_mode, segments
        The store's datasets and attributes of the same names.
    fingerprint : str
        Names the plan in its ``.partial`` file: only the same plan resumes it.
    skipped : list of (path, reason)
        Files left out while planning, sorted.
    notes : list of str
    ignored : dict
        Files left out for their extension, counted by extension.
    base : StoreMeta or None
        The metadata of the store an append adds to (:func:`read_base`).
    """

    root: Path
    files: list[str]
    headers: list[AudioInfo]
    rate: int
    transform: Spectrogram
    dtype: str
    index: np.ndarray
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    label_mode: str
    segments: np.ndarray
    fingerprint: str
    skipped: list[tuple[str, str]]
    notes: list[str]
    ignored: dict[str, int]
    base: StoreMeta | None = None

    @property
    def n_old(self) -> int:
        """Files of the store an append adds to (they come first in ``index``)."""
        return len(self.index) - len(self.files)

    @property
    def new(self) -> np.ndarray:
        """The index rows of :attr:`files`."""
        return self.index[self.n_old:]

    @property
    def segment(self) -> int:
        """The segment this build writes: 0, plus one per append."""
        return 0 if self.base is None else len(self.base.segments)

    @property
    def base_stats(self) -> RunningStats | None:
        """The statistics of the store an append adds to, merged before the new files'."""
        if self.base is None or not self.base.stats.get("count"):
            return None
        s = self.base.stats
        return RunningStats(int(s["count"]), s["mean"], s["m2"])

    def contents(self) -> StoreContents:
        """What the writer allocates."""
        return StoreContents(index=self.index, paths=self.paths, labels=self.labels, classes=self.classes,
                             config_json=self.transform.to_json(), n_bins=self.transform.n_bins, dtype=self.dtype,
                             label_mode=self.label_mode, segments=self.segments,
                             generation=0 if self.base is None else self.base.generation + 1)

    def copy_from(self) -> tuple | None:
        """``(path, data_offset, n_rows)`` of the rows an append keeps, for :meth:`StoreWriter.start`."""
        if self.base is None:
            return None
        return self.base.path, self.base.data_offset, self.base.total


@dataclasses.dataclass
class _Scan:
    """The scan's findings, narrowed step by step while planning."""

    files: list[str]
    infos: dict[str, AudioInfo]
    labels: Any
    table: LabelTable | None
    skipped: list[tuple[str, str]]
    notes: list[str]
    ignored: dict[str, int]


def read_base(store_path, *, sample_rate: int | None, dtype: str, classes) -> StoreMeta:
    """The metadata of the store an append adds to, checked against the append's arguments."""
    store_path = Path(os.fsdecode(store_path))
    if not store_path.exists():
        raise BuildError(f"cannot append: {store_path} does not exist (use mode='create')")
    old = read_metadata(store_path)
    if old.config.sample_rate and sample_rate and sample_rate != old.config.sample_rate:
        raise BuildError(f"sample_rate={sample_rate} differs from the store's {old.config.sample_rate}")
    if dtype != str(old.dtype):
        raise BuildError(f"dtype={dtype!r} differs from the store's {old.dtype}")
    if classes is not None and classes != old.classes:
        raise BuildError(f"classes={classes} differs from the store's {old.classes}; "
                         "an append with classes= must give the store's list (in its order)")
    bad = {key: why for key, why in damaged(old.stats, old.n_bins).items() if key in ("count", "mean", "m2")}
    if not bad and old.stats.get("count") and "m2" not in old.stats:
        bad = {"m2": "is missing"}
    if bad:  # the append merges the new files' statistics into these three
        what = "; ".join(f"stats/{key} {why}" for key, why in bad.items())
        raise BuildError(f"cannot append: the statistics of {store_path} are damaged ({what}); nothing was "
                         "written. Rebuild the store with mode='create'")
    return old


def make_plan(root, *, transform: Spectrogram, labels, sample_rate: int | None = None, dtype: str = "float32",
              classes: list[str] | None = None, strict: bool = False, base: StoreMeta | None = None) -> BuildPlan:
    """Plan a build of ``root`` (an append to ``base`` when given) from file headers only.

    Arguments are :func:`memstore.build.build_store`'s, checked; ``labels``
    is a mode, a callable or a :class:`LabelTable`.

    Raises
    ------
    BuildError
        No readable file (unless appending), a file skipped under ``strict``,
        a feature configuration other than the store's.
    ParameterError
        ``fmax`` above half the target rate.
    """
    root = Path(os.fsdecode(root))
    if base is not None:
        sample_rate = sample_rate or base.config.sample_rate
    scan = _scan(root, labels, base)
    unreadable: list[tuple[str, str]] = []
    if classes is not None:
        # labels first, so a file outside the list is a skip like any other: before strict, before the rate
        multihot = _fixed_labels(root, scan, classes, unreadable)
    rate, transform = _rate(scan, transform, sample_rate, base)
    slow = [i for i, p in enumerate(scan.files) if rate > MAX_UPSAMPLING * scan.infos[p].sample_rate]
    if slow:  # 1 Hz in a 16 kHz folder became 625,070 frames; a 4 MB file would have taken 24 GB
        scan.skipped.extend((scan.files[i], f"its rate, {scan.infos[scan.files[i]].sample_rate:,} Hz, is below "
                                            f"1/{MAX_UPSAMPLING} of the target {rate:,} Hz: too far to resample")
                            for i in slow)
        gone = set(slow)
        keep = [i for i in range(len(scan.files)) if i not in gone]
        scan.files = [scan.files[i] for i in keep]
        if classes is not None:
            multihot = multihot[keep]
    n_frames = np.array([transform.n_frames(resampled_length(scan.infos[p].n_samples, scan.infos[p].sample_rate,
                                                             rate)) for p in scan.files], dtype=np.int64)
    scan.skipped.sort()
    if strict and scan.skipped:
        listed = "\n".join(f"  {p}: {why}" for p, why in scan.skipped[:20])
        raise BuildError(f"strict build: {len(scan.skipped)} file(s) would be skipped; nothing was written:\n"
                         f"{listed}")
    if not scan.files:
        if base is None:
            raise BuildError(f"no readable audio files under {root}; skipped: {scan.skipped[:5]}")
        return _unchanged(root, scan, rate, transform, dtype, base)
    found = classes
    if classes is None:
        found, multihot = assign_labels(root, scan.files, scan.labels, problems=unreadable)
    scan.notes.extend(f"{p}: label file unreadable ({why}); stored without a label" for p, why in unreadable)
    if strict and unreadable:
        raise BuildError(f"strict build: {len(unreadable)} label file(s) could not be read; nothing was written:\n"
                         + "\n".join(f"  {p}: {why}" for p, why in unreadable[:20]))
    label_mode = "table" if scan.table is not None else labels if isinstance(labels, str) else "custom"
    if label_mode == "irmas" and len(multihot) and not multihot.any():  # said only by "0 classes" before
        scan.notes.append("labels='irmas' found no label: no file name holds a [cls] tag and no .txt file lists "
                          "one; every file is stored without a label (labels='folder' takes the folder names)")
    if base is not None and base.label_mode not in (label_mode, "mixed"):
        scan.notes.append(f"the store's files were labelled by {base.label_mode!r}, these by {label_mode!r}: "
                          "its label mode is now 'mixed'")
    return _layout(root, scan, rate, transform, dtype, n_frames, found, multihot, label_mode, classes, base)


def _scan(root: Path, labels, base: StoreMeta | None) -> _Scan:
    """The audio files under ``root`` with their headers; table rows matched; an append's old files left out."""
    found = scan_audio(root)
    scan = _Scan(files=found.files, infos={}, labels=labels, table=None, skipped=list(found.skipped), notes=[],
                 ignored=found.ignored)
    if found.ignored:
        scan.notes.append("not audio by extension, not read: "
                          + ", ".join(f"{ext or '(none)'} {n}" for ext, n in found.ignored.items()))
    if isinstance(labels, LabelTable):
        scan.table = labels
        tagged, missing = labels.match(root, scan.files + [p for p, _ in found.skipped])
        scan.skipped.extend((p, f"no row in {labels.name}") for p in scan.files if p not in tagged)
        scan.skipped.extend((p, f"listed in {labels.name} but not found") for p in missing)
        scan.files = [p for p in scan.files if p in tagged]
        scan.labels = tagged.__getitem__
    if base is not None:
        present = set(base.paths)
        scan.skipped.extend((p, "already in store") for p in scan.files if p in present)
        scan.files = [p for p in scan.files if p not in present]
    for p in scan.files:
        try:
            info = audio_info(root / p)
        except (AudioDecodeError, MissingDependencyError) as err:  # what audio_info raises for one file
            scan.skipped.append((p, str(err).removeprefix(str(root / p) + ": ")))
            continue
        if info.sample_rate > MAX_SAMPLE_RATE:  # a header's claim: 2**31 Hz overflowed the index, or asked
            scan.skipped.append((p, f"its header's sample rate, {info.sample_rate:,} Hz, is above the highest "
                                    f"memstore takes ({MAX_SAMPLE_RATE:,} Hz)"))  # 320 GiB to resample
            continue
        scan.infos[p] = info
    scan.files = [p for p in scan.files if p in scan.infos]
    return scan


def _fixed_labels(root: Path, scan: _Scan, classes: list[str], unreadable: list) -> np.ndarray:
    """The multi-hot labels in the fixed class list; files with a label outside it become skips."""
    found, multihot = assign_labels(root, scan.files, scan.labels, problems=unreadable)
    multihot, outside = fix_classes(found, multihot, classes)
    keep = [i for i, out in enumerate(outside) if not out]
    scan.skipped.extend((scan.files[i], f"label(s) {', '.join(out)} not in classes=")
                        for i, out in enumerate(outside) if out)
    scan.files = [scan.files[i] for i in keep]
    kept = set(scan.files)
    unreadable[:] = [(p, why) for p, why in unreadable if p in kept]
    return multihot[keep]


def _rate(scan: _Scan, transform: Spectrogram, sample_rate: int | None, base: StoreMeta | None):
    """The target rate (the asked one, the transform's, or the most common) and the transform at it."""
    rate = sample_rate or transform.sample_rate
    if rate is None:
        if not scan.files:
            rate = 0
        else:
            counts = collections.Counter(scan.infos[p].sample_rate for p in scan.files)
            rate = max(sorted(counts), key=lambda r: counts[r])
            if len(counts) > 1:
                scan.notes.append(f"mixed sample rates {dict(sorted(counts.items()))}: "
                                  f"resampling to the most common, {rate} Hz")
    if scan.files:
        transform = dataclasses.replace(transform, sample_rate=int(rate))
        if isinstance(transform, MelSpectrogram) and transform.fmax is not None and transform.fmax > rate / 2:
            raise ParameterError(f"fmax={transform.fmax} must be <= half the target rate {rate}")
        transform._projector(rate)  # what depends on the rate (the mel filters) refused here, not in every task
    if base is not None and scan.files and transform != base.config:
        raise BuildError("the feature configuration differs from the store's; append needs the same one:\n"
                         f"  store: {base.config.to_json()}\n  build: {transform.to_json()}")
    return int(rate), transform


def _layout(root: Path, scan: _Scan, rate: int, transform: Spectrogram, dtype: str, n_frames: np.ndarray,
            classes: list[str], multihot: np.ndarray, label_mode: str, fixed, base: StoreMeta | None) -> BuildPlan:
    """The whole store's index, paths, labels and segments (old files first), and the plan's fingerprint."""
    files, infos = scan.files, scan.infos
    old_n = 0 if base is None else len(base.index)
    old_total = 0 if base is None else base.total
    labels = multihot
    if base is not None:
        # the store's order stays when nothing new comes (a fixed list is kept); new classes sort in as before
        merged = (base.classes if set(classes) <= set(base.classes)
                  else sorted(set(base.classes) | set(classes)))
        labels = np.concatenate([_remap(base.classes, base.labels, merged), _remap(classes, multihot, merged)])
        classes = merged
        label_mode = base.label_mode if base.label_mode == label_mode else "mixed"
    index = np.zeros(old_n + len(files), dtype=layout.INDEX_DTYPE)
    if base is not None:
        index[:old_n] = base.index
    new = index[old_n:]
    new["n_frames"] = n_frames
    new["offset"] = old_total + starts(n_frames)
    new["segment"] = 0 if base is None else len(base.segments)
    new["sample_rate"] = rate
    new["source_rate"] = [infos[p].sample_rate for p in files]
    new["n_samples"] = [infos[p].n_samples for p in files]
    new["channels"] = [infos[p].channels for p in files]
    index["label"] = label_index(labels)
    segments = np.array([(old_n, len(files), old_total, int(n_frames.sum()))], dtype=layout.SEGMENT_DTYPE)
    if base is not None:
        segments = np.concatenate([base.segments, segments])
    fingerprint = _fingerprint(
        layout.FORMAT_VERSION, transform.to_json(), dtype, classes, label_mode,
        [(p, infos[p], os.stat(root / p).st_mtime_ns) for p in files],
        None if base is None else (base.generation, base.file_size, old_total),
        # labels can change without the class list changing (a table's rows, IRMAS .txt files, a labels
        # callable), and the partial file holds the labels: a resume must not keep the old ones
        hashlib.sha256(labels.tobytes()).hexdigest(),
        *([("classes=", fixed)] if fixed is not None else []),
    )
    return _frozen(BuildPlan(
        root=root, files=files, headers=[infos[p] for p in files], rate=rate, transform=transform, dtype=dtype,
        index=index, paths=([] if base is None else base.paths) + files, labels=labels, classes=classes,
        label_mode=label_mode, segments=segments, fingerprint=fingerprint, skipped=scan.skipped,
        notes=scan.notes, ignored=scan.ignored, base=base))


def _unchanged(root: Path, scan: _Scan, rate: int, transform: Spectrogram, dtype: str, base: StoreMeta) -> BuildPlan:
    """The plan of an append with no new file: the store as it is."""
    return _frozen(BuildPlan(
        root=root, files=[], headers=[], rate=rate, transform=transform, dtype=dtype, index=base.index,
        paths=base.paths, labels=base.labels, classes=base.classes, label_mode=base.label_mode,
        segments=base.segments, fingerprint="", skipped=scan.skipped, notes=scan.notes, ignored=scan.ignored,
        base=base))


def _frozen(plan: BuildPlan) -> BuildPlan:
    for a in (plan.index, plan.labels, plan.segments):
        a.flags.writeable = False
    return plan


def _remap(classes: list[str], m: np.ndarray, all_classes: list[str]) -> np.ndarray:
    out = np.zeros((len(m), len(all_classes)), dtype=np.uint8)
    for j, c in enumerate(classes):
        out[:, all_classes.index(c)] = m[:, j]
    return out


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()
