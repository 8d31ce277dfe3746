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
Chunks of :data:`CHUNK_FRAMES` frames: a numba kernel copies each frame from
the signal and multiplies it by the window (zero padding is implicit), a
float32 ``scipy.fft.rfft`` with one worker transforms them (parallelism is
the builder's job: one process per core), and a second kernel takes the
magnitude and projects it on the mel triangles. The triangles are sparse —
each FFT bin lies in at most two of them — so the projection sums only their
non-zero weights, in a fixed order: about 50x fewer operations than a dense
matmul, and a result that does not depend on BLAS threads or chunk size, so
stores built by one process, several workers or a Dask cluster are
byte-identical. The output is allocated once; temporary memory is one chunk
(about 2 MB), whatever the length of the signal.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
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
#: the lowest value of ``log="db"``: 10 log10(1e-10) for power 2, 20 log10(1e-5) for power 1
DB_FLOOR = -100.0
MEL_SCALES = ("slaney", "htk")
#: Frames per chunk. 256 frames of 1024 samples keep the windowed frames
#: (1 MB) and their spectrum (1 MB) in the L2 cache between the three passes;
#: 2048 was 1.4x slower end to end (each pass streamed 8 MB through memory).
CHUNK_FRAMES = 256
_MAX_JSON = 1 << 16


# --- parameter checks (librosa-style messages: the value, then the rule) ----------------------------

def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ParameterError(f"{name}={value!r} must be a positive integer")
    return int(value)


def _finite(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
    """``value`` as a float, checked finite and (strictly) above ``minimum``."""
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating) \
        and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        rule = "a finite number"
        if minimum is not None:
            rule = f"a finite number {'>' if strict else '>='} {minimum:g}"
        raise ParameterError(f"{name}={value!r} must be {rule}")
    return float(value)


def _check_mel_norm(norm):
    if norm is None or (isinstance(norm, str) and norm == "slaney"):
        return norm
    if isinstance(norm, str | bool) or not isinstance(norm, int | float | np.integer | np.floating) \
            or not norm > 0:
        raise ParameterError(f"norm={norm!r} must be 'slaney', None or a positive number (p-norm, inf allowed)")
    return float(norm) if math.isinf(norm) else norm


def _check_signal(x):
    """A 1-D floating-point signal: an ndarray, or a lazily decoded one (memstore.audio.WavSignal)."""
    if not isinstance(x, np.ndarray) and getattr(x, "ndim", None) == 1 and hasattr(x, "__getitem__") \
            and hasattr(x, "__len__") and np.issubdtype(getattr(x, "dtype", np.dtype(object)), np.floating):
        return x  # sliced chunk by chunk below, so only one chunk of it is ever decoded
    x = np.asarray(x)
    if x.ndim != 1:
        raise ParameterError(f"samples of shape {x.shape} must be one-dimensional (mono); mix or pick a channel first")
    if not np.issubdtype(x.dtype, np.floating):
        raise ParameterError(f"samples of dtype {x.dtype} must be floating point (e.g. read_audio's float32)")
    return x


# --- mel scale and filters -------------------------------------------------------------------------

_F_SP = 200.0 / 3  # Slaney: 66.67 Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0  # Slaney: log spacing above 1 kHz, 27 steps to 6.4 kHz


def hz_to_mel(f, htk: bool = False):
    """Hz to mel: Slaney's scale (linear below 1 kHz, logarithmic above) or HTK's ``2595 log10(1 + f/700)``."""
    f = np.asanyarray(f, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    return np.where(f >= _MIN_LOG_HZ,
                    _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP, f / _F_SP)


def mel_to_hz(m, htk: bool = False):
    """Mel to Hz, the inverse of :func:`hz_to_mel`."""
    m = np.asanyarray(m, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = 96, fmin: float = 0.0,
                   fmax: float | None = None, htk: bool = False,
                   norm: str | float | None = "slaney") -> np.ndarray:
    """Triangular mel filters, as ``librosa.filters.mel``.

    Parameters
    ----------
    sample_rate : int
    n_fft : int
    n_mels : int
    fmin, fmax : float
        Lowest and highest band edge in Hz; ``fmax=None`` is ``sample_rate / 2``.
    htk : bool
        HTK's mel formula instead of Slaney's.
    norm : "slaney", None or a positive number
        ``"slaney"`` divides each triangle by its width in Hz / 2 (unit area;
        the tutorial's ``norm=1`` in the librosa of its day); a number ``p``
        scales each row to unit p-norm (librosa's ``norm=p`` today); ``None``
        leaves peaks at 1.

    Returns
    -------
    ndarray [shape=(n_mels, 1 + n_fft // 2)], float64
        Row ``m`` weights the FFT bins of band ``m``.

    Warns
    -----
    UserWarning
        When a band holds no FFT bin (too many mels for ``n_fft``), as librosa does.

    Example
    -------
    >>> mel_filterbank(44100, 1024, 96).shape
    (96, 513)
    """
    sample_rate = _positive_int("sample_rate", sample_rate)
    n_fft = _positive_int("n_fft", n_fft)
    n_mels = _positive_int("n_mels", n_mels)
    fmin = _finite("fmin", fmin, minimum=0.0)
    fmax = sample_rate / 2.0 if fmax is None else _finite("fmax", fmax, minimum=fmin, strict=True)
    norm = _check_mel_norm(norm)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    elif norm is not None:
        length = np.max(weights, axis=1) if math.isinf(norm) else np.sum(weights ** norm, axis=1) ** (1.0 / norm)
        length[length < np.finfo(weights.dtype).tiny] = 1.0  # an empty band stays empty, as in librosa
        weights /= length[:, None]
    if not np.all((edges[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn(f"n_mels={n_mels} gives empty mel bands for n_fft={n_fft} at {sample_rate} Hz; "
                      "use fewer mels or a larger n_fft", UserWarning, stacklevel=2)
    return weights


def _to_sparse(fb: np.ndarray):
    """Each band's first non-zero bin, its number of bins, and the weights packed (n_mels, width), float32."""
    nz = fb != 0
    has = nz.any(axis=1)
    first = np.where(has, nz.argmax(axis=1), 0).astype(np.int64)
    last = np.where(has, fb.shape[1] - nz[:, ::-1].argmax(axis=1), 0).astype(np.int64)
    count = last - first
    weights = np.zeros((fb.shape[0], max(int(count.max()), 1)), np.float32)
    for m in range(fb.shape[0]):
        weights[m, : count[m]] = fb[m, first[m]: last[m]]
    return first, count, weights


def _window(kind: str, length: int) -> np.ndarray:
    if kind == "hann_symmetric":
        return np.hanning(length)
    n = np.arange(length)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)  # periodic: scipy's get_window("hann", fftbins=True)


# --- kernels (plain arrays in, validated by the callers) ---------------------------------------------

@njit(nogil=True, cache=True)
def _frame_window(seg, offset, hop, window, out):  # pragma: no cover - jitted
    """``out[t, i] = seg[offset + t * hop + i] * window[i]``, zero where that index is outside ``seg``.

    ``seg`` holds the samples the chunk overlaps; the padding of the framing
    (zeros before the signal and after it) is the out-of-range part.
    """
    n = seg.shape[0]
    length = window.shape[0]
    zero = np.float32(0.0)
    for t in range(out.shape[0]):
        s = offset + t * hop
        if s >= 0 and s + length <= n:
            for i in range(length):
                out[t, i] = seg[s + i] * window[i]
        else:
            for i in range(length):
                j = s + i
                out[t, i] = seg[j] * window[i] if 0 <= j < n else zero


@njit(nogil=True, cache=True)
def _mel_project(spec, first, count, weights, scale, power2, out, mag):  # pragma: no cover - jitted
    """Mel bands of the complex spectrum ``spec`` (T, n_bins) into ``out`` (T, n_mels).

    Four frames at a time: their magnitudes (float32, scaled, squared if
    ``power2``) go to the scratch ``mag`` (4, n_bins), then each band sums its
    few non-zero weights for the four frames together. Four independent sums
    keep the adder busy (one sum is bound by the add latency); each sum still
    runs over its bins in a fixed order, so the result is the same for any
    chunking.
    """
    n_frames, n_bins = spec.shape
    s32 = np.float32(scale)
    for t0 in range(0, n_frames, 4):
        g = min(4, n_frames - t0)
        for i in range(4):
            if i < g:
                for f in range(n_bins):
                    c = spec[t0 + i, f]
                    v = np.sqrt(c.real * c.real + c.imag * c.imag) * s32
                    mag[i, f] = v * v if power2 else v
            else:
                for f in range(n_bins):
                    mag[i, f] = 0.0
        for m in range(first.shape[0]):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            f0 = first[m]
            for k in range(count[m]):
                w = weights[m, k]
                a0 += mag[0, f0 + k] * w
                a1 += mag[1, f0 + k] * w
                a2 += mag[2, f0 + k] * w
                a3 += mag[3, f0 + k] * w
            out[t0, m] = a0
            if g > 1:
                out[t0 + 1, m] = a1
            if g > 2:
                out[t0 + 2, m] = a2
            if g > 3:
                out[t0 + 3, m] = a3


# --- transforms ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spectrogram:
    """Magnitude (``power=1``) or power (``power=2``) spectrogram; defaults are the tutorial's ``stft_norm``.

    Parameters
    ----------
    sample_rate : int, optional
        Rate the transform expects; ``None`` (default) takes the audio's rate.
        A store records the resolved rate (``dataclasses.replace``).
    n_fft : int
        FFT length, 1024.
    hop : int
        Samples between frames, 512.
    win_length : int, optional
        Window length <= n_fft; ``None`` is ``n_fft``.
    window : {"hann_symmetric", "hann"}
        ``np.hanning`` (the tutorial, default) or periodic Hann (librosa's ``"hann"``).
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
        The ``C`` of ``"log10p"``, 100.
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
        # Normalised in place (numpy ints to int, numbers to float) so that
        # to_json() is canonical and transform_from_json(t.to_json()) == t.
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.sample_rate is not None:
            put("sample_rate", _positive_int("sample_rate", self.sample_rate))
        put("n_fft", _positive_int("n_fft", self.n_fft))
        put("hop", _positive_int("hop", self.hop))
        if self.win_length is not None:
            put("win_length", _positive_int("win_length", self.win_length))
            if self.win_length > self.n_fft:
                raise ParameterError(f"win_length={self.win_length} must be <= n_fft={self.n_fft}")
        for name, allowed in (("window", WINDOWS), ("framing", FRAMINGS),
                              ("magnitude_norm", MAGNITUDE_NORMS), ("log", LOGS)):
            value = getattr(self, name)
            if not (value is None or isinstance(value, str)) or value not in allowed:
                raise ParameterError(f"{name}={value!r} must be one of {allowed}")
        if isinstance(self.power, bool) or self.power not in (1, 2):
            raise ParameterError(f"power={self.power!r} must be 1 (magnitude) or 2 (power)")
        put("power", float(self.power))
        put("log_c", _finite("log_c", self.log_c, minimum=0.0, strict=True))
        if self.top_db is not None:
            put("top_db", _finite("top_db", self.top_db, minimum=0.0))
        put("_cache", {})

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
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 0:
            raise ParameterError(f"n_samples={n_samples!r} must be a non-negative integer")
        n = int(n_samples)
        if self.framing == "tutorial":
            return -(-n // self.hop) + 2
        return max(0, 1 + (n - self.n_fft % 2) // self.hop)

    # --- computation ----------------------------------------------------------------------------
    def _geometry(self) -> tuple[np.ndarray, int]:
        """(float32 window as long as a frame, samples of padding before the signal)."""
        cache = self.__dict__["_cache"]
        if "geometry" not in cache:
            w = _window(self.window, self.win)
            if self.framing == "tutorial":
                pad = self.win // 2
            else:  # librosa centres a short window inside n_fft, and the frame on the sample
                left = (self.n_fft - self.win) // 2
                w = np.pad(w, (left, self.n_fft - self.win - left))
                pad = self.n_fft // 2
            cache["geometry"] = (np.ascontiguousarray(w, dtype=np.float32), pad)
        return cache["geometry"]

    def _spectra(self, x):
        """Yield ``(first frame, complex64 spectra of a chunk of frames)`` over the signal ``x``."""
        w, pad = self._geometry()
        flen, hop, n = len(w), self.hop, len(x)
        total = self.n_frames(n)
        frames = np.empty((min(total, CHUNK_FRAMES), flen), np.float32)  # reused: no page faults per chunk
        for f0 in range(0, total, CHUNK_FRAMES):
            count = min(CHUNK_FRAMES, total - f0)
            s0 = f0 * hop - pad  # first sample of the chunk's first frame (negative: padding)
            s1 = s0 + (count - 1) * hop + flen
            a, b = max(s0, 0), min(s1, n)
            seg = np.ascontiguousarray(x[a:b] if b > a else np.zeros(0, np.float32), dtype=np.float32)
            _frame_window(seg, s0 - a, hop, w, frames[:count])
            yield f0, scipy.fft.rfft(frames[:count], n=self.n_fft, axis=1, overwrite_x=True, workers=1)

    def _begin(self, rate: int) -> None:
        """Check settings that depend on the rate and prepare what the chunks need."""

    def _project(self, spec: np.ndarray, rate: int, out: np.ndarray) -> None:
        np.abs(spec, out=out)
        if self.magnitude_norm == "sqrt_nfft":
            out *= np.float32(1.0 / math.sqrt(self.n_fft))
        if self.power == 2:
            np.square(out, out=out)

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
        x = _check_signal(samples)
        rate = _positive_int("sample_rate", sample_rate)
        if self.sample_rate is not None and rate != self.sample_rate:
            raise ParameterError(
                f"sample_rate={rate} differs from the transform's sample_rate={self.sample_rate}; "
                "resample first (read_audio(..., sample_rate=...))"
            )
        self._begin(rate)
        out = np.empty((self.n_frames(len(x)), self.n_bins), dtype=np.float32)
        for f0, spec in self._spectra(x):
            self._project(spec, rate, out[f0:f0 + len(spec)])
        return self._compress(out)

    def _compress(self, out: np.ndarray) -> np.ndarray:
        if self.log == "log10p":
            out *= np.float32(self.log_c)
            np.log1p(out, out=out)
            out *= np.float32(1.0 / math.log(10.0))
        elif self.log == "db":
            # 20 log10(max(x, 1e-5)) == 10 log10(max(x**2, 1e-10)): the same decibels for both powers
            factor = np.float32(10.0 if self.power == 2 else 20.0)
            np.maximum(out, np.float32(1e-10 if self.power == 2 else 1e-5), out=out)
            np.log10(out, out=out)
            out *= factor
            # the floor is -100 dB exactly: numpy's AVX-512 float32 log10 gives log10(1e-10) = -10.000001, one
            # ulp below the baseline kernels, so clip to the exact constant to make the floor the same on every CPU
            np.maximum(out, np.float32(DB_FLOOR), out=out)
            if self.top_db is not None and out.size:
                np.maximum(out, out.max() - np.float32(self.top_db), out=out)
        return out

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
        Number of bands, 96.
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

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "n_mels", _positive_int("n_mels", self.n_mels))
        if not isinstance(self.mel_scale, str) or self.mel_scale not in MEL_SCALES:
            raise ParameterError(f"mel_scale={self.mel_scale!r} must be one of {MEL_SCALES}")
        norm = _check_mel_norm(self.norm)
        if isinstance(norm, float) and math.isinf(norm):
            raise ParameterError("norm=inf cannot be stored as JSON; use mel_filterbank(norm=np.inf) directly")
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "fmin", _finite("fmin", self.fmin, minimum=0.0))
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

    def _check_rate(self, rate: int) -> None:
        if self.fmax is not None and self.fmax > rate / 2:
            raise ParameterError(f"fmax={self.fmax:g} must be <= sample_rate / 2 = {rate / 2:g}")
        if self.fmin >= (self.fmax if self.fmax is not None else rate / 2):
            raise ParameterError(f"fmin={self.fmin:g} must be below sample_rate / 2 = {rate / 2:g}")

    def filterbank(self, sample_rate: int) -> np.ndarray:
        """The ``(n_mels, 1 + n_fft // 2)`` float64 filters for ``sample_rate`` (see :func:`mel_filterbank`)."""
        return mel_filterbank(sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax,
                              htk=self.mel_scale == "htk", norm=self.norm)

    def _begin(self, rate: int) -> None:
        self._check_rate(rate)
        cache = self.__dict__["_cache"]
        if rate not in cache:
            cache[rate] = _to_sparse(self.filterbank(rate))

    def _project(self, spec: np.ndarray, rate: int, out: np.ndarray) -> None:
        first, count, weights = self.__dict__["_cache"][rate]
        scale = 1.0 / math.sqrt(self.n_fft) if self.magnitude_norm == "sqrt_nfft" else 1.0
        mag = np.empty((4, spec.shape[1]), np.float32)
        _mel_project(spec, first, count, weights, scale, self.power == 2, out, mag)


# --- configuration from JSON -----------------------------------------------------------------------

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
    except ValueError as err:
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
    x = _check_signal(x)
    out = np.empty((cfg.n_frames(len(x)), cfg.n_bins), dtype=np.complex64)
    for f0, spec in cfg._spectra(x):
        out[f0:f0 + len(spec)] = spec
    return out
