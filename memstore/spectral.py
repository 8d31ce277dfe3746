"""The numerics behind :mod:`memstore.features`: windows, mel filters, numba kernels and the chunk loop.

Three things here validate: the public :func:`mel_filterbank` (re-exported
by :mod:`memstore.features`, where users find it) and the checks
:func:`finite`, :func:`check_mel_norm` and :func:`check_signal`, which the
transforms use too. Everything else trusts its arguments: the transforms in
:mod:`memstore.features` validate their settings before they call it.

Nothing here keeps state in an object. What a signal's computation reuses
(the window, a rate's sparse mel filters) comes from :func:`frame_geometry`
and :func:`mel_bands`, module-level caches keyed on the plain settings; their
arrays are shared by every caller, so they are read-only.

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

The kernels are compiled by :func:`memstore._jit.njit`, so
``MEMSTORE_DISABLE_JIT=1`` runs them as plain Python.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import scipy.fft

from ._jit import njit
from ._validate import int_up_to, positive_int
from .errors import ParameterError

__all__ = ["CHUNK_FRAMES", "DB_FLOOR", "MAX_SAMPLE_RATE", "MAX_N_FFT", "MAX_HOP", "MAX_MEL_WEIGHTS", "finite",
           "check_rate", "check_n_fft", "check_mel_size", "check_mel_norm", "check_signal", "mel_filterbank",
           "hz_to_mel", "mel_to_hz", "mel_weights", "mel_bands", "frame_geometry", "spectra", "magnitude",
           "mel_project", "compress"]

#: Frames per chunk. 256 frames of 1024 samples keep the windowed frames
#: (1 MB) and their spectrum (1 MB) in the L2 cache between the three passes;
#: 2048 was 1.4x slower end to end (each pass streamed 8 MB through memory).
CHUNK_FRAMES = 256
#: the lowest value of ``log="db"``: 10 log10(1e-10) for power 2, 20 log10(1e-5) for power 1
DB_FLOOR = -100.0

# Upper bounds of the settings. Past them a setting asks for memory or disk no machine has (a rate of
# 10**9 Hz allocated a 9 GB store for a few seconds of audio; n_fft=10**9 asked for 33 GiB), or
# overflows the kernels' 64-bit sample positions (a hop of 2**62 read before the signal's buffer).
#: the highest sample rate a transform or a build takes (ultrasound recordings use up to 1 MHz)
MAX_SAMPLE_RATE = 2_000_000
#: the longest FFT: 131,072 samples (3 s at 44.1 kHz); a chunk of frames then holds 256 MB
MAX_N_FFT = 1 << 17
#: the longest hop: 2**30 samples (6.7 hours at 44.1 kHz); frame starts then stay far inside int64
MAX_HOP = 1 << 30
#: the most weights in a mel filter bank (``n_mels * (1 + n_fft // 2)``): built dense in float64, 512 MiB
MAX_MEL_WEIGHTS = 1 << 26

# --- parameter checks (librosa-style messages: the value, then the rule) ----------------------------

def finite(name: str, value, *, minimum: float | None = None, strict: bool = False) -> float:
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


def check_rate(name: str, rate) -> int:
    """A sample rate as an ``int`` in ``[1, MAX_SAMPLE_RATE]``."""
    return int_up_to(name, rate, MAX_SAMPLE_RATE, "the highest rate memstore takes, in Hz")


def check_n_fft(n_fft) -> int:
    """An FFT length as an ``int`` in ``[1, MAX_N_FFT]``."""
    return int_up_to("n_fft", n_fft, MAX_N_FFT, "the longest FFT memstore takes")


def check_mel_size(n_mels, n_fft: int) -> int:
    """``n_mels`` as an ``int``; its bank of ``n_mels * (1 + n_fft // 2)`` weights at most :data:`MAX_MEL_WEIGHTS`."""
    n_mels = positive_int("n_mels", n_mels)
    if n_mels * (n_fft // 2 + 1) > MAX_MEL_WEIGHTS:
        raise ParameterError(f"n_mels={n_mels} with n_fft={n_fft} makes a filter bank of "
                             f"{n_mels * (n_fft // 2 + 1):,} weights, more than {MAX_MEL_WEIGHTS:,} "
                             "(it is built dense in float64); use fewer mels or a smaller n_fft")
    return n_mels


def check_mel_norm(norm):
    """``norm`` of :func:`mel_filterbank` checked: "slaney", None, or a positive number (inf as float).

    numpy numbers come back as Python's (``int`` or ``float``), so a transform holding one still
    writes JSON; Python numbers come back as given (``norm=2`` and ``norm=2.0`` stay apart, as in
    the JSON of stores already written).
    """
    if norm is None or (isinstance(norm, str) and norm == "slaney"):
        return norm
    if isinstance(norm, str | bool | np.bool_) or not isinstance(norm, int | float | np.integer | np.floating) \
            or not norm > 0:
        raise ParameterError(f"norm={norm!r} must be 'slaney', None or a positive number (p-norm, inf allowed)")
    if isinstance(norm, np.integer):
        return int(norm)
    return float(norm) if math.isinf(norm) or isinstance(norm, np.floating) else norm


def check_signal(x):
    """A 1-D floating-point signal: an ndarray, or a lazily decoded one (memstore.audio.WavSignal)."""
    if not isinstance(x, np.ndarray) and getattr(x, "ndim", None) == 1 and hasattr(x, "__getitem__") \
            and hasattr(x, "__len__") and np.issubdtype(getattr(x, "dtype", np.dtype(object)), np.floating):
        return x  # sliced chunk by chunk by spectra(), so only one chunk of it is ever decoded
    x = np.asarray(x)
    if x.ndim != 1:
        raise ParameterError(f"samples of shape {x.shape} must be one-dimensional (mono); mix or pick a channel first")
    if not np.issubdtype(x.dtype, np.floating):
        raise ParameterError(f"samples of dtype {x.dtype} must be floating point (e.g. read_audio's float32)")
    return x


# --- the public filterbank: validated, then the maths below ----------------------------------------

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
        leaves peaks at 1. A ``p`` so small that a band's weights fall below
        float32's range (``p=0.01``: all zeros in the features) is refused.

    Returns
    -------
    ndarray [shape=(n_mels, 1 + n_fft // 2)], float64
        Row ``m`` weights the FFT bins of band ``m``.

    Warns
    -----
    UserWarning
        When a band holds no FFT bin (too many mels for ``n_fft``), as librosa does.

    Raises
    ------
    ParameterError
        A bad setting, one past the limits (``MAX_SAMPLE_RATE``, ``MAX_N_FFT``,
        ``MAX_MEL_WEIGHTS``), or a ``norm`` that scales a band to zero.

    Example
    -------
    >>> mel_filterbank(44100, 1024, 96).shape
    (96, 513)
    """
    sample_rate = check_rate("sample_rate", sample_rate)
    n_fft = check_n_fft(n_fft)
    n_mels = check_mel_size(n_mels, n_fft)
    fmin = finite("fmin", fmin, minimum=0.0)
    fmax = sample_rate / 2.0 if fmax is None else finite("fmax", fmax, minimum=fmin, strict=True)
    norm = check_mel_norm(norm)
    return mel_weights(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm)


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


def mel_weights(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool,
                norm) -> np.ndarray:
    """The ``(n_mels, 1 + n_fft // 2)`` float64 triangles of :func:`mel_filterbank`.

    Trusts validated settings (``fmax`` resolved, ``norm`` as :func:`check_mel_norm`
    returns it). Warns as librosa does when a band holds no FFT bin, naming
    the line that called its caller (the user's call of :func:`mel_filterbank`).
    """
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
        peak = weights.max(axis=1)
        with np.errstate(over="ignore"):  # a tiny p overflows the sum's power: refused below
            length = peak.copy() if math.isinf(norm) else np.sum(weights ** norm, axis=1) ** (1.0 / norm)
        length[length < np.finfo(weights.dtype).tiny] = 1.0  # an empty band stays empty, as in librosa
        weights /= length[:, None]
        lost = (peak > 0) & ~(weights.max(axis=1) >= np.finfo(np.float32).tiny)
        if lost.any():  # the features are float32: the band would be all zeros, without a word
            raise ParameterError(f"norm={norm!r} scales mel band {int(np.argmax(lost))} to zero in float32 "
                                 "(a p-norm with p this small grows past any weight); use p >= 1, 'slaney' or None")
    if not np.all((edges[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn(f"n_mels={n_mels} gives empty mel bands for n_fft={n_fft} at {sample_rate} Hz; "
                      "use fewer mels or a larger n_fft", UserWarning, stacklevel=3)
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


def _read_only(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


@functools.lru_cache(maxsize=32, typed=True)
def mel_bands(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool,
              norm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sparse form of :func:`mel_weights` that :func:`mel_project` takes: ``(first, count, weights)``.

    ``fmax=None`` is ``sample_rate / 2``. Cached per settings (``typed``, so
    ``norm=2`` and ``norm=2.0`` are computed apart, as they were asked);
    the arrays are shared and read-only. Settings that leave a band empty
    warn the first time they are computed in a process (every time when
    warnings are errors: a call that raises is not cached).
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    bands = _to_sparse(mel_weights(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm))
    _read_only(*bands)
    return bands


def _window(kind: str, length: int) -> np.ndarray:
    if kind == "hann_symmetric":
        return np.hanning(length)
    if length == 1:  # scipy's get_window("hann", 1) (and so librosa's): the formula below would give [0]
        return np.ones(1)
    n = np.arange(length)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)  # periodic: scipy's get_window("hann", fftbins=True)


@functools.lru_cache(maxsize=32)
def frame_geometry(window: str, win: int, n_fft: int, framing: str) -> tuple[np.ndarray, int]:
    """(read-only float32 window as long as a frame, samples of padding before the signal)."""
    w = _window(window, win)
    if framing == "tutorial":
        pad = win // 2
    else:  # librosa centres a short window inside n_fft, and the frame on the sample
        left = (n_fft - win) // 2
        w = np.pad(w, (left, n_fft - win - left))
        pad = n_fft // 2
    w = np.ascontiguousarray(w, dtype=np.float32)
    _read_only(w)
    return w, pad


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


# --- the chunk loop and the per-chunk steps ----------------------------------------------------------

def spectra(x, window: np.ndarray, pad: int, hop: int, n_fft: int, total: int):
    """Yield ``(first frame, complex64 spectra of a chunk of frames)`` for the ``total`` frames of ``x``.

    ``x`` is a 1-D float signal (an ndarray or anything sliced with step 1,
    such as :class:`memstore.audio.WavSignal`): only the samples one chunk
    overlaps are read and converted to float32 at a time.
    """
    flen, n = len(window), len(x)
    frames = np.empty((min(total, CHUNK_FRAMES), flen), np.float32)  # reused: no page faults per chunk
    for f0 in range(0, total, CHUNK_FRAMES):
        count = min(CHUNK_FRAMES, total - f0)
        s0 = f0 * hop - pad  # first sample of the chunk's first frame (negative: padding)
        s1 = s0 + (count - 1) * hop + flen
        a, b = max(s0, 0), min(s1, n)
        seg = np.ascontiguousarray(x[a:b] if b > a else np.zeros(0, np.float32), dtype=np.float32)
        _frame_window(seg, s0 - a, hop, window, frames[:count])
        yield f0, scipy.fft.rfft(frames[:count], n=n_fft, axis=1, overwrite_x=True, workers=1)


def magnitude(spec: np.ndarray, out: np.ndarray, *, n_fft: int, sqrt_nfft: bool, power2: bool) -> None:
    """``|spec|`` into ``out`` (float32), divided by ``sqrt(n_fft)`` if asked, squared for power 2."""
    np.abs(spec, out=out)
    if sqrt_nfft:
        out *= np.float32(1.0 / math.sqrt(n_fft))
    if power2:
        np.square(out, out=out)


def mel_project(spec: np.ndarray, out: np.ndarray, *, bands, n_fft: int, sqrt_nfft: bool, power2: bool) -> None:
    """The mel bands (``bands`` from :func:`mel_bands`) of ``|spec|``, scaled and squared as :func:`magnitude`."""
    first, count, weights = bands
    scale = 1.0 / math.sqrt(n_fft) if sqrt_nfft else 1.0
    mag = np.empty((4, spec.shape[1]), np.float32)
    _mel_project(spec, first, count, weights, scale, power2, out, mag)


def compress(out: np.ndarray, *, log: str | None, log_c: float, power2: bool, top_db: float | None) -> np.ndarray:
    """Apply ``log`` (None, ``"log10p"`` or ``"db"``; see :class:`memstore.features.Spectrogram`) in place."""
    if log == "log10p":
        out *= np.float32(log_c)
        np.log1p(out, out=out)
        out *= np.float32(1.0 / math.log(10.0))
    elif log == "db":
        # 20 log10(max(x, 1e-5)) == 10 log10(max(x**2, 1e-10)): the same decibels for both powers
        factor = np.float32(10.0 if power2 else 20.0)
        np.maximum(out, np.float32(1e-10 if power2 else 1e-5), out=out)
        np.log10(out, out=out)
        out *= factor
        # the floor is -100 dB exactly: numpy's AVX-512 float32 log10 gives log10(1e-10) = -10.000001, one
        # ulp below the baseline kernels, so clip to the exact constant to make the floor the same on every CPU
        np.maximum(out, np.float32(DB_FLOOR), out=out)
        if top_db is not None and out.size:
            np.maximum(out, out.max() - np.float32(top_db), out=out)
    return out
