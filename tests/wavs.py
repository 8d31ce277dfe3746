"""Hand-built WAV files, odd and hostile, for tests (imported as ``import wavs``).

Every file is assembled byte by byte with :mod:`struct`, independently of
:func:`memstore.audio.write_wav`, so a bug in the writer cannot hide a bug in
the reader. Functions return ``bytes``; :func:`write` puts them on disk.
"""

from __future__ import annotations

import struct

import numpy as np

#: WAVE_FORMAT_EXTENSIBLE sub-format GUID tail (after the 2-byte format tag + 2 zero bytes)
GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def fmt_chunk(tag=1, channels=1, rate=44100, bits=16, extra=b"") -> bytes:
    """A plain ``fmt `` chunk (16 bytes + ``extra``) with a consistent block align."""
    align = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra
    pad = b"\x00" if len(body) & 1 else b""
    return b"fmt " + struct.pack("<I", len(body)) + body + pad


def fmt_extensible(subtag=1, channels=2, rate=44100, bits=24, valid_bits=None, mask=None) -> bytes:
    """A 40-byte WAVE_FORMAT_EXTENSIBLE ``fmt `` chunk whose GUID names ``subtag``."""
    align = channels * bits // 8
    mask = (1 << channels) - 1 if mask is None else mask
    body = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * align, align, bits, 22,
                       bits if valid_bits is None else valid_bits, mask)
    body += struct.pack("<H", subtag) + GUID_TAIL
    return b"fmt " + struct.pack("<I", len(body)) + body


def riff(*chunks: bytes, magic=b"RIFF", declared=None) -> bytes:
    """``magic`` + size + ``WAVE`` + the chunks (size computed unless ``declared``)."""
    body = b"WAVE" + b"".join(chunks)
    return magic + struct.pack("<I", len(body) if declared is None else declared) + body


def data_chunk(data: bytes, declared=None) -> bytes:
    """A ``data`` chunk, padded to an even size; ``declared`` overrides the size field."""
    n = len(data) if declared is None else declared
    pad = b"\x00" if len(data) & 1 else b""
    return b"data" + struct.pack("<I", n) + data + pad


