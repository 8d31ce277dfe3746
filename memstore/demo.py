"""Built-in demo data: a small IRMAS-style folder of synthetic instrument tones.

Each class is a harmonic instrument with its own spectral envelope (the
relative strength of its partials), attack, decay and release, vibrato and
noise (bow or breath). A file is a short phrase of one to three notes with
random pitches in the class's range; loudness, panning, partial amplitudes
and noise vary from file to file, so files of a class resemble each other
without being copies. Struck and plucked classes (piano, guitar) lose their
upper partials as a note decays. Files are 3-second, 44.1 kHz, stereo, 16-bit
WAV, named like IRMAS training excerpts::

    Training/<cls>/NNN__[cls][nod][gen]SEED__K.wav

``NNN`` counts the files of a class, ``nod``/``dru`` says whether drums play
(a tag only: no drums are synthesised), ``gen`` is a genre code, ``SEED`` the
seed and ``K`` the excerpt number. :func:`make_demo_testing` writes IRMAS-style
testing excerpts (mixtures) with a ``.txt`` of labels beside each.

Everything is a pure function of the seed (:func:`numpy.random.default_rng`),
so two runs write identical bytes, and a file does not change when other
classes are left out. Synthesis is a vectorised wavetable oscillator (one
table, built by an inverse FFT, per note): one interpolated lookup per sample
whatever the number of partials, so the default 48 files (6 classes x 8) are
written in about two seconds on a busy two-core machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._validate import is_int
from .audio import write_wav
from .errors import ParameterError

__all__ = ["DEMO_CLASSES", "GENRES", "make_demo_folder", "make_demo_testing"]


class _Instrument(NamedTuple):
    slope: float                 # harmonic k has amplitude k**-slope before the resonances
    resonances: tuple[tuple[float, float, float], ...]  # body resonances: (centre Hz, width octaves, gain)
    attack: float                # seconds to full level
    decay: float                 # exponential decay rate per second while the note sounds
    struck: bool                 # upper partials fade faster than the fundamental (piano, guitar)
    vibrato: float               # relative frequency deviation
    noise: float                 # breath / bow noise relative to the tone
    pitch: tuple[float, float]   # f0 range in Hz


#: IRMAS instrument code -> synthesis parameters. The resonances sit at fixed
#: frequencies (like an instrument body's), so a class keeps its spectral
#: envelope whatever note it plays.
DEMO_CLASSES: dict[str, _Instrument] = {
    "cel": _Instrument(1.0, ((250.0, 0.6, 4.0), (1100.0, 0.5, 1.5)), 0.09, 0.3, False, 0.006, 0.01, (65.0, 330.0)),
    "flu": _Instrument(2.5, ((800.0, 1.0, 1.0),), 0.06, 0.2, False, 0.004, 0.05, (262.0, 1400.0)),
    "gac": _Instrument(1.3, ((110.0, 0.4, 3.0), (2400.0, 0.5, 2.0)), 0.004, 1.6, True, 0.0, 0.002, (82.0, 660.0)),
    "pia": _Instrument(1.5, ((500.0, 1.2, 1.0),), 0.003, 1.0, True, 0.0, 0.001, (55.0, 1760.0)),
    "tru": _Instrument(0.3, ((1300.0, 0.8, 8.0),), 0.035, 0.1, False, 0.003, 0.004, (165.0, 930.0)),
    "vio": _Instrument(0.8, ((550.0, 0.5, 2.0), (3000.0, 0.6, 5.0)), 0.12, 0.15, False, 0.009, 0.012,
                       (196.0, 1760.0)),
}
#: IRMAS genre codes
GENRES = ("cla", "pop_roc", "jaz_blu", "cou_fol")
_TABLE = 4096  # wavetable points per period; linear interpolation error < 1e-5 of full scale
_MAX_PARTIALS = 60


def _wavetable(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """One period of sum_k amps[k] sin(2 pi (k+1) u + phases[k]), with a wrap-around point.

    Built by an inverse FFT: bin k+1 holds (N/2) amps[k] exp(i (phases[k] - pi/2)).
    """
    spectrum = np.zeros(_TABLE // 2 + 1, complex)
    spectrum[1:len(amps) + 1] = (_TABLE / 2) * amps * np.exp(1j * (phases - np.pi / 2))
    table = np.fft.irfft(spectrum, _TABLE)
    return np.append(table, table[0])


def _lookup(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    pos = (cycles % 1.0) * _TABLE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] + frac * (table[i + 1] - table[i])


def _partials(rng: np.random.Generator, inst: _Instrument, f0: float, vibrato: float, rate: int) -> np.ndarray:
    """Amplitudes of the harmonics of ``f0`` below Nyquist (with vibrato), jittered per note."""
    k = np.arange(1, _MAX_PARTIALS + 1)
    k = k[k * f0 * (1 + vibrato) < 0.45 * rate]  # anything higher would alias
    amps = k ** -inst.slope
    for centre, width, gain in inst.resonances:
        amps = amps * (1 + gain * np.exp(-0.5 * (np.log2(k * f0 / centre) / width) ** 2))
    return amps * rng.uniform(0.8, 1.25, len(k))


def _phrase(rng: np.random.Generator, inst: _Instrument, n: int, rate: int) -> np.ndarray:
    """A mono phrase of 1-3 notes of one instrument, peak-normalised to a random level."""
    n_notes = int(rng.integers(1, 4)) if n >= 10 else 1
    onsets = np.sort(np.concatenate([[0], rng.integers(n // 5, n - n // 5, n_notes - 1)]))
    lo, hi = inst.pitch
    f0 = np.exp(rng.uniform(np.log(lo), np.log(hi), n_notes))
    ends = np.append(onsets[1:], n)
    note = np.repeat(np.arange(n_notes), np.diff(np.append(onsets, n)))
    idx = np.arange(n)
    t = (idx - onsets[note]) / rate  # seconds since the note's onset
    vib = 1.0 + inst.vibrato * np.sin((2 * np.pi * rng.uniform(4.5, 6.5) / rate) * idx + rng.uniform(0, 2 * np.pi))
    cycles = np.cumsum(f0[note] * vib) / rate
    x = np.empty(n)
    for j in range(n_notes):  # one wavetable per note: the resonances weight its harmonics differently
        seg = slice(onsets[j], ends[j])
        amps = _partials(rng, inst, f0[j], inst.vibrato, rate)
        phases = rng.uniform(0, 2 * np.pi, len(amps))
        x[seg] = _lookup(_wavetable(amps, phases), cycles[seg])
        if inst.struck:  # crossfade towards a darker spectrum as the note decays
            w = np.exp(-3.0 * t[seg])
            dark = _wavetable(amps * 0.5 ** np.arange(len(amps)), phases)
            x[seg] = w * x[seg] + (1 - w) * _lookup(dark, cycles[seg])
    env = np.minimum(1.0, t / inst.attack) * np.exp(-inst.decay * t)
    # a short release before the next onset avoids clicks between notes
    env *= np.minimum(1.0, (ends[note] - idx) / (0.02 * rate))
    x *= env
    x /= np.abs(x).max() + 1e-12
    if inst.noise:
        x += inst.noise * rng.uniform(0.5, 1.5) * env * rng.standard_normal(n)
    return x * (rng.uniform(0.3, 0.8) / (np.abs(x).max() + 1e-12))


def _stereo(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Pan a mono signal, delay one side by up to 1 ms, add a faint noise floor."""
    pan = rng.uniform(0.25, 0.75)
    delay = min(int(rng.integers(0, 45)), len(x))
    right = np.concatenate([np.zeros(delay), x[:len(x) - delay]])
    out = np.stack([x * np.sqrt(1 - pan), right * np.sqrt(pan)], axis=1)
    out += 3e-4 * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(out, -1.0, 1.0)


