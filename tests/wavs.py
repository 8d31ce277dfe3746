"""Hand-built WAV files, odd and hostile, for tests (imported as ``import wavs``)."""

from __future__ import annotations

import struct

import numpy as np


def fmt_chunk(tag=1, channels=1, rate=44100, bits=16, extra=b"") -> bytes:
    align = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra
    return b"fmt " + struct.pack("<I", len(body)) + body


def riff(*chunks: bytes, magic=b"RIFF", declared=None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return magic + struct.pack("<I", len(body) if declared is None else declared) + body


def data_chunk(data: bytes, declared=None) -> bytes:
    n = len(data) if declared is None else declared
    pad = b"\x00" if len(data) & 1 else b""
    return b"data" + struct.pack("<I", n) + data + pad


def pcm16(n=1000, channels=1, rate=44100) -> bytes:
    """A valid 16-bit file (reference for the broken variants)."""
    x = (np.sin(np.arange(n * channels) * 0.01) * 10000).astype("<i2").tobytes()
    return riff(fmt_chunk(1, channels, rate, 16), data_chunk(x))


def truncated_header() -> bytes:
    """Cut inside the RIFF header."""
    return pcm16()[:20]


def short_data() -> bytes:
    """Data chunk declares more bytes than the file holds."""
    return pcm16()[:-500]


def zero_samples() -> bytes:
    """A data chunk with no samples."""
    return riff(fmt_chunk(), data_chunk(b""))


def not_riff() -> bytes:
    """Not a RIFF file at all."""
    return b"ID3\x03\x00" + bytes(200)


def rifx() -> bytes:
    """Big-endian RIFX container."""
    return b"RIFX" + pcm16()[4:]


def adpcm() -> bytes:
    """MS ADPCM (format tag 2)."""
    return riff(fmt_chunk(2, 1, 44100, 4, extra=b"\x00\x00"), data_chunk(bytes(256)))


def float_with(value: float) -> bytes:
    """32-bit float data containing ``value`` (NaN or inf)."""
    x = np.zeros(1000, "<f4")
    x[500] = value
    return riff(fmt_chunk(3, 1, 44100, 32), data_chunk(x.tobytes()))


def rate_zero() -> bytes:
    """Sample rate 0."""
    return riff(fmt_chunk(1, 1, 0, 16), data_chunk(bytes(200)))


def huge_declared() -> bytes:
    """Data chunk declares 2 GB in a 1 kB file."""
    return riff(fmt_chunk(), data_chunk(bytes(1000), declared=2_000_000_000))


def list_before_data(n=1000) -> bytes:
    """A LIST chunk (odd size, padded) before the data: valid."""
    x = (np.sin(np.arange(n) * 0.01) * 10000).astype("<i2").tobytes()
    info = b"LIST" + struct.pack("<I", 5) + b"INFOa" + b"\x00"
    return riff(fmt_chunk(), info, data_chunk(x))


def write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
    return path
