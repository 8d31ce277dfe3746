"""Reading and writing WAV: every sample format, bad input, resampling, soundfile."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import wavs

from memstore.audio import audio_info, read_audio, resampled_length, write_wav
from memstore.errors import AudioDecodeError, MemstoreError, MissingDependencyError

FORMATS = {"u8": 8, "pcm16": 16, "pcm24": 24, "pcm32": 32, "float32": 32, "float64": 64}


def _quantised(x, fmt):
    if fmt.startswith("float"):
        return x.astype(np.float32)
    full = 2 ** (FORMATS[fmt] - 1)
    q = np.clip(np.round(x * full), -full, full - 1)
    return (q / full).astype(np.float32)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("channels", [1, 2, 8])
@pytest.mark.parametrize("extensible", [False, True])
def test_round_trip_every_format(tmp_path, fmt, channels, extensible):
    rng = np.random.default_rng(channels)
    x = rng.uniform(-1, 1, (1001, channels))
    path = tmp_path / "x.wav"
    write_wav(path, x, 22050, sample_format=fmt, extensible=extensible)
    y, rate = read_audio(path, mono=False)
    assert rate == 22050 and y.dtype == np.float32 and y.shape == (1001, channels)
    np.testing.assert_allclose(y, _quantised(x, fmt), rtol=0, atol=1e-7)
    info = audio_info(path)
    assert info == (1001, 22050, channels, fmt)
    mono, _ = read_audio(path)
    np.testing.assert_allclose(mono, y.mean(axis=1), atol=1e-6)


def test_integer_scaling_is_documented_exactly(tmp_path):
    path = wavs.write(tmp_path / "a.wav", wavs.riff(wavs.fmt_chunk(1, 1, 8000, 16),
                                                     wavs.data_chunk(struct.pack("<3h", -32768, 0, 16384))))
    y, _ = read_audio(path)
    assert y.tolist() == [-1.0, 0.0, 0.5]
    u8 = wavs.write(tmp_path / "b.wav", wavs.riff(wavs.fmt_chunk(1, 1, 8000, 8), wavs.data_chunk(bytes([0, 128, 192]))))
    assert read_audio(u8)[0].tolist() == [-1.0, 0.0, 0.5]


def test_chunks_before_data_and_odd_padding(tmp_path):
    path = wavs.write(tmp_path / "l.wav", wavs.list_before_data(999))
    assert audio_info(path).n_samples == 999
    assert read_audio(path)[0].shape == (999,)


def test_resampling_length_and_frequency(tmp_path):
    t = np.arange(44100) / 44100
    path = tmp_path / "s.wav"
    write_wav(path, 0.5 * np.sin(2 * np.pi * 1000 * t), 44100, sample_format="float32")
    y, rate = read_audio(path, sample_rate=16000)
    assert rate == 16000
    assert len(y) == resampled_length(44100, 44100, 16000) == 16000
    peak = np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y)
    assert abs(peak - 1000) < 2
    for n in (1, 7, 1001, 44101):
        assert len(read_audio(_write_n(tmp_path, n), sample_rate=22050)[0]) == resampled_length(n, 44100, 22050)


def _write_n(tmp_path, n):
    p = tmp_path / f"n{n}.wav"
    write_wav(p, np.zeros(n), 44100)
    return p


BAD = {
    "truncated header": (wavs.truncated_header, "truncated header"),
    "short data": (wavs.short_data, "shorter than declared"),
    "zero samples": (wavs.zero_samples, "zero samples"),
    "not riff": (wavs.not_riff, "not a RIFF"),
    "rifx": (wavs.rifx, "RIFX"),
    "adpcm": (wavs.adpcm, "unsupported codec MS ADPCM"),
    "rate zero": (wavs.rate_zero, "sample rate 0"),
    "huge declared": (wavs.huge_declared, "shorter than declared"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_raise_audio_decode_error_naming_file_and_reason(tmp_path, case):
    make, reason = BAD[case]
    path = wavs.write(tmp_path / "bad.wav", make())
    for fn in (audio_info, read_audio):
        with pytest.raises(AudioDecodeError, match=reason) as exc:
            fn(path)
        assert str(path) in str(exc.value)
        assert isinstance(exc.value, OSError) and isinstance(exc.value, MemstoreError)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_float_data(tmp_path, value):
    path = wavs.write(tmp_path / "nan.wav", wavs.float_with(value))
    assert audio_info(path).n_samples == 1000  # the header is fine
    with pytest.raises(AudioDecodeError, match="NaN or infinite"):
        read_audio(path)


def test_directory_missing_and_unreadable(tmp_path):
    (tmp_path / "x.wav").mkdir()
    with pytest.raises(AudioDecodeError, match="is a directory"):
        audio_info(tmp_path / "x.wav")
    with pytest.raises(AudioDecodeError, match="cannot open"):
        read_audio(tmp_path / "missing.wav")


def test_header_only_read_does_not_touch_samples(tmp_path):
    """audio_info on a 1 GB file: the data region is a sparse hole it never reads."""
    path = tmp_path / "big.wav"
    n_bytes = 1 << 30
    with open(path, "wb") as f:
        f.write(wavs.riff(wavs.fmt_chunk(1, 2, 44100, 16), b"data" + struct.pack("<I", n_bytes),
                          declared=n_bytes + 36))
        f.truncate(44 + n_bytes)
    before = _read_bytes()
    info = audio_info(path)
    assert info.n_samples == n_bytes // 4
    assert _read_bytes() - before < 1 << 20


def _read_bytes() -> int:
    with open(f"/proc/{os.getpid()}/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def test_soundfile_formats(tmp_path):
    sf = pytest.importorskip("soundfile")
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (4000, 2)).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    y, rate = read_audio(tmp_path / "a.flac", mono=False)
    assert rate == 16000 and y.shape == (4000, 2)
    np.testing.assert_allclose(y, x, atol=1 / 32768 + 1e-6)
    assert audio_info(tmp_path / "a.flac").n_samples == 4000


def test_without_soundfile_the_error_names_the_extra(tmp_path):
    import subprocess
    import sys

    (tmp_path / "a.flac").write_bytes(b"fLaC")
    code = ("import sys; sys.modules['soundfile'] = None\n"
            "from memstore.audio import read_audio\n"
            "try:\n    read_audio(sys.argv[1])\nexcept ImportError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.flac")], capture_output=True,
                         text=True, check=True).stdout
    assert MissingDependencyError.__name__ in out and "memstore[audio]" in out
