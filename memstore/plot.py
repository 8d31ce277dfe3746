"""Drawing stores (optional ``plot`` extra): spectrograms as the tutorial plots them, and histograms.

The figure is drawn on a :class:`matplotlib.figure.Figure` with the Agg
canvas directly, never through ``pyplot``: no global backend switch, no
figure registry, nothing left open in the caller's process.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import numpy as np

from ._validate import is_int, positive_int
from .errors import ParameterError, require
from .features import MelSpectrogram, hz_to_mel, mel_to_hz

__all__ = ["select_files", "band_frequencies", "display_image", "plot_store"]

#: longest time axis drawn as is; longer files are reduced by the maximum over groups of frames
MAX_COLUMNS = 4000


def select_files(store, *, file: int | None = None, path: str | None = None, cls: str | None = None,
                 limit: int = 4) -> list[int]:
    """Indices of the files to draw.

    Parameters
    ----------
    store : Store
    file : int, optional
        One file by its index (negative counts from the end).
    path : str, optional
        ``fnmatch`` glob over the source paths (``"vio/*"``).
    cls : str, optional
        Only files carrying this class.
    limit : int
        At most this many files, in store order.

    Raises
    ------
    ParameterError
        For an index out of range, an unknown class, a bad limit, or a
        selection that matches nothing.
    """
    limit = positive_int("limit", limit)
    n = len(store)
    if file is not None:
        if not is_int(file) or not -n <= file < n:
            raise ParameterError(f"--file {file} must be an integer in [-{n}, {n})")
        chosen = [int(file) % n]
    else:
        chosen = list(range(n))
    if path is not None:
        chosen = [i for i in chosen if fnmatch.fnmatchcase(store.paths[i], path)]
    if cls is not None:
        if cls not in store.classes:
            raise ParameterError(f"--class {cls!r} is not one of the store's classes {store.classes}")
        k = store.classes.index(cls)
        chosen = [i for i in chosen if store.labels[i, k]]
    if not chosen:
        raise ParameterError("no file matches the selection"
                             + "".join(f" {o}={v!r}" for o, v in (("file", file), ("path", path), ("class", cls))
                                       if v is not None))
    return chosen[:limit]


def band_frequencies(config) -> np.ndarray:
    """Centre frequency in Hz of every feature bin of ``config`` (mel band centres or FFT bins)."""
    rate = config.sample_rate
    if not rate:
        raise ParameterError("the store's configuration has no sample rate; frequencies are unknown")
    if isinstance(config, MelSpectrogram):
        htk = config.mel_scale == "htk"
        fmax = config.fmax if config.fmax is not None else rate / 2
        edges = mel_to_hz(np.linspace(hz_to_mel(config.fmin, htk), hz_to_mel(fmax, htk), config.n_mels + 2), htk)
        return np.asarray(edges[1:-1])
    return np.fft.rfftfreq(config.n_fft, 1.0 / rate)


def display_image(frames: np.ndarray, config) -> tuple[np.ndarray, int]:
    """The ``(n_bins, n_columns)`` image to draw and the frames per column.

    Linear features get the tutorial's ``log10(1 + 100 x)``; features the
    store already compressed (``log="log10p"`` or ``"db"``) are drawn as they
    are. Files longer than :data:`MAX_COLUMNS` frames are reduced by the
    maximum over groups of frames, so short events stay visible.
    """
    x = np.asarray(frames, dtype=np.float32)
    step = max(1, -(-len(x) // MAX_COLUMNS))
    if step > 1:
        pad = (-len(x)) % step
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
        x = x.reshape(-1, step, x.shape[1]).max(axis=1)
    if config.log is None:
        x = np.log10(1 + 100 * np.maximum(x, 0))
    return x.T, step


def plot_store(store, out, files: list[int], *, dpi: int = 100):
    """Draw the files' spectrograms and histograms of classes and file lengths into an image file.

    Parameters
    ----------
    store : Store
    out : str or os.PathLike
        Image file; its extension picks the format (PNG usually; ``.png`` is
        added when it has none).
    files : list of int
        File indices, e.g. from :func:`select_files`.
    dpi : int
        Resolution; the image is ``12 x 3 (len(files) + 1)`` inches.

    Returns
    -------
    Path
        The image file written.

    Raises
    ------
    MissingDependencyError
        Naming the ``plot`` extra when matplotlib is not installed.
    ParameterError
        For an output that is a folder, lies in a missing folder or has an
        extension matplotlib does not write, a ``dpi`` that makes a side of
        65,536 pixels or more, or an image that cannot be written.
    """
    require("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = positive_int("dpi", dpi)
    out = _image_path(out, FigureCanvasAgg.get_supported_filetypes())
    # store.source is the file the store reads (its kept descriptor): its path may have moved since
    if out.exists() and os.path.samefile(out, store.source):
        raise ParameterError(f"{out} is the store itself; give another image file name")  # was overwritten
    width, height = 12 * dpi, 3 * (len(files) + 1) * dpi
    if max(width, height) >= 2 ** 16:  # Agg's limit per side; far past it, the renderer runs out of memory
        raise ParameterError(f"dpi={dpi} makes an image of {width} x {height} pixels; the renderer draws at "
                             "most 65535 per side: use a smaller dpi or fewer files")
    cfg = store.config
    rate = cfg.sample_rate
    centres = band_frequencies(cfg)
    n = len(files)
    fig = Figure(figsize=(12, 3 * (n + 1)), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n + 1, 2, height_ratios=[3] * n + [2])
    for row, i in enumerate(files):
        ax = fig.add_subplot(grid[row, :])
        image, step = display_image(store.frames(i), cfg)
        seconds = int(store.index["n_frames"][i]) * cfg.hop / rate
        # bins are drawn as equal rows (mel bands are not equally spaced in Hz); ticks name their centres
        ax.imshow(image, origin="lower", aspect="auto", interpolation="none",
                  extent=(0.0, seconds, 0.0, float(len(centres))))
        ticks = np.unique(np.linspace(0, len(centres) - 1, 6).round().astype(int))
        ax.set_yticks(ticks + 0.5, [f"{centres[k]:.0f}" for k in ticks])
        tags = [c for c, on in zip(store.classes, store.labels[i], strict=True) if on]
        title = _shown(f"{store.paths[i]}  [{', '.join(tags) if tags else 'no label'}]")
        ax.set_title(title + (f"  (max over {step} frames per column)" if step > 1 else ""), fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (Hz)")
    ax = fig.add_subplot(grid[n, 0])
    counts = store.labels.sum(axis=0).astype(int).tolist()
    names = [_shown(c) for c in store.classes]
    unlabelled = int((store.labels.sum(axis=1) == 0).sum())
    if unlabelled:
        names.append("(none)")
        counts.append(unlabelled)
    ax.bar(range(len(names)), counts)
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
    ax.set_ylabel("files")
    ax.set_title("files per class")
    ax = fig.add_subplot(grid[n, 1])
    lengths = store.index["n_frames"] * cfg.hop / rate
    ax.hist(lengths, bins=min(30, max(1, len(lengths))))
    ax.set_xlabel("length (s)")
    ax.set_ylabel("files")
    ax.set_title("file lengths")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=dpi)
    except OSError as err:
        raise ParameterError(f"cannot write {out}: {err.strerror or err}") from err
    return out


def _shown(text: str) -> str:
    """``text`` as the font renderer takes it: the raw bytes of a non-UTF-8 file name (lone surrogates,
    which it refuses with a ``TypeError``) written as ``\\xe9``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _image_path(out, formats: dict) -> Path:
    """``out`` as the image file to write, ``.png`` added when it has no extension; or a ``ParameterError``."""
    out = Path(os.fsdecode(out))
    if out.is_dir():
        raise ParameterError(f"{out} is a folder; give an image file name such as {out / 'store.png'}")
    if not out.suffix:
        out = out.with_name(out.name + ".png")  # what matplotlib would write: say so, and check that
    if out.suffix[1:].lower() not in formats:
        raise ParameterError(f"{out}: {out.suffix!r} is not an image format this matplotlib writes; use one "
                             f"of {', '.join(sorted(formats))}")
    if not out.parent.is_dir():
        what = "is not a folder" if out.parent.exists() else "does not exist"
        raise ParameterError(f"{out}: the folder {out.parent} {what}")
    return out
