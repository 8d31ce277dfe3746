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
memstore reads WAV itself, in every variant that ``scipy.io.wavfile`` reads:
``RIFF`` (little-endian), ``RIFX`` (big-endian, sizes and samples) and
``RF64``/``BW64`` (64-bit sizes from the ``ds64`` chunk, for files over 4 GiB);
``WAVE_FORMAT_PCM`` with 1 to 64 bits per sample in a container of the size the
block align gives (1 to 8 bytes: 12-bit samples in 2 bytes, 20-bit in 3, 36-bit
in 5 ...); ``WAVE_FORMAT_IEEE_FLOAT`` 32- and 64-bit; ``WAVE_FORMAT_EXTENSIBLE``
whose sub-format GUID is PCM or float; 1 to :data:`MAX_CHANNELS` channels (8:
the 7.1 layouts that WAV speaker masks describe; more is almost always a broken
header). Unknown chunks (``LIST``, ``bext``, ``fact``, ``cue `` ...) are
skipped, honouring the pad byte after odd-sized chunks. This is the fast path
(``tools/bench_decode.py`` measures it against soundfile).

Everything else goes to libsndfile through ``soundfile`` (a dependency; its
wheels ship libsndfile): a RIFF file with another codec (mu-law, A-law, ADPCM,
GSM), W64, AIFF/AIFC, AU/SND, CAF, FLAC, OGG Vorbis and Opus, MP3, and the
other formats :func:`audio_extensions` lists. Which decoder runs depends on the
file's first bytes, not its name, so a FLAC file called ``.wav`` is read too.
Samples are then exactly ``soundfile.read(dtype="float32")``'s.

A file that ends before its header says it should is refused by name (a WAV
data chunk shorter than declared; a FLAC or MP3 that decodes to fewer frames
than its header announces), not read in part: the build plan counts frames
from headers, and a damaged download should be listed, not stored short.

Scaling
-------
Integer samples are divided by ``2**(bits - 1)`` where ``bits`` is the
container size (8, 16, 24, 32, 40, 48, 56, 64), so full scale negative is
exactly -1 and positive full scale is ``1 - 2**(1 - bits)``. Unsigned 8-bit
samples (every WAV of 8 bits or fewer) become ``(x - 128) / 128``. This is
libsndfile's rule too. Smaller "valid bits" (an extensible header's, or 12 or
20 in ``wBitsPerSample``) do not change it: samples are left-justified in the
container. Wider integers round once to float32 (24 significant bits). Float
samples are taken as they are (they may exceed 1 when a mix was not clipped)
and must be finite: NaN or inf raises :class:`AudioDecodeError`.

Mono
----
``mono=True`` returns the **mean** of the channels. The tutorial sums them;
a sum can leave [-1, 1] and scales with the channel count, so the features of
a mono and a stereo recording of the same sound would differ by a factor of
two (six for 5.1). The mean keeps samples in range and features comparable
across files with different channel counts.

