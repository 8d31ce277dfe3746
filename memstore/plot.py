"""Drawing stores (optional ``plot`` extra): spectrograms as the tutorial plots them, histograms."""

from __future__ import annotations

import fnmatch

import numpy as np

from .errors import ParameterError, require
from .features import MelSpectrogram, mel_to_hz

__all__ = ["select_files", "plot_store"]


def select_files(store, *, file=None, path=None, cls=None, limit: int = 4) -> list[int]:
    """Indices of the files to draw: one index, a glob over paths, or a class; at most ``limit``."""
    if file is not None:
        if not -len(store) <= file < len(store):
            raise ParameterError(f"--file {file} must be in [0, {len(store)})")
        return [file % len(store)]
    chosen = range(len(store))
    if path is not None:
        chosen = [i for i in chosen if fnmatch.fnmatch(store.paths[i], path)]
    if cls is not None:
        if cls not in store.classes:
            raise ParameterError(f"--class {cls!r} is not one of {store.classes}")
        k = store.classes.index(cls)
        chosen = [i for i in chosen if store.labels[i, k]]
    chosen = list(chosen)[:limit]
    if not chosen:
        raise ParameterError("no file matches the selection")
    return chosen


def plot_store(store, out, files: list[int], *, dpi: int = 100):
    """Draw ``files``' spectrograms (``log10(1 + 100 x)``, time in s, frequency in Hz) and two histograms."""
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "plot")
    cfg = store.config
    rate = cfg.sample_rate or 1
    n = len(files)
    fig, axes = plt.subplots(n + 1, 2, figsize=(12, 3 * (n + 1)), squeeze=False,
                             gridspec_kw={"height_ratios": [3] * n + [2]})
    if isinstance(cfg, MelSpectrogram):
        fmax = cfg.fmax or rate / 2
        from .features import hz_to_mel

        edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin, cfg.mel_scale == "htk"),
                                      hz_to_mel(fmax, cfg.mel_scale == "htk"), cfg.n_mels + 2),
                          cfg.mel_scale == "htk")
        centres = edges[1:-1]
    else:
        centres = np.fft.rfftfreq(cfg.n_fft, 1 / rate)
    for row, i in enumerate(files):
        ax = fig.add_subplot(n + 1, 1, row + 1)
        axes[row, 0].remove()
        axes[row, 1].remove()
        x = np.asarray(store.frames(i), np.float32)
        image = np.log10(1 + 100 * np.maximum(x, 0)) if cfg.log is None else x
        t_end = len(x) * cfg.hop / rate
        ax.imshow(image.T, origin="lower", aspect="auto", interpolation="none",
                  extent=[0, t_end, 0, len(centres)])
        ticks = np.linspace(0, len(centres) - 1, 6).astype(int)
        ax.set_yticks(ticks + 0.5, [f"{centres[k]:.0f}" for k in ticks])
        label = store.classes[store.label_index[i]] if store.label_index[i] >= 0 else "(no single label)"
        ax.set_title(f"{store.paths[i]} [{label}]", fontsize=9)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (Hz)")
    counts = store.labels.sum(axis=0)
    axes[n, 0].bar(range(len(store.classes)), counts)
    axes[n, 0].set_xticks(range(len(store.classes)), store.classes, rotation=45, fontsize=8)
    axes[n, 0].set_title("files per class")
    seconds = store.index["n_frames"] * cfg.hop / rate
    axes[n, 1].hist(seconds, bins=min(30, max(1, len(seconds))))
    axes[n, 1].set_title("file lengths")
    axes[n, 1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
