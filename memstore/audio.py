"""Reading and writing audio: the only module that knows audio formats.

WAV files are parsed by hand (RIFF chunks, ``fmt``, ``data``), so every
common sample format reads the same way and every broken file gets a clear
:class:`~memstore.errors.AudioDecodeError` naming the file and the reason.
Samples are read through a memory map in chunks, so a long file costs its
float32 output plus one small chunk.

Scaling
-------
Integer samples are divided by ``2**(bits - 1)``; unsigned 8-bit samples
become ``(x - 128) / 128``. Float samples are taken as they are and must be
finite.

Mono
----
``mono=True`` returns the **mean** of the channels. The tutorial sums them;
a sum can leave [-1, 1] and scales with the channel count, so the features of
a mono and a stereo recording of the same sound would differ by a factor of
two. The mean keeps samples in range and features comparable across files.

Other formats (FLAC, OGG, MP3) are read through ``soundfile`` when the
``audio`` extra is installed.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import AudioDecodeError, MissingDependencyError, ParameterError

__all__ = [
    "AudioInfo",
    "read_audio",
    "audio_info",
    "write_wav",
    "resampled_length",
    "audio_extensions",
    "open_signal",
    "WavSignal",
]

_PCM = 0x0001
_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
_CODEC_NAMES = {
    0x0002: "MS ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0055: "MPEG layer 3",
}
MAX_CHANNELS = 8
#: frames converted per chunk when reading (bounds the temporary memory)
CHUNK_FRAMES = 1 << 20
_SOUNDFILE_EXTENSIONS = (".flac", ".ogg", ".mp3")


class AudioInfo(NamedTuple):
    """What the header of an audio file says."""

    n_samples: int
    sample_rate: int
    channels: int
    sample_format: str


class _Wav(NamedTuple):
    info: AudioInfo
    data_offset: int
    dtype: str  # numpy dtype string of one stored sample, or "pcm24"


def audio_extensions() -> tuple[str, ...]:
    """File extensions memstore reads: ``.wav``, plus soundfile's formats if installed."""
    try:
        import soundfile  # noqa: F401
    except ImportError:
        return (".wav",)
    return (".wav",) + _SOUNDFILE_EXTENSIONS


def _fail(path, reason: str) -> AudioDecodeError:
    return AudioDecodeError(f"{os.fsdecode(path)}: {reason}")


