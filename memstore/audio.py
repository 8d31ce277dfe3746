"""Reading and writing audio: the only module that knows audio formats.

WAV files are parsed by hand (RIFF chunks, ``fmt``, ``data``), so every
common sample format reads the same way and every broken file gets a clear
:class:`~memstore.errors.AudioDecodeError` (also an :class:`OSError`) naming
the file and the reason. :func:`audio_info` reads the header only: it seeks
from chunk header to chunk header and never reads a sample, so it costs the
same on a 1 GB file as on a 1 MB one. :func:`read_audio` maps the data region
with :class:`numpy.memmap` and converts it to float32 :data:`CHUNK_SAMPLES`
samples at a time, so a long file costs its float32 output plus one small
chunk.

Formats
-------
``WAVE_FORMAT_PCM`` unsigned 8-bit (``"u8"``) and signed 16-, 24- and 32-bit
(``"pcm16"``, ``"pcm24"``, ``"pcm32"``); ``WAVE_FORMAT_IEEE_FLOAT`` 32- and
64-bit (``"float32"``, ``"float64"``); ``WAVE_FORMAT_EXTENSIBLE`` whose
sub-format GUID is PCM or float; 1 to :data:`MAX_CHANNELS` channels (8: the
7.1 layouts that WAV speaker masks describe; more is almost always a broken
header). Unknown chunks (``LIST``, ``bext``, ``fact``, ``cue `` ...) are
skipped, honouring the pad byte after odd-sized chunks. Compressed codecs
(ADPCM, A-law, mu-law, MP3-in-WAV) are rejected by name. Big-endian ``RIFX``
and 64-bit ``RF64`` containers are rejected with a message saying so: neither
is written by common tools for the data memstore targets.

Scaling
-------
Integer samples are divided by ``2**(bits - 1)`` where ``bits`` is the
container size (8, 16, 24, 32), so full scale negative is exactly -1 and
positive full scale is ``1 - 2**(1 - bits)``. Unsigned 8-bit samples become
``(x - 128) / 128``. An extensible header's smaller "valid bits" does not
change this: its samples are left-justified in the container. Float samples
are taken as they are (they may exceed 1 when a mix was not clipped) and must
be finite: NaN or inf raises :class:`AudioDecodeError`.

Mono
----
``mono=True`` returns the **mean** of the channels. The tutorial sums them;
a sum can leave [-1, 1] and scales with the channel count, so the features of
a mono and a stereo recording of the same sound would differ by a factor of
two (six for 5.1). The mean keeps samples in range and features comparable
across files with different channel counts.

Other formats (FLAC, OGG, MP3, AIFF) are read through ``soundfile`` when the
``audio`` extra is installed; without it the error names the extra.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import AudioDecodeError, MissingDependencyError, ParameterError, require

__all__ = [
    "AudioInfo",
    "read_audio",
    "audio_info",
    "write_wav",
    "resampled_length",
    "audio_extensions",
    "open_signal",
    "WavSignal",
    "MAX_CHANNELS",
    "CHUNK_SAMPLES",
]

_PCM = 0x0001
_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_* GUIDs are the format tag followed by this fixed tail
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_CODEC_NAMES = {
    0x0002: "MS ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MPEG layer 3",
}
#: most channels a WAV file may have (7.1 surround); more is treated as a broken header
MAX_CHANNELS = 8
#: samples (frames x channels) converted per step when reading; bounds the temporary memory
CHUNK_SAMPLES = 1 << 21
# (tag, bits) -> (sample_format, numpy dtype of one stored sample; "pcm24" has none)
_LAYOUTS = {
    (_PCM, 8): ("u8", "u1"),
    (_PCM, 16): ("pcm16", "<i2"),
    (_PCM, 24): ("pcm24", "pcm24"),
    (_PCM, 32): ("pcm32", "<i4"),
    (_FLOAT, 32): ("float32", "<f4"),
    (_FLOAT, 64): ("float64", "<f8"),
}
# soundfile container name -> file extensions it serves
_SOUNDFILE_FORMATS = {"FLAC": (".flac",), "OGG": (".ogg",), "MP3": (".mp3",), "AIFF": (".aiff", ".aif")}
_SOUNDFILE_SUBTYPES = {"PCM_U8": "u8", "PCM_S8": "pcm8", "PCM_16": "pcm16", "PCM_24": "pcm24",
                       "PCM_32": "pcm32", "FLOAT": "float32", "DOUBLE": "float64"}


class AudioInfo(NamedTuple):
    """What the header of an audio file says.

    Attributes
    ----------
    n_samples : int
        Frames (samples per channel).
    sample_rate : int
        Frames per second.
    channels : int
    sample_format : str
        ``"u8"``, ``"pcm16"``, ``"pcm24"``, ``"pcm32"``, ``"float32"``,
        ``"float64"``; for soundfile formats the lower-cased subtype
        (e.g. ``"vorbis"``) when it has no such name.
    """

    n_samples: int
    sample_rate: int
    channels: int
    sample_format: str


class _Wav(NamedTuple):
    info: AudioInfo
    data_offset: int
    dtype: str  # numpy dtype string of one stored sample, or "pcm24"


def _fail(path, reason: str) -> AudioDecodeError:
    return AudioDecodeError(f"{os.fsdecode(path)}: {reason}")


def _open(path):
    """Open a regular file for reading; every failure becomes an AudioDecodeError."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise _fail(path, f"cannot open: {err.strerror or err}") from err
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        # a FIFO or device would block or never end
        raise _fail(path, "is not a regular file")
    try:
        return open(path, "rb"), st.st_size  # noqa: SIM115 (closed by the caller's with)
    except OSError as err:
        raise _fail(path, f"cannot open: {err.strerror or err}") from err