def _check(count_name, count, seed, duration, sample_rate) -> int:
    for name, value in ((count_name, count), ("seed", seed), ("sample_rate", sample_rate)):
        if not is_int(value):
            raise ParameterError(f"{name}={value!r} must be an integer")
    if count < 1:
        raise ParameterError(f"{count_name}={count} must be a positive integer")
    if seed < 0:
        raise ParameterError(f"seed={seed} must be a non-negative integer")
    if sample_rate < 8000:
        raise ParameterError(f"sample_rate={sample_rate} must be at least 8000")
    if not duration > 0:
        raise ParameterError(f"duration={duration!r} must be a positive number of seconds")
    n = int(round(duration * sample_rate))
    if n < 1:
        raise ParameterError(f"duration={duration!r} gives no samples at {sample_rate} Hz")
    return n


def make_demo_folder(root, *, n_per_class: int = 8, seed: int = 0, duration: float = 3.0,
                     sample_rate: int = 44100, classes=None) -> Path:
    """Write the demo training folder under ``root`` and return ``root / "Training"``.

    Parameters
    ----------
    root : str or os.PathLike
        Created if needed; existing demo files of the same names are overwritten.
    n_per_class : int
        Files per class.
    seed : int
        Non-negative; everything (pitches, loudness, noise, tags) follows from it.
    duration : float
        Seconds per file.
    sample_rate : int
    classes : sequence of str, optional
        A subset of :data:`DEMO_CLASSES` (default: all six, ``cel flu gac pia
        tru vio``). A file's content depends only on its class, index and seed.

    Returns
    -------
    Path
        ``root / "Training"`` holding ``<cls>/NNN__[cls][nod|dru][gen]SEED__K.wav``.

    Example
    -------
    >>> make_demo_folder("demo", n_per_class=2)     # doctest: +SKIP
    PosixPath('demo/Training')
    """
    n = _check("n_per_class", n_per_class, seed, duration, sample_rate)
    names = sorted(DEMO_CLASSES)
    classes = names if classes is None else sorted(set(classes))
    unknown = [c for c in classes if c not in DEMO_CLASSES]
    if unknown or not classes:
        raise ParameterError(f"classes={unknown or classes} must be demo classes: {names}")
    out = Path(root) / "Training"
    for cls in classes:
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n_per_class):
            rng = np.random.default_rng((seed, names.index(cls), k))
            x = _stereo(rng, _phrase(rng, DEMO_CLASSES[cls], n, sample_rate))
            drums = "dru" if rng.random() < 0.3 else "nod"
            genre = GENRES[int(rng.integers(len(GENRES)))]
            name = f"{k + 1:03d}__[{cls}][{drums}][{genre}]{seed:04d}__{k % 3 + 1}.wav"
            write_wav(folder / name, x, sample_rate, sample_format="pcm16")
    return out


