"""Every input format against a reference decoder: scipy's WAV corpus, and a matrix of libsndfile files.

scipy ships its WAV test files (RF64, RIFX, 12/20/36/45/53/64-bit PCM, truncated
and inconsistent headers) inside the installed package; memstore must read every
one that ``scipy.io.wavfile`` reads, with the same samples after the documented
float mapping, and refuse the others by name. The soundfile matrix writes each
container/subtype pair with ``soundfile.write`` and compares memstore's decode
with ``soundfile.read(dtype="float32")``.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import wavs

from memstore import audio
from memstore.audio import audio_extensions, audio_info, open_signal, read_audio
from memstore.build import build_store
from memstore.errors import AudioDecodeError, BuildError

sf = pytest.importorskip("soundfile")

SCIPY_DATA = Path(scipy.io.wavfile.__file__).parent / "tests" / "data"
SCIPY_FILES = sorted(p.name for p in SCIPY_DATA.glob("*.wav"))
# scipy reads the first 236 of 4410 samples of this cut file with a warning; memstore refuses it
# by name instead (a cut file is a damaged download; see docs/formats-input.md)
TRUNCATED = "test-44100Hz-le-1ch-4bytes-early-eof.wav"
# scipy refuses mu-law; libsndfile reads it, and so does memstore (through soundfile)
ULAW = "test-8000Hz-le-1ch-1byte-ulaw.wav"


def _scipy_read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # WavFileWarning for unknown chunks and the cut file
        return scipy.io.wavfile.read(path)


def _as_float(x: np.ndarray) -> np.ndarray:
    """The documented mapping: unsigned 8-bit as (x - 128) / 128, integers / 2**(container bits - 1)."""
    if x.dtype.kind == "u":
        return (x.astype(np.float64) - 128) / 128
    if x.dtype.kind == "i":
        return x.astype(np.float64) / 2.0 ** (8 * x.dtype.itemsize - 1)
    return x.astype(np.float64)


def test_the_corpus_is_there():
    # the parametrised test below would pass vacuously on a scipy without its test data
    assert len(SCIPY_FILES) >= 20 and TRUNCATED in SCIPY_FILES and ULAW in SCIPY_FILES


@pytest.mark.parametrize("name", SCIPY_FILES)
def test_scipy_wav_corpus(name):
    path = SCIPY_DATA / name
    try:
        rate, ref = _scipy_read(path)
    except ValueError:
        ref = None
    if name == ULAW:
        assert ref is None
        want, want_rate = sf.read(path, dtype="float32", always_2d=True)
        got, got_rate = read_audio(path, mono=False)
        assert got_rate == want_rate and np.array_equal(got, want)
        return
    if ref is None or name == TRUNCATED:
        for fn in (audio_info, read_audio, open_signal):
            with pytest.raises(AudioDecodeError) as exc:
                fn(path)
            assert str(exc.value).startswith(f"{path}: ")
        if name == TRUNCATED:
            assert "truncated" in str(exc.value)
        return
    want = _as_float(ref)
    want = want.reshape(len(want), -1)
    info = audio_info(path)
    assert (info.n_samples, info.sample_rate, info.channels) == (want.shape[0], rate, want.shape[1])
    got, got_rate = read_audio(path, mono=False)
    assert got_rate == rate and got.dtype == np.float32 and got.shape == want.shape
    # float32 holds 24 significant bits: one rounding of wider integers or float64
    np.testing.assert_allclose(got, want, rtol=2.0**-24, atol=0)
    np.testing.assert_allclose(open_signal(path)[:], want.mean(axis=1), rtol=1e-6, atol=1e-9)


def test_every_wav_scipy_reads_is_read():
    read = []
    for name in SCIPY_FILES:
        try:
            _scipy_read(SCIPY_DATA / name)
        except ValueError:
            continue
        if name != TRUNCATED:
            read.append(name)
            read_audio(SCIPY_DATA / name)
    assert len(read) >= 17  # 17 in scipy 1.17; a newer corpus may hold more


# container, subtype, extension: the pairs users have (ADPCM and ALAC as they come)
MATRIX = [
    ("WAV", "PCM_U8", "wav"), ("WAV", "PCM_16", "wav"), ("WAV", "PCM_24", "wav"), ("WAV", "PCM_32", "wav"),
    ("WAV", "FLOAT", "wav"), ("WAV", "DOUBLE", "wav"), ("WAV", "ULAW", "wav"), ("WAV", "ALAW", "wav"),
    ("WAV", "IMA_ADPCM", "wav"), ("WAV", "MS_ADPCM", "wav"),
    ("WAVEX", "PCM_24", "wav"), ("WAVEX", "FLOAT", "wav"), ("WAVEX", "ULAW", "wav"),
    ("RF64", "PCM_16", "wav"), ("RF64", "PCM_24", "rf64"), ("RF64", "FLOAT", "wav"), ("RF64", "ALAW", "wav"),
    ("W64", "PCM_16", "w64"), ("W64", "FLOAT", "w64"),
    ("AIFF", "PCM_16", "aiff"), ("AIFF", "PCM_24", "aif"), ("AIFF", "PCM_S8", "aiff"), ("AIFF", "FLOAT", "aifc"),
    ("AIFF", "ULAW", "aifc"),
    ("AU", "PCM_16", "au"), ("AU", "PCM_24", "snd"), ("AU", "ULAW", "au"), ("AU", "FLOAT", "au"),
    ("CAF", "PCM_16", "caf"), ("CAF", "FLOAT", "caf"), ("CAF", "ALAC_16", "caf"),
    ("FLAC", "PCM_16", "flac"), ("FLAC", "PCM_24", "flac"), ("FLAC", "PCM_S8", "flac"),
    ("OGG", "VORBIS", "ogg"), ("OGG", "OPUS", "opus"), ("MP3", "MPEG_LAYER_III", "mp3"),
]
LOSSY = {"VORBIS", "OPUS", "MPEG_LAYER_III"}


def _signal(n=4001, ch=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.4 * np.sin(2 * np.pi * 440 * t)[:, None] + rng.uniform(-0.1, 0.1, (n, ch))
    return x.astype(np.float32)


@pytest.mark.parametrize("fmt,subtype,ext", MATRIX, ids=[f"{f}-{s}-{e}" for f, s, e in MATRIX])
def test_soundfile_matrix(tmp_path, fmt, subtype, ext):
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile has no {fmt}/{subtype}")
    rate = 48000 if subtype == "OPUS" else 16000
    path = tmp_path / f"x.{ext}"
    sf.write(path, _signal(), rate, format=fmt, subtype=subtype)
    want, want_rate = sf.read(path, dtype="float32", always_2d=True)
    info = audio_info(path)
    assert (info.n_samples, info.sample_rate, info.channels) == (len(want), want_rate, 2)
    got, got_rate = read_audio(path, mono=False)
    assert got_rate == want_rate and got.dtype == np.float32 and got.shape == want.shape
    if subtype in LOSSY:  # mpg123 and libopus may round the last bit differently between two decodes
        np.testing.assert_allclose(got, want, rtol=0, atol=2.0**-20)
    else:
        assert np.array_equal(got, want)
    mono = open_signal(path)[:]
    np.testing.assert_allclose(mono, want.mean(axis=1), rtol=0, atol=2.0**-20)
    assert f".{ext}" in audio_extensions()


def test_wav_fast_path_is_memstores_own(tmp_path, monkeypatch):
    """Plain PCM WAV never goes through soundfile (that is the fast path the benchmark measures)."""
    sf.write(tmp_path / "x.wav", _signal(), 16000, subtype="PCM_16")
    monkeypatch.setattr(audio, "_read_soundfile", None)  # any call would raise TypeError
    monkeypatch.setattr(audio, "_soundfile_info", None)
    assert read_audio(tmp_path / "x.wav")[0].shape == (4001,)
    assert audio_info(tmp_path / "x.wav").sample_format == "pcm16"


def _rifx(ints: np.ndarray, width: int, bits: int) -> bytes:
    """A big-endian RIFX file of integer samples, ``bits`` valid in ``width``-byte containers."""
    n, ch = ints.shape
    left = ints.astype(np.int64) << (8 * width - bits)  # samples are left-justified in the container
    raw = left.astype(">i8").view(np.uint8).reshape(-1, 8)[:, 8 - width:].tobytes()
    fmt = struct.pack(">HHIIHH", 1, ch, 8000, 8000 * ch * width, ch * width, bits)
    body = b"WAVE" + b"fmt " + struct.pack(">I", 16) + fmt + b"data" + struct.pack(">I", len(raw)) + raw
    return b"RIFX" + struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("width,bits", [(2, 12), (3, 20), (3, 24), (4, 32), (5, 36), (6, 48), (7, 53), (8, 64)])
def test_rifx_and_wide_containers(tmp_path, width, bits):
    rng = np.random.default_rng(bits)
    ints = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (50, 2), dtype=np.int64)
    ints[0] = [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1]  # both full-scale ends
    path = wavs.write(tmp_path / "x.wav", _rifx(ints, width, bits))
    rate, ref = _scipy_read(path)
    got, _ = read_audio(path, mono=False)
    want = ints / 2.0 ** (bits - 1)
    np.testing.assert_allclose(got, want, rtol=2.0**-24, atol=0)
    np.testing.assert_allclose(got, _as_float(ref), rtol=2.0**-24, atol=0)
    assert got[0, 0] == -1.0
    assert audio_info(path).sample_format == f"pcm{8 * width}"


def test_rf64_data_size_comes_from_ds64(tmp_path):
    x = np.arange(-500, 500, dtype=np.int16)
    raw = x.astype("<i2").tobytes()
    ds64 = b"ds64" + struct.pack("<IQQQI", 28, 0, len(raw), len(x), 0)
    fmt = wavs.fmt_chunk(1, 1, 8000, 16)
    body = b"WAVE" + ds64 + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF) + raw + b"LIST" + struct.pack("<I", 0)
    path = wavs.write(tmp_path / "x.wav", b"RF64" + struct.pack("<I", 0xFFFFFFFF) + body)
    got, _ = read_audio(path)
    assert np.array_equal(got, x / 32768)
    no_ds64 = b"RF64" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + fmt + b"data" + struct.pack("<I", len(raw)) + raw
    with pytest.raises(AudioDecodeError, match="RF64 file without its 'ds64' chunk"):
        audio_info(wavs.write(tmp_path / "y.wav", no_ds64))


def test_extensible_alaw_goes_to_libsndfile(tmp_path):
    path = wavs.write(tmp_path / "a.wav", wavs.extensible_unknown())
    want, _ = sf.read(path, dtype="float32")
    assert np.array_equal(read_audio(path)[0], want)


def test_misnamed_flac_with_wav_extension_is_read(tmp_path):
    sf.write(tmp_path / "x.flac", _signal(), 16000)
    os.replace(tmp_path / "x.flac", tmp_path / "x.wav")
    want, _ = sf.read(tmp_path / "x.wav", dtype="float32", always_2d=True)
    assert np.array_equal(read_audio(tmp_path / "x.wav", mono=False)[0], want)


# --- new formats, new bad cases -------------------------------------------------------------

def _truncated_flac(folder):
    sf.write(folder / "cut.flac", _signal(16000, 1), 16000)
    data = (folder / "cut.flac").read_bytes()
    (folder / "cut.flac").write_bytes(data[: len(data) // 2])


def _broken_mp3(folder):
    sf.write(folder / "broken.mp3", _signal(16000, 1), 16000)
    data = bytearray((folder / "broken.mp3").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 400] = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    (folder / "broken.mp3").write_bytes(bytes(data))


def _aiff_bad_comm(folder):
    sf.write(folder / "badcomm.aiff", _signal(4000, 1), 16000)
    data = bytearray((folder / "badcomm.aiff").read_bytes())
    at = data.index(b"COMM")
    data[at + 8: at + 10] = b"\x00\x00"  # zero channels
    (folder / "badcomm.aiff").write_bytes(bytes(data))


def _aiff_huge_comm(folder):
    sf.write(folder / "hugecomm.aiff", _signal(4000, 1), 16000)
    data = bytearray((folder / "hugecomm.aiff").read_bytes())
    at = data.index(b"COMM")
    data[at + 4: at + 8] = struct.pack(">I", 0x7FFFFFF0)  # a COMM chunk size far past the end
    (folder / "hugecomm.aiff").write_bytes(bytes(data))


BAD = {"cut.flac": _truncated_flac, "broken.mp3": _broken_mp3, "badcomm.aiff": _aiff_bad_comm,
       "hugecomm.aiff": _aiff_huge_comm}


def test_aiff_sound_chunk_longer_than_the_file_reads_what_is_there(tmp_path):
    """libsndfile reads a PCM AIFF whose SSND size overstates the data up to the data's end; memstore
    follows it (documented in docs/formats-input.md), as its frame count is what the header-only
    look-up reports too, so the build plan stays exact."""
    sf.write(tmp_path / "x.aiff", _signal(4000, 1), 16000)
    data = bytearray((tmp_path / "x.aiff").read_bytes())
    at = data.index(b"SSND")
    data[at + 4: at + 8] = struct.pack(">I", 0x7FFFFFF0)
    (tmp_path / "x.aiff").write_bytes(bytes(data[:-1000]))
    want, _ = sf.read(tmp_path / "x.aiff", dtype="float32")
    assert audio_info(tmp_path / "x.aiff").n_samples == len(want) == 3500
    assert np.array_equal(read_audio(tmp_path / "x.aiff")[0], want)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_new_format_files_get_a_clear_error(tmp_path, name):
    if name.endswith(".mp3") and "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3")
    BAD[name](tmp_path)
    with pytest.raises(AudioDecodeError, match=f"{name}: ") as exc:
        audio_info(tmp_path / name)
        read_audio(tmp_path / name)
    assert isinstance(exc.value, OSError)


def test_bad_new_format_files_are_listed_skips_in_a_build(tmp_path):
    root = tmp_path / "audio"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for make in BAD.values():
        make(root / "a")
    sf.write(root / "a" / "good.flac", _signal(8000, 1), 16000)
    sf.write(root / "b" / "good.au", _signal(8000, 1), 16000)
    report = build_store(root, tmp_path / "s.h5", workers=1, progress=False)
    assert report.stored == 2
    skipped = dict(report.skipped)
    assert set(skipped) == {f"a/{n}" for n in BAD}
    assert all(why for why in skipped.values())


def test_gtzan_style_folder_builds(tmp_path):
    root = tmp_path / "genres"
    for genre in ("blues", "rock"):
        (root / genre).mkdir(parents=True)
        for i in range(2):
            sf.write(root / genre / f"{genre}.{i:05d}.au", _signal(6000, 1, seed=i), 22050, subtype="PCM_16")
    (root / "bextract_single.mf").write_text("blues/blues.00000.au\tblues\n")
    report = build_store(root, tmp_path / "gtzan.h5", workers=1, progress=False)
    assert report.stored == 4 and report.skipped == []
    assert report.ignored == {".mf": 1}


def test_extensions_follow_the_installed_libsndfile(monkeypatch):
    every = audio_extensions()
    assert {".wav", ".flac", ".au", ".aiff", ".caf", ".w64", ".ogg", ".opus"} <= set(every)
    assert ".raw" not in every and ".mat" not in every
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "WAV", "FLAC": "FLAC"})
    assert audio_extensions() == (".wav", ".flac", ".wave")


def test_scan_counts_what_it_leaves_out_by_extension(tmp_path):
    from memstore.labels import scan_audio

    _wav = tmp_path / "a" / "x.wav"
    _wav.parent.mkdir()
    sf.write(_wav, _signal(100, 1), 8000)
    for name in ("README", "a/notes.TXT", "a/b.txt", "a/cover.jpg", "a/.hidden"):
        (tmp_path / name).write_text("x")
    (tmp_path / "a" / "empty.d").mkdir()  # folders are walked, not counted
    res = scan_audio(tmp_path)
    assert res.files == ["a/x.wav"]
    assert res.ignored == {"": 2, ".jpg": 1, ".txt": 2}
    (tmp_path / "a" / "x.wav").unlink()
    with pytest.raises(BuildError, match=r"no audio files .*; found only \(none\) 2, \.jpg 1, \.txt 2"):
        scan_audio(tmp_path)


def test_decode_benchmark_runs_and_checks_agreement(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "bench_decode.py"
    spec = importlib.util.spec_from_file_location("bench_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--files", "1", "--seconds", "0.2", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "same samples as soundfile: 6 of 6 files" in out
    assert all(f"\n{fmt:8} mono" in out for fmt in bench.FORMATS)
