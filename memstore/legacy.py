"""The tutorial's per-file feature format, in and out.

The tutorial saves each feature matrix with ``np.tofile`` (raw float64, no
header) as ``<name><suffix>.data`` and its shape in ``<name><suffix>.shape``,
one line ``#d0<TAB>d1``; labels go to ``<name><suffix_out>.data`` as a
float64 class index. :func:`import_legacy` reads such a folder into a store
and :func:`export_legacy` writes a store back out in the same format, so
``export(import(dir))`` reproduces the files byte for byte.

Stores hold float32: values that float32 cannot represent exactly are
refused unless ``allow_rounding=True`` (then a warning says how many).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .errors import ParameterError, StoreFormatError
from .features import MelSpectrogram, Spectrogram

__all__ = ["read_tensor", "write_tensor", "import_legacy", "export_legacy"]


def read_tensor(data_path) -> np.ndarray:
    """Read ``X.data`` with the shape from ``X.shape``, as the tutorial's ``loadTensor`` does."""
    data_path = Path(data_path)
    shape_path = data_path.with_suffix(".shape")
    try:
        line = shape_path.read_text().strip()
    except OSError as err:
        raise ParameterError(f"{shape_path}: cannot read the shape file ({err.strerror or err})") from err
    try:
        if not line.startswith("#"):
            raise ValueError("no leading '#'")
        shape = tuple(int(v) for v in line[1:].split("\t") if v.strip())
        if not shape or min(shape) < 0:
            raise ValueError("empty or negative shape")
    except ValueError as err:
        raise ParameterError(f"{shape_path}: bad shape line {line!r} ({err}); expected '#d0<TAB>d1'") from err
    size = data_path.stat().st_size
    if size != 8 * int(np.prod(shape)):
        raise ParameterError(f"{data_path}: {size} bytes do not hold a float64 array of shape {shape}")
    return np.fromfile(data_path, dtype="<f8").reshape(shape)


def write_tensor(x: np.ndarray, data_path) -> None:
    """Write ``X.data`` (raw float64) and ``X.shape`` (``#d0<TAB>d1``), as the tutorial's ``saveTensor``."""
    data_path = Path(data_path)
    np.asarray(x, dtype="<f8").tofile(data_path)
    data_path.with_suffix(".shape").write_text("#" + "\t".join(str(d) for d in np.shape(x)) + "\n")


def import_legacy(feature_dir, store_path, *, suffix_in: str = "_mel_", suffix_out: str = "_label_",
                  transform: Spectrogram | None = None, allow_rounding: bool = False):
    """Read a folder of tutorial ``.data``/``.shape`` files into a store.

    ``transform`` records how the features were made; by default the
    tutorial's (a 96-band ``MelSpectrogram``, or ``Spectrogram`` for 513 bins).
    """
    from .build import write_store_from_arrays

    feature_dir = Path(feature_dir)
    if not feature_dir.is_dir():
        raise ParameterError(f"{feature_dir} is not a folder")
    ending = suffix_in + ".data"
    names = sorted(f for f in os.listdir(feature_dir) if f.endswith(ending))
    if not names:
        raise ParameterError(f"no '*{ending}' files in {feature_dir}")
    feats, bases, labels = [], [], []
    rounded = 0
    for name in names:
        base = name[: -len(ending)]
        x = read_tensor(feature_dir / name)
        if x.ndim != 2:
            raise ParameterError(f"{feature_dir / name}: features of shape {x.shape} must be 2-D (frames, bins)")
        x32 = x.astype(np.float32)
        bad = int(np.count_nonzero(x32.astype(np.float64) != x))
        if bad and not allow_rounding:
            raise ParameterError(f"{feature_dir / name}: {bad} value(s) are not exactly representable in "
                                 "float32; pass allow_rounding=True (--allow-rounding) to accept rounding")
        rounded += bad
        label_file = feature_dir / (base + suffix_out + ".data")
        if label_file.exists():
            lab = read_tensor(label_file).ravel()
            if lab.size != 1 or lab[0] != int(lab[0]) or lab[0] < 0:
                raise ParameterError(f"{label_file}: a label must be one non-negative integer class index")
            labels.append(str(int(lab[0])))
        else:
            labels.append(None)
        feats.append(x32)
        bases.append(base)
    if rounded:
        warnings.warn(f"{rounded} feature value(s) were rounded to float32", stacklevel=2)
    n_bins = feats[0].shape[1]
    if any(f.shape[1] != n_bins for f in feats):
        raise ParameterError("feature files have different numbers of bins")
    if transform is None:
        transform = Spectrogram() if n_bins == 513 else MelSpectrogram(n_mels=n_bins)
    classes = sorted({c for c in labels if c is not None}, key=int)
    multihot = np.zeros((len(feats), len(classes)), np.uint8)
    for i, c in enumerate(labels):
        if c is not None:
            multihot[i, classes.index(c)] = 1
    notes = [f"imported from {feature_dir} (suffixes {suffix_in!r}, {suffix_out!r})"]
    return write_store_from_arrays(store_path, feats, bases, classes, multihot, transform,
                                   label_mode="legacy", notes=notes)


def export_legacy(store_path, out_dir, *, suffix_in: str = "_mel_", suffix_out: str = "_label_") -> int:
    """Write every file of a store as tutorial ``.data``/``.shape`` files; returns the file count."""
    from .store import open_store

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_store(store_path) as store:
        if len({Path(p).name for p in store.paths}) != len(store.paths):
            raise StoreFormatError("two files share a name; the flat legacy folder would overwrite one")
        for i, path in enumerate(store.paths):
            base = Path(path).name
            base = base.rsplit(".", 1)[0] if base.lower().endswith((".wav", ".flac", ".ogg", ".mp3")) else base
            write_tensor(np.asarray(store.frames(i), np.float64), out_dir / (base + suffix_in + ".data"))
            k = int(store.label_index[i])
            if k >= 0:
                try:
                    value = float(int(store.classes[k]))
                except ValueError:
                    value = float(k)  # named classes: the tutorial's index into the sorted class list
                write_tensor(np.array([value]), out_dir / (base + suffix_out + ".data"))
        return len(store)
