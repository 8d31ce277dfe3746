"""The on-disk schema of a memstore store, and its version.

A store is one HDF5 file (see ``docs/format.md`` for the full specification).
This module names every dataset and attribute and defines the structured
dtypes, so that the builder, the reader, the verifier and the distributed
merge agree on one schema. Nothing here opens files.

Every structured dtype has explicit little-endian fields, so a store written
on any machine reads the same everywhere.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .errors import StoreFormatError

#: value of the root attribute ``format``
FORMAT_NAME = "memstore"
#: bumped whenever a reader of the previous version would misread a new file
FORMAT_VERSION = 1

# --- datasets --------------------------------------------------------------
#: contiguous (total_frames, n_bins) float32 or float16, files one after another
FEATURES = "features"
#: structured (n_files,) array of INDEX_DTYPE, one row per stored file
INDEX = "index"
#: (n_files,) variable-length byte strings: source path relative to the audio
#: root, as the file system's bytes (UTF-8 for UTF-8 names; undecodable names
#: survive byte for byte)
PATHS = "paths"
#: (n_files, n_classes) uint8 multi-hot label matrix
LABELS = "labels"
#: structured (n_segments,) array of SEGMENT_DTYPE; appends add a row
SEGMENTS = "segments"
#: group of per-bin statistics: count (scalar int64), mean (n_bins,) float64,
#: m2 (n_bins, n_bins) float64 co-moment sum, std (n_bins,), cov (n_bins, n_bins)
STATS = "stats"
#: scalar variable-length UTF-8 string: the build report(s) as JSON (a dataset,
#: not an attribute, because attributes are limited to 64 KiB)
REPORT = "report"
#: group used only while building (``*.partial`` files): ``done`` (n_files,) uint8
#: flags and ``checksum`` (n_files,) uint32, both contiguous and written through a
#: memory map, so HDF5 metadata never changes while workers run
BUILD = "build"
BUILD_DONE = "build/done"
BUILD_CHECKSUM = "build/checksum"

# --- root attributes -------------------------------------------------------
ATTR_FORMAT = "format"
ATTR_VERSION = "format_version"
ATTR_CONFIG = "config"        # JSON of the feature transform (every setting)
ATTR_CLASSES = "classes"      # JSON list of class names: sorted, or in the order of build_store(classes=)
ATTR_DTYPE = "dtype"          # "float32" | "float16"
ATTR_LABEL_MODE = "label_mode"  # "folder" | "irmas" | "none" | "custom"
ATTR_GENERATION = "generation"  # int, +1 on every append
ATTR_COMPLETE = "complete"      # 1, written last; a store without it never opens
ATTR_FINGERPRINT = "plan_fingerprint"  # on .partial files: identifies the build plan

#: index status values
STATUS_STORED = 1

INDEX_DTYPE = np.dtype(
    [
        ("offset", "<i8"),       # first row of the file in FEATURES
        ("n_frames", "<i8"),     # rows of the file
        ("label", "<i4"),        # class index, or -1 (no label / several labels)
        ("segment", "<i4"),      # build segment (0 = first build, +1 per append)
        ("sample_rate", "<i4"),  # rate the features were computed at
        ("source_rate", "<i4"),  # rate of the source file
        ("n_samples", "<i8"),    # samples of the source file, at source_rate
        ("channels", "<i2"),
        ("status", "u1"),
        ("_pad", "u1"),
        ("checksum", "<u4"),     # zlib.crc32 of the file's feature bytes
    ]
)

SEGMENT_DTYPE = np.dtype(
    [
        ("first_file", "<i8"),
        ("n_files", "<i8"),
        ("first_frame", "<i8"),
        ("n_frames", "<i8"),
    ]
)

FEATURE_DTYPES = ("float32", "float16")

#: largest JSON text memstore parses from a store (untrusted input)
MAX_JSON_BYTES = 64 * 1024 * 1024


def dumps(value: Any) -> str:
    """Serialise metadata as compact, deterministic JSON (never pickle)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes, what: str) -> Any:
    """Parse JSON metadata read from a store, with a size limit.

    Raises
    ------
    StoreFormatError
        If the text is too large or not valid JSON.
    """
    if isinstance(text, bytes | np.bytes_):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise StoreFormatError(f"{what} is not valid UTF-8") from err
    if not isinstance(text, str):
        raise StoreFormatError(f"{what} must be a JSON string, got {type(text).__name__}")
    if len(text) > MAX_JSON_BYTES:
        raise StoreFormatError(
            f"{what} is {len(text)} bytes of JSON; the limit is {MAX_JSON_BYTES}"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise StoreFormatError(f"{what} is not valid JSON: {err}") from err