Without a loadable soundfile (``import soundfile`` fails, or libsndfile
does not load) memstore still reads WAV; other formats raise
:class:`~memstore.errors.MissingDependencyError` naming the fix.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._jit import JIT, njit
from ._validate import is_int, positive_int
from ._workers import heap_kept
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
# KSDATAFORMAT_SUBTYPE_* GUIDs: a 32-bit format tag, then this fixed tail, whose first two
# fields follow the container's byte order (RIFX writes them big-endian)
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_GUID_DATA4 = b"\x80\x00\x00\xaa\x00\x38\x9b\x71"
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
# RIFF-family magic -> (byte order, 64-bit sizes in a ds64 chunk)
_CONTAINERS = {b"RIFF": ("<", False), b"RIFX": (">", False), b"RF64": ("<", True), b"BW64": ("<", True)}
_WAV_SUFFIXES = (".wav", ".wave")
# soundfile format name -> file extensions it serves. Left out on purpose: RAW (no header, so
# nothing says how to decode it), MAT4/MAT5 (.mat is MATLAB data far more often than audio),
# MPC2K (.mpc is Musepack, which libsndfile does not read) and HTK (.htk is mostly feature files).
_SOUNDFILE_FORMATS = {
    "WAV": (".wav", ".wave"), "WAVEX": (".wav", ".wave"), "RF64": (".rf64", ".bw64"), "W64": (".w64",),
    "AIFF": (".aiff", ".aif", ".aifc"), "AU": (".au", ".snd"), "CAF": (".caf",), "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3", ".mp2"), "MPEG": (".mp3", ".mp2"),
    "AVR": (".avr",), "SVX": (".iff", ".svx", ".8svx"), "PAF": (".paf",), "PVF": (".pvf",),
    "SD2": (".sd2",), "SDS": (".sds",), "IRCAM": (".sf", ".ircam"), "VOC": (".voc",), "NIST": (".nist", ".sph"),
    "WVE": (".wve",), "XI": (".xi",),
}
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
        For WAV read by memstore: ``"u8"``, ``"pcm16"``, ``"pcm24"``,
        ``"pcm32"``, ``"pcm40"`` ... ``"pcm64"`` (named by the sample
        *container*: 12-bit samples in 16-bit containers are ``"pcm16"``),
        ``"float32"``, ``"float64"``; for files read through soundfile the
        same names where they apply, else the lower-cased subtype
        (``"vorbis"``, ``"ulaw"`` ...).
    """

    n_samples: int
    sample_rate: int
    channels: int
    sample_format: str


class _Wav(NamedTuple):
    info: AudioInfo
    data_offset: int
    kind: str   # "u" (offset binary, 1 byte), "i" (two's complement) or "f" (IEEE float)
    width: int  # bytes per sample container
    order: str  # "<" or ">"


class _Unsupported(AudioDecodeError):
    """A well-formed WAV whose codec memstore does not decode itself (libsndfile may)."""


def _fail(path, reason: str, cls=AudioDecodeError) -> AudioDecodeError:
    return cls(f"{os.fsdecode(path)}: {reason}")


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


def _parse_fmt(path, fmt: bytes, order: str) -> tuple[str, int, int, int, int]:
    """Validate a ``fmt `` chunk body; return (kind, container bytes, channels, rate, frame bytes)."""
    tag, channels, rate, _, align, bits = struct.unpack(order + "HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE:
        if len(fmt) < 40 or struct.unpack(order + "H", fmt[16:18])[0] < 22:
            raise _fail(path, "WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is truncated (40 bytes needed)")
        valid_bits = struct.unpack(order + "H", fmt[18:20])[0]
        if valid_bits > bits:
            raise _fail(path, f"extensible header says {valid_bits} valid bits in a {bits}-bit container")
        guid = fmt[24:40]
        tail = (b"\x00\x00\x10\x00" if order == "<" else b"\x00\x00\x00\x10") + _GUID_DATA4
        sub = struct.unpack(order + "I", guid[:4])[0]
        if guid[4:] != tail or sub > 0xFFFF:
            raise _fail(path, f"unsupported codec: unknown extensible sub-format GUID {guid.hex()}", _Unsupported)
        tag = sub
    if tag not in (_PCM, _FLOAT):
        name = _CODEC_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise _fail(path, f"unsupported codec {name} (format tag {tag}); only PCM and IEEE float WAV are read",
                    _Unsupported)
    if not 1 <= channels <= MAX_CHANNELS:
        raise _fail(path, f"{channels} channels; 1 to {MAX_CHANNELS} are supported")
    if rate <= 0:
        raise _fail(path, f"sample rate {rate} must be positive")
    if align == 0 or align % channels:
        raise _fail(path, f"block align {align} does not match {channels} channels x {bits} bits")
    # the container is what the block align says (as in scipy.io.wavfile and libsndfile): 20-bit
    # samples may sit in 3 or 4 bytes, 12-bit ones in 2; samples are left-justified in it
    width = align // channels
    kind = "f" if tag == _FLOAT else ("u" if bits <= 8 else "i")
    if tag == _FLOAT:
        ok = bits in (32, 64) and width == bits // 8
    else:
        ok = 1 <= bits <= 64 and (width == 1 if bits <= 8 else 8 * width >= bits and width <= 8)
    if not ok:
        what = "PCM" if tag == _PCM else "float"
        raise _fail(path, f"unsupported sample size: {bits}-bit {what} in a {width}-byte container")
    return kind, width, channels, rate, align


def _parse_wav(path, opened=None) -> _Wav:
    """The header of a RIFF/RF64 WAV file; ``opened``: ``(file, size)`` from :func:`_open`, kept open, or None."""
    if opened is None:
        f, size = _open(path)
        with f:
            return _parse_wav(path, (f, size))
    f, size = opened
    f.seek(0)
    head = f.read(12)
    if len(head) < 12:
        raise _fail(path, f"truncated header ({len(head)} bytes; a WAV header needs at least 44)")
    if head[:4] not in _CONTAINERS or head[8:12] != b"WAVE":
        raise _fail(path, f"not a RIFF/WAVE file (starts with {head[:4]!r})")
    order, wide = _CONTAINERS[head[:4]]
    name = head[:4].decode()
    data_size = None  # the 64-bit size of the data chunk, from ds64
    if wide:
        ds64 = f.read(8 + 16)
        if len(ds64) < 24 or ds64[:4] != b"ds64":
            raise _fail(path, f"{name} file without its 'ds64' chunk (64-bit sizes) right after the header")
        data_size = struct.unpack("<Q", ds64[16:24])[0]
    fmt = None
    pos = 12
    while True:
        f.seek(pos)
        chunk = f.read(8)
        if len(chunk) < 8:
            if fmt is None:
                raise _fail(path, "truncated header: no 'fmt ' chunk")
            raise _fail(path, "no 'data' chunk")
        cid, clen = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
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
            if data_size is not None and clen == 0xFFFFFFFF:
                clen = data_size
            available = size - body
            if clen > available:
                # refused rather than read in part: a cut file is a damaged download, and a
                # partial read would put a silently shorter file into the store. Checked before the
                # codec: a cut mu-law or ADPCM file went on to libsndfile, which reads what is there
                raise _fail(path, f"data chunk shorter than declared ({available} of {clen} bytes present);"
                                  " the file is truncated")
            kind, width, channels, rate, frame_bytes = _parse_fmt(path, fmt, order)
            n = clen // frame_bytes  # a trailing partial frame is ignored
            if n == 0:
                raise _fail(path, "zero samples")
            fmt_name = {"u": "u8", "f": f"float{8 * width}"}.get(kind, f"pcm{8 * width}")
            return _Wav(AudioInfo(n, rate, channels, fmt_name), body, kind, width, order)
        if wide and clen == 0xFFFFFFFF:
            raise _fail(path, f"chunk {cid!r} needs a 64-bit size from the ds64 table, which memstore does not"
                              " read for chunks other than 'data'")
        pos = body + clen + (clen & 1)  # chunks are padded to even sizes
        if pos > size + 1:  # a missing final pad byte is common and harmless
            raise _fail(path, f"chunk {cid!r} of {clen} bytes runs past the end of the file")


def audio_extensions() -> tuple[str, ...]:
    """File extensions memstore reads: ``.wav``, plus those of every format the installed libsndfile reads.

    Derived from :func:`soundfile.available_formats`, so a libsndfile without
    MP3 support does not claim ``.mp3``. Without a loadable soundfile, only
    ``.wav`` (memstore's own reader).

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
    exts = {ext for name, group in _SOUNDFILE_FORMATS.items() if name in available for ext in group}
    return (".wav",) + tuple(sorted(exts - {".wav"}))


def _soundfile(path):
    try:
        return require("soundfile", "audio")
    except MissingDependencyError as err:
        raise MissingDependencyError(f"{os.fsdecode(path)}: reading {Path(os.fsdecode(path)).suffix} files "
                                     f"needs soundfile; {err}") from err
    except OSError as err:
        raise MissingDependencyError(f"{os.fsdecode(path)}: soundfile is installed but cannot load libsndfile "
                                     f"({err}); reinstall it with pip install 'memstore[audio]'") from err


def _dispatch(path, own, other):
    """Run ``own(path, opened)`` for WAV, ``other(path, soundfile)`` for the rest.

    ``opened`` is ``(file, size)``, the file :func:`_open` opened to look at its first bytes
    (kept open for ``own``), or None where ``own`` must open it itself.

    A RIFF file whose codec memstore does not decode (mu-law, A-law, ADPCM,
    GSM ...) goes to libsndfile; a ``.wav`` file that is not RIFF goes to
    libsndfile too (files are misnamed), and if that fails as well the error
    is memstore's own, which says what the header holds.
    """
    f, size = _open(path)
    with f:
        head = f.read(4)
        if head in _CONTAINERS:
            try:
                return own(path, (f, size))  # the same open file: one open and one stat per file
            except _Unsupported as err:
                try:
                    sf = _soundfile(path)
                except MissingDependencyError:
                    raise err from None
                try:
                    return other(path, sf)
                except AudioDecodeError as sf_err:
                    raise _fail(path, f"{str(err).removeprefix(os.fsdecode(path) + ': ')}; libsndfile cannot "
                                      f"decode it either ({str(sf_err).removeprefix(os.fsdecode(path) + ': ')})"
                                ) from sf_err
    if os.fsdecode(path).lower().endswith(_WAV_SUFFIXES):
        try:
            sf = _soundfile(path)
            return other(path, sf)
        except (AudioDecodeError, MissingDependencyError):
            return own(path, None)  # raises memstore's own account of the header
    return other(path, _soundfile(path))


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
    return _dispatch(path, lambda p, opened: _parse_wav(p, opened).info, _soundfile_info)


def _soundfile_info(path, sf) -> AudioInfo:
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
    if sample_rate is not None:
        sample_rate = positive_int("sample_rate", sample_rate)
    out, rate = _dispatch(path, lambda p, opened: _read_wav(p, mono, opened),
                          lambda p, sf: _read_soundfile(p, sf, mono))
    if sample_rate is not None and sample_rate != rate:
        out = _resample(out, rate, int(sample_rate))
        rate = int(sample_rate)
    return out, rate


def _read_wav(path, mono: bool, opened=None) -> tuple[np.ndarray, int]:
    wav = _parse_wav(path, opened)
    return _decode(path, wav, mono, f=None if opened is None else opened[0]), wav.info.sample_rate


def _convert(path, raw: np.ndarray, wav: _Wav, first_frame: int) -> np.ndarray:
    """Bytes of whole samples -> float32 samples, scaled as documented."""
    kind, width, order = wav.kind, wav.width, wav.order
    if kind == "u":
        y = raw.astype(np.float32)
        y -= 128
        y *= np.float32(1 / 128)
        return y
    if kind == "i":
        if width == 3 and order == "<":
            # raw starts one byte early: the int32 that ends on each sample's last byte holds the sample
            # in its top 24 bits; masking the borrowed low byte leaves it left-justified, with no copy
            x = np.ndarray(((raw.size - 1) // 3,), dtype="<i4", buffer=raw, strides=(3,)) & np.int32(-256)
        elif width in (3, 5, 6, 7):
            # no numpy type of that size: put the bytes in the top of a 4- or 8-byte integer, so the
            # value is left-justified there and keeps its sign; the scale below then divides by
            # 2**(8 * container - 1) of that wider integer, which is the same number
            full = 4 if width == 3 else 8
            wide = np.zeros((raw.size // width, full), np.uint8)
            if order == "<":
                wide[:, full - width:] = raw.reshape(-1, width)
            else:
                wide[:, :width] = raw.reshape(-1, width)
            x = wide.view(f"{order}i{full}").ravel()
        else:
            x = np.frombuffer(raw, dtype=f"{order}i{width}")
        # one rounding to float32 (exact up to 24 significant bits), then an exact power-of-two scale
        y = x.astype(np.float32)
        y *= np.float32(2.0 ** (1 - 8 * x.itemsize))
        return y
    x = np.frombuffer(raw, dtype=f"{order}f{width}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, caught just below
        y = x.astype(np.float32, copy=False)  # native float32: a view of the mapped bytes, copied once by the caller
    bad = ~np.isfinite(y)
    if bad.any():
        frame = first_frame + int(np.argmax(bad)) // wav.info.channels
        raise _fail(path, f"float data contains NaN or infinite samples (first at frame {frame})")
    return y


def _decode(path, wav: _Wav, mono: bool, first: int = 0, last: int | None = None, f=None) -> np.ndarray:
    """Samples ``first:last`` of ``wav``, read from ``f`` (an open file, left open) or from ``path``."""
    if f is None:
        f, _ = _open(path)
        with f:
            return _decode(path, wav, mono, first, last, f)
    n, ch = wav.info.n_samples, wav.info.channels
    last = n if last is None else last
    width = wav.width
    lead = 1 if (wav.kind, width, wav.order) == ("i", 3, "<") else 0  # see _convert: 24-bit reads one byte early
    out = np.empty((last - first,) if mono else (last - first, ch), dtype=np.float32)
    if last <= first:
        return out
    # plain reads into one reused buffer, not a memory map: page faults on a fresh mapping cost
    # more than the copy out of the page cache (tools/bench_decode.py)
    direct = not mono and (wav.kind, width) == ("f", 4) and np.dtype(wav.order + "f4").isnative
    # 16-bit audio mixed to mono by one kernel, in a build (see _mix_pcm16)
    mix16 = mono and ch > 1 and JIT and (wav.kind, width) == ("i", 2) and np.dtype(wav.order + "i2").isnative \
        and heap_kept()
    step = max(1, CHUNK_SAMPLES // ch)
    buf = None if direct else np.empty(min(step, last - first) * ch * width + lead, np.uint8)
    for start in range(first, last, step):
        stop = min(last, start + step)
        dst = out[start - first: stop - first]
        size = (stop - start) * ch * width + lead
        f.seek(wav.data_offset - lead + start * ch * width)
        target = dst if direct else buf[:size]
        try:
            got = f.readinto(memoryview(target).cast("B"))
        except OSError as err:
            raise _fail(path, f"cannot read the sample data: {err.strerror or err}") from err
        if got != size:  # the file shrank since its header was read
            raise _fail(path, f"file ended while reading (frame {start}); it changed after its header was read")
        if direct:
            _convert(path, dst.reshape(-1).view(np.uint8), wav, start)  # checks finiteness; samples are in place
            continue
        if mix16:
            samples = target.view(np.int16)
            if len(samples) != len(dst) * ch:  # by construction (size above); the kernel checks no bound
                raise AssertionError(f"{len(samples)} samples for {len(dst)} frames of {ch} channels")
            _mix_pcm16(samples, ch, dst)
            continue
        _mix(dst, _convert(path, target, wav, start).reshape(-1, ch), mono)
    return out


@njit(nogil=True, cache=True)
def _mix_pcm16(x, ch, dst):  # pragma: no cover - jitted
    """The mean of ``ch`` channels of 16-bit samples ``x`` [shape=(len(dst) * ch,)] into ``dst``.

    One pass for what :func:`_convert` and :func:`_mix` do in five (the commonest case: 16-bit
    stereo read as mono), with the same roundings in the same order, so the same float32 bits:
    each sample to float32 times 2**-15 (exact), channel 0 plus channel 1 plus ..., each sum
    rounded to float32, then times ``float32(1 / ch)``. The caller checks the lengths.

    Used only while the heap is kept (:func:`memstore._workers.heap_kept`: a build). In a plain
    loop of a fresh process the old steps' float32 temporary, freed on the first file, raises
    glibc's adaptive mmap and trim thresholds above the features' arrays; without it the heap was
    trimmed and faulted in again on every file, and such a loop ran 2.3x slower
    (``docs/performance.md``).
    """
    scale = np.float32(2.0 ** -15)
    inv = np.float32(1.0 / ch)
    if ch == 2:  # its own loop, which LLVM vectorizes: 9 us per 3 s stereo clip against 100 us in numpy
        for i in range(dst.shape[0]):
            dst[i] = (np.float32(x[2 * i]) * scale + np.float32(x[2 * i + 1]) * scale) * inv
        return
    for i in range(dst.shape[0]):
        k = i * ch
        s = np.float32(x[k]) * scale
        for c in range(1, ch):
            s += np.float32(x[k + c]) * scale
        dst[i] = s * inv


def _mix(dst: np.ndarray, x: np.ndarray, mono: bool) -> None:
    """Copy ``x`` [shape=(k, ch)] into ``dst``, as the mean of its channels when ``mono``."""
    if not mono:
        dst[:] = x
        return
    dst[:] = x[:, 0]
    # a loop over channels: mean(axis=1) is several times slower, and makes a float64 temporary without dtype
    with np.errstate(over="ignore"):  # mended below
        for c in range(1, x.shape[1]):
            dst += x[:, c]
    if x.shape[1] > 1:
        dst *= np.float32(1.0 / x.shape[1])
        if x.dtype.kind == "f" and not np.isfinite(dst).all():
            # finite float32 samples near the largest float summed past it: the mean taken in float64 (a
            # mixed sample can only overflow where every input was finite and huge; NaN input is refused later)
            dst[:] = x.mean(axis=1, dtype=np.float64)


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

    def __init__(self, path, opened=None):
        self.path = path
        self._wav = _parse_wav(path, opened)
        self.sample_rate = self._wav.info.sample_rate
        self.shape = (self._wav.info.n_samples,)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("WavSignal supports slices with step 1 only")
        first, last, _ = key.indices(len(self))
        return _decode(self.path, self._wav, True, first, max(first, last))


def open_signal(path) -> WavSignal | np.ndarray:
    """Open an audio file as a mono signal, decoded lazily when memstore reads the WAV itself.

    Returns a :class:`WavSignal` for WAV files that memstore decodes (PCM and
    float); any other file (FLAC, MP3, mu-law WAV ...) is decoded whole by
    :func:`read_audio` and returned as an array, which slices the same way.
    """
    return _dispatch(path, WavSignal, lambda p, sf: _read_soundfile(p, sf, True)[0])


#: a WAV file with more samples than this, read at its own rate, is decoded lazily by the build
LONG_SAMPLES = 1 << 24


def decodes_lazily(path, *, n_samples: int, source_rate: int, sample_rate: int) -> bool:
    """Whether to read a file with :func:`open_signal` (chunk by chunk) rather than :func:`read_audio` (whole).

    True for a WAV file, by its name (``.wav`` in any case), of more than
    :data:`LONG_SAMPLES` samples at ``source_rate`` when it is read at that
    same rate (a resampled file is read whole). Decided from header facts the
    caller already holds (``n_samples``, ``source_rate``, from
    :func:`audio_info`), so no header is read again.

    Example
    -------
    >>> decodes_lazily("long.WAV", n_samples=1 << 25, source_rate=44100, sample_rate=44100)
    True
    >>> decodes_lazily("long.flac", n_samples=1 << 25, source_rate=44100, sample_rate=44100)
    False
    """
    return (os.fsdecode(path).lower().endswith(".wav") and source_rate == sample_rate
            and n_samples > LONG_SAMPLES)


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


def _read_soundfile(path, sf, mono: bool) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(os.fspath(path)) as snd:
            rate, ch, n = int(snd.samplerate), int(snd.channels), int(snd.frames)
            if n <= 0:
                raise _fail(path, "zero samples")
            out = np.empty((n,) if mono else (n, ch), np.float32)
            buf = np.empty((min(n, max(1, CHUNK_SAMPLES // ch)), ch), np.float32)
            done = 0
            while done < n:  # blocks bound the temporary (k, ch) array when only the mean is kept
                got = snd.read(min(len(buf), n - done), dtype="float32", always_2d=True, out=buf)
                if len(got) == 0:
                    break
                if not np.isfinite(got).all():
                    raise _fail(path, f"data contains NaN or infinite samples (near frame {done})")
                _mix(out[done:done + len(got)], got, mono)
                done += len(got)
    except AudioDecodeError:
        raise
    except Exception as err:  # soundfile raises RuntimeError subclasses for corrupt files
        raise _fail(path, f"cannot decode: {err}") from err
    if done < n:
        # refused, like a cut WAV: the plan counts the frames the header announces
        raise _fail(path, f"decoded {done} of the {n} frames the header announces; the file is truncated or corrupt")
    return out, rate


_LAYOUTS = {"u8": (_PCM, 8), "pcm16": (_PCM, 16), "pcm24": (_PCM, 24), "pcm32": (_PCM, 32),
            "float32": (_FLOAT, 32), "float64": (_FLOAT, 64)}
_WRITE_FORMATS = _LAYOUTS


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
    if not is_int(sample_rate) or not 0 < sample_rate < 2**32:
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
    if sample_rate * align >= 2**32:  # the header's bytes per second: struct.error before
        raise ParameterError(f"sample_rate={sample_rate} x {align} bytes per frame exceeds the 32-bit byte rate "
                             "field of a WAV header; use a lower rate, fewer channels or a smaller sample format")
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
