"""Spectral features: STFT, mel filterbank and the transforms a store records.

Pure functions and frozen dataclasses, no I/O. Every transform returns
float32 ``(n_frames, n_bins)``, time first, C-contiguous, and knows its exact
frame count without computing anything (:meth:`Spectrogram.n_frames`).

Two conventions
---------------
The defaults are **exactly the tutorial's** ``transform.stft_norm`` followed
by ``transformMEL``'s mel projection:

- window ``np.hanning(n_fft)`` (symmetric), hop 512, n_fft 1024;
- ``ceil(N / hop) + 2`` frames, the first centred on sample 0
  (``win_length // 2`` zeros in front, zeros after);
- magnitude ``|X|`` divided by ``sqrt(n_fft)``, power 1;
- 96 Slaney-scale mel bands with area normalisation, fmin 0, fmax sr/2
  (the tutorial's ``mel(..., htk=False, norm=1)``: in the librosa of its
  day ``norm=1`` meant area normalisation, today's ``norm="slaney"``);
- no log: the tutorial stores the raw mel spectrogram and applies
  ``log10(1 + 100 x)`` only to plot it (``log="log10p"`` stores that).

A 132299-sample file gives the tutorial's 261 frames.

:meth:`MelSpectrogram.librosa` gives librosa's conventions instead (periodic
Hann, ``center=True`` framing with constant padding and ``1 + N // hop``
frames, no ``sqrt(n_fft)`` scaling, power 2), equal to
``librosa.feature.melspectrogram(..., pad_mode="constant")`` within float32
rounding.

How it is computed
------------------
In chunks of :data:`CHUNK_FRAMES` frames, by the windowing and mel kernels
of :mod:`memstore.spectral` (see its docstring), into one output array
allocated up front: temporary memory is one chunk (about 2 MB), whatever the
length of the signal, and the result does not depend on the chunk size or
on BLAS threads. The configs here hold settings only; the window and the
sparse mel filters of a (settings, rate) pair are cached in that module,
read-only, not in the frozen objects.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import spectral
from ._validate import choice, int_up_to, is_int, positive_int
from .errors import ParameterError
from .spectral import CHUNK_FRAMES as CHUNK_FRAMES  # re-exported: documented as features.CHUNK_FRAMES
from .spectral import DB_FLOOR as DB_FLOOR  # re-exported: documented as features.DB_FLOOR
from .spectral import check_mel_norm, check_signal, finite, hz_to_mel, mel_filterbank, mel_to_hz

__all__ = [
    "stft",
    "mel_filterbank",
    "hz_to_mel",
    "mel_to_hz",
    "Spectrogram",
    "MelSpectrogram",
    "transform_from_json",
    "transform_from_dict",
]

WINDOWS = ("hann_symmetric", "hann")
FRAMINGS = ("tutorial", "center")
MAGNITUDE_NORMS = ("sqrt_nfft", "none")
LOGS = (None, "log10p", "db")
MEL_SCALES = ("slaney", "htk")
_MAX_JSON = 1 << 16
_F32 = np.finfo(np.float32)


# --- transforms ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spectrogram:
    """Magnitude (``power=1``) or power (``power=2``) spectrogram; defaults are the tutorial's ``stft_norm``.

    Parameters
    ----------
    sample_rate : int, optional
        Rate the transform expects, at most ``MAX_SAMPLE_RATE`` (2 MHz); ``None``
        (default) takes the audio's rate. A store records the resolved rate
        (``dataclasses.replace``).
    n_fft : int
        FFT length, 1024; at most ``MAX_N_FFT`` (131,072).
    hop : int
        Samples between frames, 512; at most ``MAX_HOP`` (2**30).
    win_length : int, optional
        Window length <= n_fft; ``None`` is ``n_fft``.
    window : {"hann_symmetric", "hann"}
        ``np.hanning`` (the tutorial, default) or periodic Hann (librosa's ``"hann"``).
        A symmetric window of 2 samples is all zeros, and refused.
    (The limits live in :mod:`memstore.spectral`; past them a setting asks for
    memory no machine has, or overflows the kernels' sample positions.)
    framing : {"tutorial", "center"}
        ``"tutorial"`` (default): ``ceil(N / hop) + 2`` frames of ``win_length``
        samples, frame ``t`` starting at ``t * hop - win_length // 2``.
        ``"center"``: librosa's ``center=True, pad_mode="constant"``,
        ``1 + (N - n_fft % 2) // hop`` frames (``1 + N // hop`` for even n_fft)
        of ``n_fft`` samples centred on ``t * hop``, the window centred inside.
        Outside the signal the samples are zeros. A 0-sample signal follows
        the same formulas (2 frames, resp. 1), all zeros.
    magnitude_norm : {"sqrt_nfft", "none"}
        Divide ``|X|`` by ``sqrt(n_fft)`` (the tutorial, default) or not (librosa).
    power : float
        1 (default) for magnitude, 2 for power.
    log : {None, "log10p", "db"}
        ``None`` (default) stores the values themselves. ``"log10p"``:
        ``log10(1 + log_c * x)``, the tutorial's plotting compression.
        ``"db"``: librosa's ``power_to_db(x, ref=1, amin=1e-10, top_db=top_db)``
        when ``power=2``, ``amplitude_to_db(x, ref=1, amin=1e-5, top_db=top_db)``
        when ``power=1`` (the same decibels); ``top_db`` clips relative to the
        maximum of the whole signal, as librosa does for one call.
    log_c : float
        The ``C`` of ``"log10p"``, 100; within float32's normal range (the features are float32).
    top_db : float, optional
        Dynamic range kept by ``"db"``, 80; ``None`` keeps everything.

    Example
    -------
    >>> spec = Spectrogram()
    >>> spec(np.zeros(132299, np.float32), 44100).shape
    (261, 513)
    """

    sample_rate: int | None = None
    n_fft: int = 1024
    hop: int = 512
    win_length: int | None = None
    window: str = "hann_symmetric"
    framing: str = "tutorial"
    magnitude_norm: str = "sqrt_nfft"
    power: float = 1.0
    log: str | None = None
    log_c: float = 100.0
    top_db: float | None = 80.0

    kind = "spectrogram"

    def __post_init__(self) -> None:
        self._normalise()
        if not _AS_STORED.get():
            self._check_limits()

    def _normalise(self) -> None:
        # Normalised in place (numpy ints to int, numbers to float) so that
        # to_json() is canonical and transform_from_json(t.to_json()) == t.
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.sample_rate is not None:
            put("sample_rate", positive_int("sample_rate", self.sample_rate))
        put("n_fft", positive_int("n_fft", self.n_fft))
        put("hop", positive_int("hop", self.hop))
        if self.win_length is not None:
            put("win_length", positive_int("win_length", self.win_length))
            if self.win_length > self.n_fft:
                raise ParameterError(f"win_length={self.win_length} must be <= n_fft={self.n_fft}")
        for name, allowed in (("window", WINDOWS), ("framing", FRAMINGS),
                              ("magnitude_norm", MAGNITUDE_NORMS), ("log", LOGS)):
            choice(name, getattr(self, name), allowed)
        if not isinstance(self.power, int | float | np.integer | np.floating) or isinstance(self.power, bool) \
                or self.power not in (1, 2):
            raise ParameterError(f"power={self.power!r} must be 1 (magnitude) or 2 (power)")
        put("power", float(self.power))
        put("log_c", finite("log_c", self.log_c, minimum=0.0, strict=True))
        if self.top_db is not None:
            put("top_db", finite("top_db", self.top_db, minimum=0.0))

    def _check_limits(self) -> None:
        """The bounds past which a setting asks for memory no machine has, overflows the kernels' sample
        positions, or gives all-zero or NaN features (:mod:`memstore.spectral`).

        Checked when a transform is made, and again before it computes; not when a store's configuration
        is read back (:func:`as_stored`): a store written before the bounds existed still opens.
        """
        if self.sample_rate is not None:
            spectral.check_rate("sample_rate", self.sample_rate)
        spectral.check_n_fft(self.n_fft)
        int_up_to("hop", self.hop, spectral.MAX_HOP, "the longest hop memstore takes")
        if self.window == "hann_symmetric" and self.win == 2:  # np.hanning(2) is [0, 0]: every feature 0
            raise ParameterError("a symmetric Hann window of 2 samples is all zeros; use a longer window "
                                 "or window='hann' (periodic)")
        if not float(_F32.tiny) <= self.log_c <= float(_F32.max):  # log10p multiplies float32 features by it
            raise ParameterError(f"log_c={self.log_c!r} must lie within float32's normal range, "
                                 f"[{_F32.tiny:.3g}, {_F32.max:.3g}]: the features are float32")

    # --- shape ----------------------------------------------------------------------------------
    @property
    def win(self) -> int:
        """The window length in samples (``win_length`` or ``n_fft``)."""
        return self.n_fft if self.win_length is None else self.win_length

    @property
    def n_bins(self) -> int:
        """Features per frame: ``1 + n_fft // 2``."""
        return self.n_fft // 2 + 1

    def n_frames(self, n_samples: int) -> int:
        """Exact number of frames for a signal of ``n_samples`` samples, without computing it.

        Example
        -------
        >>> Spectrogram().n_frames(132299)
        261
        """
        if not is_int(n_samples) or n_samples < 0:
            raise ParameterError(f"n_samples={n_samples!r} must be a non-negative integer")
        n = int(n_samples)
        if self.framing == "tutorial":
            return -(-n // self.hop) + 2
        return max(0, 1 + (n - self.n_fft % 2) // self.hop)

    # --- computation ----------------------------------------------------------------------------
    def _geometry(self) -> tuple[np.ndarray, int]:
        """(read-only float32 window as long as a frame, samples of padding before the signal)."""
        return spectral.frame_geometry(self.window, self.win, self.n_fft, self.framing)

    def _spectra(self, x):
        """Yield ``(first frame, complex64 spectra of a chunk of frames)`` over the signal ``x``."""
        w, pad = self._geometry()
        return spectral.spectra(x, w, pad, self.hop, self.n_fft, self.n_frames(len(x)))

    def _projector(self, rate: int):
        """Check the settings that depend on the rate; return ``project(spec, out)`` for one chunk."""
        return functools.partial(spectral.magnitude, n_fft=self.n_fft, sqrt_nfft=self.magnitude_norm == "sqrt_nfft",
                                 power2=self.power == 2)

    def __call__(self, samples, sample_rate: int) -> np.ndarray:
        """Compute the features of a mono signal.

        Parameters
        ----------
        samples : ndarray [shape=(n,)], floating point
            Mono samples (float32 is used as is; other float dtypes are
            converted one chunk at a time).
        sample_rate : int
            Their rate; must equal ``self.sample_rate`` when that is set.

        Returns
        -------
        ndarray [shape=(n_frames(n), n_bins)], float32, C-contiguous
        """
        self._check_limits()  # a transform read back from an old store was not checked against them
        x = check_signal(samples)
        rate = spectral.check_rate("sample_rate", sample_rate)
        if self.sample_rate is not None and rate != self.sample_rate:
            raise ParameterError(
                f"sample_rate={rate} differs from the transform's sample_rate={self.sample_rate}; "
                "resample first (read_audio(..., sample_rate=...))"
            )
        project = self._projector(rate)
        out = np.empty((self.n_frames(len(x)), self.n_bins), dtype=np.float32)
        for f0, spec in self._spectra(x):
            project(spec, out[f0:f0 + len(spec)])
        return spectral.compress(out, log=self.log, log_c=self.log_c, power2=self.power == 2, top_db=self.top_db)

    # --- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every setting, plus ``kind`` (``"spectrogram"`` or ``"mel"``), as plain JSON types."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["kind"] = self.kind
        return d

    def to_json(self) -> str:
        """:meth:`to_dict` as compact JSON with sorted keys; :func:`transform_from_json` reverses it."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)


@dataclass(frozen=True)
class MelSpectrogram(Spectrogram):
    """Mel spectrogram; defaults are the tutorial's ``transformMEL(bins=96, frameSize=1024, hopSize=512)``.

    Parameters
    ----------
    sample_rate, n_fft, hop, win_length, window, framing, magnitude_norm, power, log, log_c, top_db
        As :class:`Spectrogram` (defaults: None, 1024, 512, None, "hann_symmetric",
        "tutorial", "sqrt_nfft", 1.0, None, 100.0, 80.0).
    n_mels : int
        Number of bands, 96; ``n_mels * (1 + n_fft // 2)`` at most ``MAX_MEL_WEIGHTS`` (2**26).
    fmin, fmax : float
        Band limits in Hz, 0 and ``None`` (half the sample rate).
    mel_scale : {"slaney", "htk"}
        Mel formula, ``"slaney"``.
    norm : "slaney", None or a positive number
        Triangle normalisation (see :func:`mel_filterbank`), ``"slaney"`` (unit area).

    Example
    -------
    >>> mel = MelSpectrogram()
    >>> mel(np.zeros(132299, np.float32), 44100).shape
    (261, 96)
    >>> mel.n_frames(132299), mel.n_bins
    (261, 96)
    >>> MelSpectrogram.librosa().n_frames(132299)
    259
    """

    n_mels: int = 96
    fmin: float = 0.0
    fmax: float | None = None
    mel_scale: str = "slaney"
    norm: str | float | None = "slaney"

    kind = "mel"

    def _normalise(self) -> None:
        super()._normalise()
        object.__setattr__(self, "n_mels", positive_int("n_mels", self.n_mels))
        choice("mel_scale", self.mel_scale, MEL_SCALES)
        norm = check_mel_norm(self.norm)
        if isinstance(norm, float) and math.isinf(norm):
            raise ParameterError("norm=inf cannot be stored as JSON; use mel_filterbank(norm=np.inf) directly")
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "fmin", finite("fmin", self.fmin, minimum=0.0))
        if self.fmax is not None:
            if not (isinstance(self.fmax, int | float | np.integer | np.floating) and not isinstance(self.fmax, bool)
                    and math.isfinite(self.fmax) and self.fmax > self.fmin):
                raise ParameterError(f"fmax={self.fmax!r} must be None or a finite number greater than "
                                     f"fmin={self.fmin:g}")
            object.__setattr__(self, "fmax", float(self.fmax))
        if self.sample_rate is not None:
            self._check_rate(self.sample_rate)

    @classmethod
    def librosa(cls, **settings) -> MelSpectrogram:
        """librosa's conventions: periodic Hann, centred framing, no ``sqrt(n_fft)``, power 2.

        Any setting can still be given, e.g. ``MelSpectrogram.librosa(power=1.0, n_mels=128)``.

        Example
        -------
        >>> t = MelSpectrogram.librosa(n_mels=64)
        >>> (t.window, t.framing, t.magnitude_norm, t.power, t.n_mels)
        ('hann', 'center', 'none', 2.0, 64)
        """
        base: dict[str, Any] = dict(window="hann", framing="center", magnitude_norm="none", power=2.0)
        base.update(settings)
        return cls(**base)

    @property
    def n_bins(self) -> int:
        """Features per frame: ``n_mels``."""
        return self.n_mels

    def _check_limits(self) -> None:
        super()._check_limits()
        spectral.check_mel_size(self.n_mels, self.n_fft)

    def _check_rate(self, rate: int) -> None:
        if rate > spectral.MAX_SAMPLE_RATE:  # past the limit (refused there); rate / 2 may not be a float
            return
        if self.fmax is not None and self.fmax > rate / 2:
            raise ParameterError(f"fmax={self.fmax:g} must be <= sample_rate / 2 = {rate / 2:g}")
        if self.fmin >= (self.fmax if self.fmax is not None else rate / 2):
            raise ParameterError(f"fmin={self.fmin:g} must be below sample_rate / 2 = {rate / 2:g}")

    def filterbank(self, sample_rate: int) -> np.ndarray:
        """The ``(n_mels, 1 + n_fft // 2)`` float64 filters for ``sample_rate`` (see :func:`mel_filterbank`)."""
        return mel_filterbank(sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax,
                              htk=self.mel_scale == "htk", norm=self.norm)

    def _projector(self, rate: int):
        self._check_rate(rate)
        bands = spectral.mel_bands(rate, self.n_fft, self.n_mels, self.fmin, self.fmax, self.mel_scale == "htk",
                                   self.norm)
        return functools.partial(spectral.mel_project, bands=bands, n_fft=self.n_fft,
                                 sqrt_nfft=self.magnitude_norm == "sqrt_nfft", power2=self.power == 2)


# --- configuration from JSON -----------------------------------------------------------------------

#: set while a store's configuration is read back: the limits of :meth:`Spectrogram._check_limits` wait
#: until the transform computes (a context variable: each thread and task has its own)
_AS_STORED = contextvars.ContextVar("memstore_transform_as_stored", default=False)


@contextlib.contextmanager
def as_stored():
    """Transforms made inside are a store's recorded configuration: checked as ever, but for the
    limits past which a new one is refused (stores written before a limit existed still open; such a
    transform is refused when it computes)."""
    token = _AS_STORED.set(True)
    try:
        yield
    finally:
        _AS_STORED.reset(token)


_KINDS = {"spectrogram": Spectrogram, "mel": MelSpectrogram}


def transform_from_dict(d: dict[str, Any]) -> Spectrogram:
    """Rebuild and validate a transform from :meth:`Spectrogram.to_dict` output.

    Raises
    ------
    ParameterError
        Not a dict, an unknown ``kind``, an unknown key, or a bad setting.
    """
    if not isinstance(d, dict):
        raise ParameterError(f"a transform configuration must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("kind", None)
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ParameterError(f"kind={kind!r} must be one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names, key=str)
    if unknown:
        raise ParameterError(f"unknown {kind} settings {unknown}; known: {sorted(names)}")
    return cls(**d)


def transform_from_json(text: str) -> Spectrogram:
    """Rebuild and validate a transform from :meth:`Spectrogram.to_json` output.

    Example
    -------
    >>> t = MelSpectrogram(n_mels=40, log="log10p")
    >>> transform_from_json(t.to_json()) == t
    True
    """
    if not isinstance(text, str | bytes) or len(text) > _MAX_JSON:
        raise ParameterError(f"a transform configuration must be a JSON string of at most {_MAX_JSON} characters")
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: "[" * 60000 nests past Python's stack
        raise ParameterError(f"transform configuration is not valid JSON: {err}") from err
    return transform_from_dict(d)


def stft(x, *, n_fft: int = 1024, hop: int = 512, win_length: int | None = None,
         window: str = "hann_symmetric", framing: str = "tutorial") -> np.ndarray:
    """Short-time Fourier transform, time first, with the framing of :class:`Spectrogram`.

    Parameters
    ----------
    x : ndarray [shape=(n,)], floating point
    n_fft, hop, win_length, window, framing
        As :class:`Spectrogram` (defaults: the tutorial's ``stft_norm``).

    Returns
    -------
    ndarray [shape=(n_frames, 1 + n_fft // 2)], complex64
        Unscaled: ``np.abs(stft(x)) / sqrt(n_fft)`` is the tutorial's magnitude.

    Example
    -------
    >>> stft(np.zeros(132299, np.float32)).shape
    (261, 513)
    """
    cfg = Spectrogram(n_fft=n_fft, hop=hop, win_length=win_length, window=window, framing=framing)
    x = check_signal(x)
    out = np.empty((cfg.n_frames(len(x)), cfg.n_bins), dtype=np.complex64)
    for f0, spec in cfg._spectra(x):
        out[f0:f0 + len(spec)] = spec
    return out
