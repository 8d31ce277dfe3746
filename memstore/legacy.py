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

import math
import os
import stat
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from . import _progress
from .errors import ParameterError, StoreFormatError
from .features import MelSpectrogram, Spectrogram

__all__ = ["read_tensor", "write_tensor", "import_legacy", "export_legacy"]

#: the largest class index a label file may hold: classes 0..max all go into the store, one column each
MAX_CLASS = 65_535


def read_tensor(data_path) -> np.ndarray:
    """Read ``X.data`` with the shape from ``X.shape``, as the tutorial's ``loadTensor`` does.

    Parameters
    ----------
    data_path : str or os.PathLike
        The ``.data`` file; the shape is read from the ``.shape`` file beside it.

    Returns
    -------
    ndarray, float64, of the shape in the ``.shape`` file

    Raises
    ------
    ParameterError
        Naming the file, if the shape file is missing or its first line is not
        ``#d0<TAB>d1...``, if either file is not a regular file (a folder, or a
        FIFO, which would block), or if the data file does not hold exactly
        that many float64 values.
    """
    data_path = Path(data_path)
    shape_path = data_path.with_suffix(".shape")
    f, _ = _open_regular(shape_path, "shape file")
    with f:
        line = f.readline(1 << 16).decode("ascii", errors="replace").strip()
    try:
        if not line.startswith("#"):
            raise ValueError("no leading '#'")
        shape = tuple(int(v) for v in line[1:].split())  # tabs as written; any blank accepted, as util.get_shape
        if not shape or min(shape) < 0:
            raise ValueError("empty or negative shape")
    except ValueError as err:
        raise ParameterError(f"{shape_path}: bad shape line {line!r} ({err}); expected '#d0<TAB>d1'") from err
    count = math.prod(shape)  # Python integers: a product past 2**63 must not wrap to the file's size
    f, size = _open_regular(data_path, "data file")
    with f:
        if size != 8 * count:
            raise ParameterError(f"{data_path}: {size} bytes do not hold a float64 array of shape {shape} "
                                 f"({8 * count} bytes)")
        x = np.fromfile(f, dtype="<f8", count=count)
    if x.size != count:
        raise ParameterError(f"{data_path}: the file changed while it was read ({8 * x.size} of {size} bytes)")
    return x.reshape(shape)


