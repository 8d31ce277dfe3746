"""Verifying a store: recompute every file's checksum and check the index.

The features are read once, sequentially, in large chunks, so memory stays
bounded and the disk reads at full speed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import StoreFormatError
from .store import open_store

__all__ = ["VerifyReport", "verify_store"]

CHUNK_ROWS = 1 << 16


@dataclass
class VerifyReport:
    """Result of :func:`verify_store`; ``ok`` is False if anything is wrong."""

    path: str
    files: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path, *, progress: bool = False) -> VerifyReport:
    """Recompute checksums and check consistency.

    Returns
    -------
    VerifyReport
        ``problems`` lists ``(source path or dataset, description)``; a store
        that cannot be opened at all gives one problem naming the reason.
    """
    from tqdm.auto import tqdm

    report = VerifyReport(str(path))
    try:
        store = open_store(path)
    except StoreFormatError as err:
        report.problems.append(("<store>", str(err)))
        return report
    with store:
        report.files = len(store)
        idx = store.index
        feats = store.features
        bar = tqdm(total=store.n_frames_total, unit="frame", unit_scale=True, desc="verifying",
                   disable=not progress)
        for i in range(len(store)):
            o, n = int(idx["offset"][i]), int(idx["n_frames"][i])
            crc = 0
            bad_values = False
            for s in range(o, o + n, CHUNK_ROWS):
                chunk = np.ascontiguousarray(feats[s:min(o + n, s + CHUNK_ROWS)])
                crc = zlib.crc32(chunk.data, crc)
                bad_values |= not np.isfinite(chunk).all()
            bar.update(n)
            if crc != int(idx["checksum"][i]):
                report.problems.append((store.paths[i], f"checksum mismatch (stored {int(idx['checksum'][i]):08x}, "
                                                        f"computed {crc:08x}): feature rows are corrupt"))
            elif bad_values:
                report.problems.append((store.paths[i], "features contain NaN or infinity"))
        bar.close()
        st = store.stats
        for key in ("mean", "std", "cov"):
            if key in st and not np.isfinite(st[key]).all():
                report.problems.append(("stats", f"{key} is not finite"))
        if "count" in st and int(st["count"]) != store.n_frames_total:
            report.problems.append(("stats", f"count {int(st['count'])} != {store.n_frames_total} frames"))
        single = store.labels.sum(1) == 1
        labels_from_matrix = np.where(single, store.labels.argmax(1) if store.labels.shape[1] else -1, -1)
        if not np.array_equal(labels_from_matrix, store.label_index):
            report.problems.append(("index", "label column disagrees with the labels matrix"))
        if len(set(store.paths)) != len(store.paths):
            report.problems.append(("paths", "duplicate source paths"))
    return report
