"""Built-in demo data: a small IRMAS-style folder of synthetic instrument tones.

Every class is a harmonic tone with its own spectral envelope (how strong
each partial is), attack and decay, and vibrato; pitches, loudness and small
noise vary from file to file. Files are 3-second, 44.1 kHz, stereo, 16-bit
WAV, named like IRMAS training excerpts::

    Training/<cls>/NNN__[cls][nod][gen]SEED__K.wav

Everything is a pure function of the seed, so two runs write identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .audio import write_wav
from .errors import ParameterError

__all__ = ["DEMO_CLASSES", "make_demo_folder", "make_demo_testing"]

# class -> (relative partial amplitudes 1..8, attack s, decay per s, vibrato depth, pitch range Hz)
DEMO_CLASSES = {
    "cel": ([1.0, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1, 0.05], 0.08, 0.3, 0.006, (65, 260)),
    "flu": ([1.0, 0.15, 0.05, 0.02, 0.0, 0.0, 0.0, 0.0], 0.05, 0.2, 0.004, (260, 1000)),
    "gac": ([1.0, 0.5, 0.35, 0.2, 0.1, 0.08, 0.04, 0.02], 0.005, 1.8, 0.0, (80, 600)),
    "pia": ([1.0, 0.6, 0.25, 0.15, 0.1, 0.05, 0.02, 0.01], 0.003, 1.2, 0.0, (50, 1500)),
    "tru": ([0.4, 0.7, 1.0, 0.9, 0.8, 0.6, 0.5, 0.4], 0.03, 0.1, 0.003, (170, 900)),
    "vio": ([1.0, 0.9, 0.7, 0.6, 0.5, 0.45, 0.3, 0.25], 0.1, 0.15, 0.008, (190, 1300)),
}
_GENRES = ("cla", "pop_roc", "jaz_blu", "cou_fol")


def _tone(rng, cls: str, n: int, rate: int) -> np.ndarray:
    amps, attack, decay, depth, (lo, hi) = DEMO_CLASSES[cls]
    t = np.arange(n) / rate
    f0 = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    vib = 1.0 + depth * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t)
    phase = 2 * np.pi * f0 * np.cumsum(vib) / rate
    env = np.minimum(1.0, t / attack) * np.exp(-decay * t)
    x = np.zeros(n)
    for k, a in enumerate(amps, start=1):
        if a > 0 and k * f0 < rate / 2:
            x += a * rng.uniform(0.8, 1.2) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    x *= env
    x /= np.abs(x).max() + 1e-12
    return x * rng.uniform(0.3, 0.8) + rng.normal(0, 0.002, n)


def _stereo(rng, x: np.ndarray) -> np.ndarray:
    pan = rng.uniform(0.3, 0.7)
    return np.clip(np.stack([x * (1 - pan) * 2, x * pan * 2], axis=1) * 0.5, -1, 1)


def make_demo_folder(root, *, n_per_class: int = 8, seed: int = 0, duration: float = 3.0,
                     sample_rate: int = 44100, classes=None) -> Path:
    """Write the demo training folder under ``root`` and return ``root / "Training"``.

    Parameters
    ----------
    root : str or os.PathLike
    n_per_class : int
        Files per class.
    seed : int
        Everything (pitches, loudness, noise, names) follows from it.
    duration : float
        Seconds per file.
    sample_rate : int
    classes : list of str, optional
        A subset of :data:`DEMO_CLASSES` (default: all six).

    Example
    -------
    >>> make_demo_folder("demo", n_per_class=2)     # doctest: +SKIP
    PosixPath('demo/Training')
    """
    classes = sorted(DEMO_CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in DEMO_CLASSES]
    if unknown:
        raise ParameterError(f"classes={unknown} are not demo classes; known: {sorted(DEMO_CLASSES)}")
    if n_per_class < 1:
        raise ParameterError(f"n_per_class={n_per_class} must be a positive integer")
    out = Path(root) / "Training"
    n = int(round(duration * sample_rate))
    count = 0
    for ci, cls in enumerate(classes):
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n_per_class):
            rng = np.random.default_rng((seed, ci, k))
            x = _stereo(rng, _tone(rng, cls, n, sample_rate))
            drum = "dru" if rng.random() < 0.3 else "nod"
            genre = _GENRES[int(rng.integers(len(_GENRES)))]
            name = f"{count:03d}__[{cls}][{drum}][{genre}]{seed:04d}__{k + 1}.wav"
            write_wav(folder / name, x, sample_rate, sample_format="pcm16")
            count += 1
    return out


def make_demo_testing(root, *, n_files: int = 4, seed: int = 0, duration: float = 5.0,
                      sample_rate: int = 44100) -> Path:
    """Write IRMAS-style testing excerpts (mixtures) with a ``.txt`` of labels beside each.

    Returns ``root / "Testing"``; each ``.txt`` lists one instrument code per line.
    """
    out = Path(root) / "Testing"
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(DEMO_CLASSES)
    n = int(round(duration * sample_rate))
    for i in range(n_files):
        rng = np.random.default_rng((seed, 99, i))
        chosen = sorted(rng.choice(names, size=int(rng.integers(1, 4)), replace=False))
        mix = sum(_tone(rng, c, n, sample_rate) for c in chosen) / len(chosen)
        stem = f"demo-testing-{i:02d}"
        write_wav(out / f"{stem}.wav", _stereo(rng, mix), sample_rate)
        (out / f"{stem}.txt").write_text("".join(f"{c}\t\n" for c in chosen))
    return out