def _open_regular(path: Path, what: str):
    """``(binary file, size)`` for a regular file; a folder, FIFO or device is refused (opening a FIFO would block)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ParameterError(f"{path}: cannot read the {what} ({err.strerror or err})") from err
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ParameterError(f"{path}: the {what} is not a regular file")
    return os.fdopen(fd, "rb"), st.st_size


def write_tensor(x: np.ndarray, data_path) -> None:
    """Write ``X.data`` (raw float64) and ``X.shape`` (``#d0<TAB>d1``), as the tutorial's ``saveTensor``."""
    data_path = Path(data_path)
    np.asarray(x, dtype="<f8").tofile(data_path)
    data_path.with_suffix(".shape").write_text("#" + "\t".join(str(d) for d in np.shape(x)) + "\n")


def import_legacy(feature_dir, store_path, *, suffix_in: str = "_mel_", suffix_out: str = "_label_",
                  transform: Spectrogram | None = None, sample_rate: int = 44100, allow_rounding: bool = False,
                  progress: bool | None = None):
    """Read a folder of tutorial ``.data``/``.shape`` files into a store.

    Parameters
    ----------
    feature_dir : str or os.PathLike
        Folder holding ``NAME<suffix_in>.data`` + ``.shape`` and, for labelled
        files, ``NAME<suffix_out>.data`` + ``.shape`` (one float class index).
    store_path : str or os.PathLike
        Store to write (atomically, through :func:`memstore.build.write_store_from_arrays`).
    transform : Spectrogram or MelSpectrogram, optional
        How the features were made, recorded in the store; default the
        tutorial's: a ``MelSpectrogram`` with as many bands as the files have
        bins (a ``Spectrogram`` for 513 bins) at ``sample_rate``.
    sample_rate : int
        Rate for the default transform (IRMAS is 44.1 kHz); gives frame times.
    allow_rounding : bool
        Accept float64 values that float32 cannot hold exactly (rounded, with a
        warning); by default they are refused, so that a store holds exactly
        the imported values and ``export_legacy`` gives back the same bytes.
    progress : bool or None
        A bar on stderr while files are read; ``None`` shows it when stderr is
        a terminal (the library's one rule, see ``memstore._progress``).

    Returns
    -------
    BuildReport

    Raises
    ------
    ParameterError
        Naming the file: missing or malformed ``.shape``, a ``.shape`` whose
        ``.data`` is missing, a file that is not a regular file, size
        mismatch, non-finite or non-float32 values, a bad label or one above
        :data:`MAX_CLASS`, differing bin counts.

    Notes
    -----
    Class ``k`` of the tutorial (its label value) is stored as class index
    ``k`` named ``str(k)`` zero-padded, so sorted names keep numeric order;
    every index up to the largest gets a class, so a label may be at most
    :data:`MAX_CLASS` (65,535).
    The features are held in memory while the store is written.
    """
    from .build import write_store_from_arrays

    _check_suffixes(suffix_in, suffix_out)
    feature_dir = Path(feature_dir)
    if not feature_dir.is_dir():
        raise ParameterError(f"{feature_dir} is not a folder")
    ending = suffix_in + ".data"
    listed = os.listdir(feature_dir)
    names = sorted(f for f in listed if f.endswith(ending))
    if not names:
        raise ParameterError(f"no '*{ending}' files in {feature_dir}")
    present = set(listed)
    for shape in sorted(f for f in listed if f.endswith((suffix_in + ".shape", suffix_out + ".shape"))):
        if shape.removesuffix(".shape") + ".data" not in present:  # its file was lost, or never written
            raise ParameterError(f"{feature_dir / shape}: a shape file without its .data file")
    feats, bases, labels = [], [], []
    rounded = 0
    for name in _progress.track(names, desc="importing", unit="file", progress=progress):
        base = name[: -len(ending)]
        x = read_tensor(feature_dir / name)
        if x.ndim != 2:
            raise ParameterError(f"{feature_dir / name}: features of shape {x.shape} must be 2-D (frames, bins)")
        if not np.isfinite(x).all():
            raise ParameterError(f"{feature_dir / name}: {int(np.count_nonzero(~np.isfinite(x)))} value(s) "
                                 "are NaN or infinite; a store holds finite features only")
        x32 = x.astype(np.float32)
        bad = int(np.count_nonzero(x32.astype(np.float64) != x))
        if bad and not allow_rounding:
            raise ParameterError(f"{feature_dir / name}: {bad} value(s) are not exactly representable in "
                                 "float32; pass allow_rounding=True (--allow-rounding) to accept rounding")
        rounded += bad
        label_file = feature_dir / (base + suffix_out + ".data")
        if os.path.lexists(label_file):  # a dangling link or a FIFO is an error in read_tensor, not "no label"
            lab = read_tensor(label_file).ravel()
            if lab.size != 1 or not np.isfinite(lab[0]) or lab[0] != int(lab[0]) or lab[0] < 0:
                raise ParameterError(f"{label_file}: a label must be one non-negative integer class index")
            if lab[0] > MAX_CLASS:
                raise ParameterError(f"{label_file}: class index {int(lab[0])} is above {MAX_CLASS}, the largest "
                                     "the import takes (a store gets a class for every index up to the largest)")
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
        transform = (Spectrogram(sample_rate=sample_rate) if n_bins == 513
                     else MelSpectrogram(n_mels=n_bins, sample_rate=sample_rate))
    # Classes 0..max, zero-padded so that sorted names keep numeric order: the store's class index
    # is then the tutorial's label value itself, even when some class has no file here.
    top = max((int(c) for c in labels if c is not None), default=-1)
    classes = [str(k).zfill(len(str(top))) for k in range(top + 1)]
    multihot = np.zeros((len(feats), len(classes)), np.uint8)
    for i, c in enumerate(labels):
        if c is not None:
            multihot[i, int(c)] = 1
    notes = [f"imported from {feature_dir} (suffixes {suffix_in!r}, {suffix_out!r})"]
    return write_store_from_arrays(store_path, feats, bases, classes, multihot, transform,
                                   label_mode="legacy", notes=notes)


def _check_suffixes(suffix_in, suffix_out) -> None:
    """Both suffixes are parts of one file name, and tell a feature file from a label file."""
    for name, value in (("suffix_in", suffix_in), ("suffix_out", suffix_out)):
        if not isinstance(value, str) or "/" in value or os.sep in value or "\0" in value:
            raise ParameterError(f"{name}={value!r} must be text without a path separator or NUL: it ends file names")
    if not suffix_in or suffix_in == suffix_out:
        raise ParameterError(f"suffix_in={suffix_in!r} must be non-empty and differ from suffix_out={suffix_out!r}")


def export_legacy(store_path, out_dir, *, suffix_in: str = "_mel_", suffix_out: str = "_label_",
                  progress: bool | None = None) -> int:
    """Write every file of a store as tutorial ``.data``/``.shape`` files.

    Each file becomes ``<name><suffix_in>.data`` (its name without folders
    and audio extension) and, if it has exactly one label,
    ``<name><suffix_out>.data`` holding the class index as float64: the class
    name itself when the classes are integers (an imported store), else the
    index into the sorted class list, as the tutorial numbers instruments.

    progress : bool or None
        A bar on stderr while files are written; ``None`` shows it when stderr
        is a terminal.

    Returns
    -------
    int
        Files written.

    Raises
    ------
    StoreFormatError
        If two files would get the same name in the flat output folder.
    """
    from .audio import audio_extensions
    from .store import open_store

    _check_suffixes(suffix_in, suffix_out)  # the same suffixes wrote each label over its features
    if isinstance(out_dir, str | bytes) and not out_dir:  # Path("") is ".": files went into the working folder
        raise ParameterError("out_dir='' names no folder; give the folder to write the feature files into")
    out_dir = Path(out_dir)
    exts = tuple(e.lower() for e in audio_extensions())
    with open_store(store_path) as store:
        bases = []
        for path in store.paths:
            base = path.rsplit("/", 1)[-1]
            bases.append(base.rsplit(".", 1)[0] if base.lower().endswith(exts) else base)
        if len(set(bases)) != len(bases):
            dup = sorted(b for b, n in Counter(bases).items() if n > 1)[:3]
            raise StoreFormatError(f"{store_path}: files share the name(s) {dup}; the flat legacy folder "
                                   "would overwrite one with another")
        labelled = store.label_index >= 0
        names = [b + suffix_in for b in bases] + [b + suffix_out for b, k in zip(bases, labelled, strict=True) if k]
        if len(set(names)) != len(names):  # e.g. a.wav's labels and a_label_.wav's features, suffix_in ''
            dup = sorted(n for n, c in Counter(names).items() if c > 1)[:3]
            raise StoreFormatError(f"{store_path}: the names {dup} would be written twice with suffixes "
                                   f"{suffix_in!r} and {suffix_out!r}; choose other suffixes")
        numeric = all(c.isdigit() for c in store.classes)
        multi = int(np.count_nonzero(store.labels.sum(axis=1) > 1))
        if multi:
            warnings.warn(f"{multi} multi-label file(s) get no label file: the legacy format holds one "
                          "class index per file", stacklevel=2)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, base in _progress.track(list(enumerate(bases)), desc="exporting", unit="file", progress=progress):
            write_tensor(np.asarray(store.frames(i), np.float64), out_dir / (base + suffix_in + ".data"))
            k = int(store.label_index[i])
            if k >= 0:
                value = float(int(store.classes[k])) if numeric else float(k)
                write_tensor(np.array([value]), out_dir / (base + suffix_out + ".data"))
        return len(store)
