"""Spectral features: STFT, mel filterbank and the transforms a store records.

Pure functions and frozen dataclasses, no I/O. Every transform returns
float32 ``(n_frames, n_bins)``, time first, and knows its exact frame count
without computing anything (:meth:`MelSpectrogram.n_frames`).

Two conventions
---------------
The defaults are **exactly the tutorial's** ``transform.stft_norm`` followed
by a mel projection:

- window ``np.hanning(n_fft)`` (symmetric), hop 512, n_fft 1024;
- ``ceil(N / hop) + 2`` frames, the first centred on sample 0
  (``win_length // 2`` zeros in front, zeros after);
- magnitude divided by ``sqrt(n_fft)``;
- 96 Slaney-scale mel bands with area normalisation, fmin 0, fmax sr/2.

A 132299-sample file gives the tutorial's 261 frames.

:meth:`MelSpectrogram.librosa` gives librosa's conventions instead (periodic
Hann, ``center=True`` framing with constant padding and ``1 + N // hop``
frames, no ``sqrt(n_fft)`` scaling, power 2), equal to
``librosa.feature.melspectrogram`` within float32 rounding.

Long signals are processed in chunks of frames, so memory beyond the samples
is the output plus one chunk.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft

from .errors import ParameterError
from .slicer import njit

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
#: frames computed per chunk (bounds temporary memory to a few MB)
CHUNK_FRAMES = 2048
_MAX_JSON = 1 << 16


def _window(kind: str, length: int) -> np.ndarray:
    if kind == "hann_symmetric":
        return np.hanning(length)
    n = np.arange(length)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)  # periodic, as scipy's fftbins=True


def _frame_count(n_samples: int, hop: int, framing: str) -> int:
    if framing == "tutorial":
        return -(-n_samples // hop) + 2
    return 1 + n_samples // hop


def stft(x: np.ndarray, *, n_fft: int = 1024, hop: int = 512, win_length: int | None = None,
         window: str = "hann_symmetric", framing: str = "tutorial") -> np.ndarray:
    """Short-time Fourier transform, time first.

    Parameters
    ----------
    x : ndarray [shape=(n,)]
    n_fft, hop, win_length : int
    window : {"hann_symmetric", "hann"}
    framing : {"tutorial", "center"}

    Returns
    -------
    ndarray [shape=(n_frames, 1 + n_fft // 2)], complex64

    Example
    -------
    >>> stft(np.zeros(132299, np.float32)).shape
    (261, 513)
    """
    cfg = Spectrogram(n_fft=n_fft, hop=hop, win_length=win_length, window=window,
                      framing=framing, magnitude_norm="none")
    x = _check_signal(x)
    out = np.empty((cfg.n_frames(len(x)), cfg.n_fft // 2 + 1), dtype=np.complex64)
    for start, spec in cfg._chunks(x):
        out[start:start + len(spec)] = spec
    return out


def hz_to_mel(f, htk: bool = False):
    """Hz to mel, Slaney's (linear below 1 kHz, log above) or HTK's formula."""
    f = np.asanyarray(f, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(f >= min_log_hz,
                    min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, mels)


def mel_to_hz(m, htk: bool = False):
    """Mel to Hz, the inverse of :func:`hz_to_mel`."""
    m = np.asanyarray(m, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = 96, fmin: float = 0.0,
                   fmax: float | None = None, htk: bool = False,
                   norm: str | None = "slaney") -> np.ndarray:
    """Triangular mel filters.

    Returns
    -------
    ndarray [shape=(n_mels, 1 + n_fft // 2)], float64
        Row ``m`` weights the FFT bins of band ``m``. ``norm="slaney"``
        scales each triangle to unit area (librosa's default).
    """
    if fmax is None:
        fmax = sample_rate / 2.0
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


def _check_signal(x) -> np.ndarray:
    if getattr(x, "ndim", None) == 1 and hasattr(x, "__getitem__") and not isinstance(x, np.ndarray) \
            and np.issubdtype(getattr(x, "dtype", np.dtype(object)), np.floating):
        return x  # a lazily decoded signal (memstore.audio.WavSignal): read chunk by chunk
    x = np.asarray(x)
    if x.ndim != 1:
        raise ParameterError(f"samples of shape {x.shape} must be one-dimensional (mono)")
    if not np.issubdtype(x.dtype, np.floating):
        raise ParameterError(f"samples of dtype {x.dtype} must be floating point")
    return x


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ParameterError(f"{name}={value!r} must be a positive integer")


@dataclass(frozen=True)
class Spectrogram:
    """Magnitude (``power=1``) or power (``power=2``) spectrogram.

    Parameters
    ----------
    sample_rate : int, optional
        Rate the transform expects; ``None`` takes the audio's rate.
    n_fft, hop : int
    win_length : int, optional
        Defaults to ``n_fft``.
    window : {"hann_symmetric", "hann"}
        ``np.hanning`` (the tutorial) or periodic Hann (librosa).
    framing : {"tutorial", "center"}
        ``ceil(N / hop) + 2`` frames (tutorial) or ``1 + N // hop`` (librosa ``center=True``).
    magnitude_norm : {"sqrt_nfft", "none"}
        Divide the magnitude by ``sqrt(n_fft)`` (the tutorial) or not.
    power : float
        1 for magnitude, 2 for power.
    log : {None, "log10p", "db"}
        ``log10(1 + log_c * x)`` (the tutorial's plots) or decibels (librosa's
        ``power_to_db``/``amplitude_to_db`` with ``ref=1, amin=1e-10, top_db``).

    Example
    -------
    >>> Spectrogram()(np.zeros(132299, np.float32), 44100).shape
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
        if self.sample_rate is not None:
            _positive_int("sample_rate", self.sample_rate)
        _positive_int("n_fft", self.n_fft)
        _positive_int("hop", self.hop)
        if self.win_length is not None:
            _positive_int("win_length", self.win_length)
            if self.win_length > self.n_fft:
                raise ParameterError(f"win_length={self.win_length} must be <= n_fft={self.n_fft}")
        for name, allowed in (("window", WINDOWS), ("framing", FRAMINGS),
                              ("magnitude_norm", MAGNITUDE_NORMS), ("log", LOGS)):
            if getattr(self, name) not in allowed:
                raise ParameterError(f"{name}={getattr(self, name)!r} must be one of {allowed}")
        if self.power not in (1, 2, 1.0, 2.0) or isinstance(self.power, bool):
            raise ParameterError(f"power={self.power!r} must be 1 (magnitude) or 2 (power)")
        if not (isinstance(self.log_c, int | float) and self.log_c > 0):
            raise ParameterError(f"log_c={self.log_c!r} must be a positive number")
        if self.top_db is not None and not (isinstance(self.top_db, int | float) and self.top_db >= 0):
            raise ParameterError(f"top_db={self.top_db!r} must be None or a non-negative number")

    # --- shape -----------------------------------------------------------
    @property
    def win(self) -> int:
        return self.n_fft if self.win_length is None else self.win_length

    @property
    def n_bins(self) -> int:
        """Features per frame."""
        return self.n_fft // 2 + 1

    def n_frames(self, n_samples: int) -> int:
        """Exact number of frames for a signal of ``n_samples``, without computing it."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 0:
            raise ParameterError(f"n_samples={n_samples!r} must be a non-negative integer")
        return _frame_count(int(n_samples), self.hop, self.framing)

    # --- computation -----------------------------------------------------
    def _frame_geometry(self) -> tuple[np.ndarray, int, int]:
        """(window of frame length, frame length, samples of padding in front)."""
        w = _window(self.window, self.win)
        if self.framing == "tutorial":
            return w, self.win, self.win // 2
        if self.win < self.n_fft:  # librosa centres a short window inside n_fft
            left = (self.n_fft - self.win) // 2
            w = np.pad(w, (left, self.n_fft - self.win - left))
        return w, self.n_fft, self.n_fft // 2

    def _chunks(self, x: np.ndarray):
        """Yield ``(first_frame, complex spectrum chunk)`` over the signal."""
        w, flen, pad = self._frame_geometry()
        w = w.astype(np.float32)
        total = self.n_frames(len(x))
        n = len(x)
        windowed = np.empty((min(total, CHUNK_FRAMES), flen), np.float32)  # reused: no page faults
        for f0 in range(0, total, CHUNK_FRAMES):
            f1 = min(total, f0 + CHUNK_FRAMES)
            s0 = f0 * self.hop - pad
            s1 = (f1 - 1) * self.hop - pad + flen
            buf = np.zeros(s1 - s0, dtype=np.float32)
            a, b = max(s0, 0), min(s1, n)
            if b > a:
                buf[a - s0:b - s0] = x[a:b]
            frames = np.lib.stride_tricks.sliding_window_view(buf, flen)[:: self.hop]
            wf = np.multiply(frames, w, out=windowed[: len(frames)])
            yield f0, scipy.fft.rfft(wf, n=self.n_fft, axis=1, overwrite_x=True)

    def _magnitude(self, spec: np.ndarray) -> np.ndarray:
        mag = np.abs(spec)
        if self.magnitude_norm == "sqrt_nfft":
            mag *= np.float32(1.0 / math.sqrt(self.n_fft))
        if self.power == 2:
            mag *= mag
        return mag

    def _project(self, spec: np.ndarray, rate: int, out: np.ndarray) -> None:
        out[:] = self._magnitude(spec)

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Compute the features of a mono signal.

        Parameters
        ----------
        samples : ndarray [shape=(n,)], floating point
        sample_rate : int

        Returns
        -------
        ndarray [shape=(n_frames, n_bins)], float32, C-contiguous
        """
        x = _check_signal(samples)
        _positive_int("sample_rate", sample_rate)
        if self.sample_rate is not None and sample_rate != self.sample_rate:
            raise ParameterError(
                f"sample_rate={sample_rate} differs from the transform's sample_rate={self.sample_rate}; "
                "resample first (read_audio(..., sample_rate=...))"
            )
        out = np.empty((self.n_frames(len(x)), self.n_bins), dtype=np.float32)
        self._prepare(int(sample_rate))
        for f0, spec in self._chunks(x):
            self._project(spec, int(sample_rate), out[f0:f0 + len(spec)])
        return self._compress(out)

    def _prepare(self, rate: int) -> None:
        pass

    def _compress(self, out: np.ndarray) -> np.ndarray:
        if self.log == "log10p":
            out *= np.float32(self.log_c)
            np.log1p(out, out=out)
            out *= np.float32(1.0 / math.log(10.0))
        elif self.log == "db":
            factor = np.float32(10.0 if self.power == 2 else 20.0)
            amin = np.float32(1e-10 if self.power == 2 else 1e-5)
            np.maximum(out, amin, out=out)
            np.log10(out, out=out)
            out *= factor
            if self.top_db is not None and out.size:
                np.maximum(out, out.max() - np.float32(self.top_db), out=out)
        return out

    # --- serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every setting, plus ``kind``, as plain JSON types."""
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class MelSpectrogram(Spectrogram):
    """Mel spectrogram; defaults are the tutorial's ``transformMEL(bins=96, frameSize=1024, hopSize=512)``.

    Parameters (in addition to :class:`Spectrogram`'s)
    ----------
    n_mels : int
    fmin, fmax : float
        Band limits in Hz; ``fmax=None`` is half the sample rate.
    mel_scale : {"slaney", "htk"}
    norm : {"slaney", None}
        Area normalisation of the triangles, or none.

    Example
    -------
    >>> mel = MelSpectrogram()
    >>> mel(np.zeros(132299, np.float32), 44100).shape
    (261, 96)
    >>> mel.n_frames(132299)
    261
    """

    n_mels: int = 96
    fmin: float = 0.0
    fmax: float | None = None
    mel_scale: str = "slaney"
    norm: str | None = "slaney"

    kind = "mel"

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int("n_mels", self.n_mels)
        if self.mel_scale not in ("slaney", "htk"):
            raise ParameterError(f"mel_scale={self.mel_scale!r} must be 'slaney' or 'htk'")
        if self.norm not in ("slaney", None):
            raise ParameterError(f"norm={self.norm!r} must be 'slaney' or None")
        if not isinstance(self.fmin, int | float) or self.fmin < 0:
            raise ParameterError(f"fmin={self.fmin!r} must be a non-negative number")
        if self.fmax is not None and (not isinstance(self.fmax, int | float) or self.fmax <= self.fmin):
            raise ParameterError(f"fmax={self.fmax!r} must be None or greater than fmin={self.fmin}")
        if self.sample_rate is not None and self.fmax is not None and self.fmax > self.sample_rate / 2:
            raise ParameterError(f"fmax={self.fmax} must be <= sample_rate / 2 = {self.sample_rate / 2}")
        object.__setattr__(self, "_cache", {})

    @classmethod
    def librosa(cls, **settings) -> MelSpectrogram:
        """librosa's conventions: periodic Hann, centred framing, power 2, no sqrt(n_fft).

        Any setting can still be overridden, e.g. ``MelSpectrogram.librosa(power=1.0)``.
        """
        base = dict(window="hann", framing="center", magnitude_norm="none", power=2.0)
        base.update(settings)
        return cls(**base)

    @property
    def n_bins(self) -> int:
        return self.n_mels

    def filterbank(self, sample_rate: int) -> np.ndarray:
        """The (n_mels, 1 + n_fft // 2) float64 filters for ``sample_rate``."""
        return mel_filterbank(sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax,
                              htk=self.mel_scale == "htk", norm=self.norm)

    def _sparse(self, rate: int):
        cache = self.__dict__["_cache"]
        if rate not in cache:
            cache[rate] = _to_sparse(self.filterbank(rate))
        return cache[rate]

    def _prepare(self, rate: int) -> None:
        if self.fmax is not None and self.fmax > rate / 2:
            raise ParameterError(f"fmax={self.fmax} must be <= sample_rate / 2 = {rate / 2}")
        self._sparse(rate)

    def _project(self, spec: np.ndarray, rate: int, out: np.ndarray) -> None:
        first, count, weights = self._sparse(rate)
        scale = 1.0 / math.sqrt(self.n_fft) if self.magnitude_norm == "sqrt_nfft" else 1.0
        _mel_project(np.ascontiguousarray(spec, dtype=np.complex64), first, count, weights, scale,
                     self.power == 2, out)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("_cache", None)
        return d

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())


def _to_sparse(fb: np.ndarray):
    """Each band's first non-zero bin, its number of bins, and the weights, packed (n_mels, width)."""
    nz = fb != 0
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), 0).astype(np.int64)
    last = np.where(nz.any(axis=1), fb.shape[1] - nz[:, ::-1].argmax(axis=1), 0).astype(np.int64)
    count = last - first
    weights = np.zeros((fb.shape[0], max(int(count.max()), 1)), np.float32)
    for m in range(fb.shape[0]):
        weights[m, : count[m]] = fb[m, first[m]: last[m]]
    return first, count, weights


@njit(nogil=True, cache=True)
def _mel_project(spec, first, count, weights, scale, power2, out):  # pragma: no cover - jitted
    """Mel bands from the complex spectrum in one pass: magnitude (float32),
    scaling, optional squaring, then each triangle's few bins summed in a fixed order.

    The filters are sparse (each FFT bin is in at most two triangles), so this
    does ~50x fewer operations than a dense matmul, and its result does not
    depend on how many BLAS threads a process has: stores built by local
    workers, a Dask cluster or one process are byte-identical.
    """
    n_bins = spec.shape[1]
    mag = np.empty(n_bins, np.float32)
    s32 = np.float32(scale)
    for t in range(spec.shape[0]):
        for f in range(n_bins):
            c = spec[t, f]
            v = np.sqrt(c.real * c.real + c.imag * c.imag) * s32
            mag[f] = v * v if power2 else v
        for m in range(first.shape[0]):
            acc = np.float32(0.0)
            f0 = first[m]
            for k in range(count[m]):
                acc += mag[f0 + k] * weights[m, k]
            out[t, m] = acc


_KINDS = {"spectrogram": Spectrogram, "mel": MelSpectrogram}


def transform_from_dict(d: dict[str, Any]) -> Spectrogram:
    """Rebuild and validate a transform from :meth:`Spectrogram.to_dict` output."""
    if not isinstance(d, dict):
        raise ParameterError(f"a transform configuration must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in _KINDS:
        raise ParameterError(f"kind={kind!r} must be one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ParameterError(f"unknown {kind} settings {unknown}; known: {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as err:
        raise ParameterError(f"bad {kind} configuration: {err}") from err


def transform_from_json(text: str) -> Spectrogram:
    """Rebuild and validate a transform from :meth:`Spectrogram.to_json` output."""
    if not isinstance(text, str) or len(text) > _MAX_JSON:
        raise ParameterError("a transform configuration must be a JSON string under 64 KiB")
    try:
        d = json.loads(text)
    except ValueError as err:
        raise ParameterError(f"transform configuration is not valid JSON: {err}") from err
    return transform_from_dict(d)
