"""Reading and writing WAV: every sample format, bad input, resampling, memory, soundfile."""

from __future__ import annotations

import os
import struct
import sys
import tracemalloc

import numpy as np
import pytest
import wavs
from scipy.signal import resample_poly

from memstore import _workers, audio
from memstore.audio import audio_extensions, audio_info, open_signal, read_audio, resampled_length, write_wav
from memstore.errors import AudioDecodeError, MemstoreError, MissingDependencyError, ParameterError

BITS = {"u8": 8, "pcm16": 16, "pcm24": 24, "pcm32": 32, "float32": 32, "float64": 64}
INT_FORMATS = ["u8", "pcm16", "pcm24", "pcm32"]


def _random_ints(rng, bits, shape):
    """Integers over the whole range, with both extremes and zero always present."""
    full = 2 ** (bits - 1)
    q = rng.integers(-full, full, size=shape, dtype=np.int64)
    q.flat[: min(3, q.size)] = [-full, full - 1, 0][: min(3, q.size)]
    return q


def _hand_built(fmt, n, channels, rng, extensible):
    """(bytes of a WAV built without write_wav, exact float64 values it must read as)."""
    if fmt in INT_FORMATS:
        q = _random_ints(rng, BITS[fmt], (n, channels))
        return wavs.pcm(q, BITS[fmt], 32000, extensible), q / 2.0 ** (BITS[fmt] - 1)
    x = rng.uniform(-1, 1, (n, channels)).astype(f"<f{BITS[fmt] // 8}")
    return wavs.floats(x, BITS[fmt], 32000, extensible), x.astype(np.float64)


@pytest.mark.parametrize("fmt", list(BITS))
@pytest.mark.parametrize("channels", [1, 2, 8])
@pytest.mark.parametrize("n", [1, 3, 1001])
@pytest.mark.parametrize("extensible", [False, True])
def test_reader_scaling_is_exact_for_every_format(tmp_path, fmt, channels, n, extensible):
    rng = np.random.default_rng([BITS[fmt], channels, n])
    data, exact = _hand_built(fmt, n, channels, rng, extensible)
    path = wavs.write(tmp_path / "x.wav", data)
    y, rate = read_audio(path, mono=False)
    assert rate == 32000 and y.dtype == np.float32 and y.shape == (n, channels)
    if fmt == "pcm32":  # 32-bit integers round once to float32's 24-bit mantissa
        np.testing.assert_allclose(y, exact, rtol=2.0**-24, atol=0)
    else:
        np.testing.assert_array_equal(y, exact.astype(np.float32))
    assert audio_info(path) == (n, 32000, channels, fmt)
    mono, _ = read_audio(path)
    assert mono.shape == (n,) and mono.dtype == np.float32
    np.testing.assert_allclose(mono, exact.mean(axis=1), rtol=0, atol=1e-6)


def test_documented_scaling_end_points(tmp_path):
    p16 = wavs.write(tmp_path / "a.wav", wavs.pcm([-32768, 0, 16384, 32767], 16))
    assert read_audio(p16)[0].tolist() == [-1.0, 0.0, 0.5, 32767 / 32768]
    u8 = wavs.write(tmp_path / "b.wav", wavs.riff(wavs.fmt_chunk(1, 1, 8000, 8), wavs.data_chunk(bytes([0, 128, 192]))))
    assert read_audio(u8)[0].tolist() == [-1.0, 0.0, 0.5]
    p24 = wavs.write(tmp_path / "c.wav", wavs.pcm([-(1 << 23), -1, 1 << 22], 24))
    assert read_audio(p24)[0].tolist() == [-1.0, -(2.0**-23), 0.5]