def _parse_fmt(path, fmt: bytes) -> tuple[int, int, int, int, int]:
    """Validate a ``fmt `` chunk body; return (tag, channels, rate, bits, frame bytes)."""
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE:
        if len(fmt) < 40 or struct.unpack("<H", fmt[16:18])[0] < 22:
            raise _fail(path, "WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is truncated (40 bytes needed)")
        valid_bits = struct.unpack("<H", fmt[18:20])[0]
        if valid_bits > bits:
            raise _fail(path, f"extensible header says {valid_bits} valid bits in a {bits}-bit container")
        if fmt[26:40] != _GUID_TAIL:
            raise _fail(path, f"unsupported codec: unknown extensible sub-format GUID {fmt[24:40].hex()}")
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag not in (_PCM, _FLOAT):
        name = _CODEC_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise _fail(path, f"unsupported codec {name} (format tag {tag}); only PCM and IEEE float WAV are read")
    if not 1 <= channels <= MAX_CHANNELS:
        raise _fail(path, f"{channels} channels; 1 to {MAX_CHANNELS} are supported")
    if rate <= 0:
        raise _fail(path, f"sample rate {rate} must be positive")
    if (tag, bits) not in _LAYOUTS:
        kind = "PCM" if tag == _PCM else "float"
        raise _fail(path, f"unsupported sample size: {bits}-bit {kind}")
    frame_bytes = channels * (bits // 8)
    if align != frame_bytes:
        raise _fail(path, f"block align {align} does not match {channels} channels x {bits} bits")
    return tag, channels, rate, bits, frame_bytes


def _parse_wav(path) -> _Wav:
    f, size = _open(path)
    with f:
        head = f.read(12)
        if head[:4] == b"RIFX":
            raise _fail(path, "RIFX (big-endian) WAV is not supported")
        if head[:4] == b"RF64":
            raise _fail(path, "RF64 (64-bit) WAV is not supported")
        if len(head) < 12:
            raise _fail(path, f"truncated header ({len(head)} bytes; a WAV header needs at least 44)")
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise _fail(path, f"not a RIFF/WAVE file (starts with {head[:4]!r})")
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
                fmt = f.read(min(clen, 40))
                if len(fmt) < min(clen, 40):
                    raise _fail(path, "truncated header inside the 'fmt ' chunk")
            elif cid == b"data":
                if fmt is None:
                    raise _fail(path, "no 'fmt ' chunk before the 'data' chunk")
                tag, channels, rate, bits, frame_bytes = _parse_fmt(path, fmt)
                available = size - body
                if clen > available:
                    raise _fail(path, f"data chunk shorter than declared ({available} of {clen} bytes present);"
                                      " the file is truncated")
                n = clen // frame_bytes  # a trailing partial frame is ignored
                if n == 0:
                    raise _fail(path, "zero samples")
                sample_format, dtype = _LAYOUTS[tag, bits]
                return _Wav(AudioInfo(n, rate, channels, sample_format), body, dtype)
            pos = body + clen + (clen & 1)  # chunks are padded to even sizes
            if pos > size + 1:  # a missing final pad byte is common and harmless
                raise _fail(path, f"chunk {cid!r} of {clen} bytes runs past the end of the file")


def audio_extensions() -> tuple[str, ...]:
    """File extensions memstore reads: ``.wav``, plus soundfile's formats if installed.

    Example
    -------
    >>> ".wav" in audio_extensions()
    True
    """
    try:
        import soundfile
    except (ImportError, OSError):  # OSError: the package is there but libsndfile is not
        return (".wav",)
    available = soundfile.available_formats()
    return (".wav",) + tuple(ext for name, exts in _SOUNDFILE_FORMATS.items() if name in available for ext in exts)


def _is_soundfile_path(path) -> bool:
    suffix = os.path.splitext(os.fsdecode(path))[1].lower()
    return any(suffix in exts for exts in _SOUNDFILE_FORMATS.values())


def _soundfile(path):
    try:
        return require("soundfile", "audio")
    except MissingDependencyError as err:
        raise MissingDependencyError(f"{os.fsdecode(path)}: reading {Path(os.fsdecode(path)).suffix} files "
                                     f"needs soundfile; {err}") from err
    except OSError as err:
        raise MissingDependencyError(f"{os.fsdecode(path)}: soundfile is installed but cannot load libsndfile "
                                     f"({err}); reinstall it with pip install 'memstore[audio]'") from err


def audio_info(path) -> AudioInfo:
    """Read an audio file's header only.

    Parameters
    ----------
    path : str or os.PathLike
        A WAV file (or FLAC/OGG/MP3/AIFF with the ``audio`` extra).

    Returns
    -------
    AudioInfo
        ``(n_samples, sample_rate, channels, sample_format)``; no sample data
        is read. The header is validated, including that the data chunk fits
        in the file, so a truncated file fails here and not mid-build.

    Raises
    ------
    AudioDecodeError
        If the file is missing, unreadable, not audio, truncated, has zero
        samples or an unsupported codec.

    Example
    -------
    >>> audio_info("001__[vio][nod][cou_fol]2194__1.wav")   # doctest: +SKIP
    AudioInfo(n_samples=132299, sample_rate=44100, channels=2, sample_format='pcm16')
    """
    if not _is_soundfile_path(path):
        return _parse_wav(path).info
    sf = _soundfile(path)
    f, _ = _open(path)
    f.close()
    try:
        meta = sf.info(os.fspath(path))
    except Exception as err:  # soundfile raises its own RuntimeError subclasses
        raise _fail(path, f"cannot decode: {err}") from err
    if meta.frames <= 0:
        raise _fail(path, "zero samples")
    fmt = _SOUNDFILE_SUBTYPES.get(meta.subtype, meta.subtype.lower())
    return AudioInfo(int(meta.frames), int(meta.samplerate), int(meta.channels), fmt)


def read_audio(path, *, mono: bool = True, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 samples in [-1, 1].

    Parameters
    ----------
    path : str or os.PathLike
    mono : bool
        Mean of the channels (see the module notes), shape ``(n,)``; with
        ``False`` the shape is ``(n, channels)``.
    sample_rate : int, optional
        Resample to this rate with :func:`scipy.signal.resample_poly` (up and
        down factors reduced by their gcd); the length is then
        :func:`resampled_length`.

    Returns
    -------
    samples : ndarray [shape=(n,) or (n, channels)], float32
    rate : int

    Raises
    ------
    AudioDecodeError
        For every unreadable or broken file (see :func:`audio_info`), and
        for NaN or inf in float data.

    Example
    -------
    >>> audio, rate = read_audio("tone.wav", sample_rate=22050)   # doctest: +SKIP
    """
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer)
                                    or sample_rate <= 0):
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


def _convert(path, raw: np.ndarray, dtype: str, channels: int, first_frame: int) -> np.ndarray:
    """Bytes of whole samples -> float32 samples, scaled as documented."""
    if dtype == "pcm24":
        # place the 3 bytes in the top of an int32 and shift back: the arithmetic shift sign-extends
        wide = np.zeros((raw.size // 3, 4), np.uint8)
        wide[:, 1:] = raw.reshape(-1, 3)
        x = (wide.view("<i4").ravel() >> 8).astype(np.float32)
        x *= np.float32(2.0**-23)
        return x
    x = np.frombuffer(raw, dtype=dtype)
    if dtype == "u1":
        y = x.astype(np.float32)
        y -= 128
        y *= np.float32(1 / 128)
        return y
    if dtype[1] == "i":
        # one rounding to float32 (exact up to 24 bits), then an exact power-of-two scale
        y = x.astype(np.float32)
        y *= np.float32(2.0 ** (1 - 8 * x.itemsize))
        return y
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, caught just below
        y = x.astype(np.float32)
    bad = ~np.isfinite(y)
    if bad.any():
        frame = first_frame + int(np.argmax(bad)) // channels
        raise _fail(path, f"float data contains NaN or infinite samples (first at frame {frame})")
    return y


def _decode(path, wav: _Wav, mono: bool, first: int = 0, last: int | None = None) -> np.ndarray:
    n, ch = wav.info.n_samples, wav.info.channels
    last = n if last is None else last
    width = 3 if wav.dtype == "pcm24" else np.dtype(wav.dtype).itemsize
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r", offset=wav.data_offset, shape=(n * ch * width,))
    except (OSError, ValueError) as err:  # the file shrank or vanished since its header was read
        raise _fail(path, f"cannot map the sample data: {err}") from err
    out = np.empty((last - first,) if mono else (last - first, ch), dtype=np.float32)
    step = max(1, CHUNK_SAMPLES // ch)
    try:
        for start in range(first, last, step):
            stop = min(last, start + step)
            x = _convert(path, raw[start * ch * width: stop * ch * width], wav.dtype, ch, start).reshape(-1, ch)
            dst = out[start - first: stop - first]
            if not mono:
                dst[:] = x
                continue
            dst[:] = x[:, 0]
            for c in range(1, ch):  # a loop over channels: no (chunk, ch) float64 temporary as mean() makes
                dst += x[:, c]
            if ch > 1:
                dst *= np.float32(1.0 / ch)
    finally:
        del raw
    return out


class WavSignal:
    """A WAV file's mono samples, decoded lazily slice by slice (for very long files).

    Behaves like a read-only 1-D float32 array for ``len()`` and slicing with a
    step of 1, so a transform can compute features chunk by chunk while only
    one chunk of samples is in memory. Decode errors (NaN, inf) surface as
    :class:`AudioDecodeError` when the bad chunk is read.

    Example
    -------
    >>> sig = open_signal("long.wav")         # doctest: +SKIP
    >>> sig[:44100].shape                     # doctest: +SKIP
    (44100,)
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
    return resample_poly(x, target // g, source // g, axis=0).astype(np.float32, copy=False)


def resampled_length(n_samples: int, source_rate: int, target_rate: int) -> int:
    """Exact length of :func:`read_audio` output when resampling ``n_samples``.

    ``resample_poly`` returns ``ceil(n * up / down)`` samples, with ``up/down``
    the ratio of the two rates reduced by their gcd.

    Example
    -------
    >>> resampled_length(132299, 44100, 22050)
    66150
    """
    if source_rate <= 0 or target_rate <= 0:
        raise ParameterError(f"rates {source_rate} and {target_rate} must be positive")
    if source_rate == target_rate:
        return int(n_samples)
    g = math.gcd(source_rate, target_rate)
    up, down = target_rate // g, source_rate // g
    return -(-int(n_samples) * up // down)


def _read_soundfile(path, mono: bool) -> tuple[np.ndarray, int]:
    sf = _soundfile(path)
    f, _ = _open(path)
    f.close()
    try:
        with sf.SoundFile(os.fspath(path)) as snd:
            rate, ch, n = int(snd.samplerate), int(snd.channels), int(snd.frames)
            out = np.empty((n,) if mono else (n, ch), np.float32)
            buf = np.empty((min(n, max(1, CHUNK_SAMPLES // ch)), ch), np.float32)
            done = 0
            while done < n:  # blocks bound the temporary (k, ch) array when only the mean is kept
                got = snd.read(min(len(buf), n - done), dtype="float32", always_2d=True, out=buf)
                if len(got) == 0:
                    break
                if not np.isfinite(got).all():
                    raise _fail(path, f"data contains NaN or infinite samples (near frame {done})")
                out[done:done + len(got)] = got.mean(axis=1, dtype=np.float32) if mono else got
                done += len(got)
    except AudioDecodeError:
        raise
    except Exception as err:  # soundfile raises RuntimeError subclasses for corrupt files
        raise _fail(path, f"cannot decode: {err}") from err
    if done == 0:
        raise _fail(path, "zero samples")
    return out[:done], rate


_WRITE_FORMATS = {fmt: key for key, (fmt, _) in _LAYOUTS.items()}


def write_wav(path, samples, sample_rate: int, *, sample_format: str = "pcm16",
              extensible: bool = False) -> None:
    """Write a WAV file with a canonical header.

    Parameters
    ----------
    path : str or os.PathLike
    samples : array_like [shape=(n,) or (n, channels)]
        Finite floats, nominally in [-1, 1]. Integer formats clip to the
        representable range, then round to the nearest integer
        (``round(x * 2**(bits-1))``); float formats store the values as they are.
    sample_rate : int
    sample_format : {"u8", "pcm16", "pcm24", "pcm32", "float32", "float64"}
    extensible : bool
        Write a 40-byte WAVE_FORMAT_EXTENSIBLE ``fmt `` chunk (channel mask
        for the first ``channels`` speakers). The default is the plain
        16-byte header (44-byte files), which every reader accepts for any
        channel count and bit depth.

    Example
    -------
    >>> write_wav("tone.wav", np.zeros((44100, 2)), 44100)   # doctest: +SKIP
    """
    if sample_format not in _WRITE_FORMATS:
        raise ParameterError(f"sample_format={sample_format!r} must be one of {sorted(_WRITE_FORMATS)}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or not 0 < sample_rate < 2**32:
        raise ParameterError(f"sample_rate={sample_rate!r} must be a positive integer below 2**32")
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or not 1 <= x.shape[1] <= MAX_CHANNELS:
        raise ParameterError(f"samples of shape {np.shape(samples)} must be (n,) or (n, 1..{MAX_CHANNELS})")
    if x.dtype.kind not in "iub" and not np.isfinite(x).all():  # checked before the file is created
        raise ParameterError("samples contain NaN or infinite values; a WAV file cannot store them")
    tag, bits = _WRITE_FORMATS[sample_format]
    n, ch = x.shape
    align = ch * bits // 8
    n_data = n * align
    if n_data > 0xFFFFFFFF - 80:
        raise ParameterError(f"{n} frames x {align} bytes exceed the 4 GiB limit of a RIFF size field")
    if extensible:
        fmt = struct.pack("<HHIIHHHHI", _EXTENSIBLE, ch, sample_rate, sample_rate * align, align,
                          bits, 22, bits, (1 << ch) - 1) + struct.pack("<H", tag) + _GUID_TAIL
    else:
        fmt = struct.pack("<HHIIHH", tag, ch, sample_rate, sample_rate * align, align, bits)
    pad = n_data & 1
    riff_size = 4 + 8 + len(fmt) + 8 + n_data + pad
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", riff_size) + b"WAVE")
        f.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        f.write(b"data" + struct.pack("<I", n_data))
        step = max(1, CHUNK_SAMPLES // ch)
        for start in range(0, n, step):  # chunks bound the temporaries for long signals
            f.write(_encode(x[start:start + step], tag, bits))
        if pad:
            f.write(b"\x00")


def _encode(x: np.ndarray, tag: int, bits: int) -> bytes:
    x = np.asarray(x, dtype=np.float64)
    if tag == _FLOAT:
        return x.astype(f"<f{bits // 8}").tobytes()
    full = 2 ** (bits - 1)
    q = np.round(np.clip(x, -1.0, 1.0) * full)
    np.clip(q, -full, full - 1, out=q)  # +1.0 rounds to full, one past the largest code
    q = q.astype(np.int64)
    if bits == 8:
        return (q + 128).astype(np.uint8).tobytes()
    if bits == 24:
        return np.ascontiguousarray((q & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
    return q.astype(f"<i{bits // 8}").tobytes()