def _parse_wav(path) -> _Wav:
    try:
        size = os.stat(path).st_size
        if os.path.isdir(path):
            raise _fail(path, "is a directory, not an audio file")
        f = open(path, "rb")  # noqa: SIM115
    except AudioDecodeError:
        raise
    except OSError as err:
        raise _fail(path, f"cannot open: {err.strerror or err}") from err
    with f:
        head = f.read(12)
        if len(head) < 12:
            raise _fail(path, f"truncated header ({len(head)} bytes, a WAV header needs 44)")
        if head[:4] == b"RIFX":
            raise _fail(path, "RIFX (big-endian) WAV is not supported")
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise _fail(path, "not a RIFF/WAVE file")
        fmt = None
        pos = 12
        while True:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                if fmt is None:
                    raise _fail(path, "truncated header: no 'fmt ' chunk")
                raise _fail(path, "no 'data' chunk")
            cid, clen = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            body = pos + 8
            if cid == b"fmt ":
                if clen < 16:
                    raise _fail(path, f"'fmt ' chunk of {clen} bytes is too short (16 needed)")
                raw = f.read(min(clen, 40))
                if len(raw) < 16:
                    raise _fail(path, "truncated header inside the 'fmt ' chunk")
                fmt = raw
            elif cid == b"data":
                if fmt is None:
                    raise _fail(path, "'data' chunk comes before the 'fmt ' chunk")
                tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
                if tag == _EXTENSIBLE:
                    if len(fmt) < 40:
                        raise _fail(path, "WAVE_FORMAT_EXTENSIBLE header is truncated")
                    tag = struct.unpack("<H", fmt[24:26])[0]
                    valid_bits = struct.unpack("<H", fmt[18:20])[0]
                    if valid_bits and valid_bits != bits:
                        # container size decides the scaling; samples are left-justified
                        pass
                if tag not in (_PCM, _FLOAT):
                    name = _CODEC_NAMES.get(tag, f"format tag 0x{tag:04x}")
                    raise _fail(path, f"unsupported codec {name}; only PCM and IEEE float are read")
                if not 1 <= channels <= MAX_CHANNELS:
                    raise _fail(path, f"{channels} channels; 1 to {MAX_CHANNELS} are supported")
                if rate <= 0:
                    raise _fail(path, f"sample rate {rate} must be positive")
                if tag == _PCM and bits in (8, 16, 24, 32):
                    dtype = {8: "u1", 16: "<i2", 24: "pcm24", 32: "<i4"}[bits]
                    sample_format = {8: "u8", 16: "pcm16", 24: "pcm24", 32: "pcm32"}[bits]
                elif tag == _FLOAT and bits in (32, 64):
                    dtype = {32: "<f4", 64: "<f8"}[bits]
                    sample_format = f"float{bits}"
                else:
                    kind = "PCM" if tag == _PCM else "float"
                    raise _fail(path, f"unsupported sample size: {bits}-bit {kind}")
                frame_bytes = channels * (bits // 8)
                if align != frame_bytes:
                    raise _fail(path, f"block align {align} does not match {channels} x {bits} bits")
                available = size - body
                if clen > available:
                    raise _fail(
                        path,
                        f"data chunk shorter than declared ({available} of {clen} bytes present);"
                        " the file is truncated",
                    )
                n = clen // frame_bytes
                if n == 0:
                    raise _fail(path, "zero samples")
                return _Wav(AudioInfo(n, rate, channels, sample_format), body, dtype)
            pos = body + clen + (clen & 1)  # chunks are padded to even sizes
            if pos > size:
                raise _fail(path, f"chunk {cid!r} runs past the end of the file")


def audio_info(path) -> AudioInfo:
    """Read an audio file's header only.

    Parameters
    ----------
    path : str or os.PathLike
        A WAV file (or FLAC/OGG/MP3 with the ``audio`` extra).

    Returns
    -------
    AudioInfo
        ``(n_samples, sample_rate, channels, sample_format)``; no sample data is read.

    Raises
    ------
    AudioDecodeError
        If the file is missing, unreadable, not audio, truncated or of an
        unsupported codec.

    Example
    -------
    >>> audio_info("001__[vio][nod][cou_fol]2194__1.wav")   # doctest: +SKIP
    AudioInfo(n_samples=132299, sample_rate=44100, channels=2, sample_format='pcm16')
    """
    if _is_soundfile_path(path):
        sf = _soundfile(path)
        try:
            meta = sf.info(os.fspath(path))
        except Exception as err:  # soundfile raises its own RuntimeError subclasses
            raise _fail(path, f"cannot decode: {err}") from err
        if meta.frames <= 0:
            raise _fail(path, "zero samples")
        return AudioInfo(int(meta.frames), int(meta.samplerate), int(meta.channels), meta.subtype.lower())
    return _parse_wav(path).info


def read_audio(path, *, mono: bool = True, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 samples in [-1, 1].

    Parameters
    ----------
    path : str or os.PathLike
    mono : bool
        Mean of the channels (see the module notes), shape ``(n,)``; with
        ``False`` the shape is ``(n, channels)``.
    sample_rate : int, optional
        Resample to this rate with :func:`scipy.signal.resample_poly`.

    Returns
    -------
    samples : ndarray [shape=(n,) or (n, channels)], float32
    rate : int

    Example
    -------
    >>> audio, rate = read_audio("tone.wav")        # doctest: +SKIP
    """
    if sample_rate is not None and (not isinstance(sample_rate, int | np.integer) or sample_rate <= 0):
        raise ParameterError(f"sample_rate={sample_rate!r} must be a positive integer")
    if _is_soundfile_path(path):
        out, rate = _read_soundfile(path, mono)
    else:
        wav = _parse_wav(path)
        out = _decode(path, wav, mono)
        rate = wav.info.sample_rate
    if sample_rate is not None and sample_rate != rate:
        out = _resample(out, rate, int(sample_rate))
        rate = int(sample_rate)
    return out, rate


def _decode(path, wav: _Wav, mono: bool, first: int = 0, last: int | None = None) -> np.ndarray:
    n, ch = wav.info.n_samples, wav.info.channels
    last = n if last is None else last
    width = 3 if wav.dtype == "pcm24" else np.dtype(wav.dtype).itemsize
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=wav.data_offset, shape=(n * ch * width,))
    except (OSError, ValueError) as err:
        raise _fail(path, f"cannot map the sample data: {err}") from err
    out = np.empty((last - first,) if mono else (last - first, ch), dtype=np.float32)
    try:
        for start in range(first, last, CHUNK_FRAMES):
            stop = min(last, start + CHUNK_FRAMES)
            block = raw[start * ch * width: stop * ch * width]
            if wav.dtype == "pcm24":
                b = block.reshape(-1, 3).astype(np.int32)
                x = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 bits
                x = x.astype(np.float32) * np.float32(1 / 8388608)
            else:
                x = np.frombuffer(block, dtype=wav.dtype)
                if wav.dtype == "u1":
                    x = (x.astype(np.float32) - 128) * np.float32(1 / 128)
                elif wav.dtype[1] == "i":
                    # one rounding to float32 (exact for 8/16/24-bit), then an exact power-of-two scale
                    x = x.astype(np.float32) * np.float32(1.0 / float(2 ** (8 * width - 1)))
                else:
                    if not np.isfinite(x).all():
                        raise _fail(path, "float data contains NaN or infinite samples")
                    x = x.astype(np.float32)
            x = x.reshape(-1, ch)
            if mono:
                dst = out[start - first:stop - first]
                dst[:] = x[:, 0]
                for c in range(1, ch):  # a loop over channels: far faster than mean(axis=1)
                    dst += x[:, c]
                if ch > 1:
                    dst *= np.float32(1.0 / ch)
            else:
                out[start - first:stop - first] = x
    finally:
        del raw
    return out


class WavSignal:
    """A WAV file's mono samples, decoded lazily slice by slice (for very long files).

    Behaves like a read-only 1-D float32 array for ``len()`` and slicing with a
    step of 1, so a transform can compute features chunk by chunk while only
    one chunk of samples is in memory. Decode errors (NaN, inf) surface as
    :class:`AudioDecodeError` when the bad chunk is read.
    """

    ndim = 1
    dtype = np.dtype(np.float32)

    def __init__(self, path):
        self.path = path
        self._wav = _parse_wav(path)
        self.sample_rate = self._wav.info.sample_rate
        self.shape = (self._wav.info.n_samples,)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("WavSignal supports slices with step 1 only")
        first, last, _ = key.indices(len(self))
        return _decode(self.path, self._wav, True, first, max(first, last))


def open_signal(path) -> WavSignal:
    """Open a WAV file as a lazily decoded mono signal (see :class:`WavSignal`)."""
    return WavSignal(path)


def _resample(x: np.ndarray, source: int, target: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = math.gcd(source, target)
    return resample_poly(x, target // g, source // g, axis=0).astype(np.float32)


def resampled_length(n_samples: int, source_rate: int, target_rate: int) -> int:
    """Exact length of :func:`read_audio` output when resampling ``n_samples``.

    ``resample_poly`` returns ``ceil(n * up / down)`` samples, with ``up/down``
    the reduced ratio of the two rates.
    """
    if source_rate == target_rate:
        return int(n_samples)
    g = math.gcd(source_rate, target_rate)
    up, down = target_rate // g, source_rate // g
    return -(-int(n_samples) * up // down)


def _is_soundfile_path(path) -> bool:
    return os.fspath(path).lower().endswith(tuple(e.encode() if isinstance(path, bytes) else e
                                                   for e in _SOUNDFILE_EXTENSIONS))


def _soundfile(path):
    try:
        import soundfile
    except ImportError as err:
        raise MissingDependencyError(
            f"{os.fsdecode(path)}: reading {Path(os.fsdecode(path)).suffix} files needs soundfile; "
            "install it with pip install 'memstore[audio]'"
        ) from err
    return soundfile


def _read_soundfile(path, mono: bool) -> tuple[np.ndarray, int]:
    sf = _soundfile(path)
    if os.path.isdir(path):
        raise _fail(path, "is a directory, not an audio file")
    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise _fail(path, f"cannot decode: {err}") from err
    if data.shape[0] == 0:
        raise _fail(path, "zero samples")
    if not np.isfinite(data).all():
        raise _fail(path, "data contains NaN or infinite samples")
    if mono:
        return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)), int(rate)
    return np.ascontiguousarray(data), int(rate)


_WRITE_FORMATS = {
    "u8": (_PCM, 8),
    "pcm16": (_PCM, 16),
    "pcm24": (_PCM, 24),
    "pcm32": (_PCM, 32),
    "float32": (_FLOAT, 32),
    "float64": (_FLOAT, 64),
}


def write_wav(path, samples, sample_rate: int, *, sample_format: str = "pcm16",
              extensible: bool = False) -> None:
    """Write a WAV file.

    Parameters
    ----------
    path : str or os.PathLike
    samples : array_like [shape=(n,) or (n, channels)]
        Floats in [-1, 1]; integer formats clip and round.
    sample_rate : int
    sample_format : {"u8", "pcm16", "pcm24", "pcm32", "float32", "float64"}
    extensible : bool
        Write a WAVE_FORMAT_EXTENSIBLE header.
    """
    if sample_format not in _WRITE_FORMATS:
        raise ParameterError(f"sample_format={sample_format!r} must be one of {sorted(_WRITE_FORMATS)}")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or not 1 <= x.shape[1] <= MAX_CHANNELS:
        raise ParameterError(f"samples of shape {np.shape(samples)} must be (n,) or (n, 1..{MAX_CHANNELS})")
    tag, bits = _WRITE_FORMATS[sample_format]
    ch = x.shape[1]
    if tag == _FLOAT:
        data = x.astype("<f4" if bits == 32 else "<f8").tobytes()
    else:
        full = 2 ** (bits - 1)
        q = np.clip(np.round(x * full), -full, full - 1).astype(np.int64)
        if bits == 8:
            data = (q + 128).astype(np.uint8).tobytes()
        elif bits == 24:
            u = (q & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
            data = np.ascontiguousarray(u).tobytes()
        else:
            data = q.astype(f"<i{bits // 8}").tobytes()
    align = ch * bits // 8
    if extensible:
        guid = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        mask = (1 << ch) - 1
        fmt = struct.pack("<HHIIHHHHI", _EXTENSIBLE, ch, sample_rate, sample_rate * align, align,
                          bits, 22, bits, mask) + guid
    else:
        fmt = struct.pack("<HHIIHH", tag, ch, sample_rate, sample_rate * align, align, bits)
    pad = b"\x00" if len(data) & 1 else b""
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data + pad
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)