@pytest.mark.parametrize("fmt", list(BITS))
@pytest.mark.parametrize("channels", [1, 2, 8])
@pytest.mark.parametrize("extensible", [False, True])
def test_write_wav_canonical_header_and_quantisation(tmp_path, fmt, channels, extensible):
    sf = pytest.importorskip("soundfile")
    n = 1001  # odd: with u8 mono the data chunk needs a pad byte
    x = np.random.default_rng(channels).uniform(-1.2, 1.2, (n, channels))
    path = tmp_path / "w.wav"
    write_wav(path, x, 22050, sample_format=fmt, extensible=extensible)
    raw = path.read_bytes()
    bits = BITS[fmt]
    align = channels * bits // 8
    fmt_len = 40 if extensible else 16
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVE" + b"fmt "
    assert struct.unpack("<I", raw[4:8])[0] == len(raw) - 8
    assert struct.unpack("<I", raw[16:20])[0] == fmt_len
    tag, ch, rate, byte_rate, block_align, bps = struct.unpack("<HHIIHH", raw[20:36])
    assert (ch, rate, byte_rate, block_align, bps) == (channels, 22050, 22050 * align, align, bits)
    kind = 3 if fmt.startswith("float") else 1
    if extensible:
        assert tag == 0xFFFE and raw[36:38] == struct.pack("<H", 22)
        assert raw[44:60] == struct.pack("<H", kind) + wavs.GUID_TAIL
    else:
        assert tag == kind
    start = 20 + fmt_len
    assert raw[start:start + 4] == b"data" and struct.unpack("<I", raw[start + 4:start + 8])[0] == n * align
    assert len(raw) == start + 8 + n * align + (n * align) % 2
    body = raw[start + 8:start + 8 + n * align]
    if kind == 1:  # clip, then round to the nearest integer
        full = 2 ** (bits - 1)
        q = np.clip(np.round(np.clip(x, -1, 1) * full), -full, full - 1).astype(np.int64)
        assert body == wavs.encode(q, bits)
        expected = q / full
    else:
        assert body == x.astype(f"<f{bits // 8}").tobytes()
        expected = x
    y, _ = read_audio(path, mono=False)
    np.testing.assert_allclose(y, expected, rtol=2.0**-24, atol=0)
    # an independent reader agrees with what was written
    ref, ref_rate = sf.read(path, dtype="float64", always_2d=True)
    assert ref_rate == 22050
    np.testing.assert_allclose(ref, expected, rtol=2.0**-24, atol=1e-12)


def test_write_wav_rounds_and_clips(tmp_path):
    path = tmp_path / "r.wav"
    vals = [1.5, 1.0, -1.0, -2.0, 0.6 / 32768, 0.4 / 32768, -0.6 / 32768]
    write_wav(path, vals, 8000)
    assert np.frombuffer(path.read_bytes()[44:], "<i2").tolist() == [32767, 32767, -32768, -32768, 1, 0, -1]
    write_wav(path, [1.0, -1.0, 0.0], 8000, sample_format="u8")
    assert list(path.read_bytes()[44:47]) == [255, 0, 128]