def encode(ints, bits: int) -> bytes:
    """Little-endian bytes of integer samples (u8 stored offset by 128; 24-bit as 3 bytes)."""
    q = np.asarray(ints, dtype=np.int64).ravel()
    if bits == 8:
        return (q + 128).astype(np.uint8).tobytes()
    if bits == 24:
        return np.ascontiguousarray((q & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
    return q.astype(f"<i{bits // 8}").tobytes()


def pcm(ints, bits=16, rate=44100, extensible=False) -> bytes:
    """A valid integer-PCM file holding exactly ``ints`` (shape (n,) or (n, channels))."""
    ints = np.asarray(ints)
    channels = 1 if ints.ndim == 1 else ints.shape[1]
    fmt = fmt_extensible(1, channels, rate, bits) if extensible else fmt_chunk(1, channels, rate, bits)
    return riff(fmt, data_chunk(encode(ints, bits)))


def floats(x, bits=32, rate=44100, extensible=False) -> bytes:
    """A valid IEEE-float file holding exactly ``x`` (shape (n,) or (n, channels))."""
    x = np.asarray(x)
    channels = 1 if x.ndim == 1 else x.shape[1]
    fmt = fmt_extensible(3, channels, rate, bits) if extensible else fmt_chunk(3, channels, rate, bits)
    return riff(fmt, data_chunk(x.astype(f"<f{bits // 8}").tobytes()))


def pcm16(n=1000, channels=1, rate=44100) -> bytes:
    """A valid 16-bit file (reference for the broken variants)."""
    x = (np.sin(np.arange(n * channels) * 0.01) * 10000).astype("<i2").tobytes()
    return riff(fmt_chunk(1, channels, rate, 16), data_chunk(x))


def empty_file() -> bytes:
    """Zero bytes."""
    return b""


def truncated_header() -> bytes:
    """Cut inside the header (after the ``fmt `` chunk's size field)."""
    return pcm16()[:20]


def truncated_riff() -> bytes:
    """Cut inside the 12-byte RIFF header itself."""
    return pcm16()[:10]


def short_data() -> bytes:
    """Data chunk declares more bytes than the file holds."""
    return pcm16()[:-500]


def zero_samples() -> bytes:
    """A data chunk with no samples."""
    return riff(fmt_chunk(), data_chunk(b""))


def not_riff() -> bytes:
    """Not a RIFF file at all (an MP3 ID3 tag)."""
    return b"ID3\x03\x00" + bytes(200)


def rifx() -> bytes:
    """A RIFX (big-endian) magic over little-endian sizes: the byte-swapped chunk sizes run past the end."""
    return b"RIFX" + pcm16()[4:]


def adpcm() -> bytes:
    """MS ADPCM (format tag 2)."""
    return riff(fmt_chunk(2, 1, 44100, 4, extra=b"\x00\x00"), data_chunk(bytes(256)))


def float_with(value: float) -> bytes:
    """32-bit float data containing ``value`` (NaN or inf) at sample 500."""
    x = np.zeros(1000, "<f4")
    x[500] = value
    return riff(fmt_chunk(3, 1, 44100, 32), data_chunk(x.tobytes()))


def float_nan() -> bytes:
    """32-bit float data containing a NaN."""
    return float_with(float("nan"))


def float_inf() -> bytes:
    """32-bit float data containing +inf."""
    return float_with(float("inf"))


def rate_zero() -> bytes:
    """Sample rate 0."""
    return riff(fmt_chunk(1, 1, 0, 16), data_chunk(bytes(200)))


def too_many_channels() -> bytes:
    """Nine channels (memstore reads 1 to 8)."""
    return riff(fmt_chunk(1, 9, 44100, 16), data_chunk(bytes(9 * 2 * 10)))


def bad_bits() -> bytes:
    """12-bit PCM in a 1-byte container (block align 1): the samples cannot fit."""
    return riff(fmt_chunk(1, 1, 44100, 12), data_chunk(bytes(300)))


def bad_block_align() -> bytes:
    """Block align that disagrees with channels x bits."""
    body = struct.pack("<HHIIHH", 1, 2, 44100, 44100 * 4, 3, 16)
    return riff(b"fmt " + struct.pack("<I", 16) + body, data_chunk(bytes(400)))


def no_fmt() -> bytes:
    """A data chunk and no ``fmt `` chunk."""
    return riff(data_chunk(bytes(200)))


def no_data() -> bytes:
    """A ``fmt `` chunk and no ``data`` chunk."""
    return riff(fmt_chunk(), b"LIST" + struct.pack("<I", 4) + b"INFO")


def huge_declared() -> bytes:
    """Data chunk declares 2 GB in a 1 kB file."""
    return riff(fmt_chunk(), data_chunk(bytes(1000), declared=2_000_000_000))


def chunk_past_end() -> bytes:
    """A LIST chunk before the data whose size runs past the end of the file."""
    return riff(fmt_chunk(), b"LIST" + struct.pack("<I", 1 << 30) + b"INFO", data_chunk(bytes(200)))


def unknown_codec() -> bytes:
    """Format tag 0x2222, a codec neither memstore nor libsndfile knows."""
    return riff(fmt_chunk(0x2222, 1, 8000, 8), data_chunk(bytes(100)))


def extensible_unknown() -> bytes:
    """WAVE_FORMAT_EXTENSIBLE whose sub-format GUID is neither PCM nor float (here A-law)."""
    return riff(fmt_extensible(6, 1, 8000, 8), data_chunk(bytes(100)))


def extensible(n=1001, channels=2) -> bytes:
    """A valid WAVE_FORMAT_EXTENSIBLE 24-bit file (valid bits 20, speaker mask set)."""
    ints = (np.arange(n * channels).reshape(n, channels) * 4099 % (1 << 23)) - (1 << 22)
    return riff(fmt_extensible(1, channels, 48000, 24, valid_bits=20), data_chunk(encode(ints, 24)))


def odd_chunk_padded(n=1000) -> bytes:
    """An odd-sized unknown chunk followed by its pad byte, then fmt and data: valid."""
    odd = b"junk" + struct.pack("<I", 3) + b"abc" + b"\x00"
    x = (np.sin(np.arange(n) * 0.01) * 10000).astype("<i2").tobytes()
    return riff(odd, fmt_chunk(), data_chunk(x))


def odd_data_padded(n=999) -> bytes:
    """Mono u8 data of odd length, its pad byte, then a trailing LIST chunk: valid."""
    x = bytes((np.arange(n) * 7 % 256).astype(np.uint8))
    tail = b"LIST" + struct.pack("<I", 4) + b"INFO"
    return riff(fmt_chunk(1, 1, 8000, 8), data_chunk(x), tail)


def list_before_data(n=1000) -> bytes:
    """A LIST chunk (odd size, padded) before the data: valid."""
    x = (np.sin(np.arange(n) * 0.01) * 10000).astype("<i2").tobytes()
    info = b"LIST" + struct.pack("<I", 5) + b"INFOa" + b"\x00"
    return riff(fmt_chunk(), info, data_chunk(x))


def write(path, data: bytes):
    """Write ``data`` to ``path`` and return ``path``."""
    with open(path, "wb") as f:
        f.write(data)
    return path