def make_demo_testing(root, *, n_files: int = 4, seed: int = 0, duration: float = 5.0,
                      sample_rate: int = 44100) -> Path:
    """Write IRMAS-style testing excerpts: mixtures with a ``.txt`` of labels beside each.

    Parameters
    ----------
    root : str or os.PathLike
    n_files : int
        Number of excerpts.
    seed : int
    duration : float
        Seconds per excerpt.
    sample_rate : int

    Returns
    -------
    Path
        ``root / "Testing"`` holding ``demo-testing-NN.wav`` (stereo, 16-bit)
        and ``demo-testing-NN.txt`` listing the 1 to 3 instruments it mixes,
        one code per line followed by a tab, as IRMAS writes them.

    Example
    -------
    >>> make_demo_testing("demo", n_files=2)     # doctest: +SKIP
    PosixPath('demo/Testing')
    """
    n = _check("n_files", n_files, seed, duration, sample_rate)
    out = Path(root) / "Testing"
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(DEMO_CLASSES)
    for i in range(n_files):
        rng = np.random.default_rng((seed, len(names), i))  # a stream no training file uses
        chosen = sorted(rng.choice(names, size=int(rng.integers(1, 4)), replace=False).tolist())
        mix = sum(_phrase(rng, DEMO_CLASSES[c], n, sample_rate) for c in chosen) / len(chosen)
        stem = f"demo-testing-{i:02d}"
        write_wav(out / f"{stem}.wav", _stereo(rng, mix), sample_rate)
        (out / f"{stem}.txt").write_text("".join(f"{c}\t\n" for c in chosen))
    return out