def test_write_wav_rejects_bad_arguments_before_creating_a_file(tmp_path):
    path = tmp_path / "bad.wav"
    cases = [
        (dict(samples=[0.0, np.nan], sample_rate=8000), "NaN or infinite"),
        (dict(samples=[0.0], sample_rate=0), "sample_rate=0"),
        (dict(samples=[0.0], sample_rate=True), "sample_rate=True"),
        (dict(samples=np.zeros((2, 2, 2)), sample_rate=8000), r"must be \(n,\)"),
        (dict(samples=np.zeros((2, 9)), sample_rate=8000), r"1\.\.8"),
        (dict(samples=[0.0], sample_rate=8000, sample_format="pcm12"), "sample_format='pcm12'"),
        # found by the audio hunt: a raw struct.error from the header's byte-rate field
        (dict(samples=[0.0], sample_rate=2**31), "exceeds the 32-bit byte rate field"),
        (dict(samples=np.zeros((1, 8)), sample_rate=600_000_000, sample_format="float64"), "byte rate field"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ParameterError, match=match):
            write_wav(path, **kwargs)
        assert not path.exists()


def test_hand_built_extensible_uses_the_container_size(tmp_path):
    n, ch = 1001, 2
    path = wavs.write(tmp_path / "e.wav", wavs.extensible(n, ch))
    ints = (np.arange(n * ch).reshape(n, ch) * 4099 % (1 << 23)) - (1 << 22)
    assert audio_info(path) == (n, 48000, ch, "pcm24")
    np.testing.assert_array_equal(read_audio(path, mono=False)[0], (ints / 2.0**23).astype(np.float32))


def test_unknown_chunks_and_odd_padding(tmp_path):
    path = wavs.write(tmp_path / "l.wav", wavs.list_before_data(999))
    assert audio_info(path).n_samples == 999 and read_audio(path)[0].shape == (999,)
    path = wavs.write(tmp_path / "j.wav", wavs.odd_chunk_padded(1000))
    assert audio_info(path) == (1000, 44100, 1, "pcm16")
    path = wavs.write(tmp_path / "o.wav", wavs.odd_data_padded(999))
    expected = ((np.arange(999) * 7 % 256) - 128) / 128
    np.testing.assert_array_equal(read_audio(path)[0], expected.astype(np.float32))


def test_mono_is_the_mean_and_stays_in_range(tmp_path):
    path = wavs.write(tmp_path / "s.wav", wavs.pcm(np.array([[16384, -16384], [32767, 32767], [-32768, 0]]), 16))
    np.testing.assert_array_equal(read_audio(path)[0], [0.0, 32767 / 32768, -0.5])
    path = wavs.write(tmp_path / "8.wav", wavs.floats(np.full((10, 8), 0.9), 32))
    mono = read_audio(path)[0]
    np.testing.assert_allclose(mono, 0.9, rtol=1e-6)  # a sum would give 7.2


def test_the_mean_of_huge_finite_float_samples_is_finite(tmp_path):
    # found by the audio hunt: the float32 sum of two samples of 3e38 was inf, with only a numpy warning
    path = wavs.write(tmp_path / "big.wav", wavs.floats(np.array([[3e38, 3e38], [-3e38, 1e38], [0.5, 0.25]]), 32))
    np.testing.assert_allclose(read_audio(path)[0], np.float32([3e38, -1e38, 0.375]), rtol=1e-6)


def test_a_cut_file_of_another_codec_is_refused_not_read_short(tmp_path):
    # found by the audio hunt: the codec was looked at before the size, so a cut mu-law or ADPCM WAV went to
    # libsndfile, which read what was there: stored short where a cut PCM file is refused
    sf = pytest.importorskip("soundfile")
    path = tmp_path / "ulaw.wav"
    sf.write(path, np.zeros(48000, np.float32), 16000, subtype="ULAW", format="WAV")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])
    for read in (audio_info, read_audio):
        with pytest.raises(AudioDecodeError, match="data chunk shorter than declared"):
            read(path)


@pytest.mark.parametrize("channels", [2, 3, 5])
def test_16_bit_mono_is_the_numpy_steps_bit_for_bit(tmp_path, monkeypatch, channels):
    """16-bit audio read as mono in a build goes through one kernel (audio._mix_pcm16); its float32 bits are
    those of the general steps (convert every sample, then add channel after channel and scale), which a
    build's stores depend on. Every extreme sample value and chunk edges included."""
    rng = np.random.default_rng(channels)
    ints = rng.integers(-32768, 32768, (5000, channels))
    ints[:3] = [[-32768] * channels, [32767] * channels, [-1] * channels]
    ints[3, :2] = [1, -1]
    path = wavs.write(tmp_path / "m.wav", wavs.pcm(ints, 16))
    y = ints.astype(np.float32) * np.float32(2.0**-15)  # exact: 16 bits fit float32
    want = y[:, 0].copy()
    for c in range(1, channels):
        want += y[:, c]
    want *= np.float32(1.0 / channels)
    calls = []
    kernel = audio._mix_pcm16
    monkeypatch.setattr(audio, "_mix_pcm16", lambda *a: calls.append(1) or kernel(*a))
    np.testing.assert_array_equal(read_audio(path)[0].view(np.int32), want.view(np.int32))
    assert not calls or _workers.heap_kept()  # outside a build the general steps (see _mix_pcm16)
    with _workers.kept_heap():  # as in a build: the kernel
        if not _workers.heap_kept():
            pytest.skip("no glibc mallopt here: the kernel is never used")
        np.testing.assert_array_equal(read_audio(path)[0].view(np.int32), want.view(np.int32))
        assert calls or not audio.JIT
        monkeypatch.setattr(audio, "CHUNK_SAMPLES", 7 * channels)  # chunks of 7 frames
        np.testing.assert_array_equal(read_audio(path)[0].view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("fmt", list(BITS))
def test_chunked_decode_equals_one_pass(tmp_path, monkeypatch, fmt):
    rng = np.random.default_rng(7)
    path = wavs.write(tmp_path / "c.wav", _hand_built(fmt, 997, 3, rng, False)[0])
    whole_multi, whole_mono = read_audio(path, mono=False)[0], read_audio(path)[0]
    monkeypatch.setattr(audio, "CHUNK_SAMPLES", 7)  # 2 frames of 3 channels per chunk
    np.testing.assert_array_equal(read_audio(path, mono=False)[0], whole_multi)
    np.testing.assert_array_equal(read_audio(path)[0], whole_mono)
    sig = open_signal(path)
    assert len(sig) == 997 and sig.sample_rate == 32000
    np.testing.assert_array_equal(sig[101:550], whole_mono[101:550])
    np.testing.assert_array_equal(sig[:], whole_mono)


def test_chunked_read_peak_memory_is_output_plus_a_chunk(tmp_path, monkeypatch):
    """Peak traced allocation while reading 1M stereo 24-bit frames stays near the output size."""
    n = 1 << 20
    path = tmp_path / "long.wav"
    write_wav(path, np.sin(np.arange(n) * 0.001)[:, None] * [0.5, -0.5], 44100, sample_format="pcm24")
    monkeypatch.setattr(audio, "CHUNK_SAMPLES", 1 << 16)
    tracemalloc.start()
    try:
        y, _ = read_audio(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert y.nbytes == 4 * n
    # a one-shot decode would hold n * 2 channels * (4 + 4 + 4) bytes of temporaries (24 MB)
    assert peak < y.nbytes + 32 * (1 << 16), peak


def test_resampling_length_and_frequency(tmp_path):
    t = np.arange(44100) / 44100
    path = tmp_path / "s.wav"
    write_wav(path, 0.5 * np.sin(2 * np.pi * 1000 * t), 44100, sample_format="float32")
    y, rate = read_audio(path, sample_rate=16000)
    assert rate == 16000 and y.dtype == np.float32
    assert len(y) == resampled_length(44100, 44100, 16000) == 16000
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 1000) <= 1
    assert read_audio(path, sample_rate=44100)[0].shape == (44100,)  # same rate: untouched
    stereo = tmp_path / "st.wav"
    write_wav(stereo, np.zeros((1001, 2)), 44100)
    y2, _ = read_audio(stereo, mono=False, sample_rate=22050)
    assert y2.shape == (resampled_length(1001, 44100, 22050), 2) and y2.dtype == np.float32


@pytest.mark.parametrize("n", [1, 2, 7, 1001, 44101])
@pytest.mark.parametrize("rates", [(44100, 22050), (44100, 16000), (8000, 44100), (48000, 44100), (22050, 32000)])
def test_resampled_length_is_the_real_output_length(tmp_path, n, rates):
    source, target = rates
    assert resampled_length(n, source, target) == len(resample_poly(np.zeros(n, np.float32), target, source))
    if n in (7, 1001):
        path = tmp_path / "n.wav"
        write_wav(path, np.zeros(n), source)
        assert len(read_audio(path, sample_rate=target)[0]) == resampled_length(n, source, target)


@pytest.mark.parametrize("bad", [0, -8000, 1.5, True, "16000"])
def test_bad_target_rate_is_a_parameter_error(tmp_path, bad):
    path = wavs.write(tmp_path / "a.wav", wavs.pcm16())
    with pytest.raises(ParameterError, match="must be a positive integer"):
        read_audio(path, sample_rate=bad)


BAD = {
    "empty file": (wavs.empty_file, "truncated header"),
    "truncated riff": (wavs.truncated_riff, "truncated header"),
    "truncated header": (wavs.truncated_header, "truncated header"),
    "short data": (wavs.short_data, "data chunk shorter than declared"),
    "huge declared": (wavs.huge_declared, "data chunk shorter than declared"),
    "zero samples": (wavs.zero_samples, "zero samples"),
    "not riff": (wavs.not_riff, "not a RIFF/WAVE file"),
    "rifx": (wavs.rifx, r"chunk b'fmt ' of 268435456 bytes runs past the end"),
    "adpcm": (wavs.adpcm, r"unsupported codec MS ADPCM \(format tag 2\)"),
    "unknown codec": (wavs.unknown_codec, r"unsupported codec format tag 0x2222 \(format tag 8738\).*"
                                          "libsndfile cannot decode it either"),
    "rate zero": (wavs.rate_zero, "sample rate 0 must be positive"),
    "nine channels": (wavs.too_many_channels, "9 channels; 1 to 8"),
    "12-bit": (wavs.bad_bits, "unsupported sample size: 12-bit PCM in a 1-byte container"),
    "block align": (wavs.bad_block_align, "block align 3"),
    "no fmt": (wavs.no_fmt, "no 'fmt ' chunk"),
    "no data": (wavs.no_data, "no 'data' chunk"),
    "chunk past end": (wavs.chunk_past_end, "runs past the end of the file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_raise_audio_decode_error_naming_file_and_reason(tmp_path, case):
    make, reason = BAD[case]
    path = wavs.write(tmp_path / "bad.wav", make())
    for fn in (audio_info, read_audio, open_signal):
        with pytest.raises(AudioDecodeError, match=reason) as exc:
            fn(path)
        assert str(exc.value).startswith(f"{path}: ")
        assert isinstance(exc.value, OSError) and isinstance(exc.value, MemstoreError)


@pytest.mark.parametrize("data", [wavs.float_nan(), wavs.float_inf(), wavs.float_with(-np.inf),
                                  wavs.floats([0.0, 1e300, 0.0], 64)], ids=["nan", "inf", "-inf", "f64-overflow"])
def test_non_finite_float_data(tmp_path, data):
    path = wavs.write(tmp_path / "nan.wav", data)
    audio_info(path)  # the header is fine; only the samples are bad
    with pytest.raises(AudioDecodeError, match="NaN or infinite samples") as exc:
        read_audio(path)
    assert str(path) in str(exc.value)


def test_non_finite_sample_found_in_a_later_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "CHUNK_SAMPLES", 64)
    path = wavs.write(tmp_path / "nan.wav", wavs.float_nan())  # NaN at frame 500 of 1000
    with pytest.raises(AudioDecodeError, match="first at frame 500"):
        read_audio(path)
    sig = open_signal(path)
    assert np.isfinite(sig[:400]).all()
    with pytest.raises(AudioDecodeError, match="NaN"):
        sig[400:600]


def test_directory_missing_and_fifo(tmp_path):
    (tmp_path / "x.wav").mkdir()
    for fn in (audio_info, read_audio):
        with pytest.raises(AudioDecodeError, match="x.wav: is a directory"):
            fn(tmp_path / "x.wav")
    with pytest.raises(AudioDecodeError, match="missing.wav: cannot open") as exc:
        read_audio(tmp_path / "missing.wav")
    assert isinstance(exc.value.__cause__, FileNotFoundError)
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(AudioDecodeError, match="not a regular file"):
        audio_info(tmp_path / "pipe.wav")  # must not block on open


def test_unreadable_file(tmp_path):
    locked = wavs.write(tmp_path / "locked.wav", wavs.pcm16())
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):  # root reads anything
        pytest.skip("running with permission to read a mode-000 file")
    with pytest.raises(AudioDecodeError, match="locked.wav: cannot open: Permission denied"):
        audio_info(locked)


class _CountingFile:
    def __init__(self, f, counter):
        self._f, self._counter = f, counter

    def read(self, size=-1):
        data = self._f.read(size)
        self._counter.append(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_header_only_read_does_not_touch_samples(tmp_path, monkeypatch):
    """audio_info on a 1 GB file reads a few header bytes and never maps the sample data."""
    path = tmp_path / "big.wav"
    n_bytes = 1 << 30
    with open(path, "wb") as f:  # sparse: instant to create, no disk used
        f.write(wavs.riff(wavs.fmt_chunk(1, 2, 44100, 16), b"LIST" + struct.pack("<I", 4) + b"INFO",
                          b"data" + struct.pack("<I", n_bytes), declared=n_bytes + 48))
        f.truncate(f.tell() + n_bytes)
    reads: list[int] = []
    real_open = open
    monkeypatch.setattr(audio, "open", lambda *a, **k: _CountingFile(real_open(*a, **k), reads), raising=False)

    def no_map(*args, **kwargs):
        raise AssertionError("audio_info mapped the sample data")

    monkeypatch.setattr(audio.np, "memmap", no_map)
    before = _rchar()
    info = audio_info(path)
    after = _rchar()
    assert info == (n_bytes // 4, 44100, 2, "pcm16")
    assert 0 < sum(reads) <= 100, reads
    if before is not None:  # Linux: count every byte read by the process
        assert after - before < 1 << 16


def _rchar() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/io") as f:
            return int(next(line for line in f if line.startswith("rchar")).split()[1])
    except OSError:
        return None


def test_soundfile_formats(tmp_path):
    sf = pytest.importorskip("soundfile")
    assert ".flac" in audio_extensions() and audio_extensions()[0] == ".wav"
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (4001, 2)).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    q = np.round(x.astype(np.float64) * 32768) / 32768
    y, rate = read_audio(tmp_path / "a.flac", mono=False)
    assert rate == 16000 and y.shape == (4001, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y, q, atol=1e-7)
    np.testing.assert_allclose(read_audio(tmp_path / "a.flac")[0], q.mean(axis=1), atol=1e-6)
    assert audio_info(tmp_path / "a.flac") == (4001, 16000, 2, "pcm16")
    assert len(read_audio(tmp_path / "a.flac", sample_rate=8000)[0]) == resampled_length(4001, 16000, 8000)
    (tmp_path / "bad.flac").write_bytes(b"fLaC" + bytes(100))
    for fn in (audio_info, read_audio):
        with pytest.raises(AudioDecodeError, match="bad.flac: cannot decode"):
            fn(tmp_path / "bad.flac")
        with pytest.raises(AudioDecodeError, match="gone.flac: cannot open"):
            fn(tmp_path / "gone.flac")


def test_without_soundfile_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` raise ImportError
    (tmp_path / "a.flac").write_bytes(b"fLaC")
    assert audio_extensions() == (".wav",)
    for fn in (audio_info, read_audio):
        with pytest.raises(MissingDependencyError, match=r"memstore\[audio\]") as exc:
            fn(tmp_path / "a.flac")
        assert "a.flac" in str(exc.value) and isinstance(exc.value, ImportError)
    # WAV needs nothing optional
    assert read_audio(wavs.write(tmp_path / "a.wav", wavs.pcm16()))[0].shape == (1000,)


@pytest.mark.parametrize("fmt", ["pcm16", "pcm24", "float32"])
def test_a_wav_file_is_opened_once_to_read_its_header_and_once_to_read_it(tmp_path, monkeypatch, fmt):
    """_dispatch hands its open file on: a build opens each file once in the scan and once to extract it
    (it was twice and three times: 33,525 opens and stats for 6,705 files). Results as before."""
    path = tmp_path / "a.wav"
    x = np.random.default_rng(0).uniform(-0.9, 0.9, (5000, 2)).astype(np.float32)
    write_wav(path, x, 8000, sample_format=fmt)
    want_info, (want, rate) = audio_info(path), read_audio(path)
    opened = []
    real = audio._open
    monkeypatch.setattr(audio, "_open", lambda p: opened.append(p) or real(p))
    assert audio_info(path) == want_info and len(opened) == 1
    got, got_rate = read_audio(path)
    assert len(opened) == 2 and got_rate == rate
    np.testing.assert_array_equal(got, want)
    assert read_audio(path, mono=False)[0].shape == (5000, 2) and len(opened) == 3
