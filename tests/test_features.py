"""Features: exactly the tutorial by default (librosa as the oracle for its conventions: tests/test_librosa.py)."""

from __future__ import annotations

import dataclasses
import doctest
import json
import math
import tracemalloc

import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memstore.features as features
import memstore.spectral as spectral
from memstore.errors import ParameterError
from memstore.features import (
    MelSpectrogram,
    Spectrogram,
    mel_filterbank,
    stft,
    transform_from_dict,
    transform_from_json,
)
from memstore.spectral import MAX_HOP

# --- a plain reference of the tutorial ----------------------------------------------------------


def tutorial_stft_norm(data, window, hopsize, nfft):
    """The tutorial's transform.stft_norm, written as plainly as it was: a loop over frames."""
    length_window = window.size
    number_frames = int(np.ceil(data.size / np.double(hopsize)) + 2)
    new_length = int((number_frames - 1) * hopsize + length_window)
    data = np.concatenate((np.zeros(int(length_window / 2.0)), data))
    data = np.concatenate((data, np.zeros(new_length - data.size)))
    out = np.zeros((number_frames, int(nfft // 2 + 1)), dtype=complex)
    for n in range(number_frames):
        begin = int(n * hopsize)
        out[n, :] = np.fft.rfft(window * data[begin:begin + length_window], int(nfft))
    return out


def tutorial_mel(x, sr=44100, n_fft=1024, hop=512, n_mels=96, win_length=None):
    """stft_norm, |X| / sqrt(n_fft), then np.dot with the Slaney-area mel filters, time first."""
    mag = np.abs(tutorial_stft_norm(x, np.hanning(win_length or n_fft), hop, n_fft)) / np.sqrt(n_fft)
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sr / 2.0, htk=False,
                                norm="slaney", dtype=np.float64)
    return np.dot(basis, mag.T).T, mag


def rel_err(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


def test_default_is_the_tutorial(signal):
    mel = MelSpectrogram()
    out = mel(signal, 44100)
    ref, mag = tutorial_mel(signal.astype(np.float64))
    assert out.shape == ref.shape == (261, 96)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert rel_err(out, ref) < 1e-5
    spec = Spectrogram()(signal, 44100)
    assert spec.shape == (261, 513) and spec.dtype == np.float32
    assert rel_err(spec, mag) < 1e-5
    assert rel_err(np.abs(stft(signal)) / 32.0, mag) < 1e-5


def test_the_tutorials_261_frames():
    """The tutorial: a 132299-sample file at 44.1 kHz "returns 261 vectors"."""
    assert MelSpectrogram().n_frames(132299) == 261 == math.ceil(132299 / 512) + 2
    assert MelSpectrogram()(np.zeros(132299, np.float32), 44100).shape == (261, 96)
    assert Spectrogram().n_bins == 513 and MelSpectrogram().n_bins == 96


def test_defaults_are_the_tutorials_settings():
    m = MelSpectrogram()
    assert (m.sample_rate, m.n_fft, m.hop, m.win_length, m.window, m.framing, m.magnitude_norm, m.power,
            m.log, m.n_mels, m.fmin, m.fmax, m.mel_scale, m.norm) == \
        (None, 1024, 512, None, "hann_symmetric", "tutorial", "sqrt_nfft", 1.0, None, 96, 0.0, None, "slaney", "slaney")
    np.testing.assert_array_equal(m._geometry()[0], np.hanning(1024).astype(np.float32))


@pytest.mark.parametrize("win_length, hop", [(700, 256), (1024, 441), (513, 100)])
def test_tutorial_framing_other_windows_and_hops(signal, win_length, hop):
    x = signal[:30000]
    ours = MelSpectrogram(win_length=win_length, hop=hop)(x, 44100)
    ref, _ = tutorial_mel(x.astype(np.float64), hop=hop, win_length=win_length)
    assert ours.shape == ref.shape and rel_err(ours, ref) < 1e-5


# --- frame counts, chunking, memory -------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 20000), hop=st.sampled_from([1, 64, 100, 256, 512, 1024]),
       n_fft=st.sampled_from([256, 511, 512, 1024]), short=st.booleans(),
       framing=st.sampled_from(["tutorial", "center"]))
def test_n_frames_is_exact(n, hop, n_fft, short, framing):
    t = Spectrogram(n_fft=n_fft, hop=hop, framing=framing, win_length=n_fft * 2 // 3 if short else None)
    expected = math.ceil(n / hop) + 2 if framing == "tutorial" else max(0, 1 + (n - n_fft % 2) // hop)
    assert t.n_frames(n) == t.n_frames(np.int64(n)) == expected
    assert t(np.zeros(n, np.float32), 8000).shape == (expected, t.n_bins)


def test_n_frames_of_center_framing_is_librosas():
    for n in (1024, 1025, 4095, 20000):
        for n_fft, hop in ((1024, 512), (1023, 100), (512, 333)):
            x = np.ones(n, np.float32)
            frames = librosa.stft(x, n_fft=n_fft, hop_length=hop, pad_mode="constant").shape[1]
            assert MelSpectrogram.librosa(n_fft=n_fft, hop=hop).n_frames(n) == frames


def test_empty_signal_follows_the_formula():
    """A 0-sample signal is not an error: it gives the formula's frames, all zeros (resp. log of zero)."""
    assert MelSpectrogram()(np.zeros(0, np.float32), 44100).shape == (2, 96)
    assert not MelSpectrogram.librosa()(np.zeros(0, np.float32), 44100).any()
    assert MelSpectrogram.librosa(n_fft=1023).n_frames(0) == 0
    np.testing.assert_array_equal(MelSpectrogram(log="db")(np.zeros(0, np.float32), 44100), -100.0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 256, 100000])
def test_chunking_does_not_change_a_bit(signal, monkeypatch, chunk):
    whole = MelSpectrogram()(signal, 44100)
    spec = Spectrogram(framing="center", power=2.0)(signal, 44100)
    monkeypatch.setattr(spectral, "CHUNK_FRAMES", chunk)  # the chunk loop lives in memstore.spectral
    lazy = LazySignal(signal)
    np.testing.assert_array_equal(MelSpectrogram()(lazy, 44100), whole)
    np.testing.assert_array_equal(Spectrogram(framing="center", power=2.0)(signal, 44100), spec)
    # the patched chunk size was the one used: no slice of the signal is longer than one chunk's frames need
    assert lazy.largest <= (chunk - 1) * 512 + 1024


class LazySignal:
    """Like memstore.audio.WavSignal: 1-D, float32, sliced with step 1; records the largest slice."""

    ndim = 1
    dtype = np.dtype(np.float32)

    def __init__(self, x):
        self.x, self.largest = x, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        piece = self.x[key]
        self.largest = max(self.largest, len(piece))
        return piece.copy()


def test_lazy_signal_is_read_a_chunk_at_a_time(signal):
    lazy = LazySignal(signal)
    np.testing.assert_array_equal(MelSpectrogram()(lazy, 44100), MelSpectrogram()(signal, 44100))
    assert lazy.largest <= (spectral.CHUNK_FRAMES - 1) * 512 + 1024
    assert features.CHUNK_FRAMES == spectral.CHUNK_FRAMES  # still importable where it was documented


def test_other_float_dtypes_and_strided_input(signal):
    ref = MelSpectrogram()(signal, 44100)
    np.testing.assert_array_equal(MelSpectrogram()(signal.astype(np.float64), 44100), ref)
    stereo = np.stack([signal, -signal], axis=1)
    np.testing.assert_array_equal(MelSpectrogram()(stereo[:, 0], 44100), ref)


def test_interpreted_kernels_equal_the_jitted_ones(signal):
    """MEMSTORE_DISABLE_JIT=1 runs the kernels' Python source: it must compute the same numbers."""
    if spectral._frame_window is spectral._frame_window.py_func:
        pytest.skip("numba JIT disabled")
    w, pad = MelSpectrogram()._geometry()
    seg = signal[:3000]
    a, b = np.empty((6, 1024), np.float32), np.empty((6, 1024), np.float32)
    spectral._frame_window(seg, -pad, 512, w, a)
    spectral._frame_window.py_func(seg, -pad, 512, w, b)
    np.testing.assert_array_equal(a, b)
    spec = np.fft.rfft(a, axis=1).astype(np.complex64)
    first, count, weights = spectral._to_sparse(mel_filterbank(44100, 1024, 96))
    outs = [np.empty((6, 96), np.float32), np.empty((6, 96), np.float32)]
    spectral._mel_project(spec, first, count, weights, 1 / 32, True, outs[0], np.empty((4, 513), np.float32))
    spectral._mel_project.py_func(spec, first, count, weights, 1 / 32, True, outs[1], np.empty((4, 513), np.float32))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)


def test_one_hour_needs_under_300_mb_beyond_its_samples():
    """tracemalloc sees every numpy allocation; the kernels allocate nothing."""
    x = np.zeros(3600 * 44100, np.float32)
    x[::1000] = 0.5
    mel = MelSpectrogram()
    mel(x[:44100], 44100)  # caches (filters, window) are not what is measured
    tracemalloc.start()
    try:
        out = mel(x, 44100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (mel.n_frames(len(x)), 96)
    assert peak - out.nbytes < 10e6, f"{(peak - out.nbytes) / 1e6:.1f} MB beyond the output"
    assert peak < 300e6, f"peak {peak / 1e6:.0f} MB"


# --- configuration ------------------------------------------------------------------------------

TRANSFORMS = [
    MelSpectrogram(),
    MelSpectrogram.librosa(n_mels=40, fmax=8000.0, log="db", sample_rate=16000),
    MelSpectrogram(n_fft=2048, win_length=1500, hop=300, mel_scale="htk", norm=None, fmin=27.5, log="log10p",
                   log_c=10.0, top_db=None),
    MelSpectrogram.librosa(norm=2.0, power=1.0),
    Spectrogram(power=2.0, log="log10p", log_c=10.0),
    Spectrogram(sample_rate=8000, framing="center", window="hann", magnitude_norm="none"),
]


@pytest.mark.parametrize("t", TRANSFORMS, ids=repr)
def test_json_round_trip_is_exact(t):
    text = t.to_json()
    back = transform_from_json(text)
    assert back == t and type(back) is type(t) and back.to_json() == text
    assert transform_from_dict(json.loads(text)) == t
    assert json.loads(text)["kind"] == t.kind
    resolved = dataclasses.replace(t, sample_rate=16000)
    assert transform_from_json(resolved.to_json()) == resolved and resolved.sample_rate == 16000


def test_every_setting_is_recorded_and_canonical():
    keys = set(json.loads(MelSpectrogram().to_json()))
    assert keys == {"kind", "sample_rate", "n_fft", "win_length", "hop", "window", "framing", "magnitude_norm",
                    "power", "log", "log_c", "top_db", "n_mels", "fmin", "fmax", "mel_scale", "norm"}
    t = MelSpectrogram(sample_rate=np.int64(22050), n_fft=np.int32(512), fmin=np.float32(20), fmax=8000, power=2)
    d = json.loads(t.to_json())
    assert d["sample_rate"] == 22050 and d["fmin"] == 20.0 and isinstance(d["fmax"], float) and d["power"] == 2.0
    assert t == MelSpectrogram(sample_rate=22050, n_fft=512, fmin=20.0, fmax=8000.0, power=2.0)
    assert hash(t) == hash(transform_from_json(t.to_json()))


@pytest.mark.parametrize("kwargs, match", [
    (dict(hop=0), r"hop=0 must be a positive integer"),
    (dict(hop=512.0), r"hop=512.0 must be a positive integer"),
    (dict(n_fft=-1), r"n_fft=-1 must be a positive integer"),
    (dict(n_fft=True), r"n_fft=True must be a positive integer"),
    (dict(sample_rate=0), r"sample_rate=0 must be a positive integer"),
    (dict(win_length=0), r"win_length=0 must be a positive integer"),
    (dict(win_length=2048), r"win_length=2048 must be <= n_fft=1024"),
    (dict(window="hamming"), r"window='hamming' must be one of \('hann_symmetric', 'hann'\)"),
    (dict(framing="valid"), r"framing='valid' must be one of"),
    (dict(magnitude_norm="ortho"), r"magnitude_norm='ortho' must be one of"),
    (dict(power=3), r"power=3 must be 1 \(magnitude\) or 2 \(power\)"),
    (dict(power=True), r"power=True must be 1"),
    (dict(log="ln"), r"log='ln' must be one of"),
    (dict(log_c=0), r"log_c=0 must be a finite number > 0"),
    (dict(log_c=float("inf")), r"log_c=inf must be a finite number > 0"),
    (dict(top_db=-1.0), r"top_db=-1.0 must be a finite number >= 0"),
    (dict(n_mels=0), r"n_mels=0 must be a positive integer"),
    (dict(mel_scale="bark"), r"mel_scale='bark' must be one of \('slaney', 'htk'\)"),
    (dict(norm="area"), r"norm='area' must be 'slaney', None or a positive number"),
    (dict(norm=0), r"norm=0 must be 'slaney', None or a positive number"),
    (dict(norm=np.inf), r"norm=inf cannot be stored as JSON"),
    (dict(fmin=-1.0), r"fmin=-1.0 must be a finite number >= 0"),
    (dict(fmin=float("nan")), r"fmin=nan must be a finite number >= 0"),
    (dict(fmin=100.0, fmax=50.0), r"fmax=50.0 must be None or a finite number greater than fmin=100"),
    (dict(fmax="8k"), r"fmax='8k' must be None or a finite number"),
    (dict(sample_rate=16000, fmax=9000.0), r"fmax=9000 must be <= sample_rate / 2 = 8000"),
    (dict(sample_rate=16000, fmin=8000.0), r"fmin=8000 must be below sample_rate / 2 = 8000"),
    # found by a bad-input hunt: settings past any machine, a kernel's overflow, silent zeros, raw errors
    (dict(hop=2**62), r"hop=4611686018427387904 must be at most 1,073,741,824"),  # wrapped: read before the buffer
    (dict(hop=2**64), r"hop=18446744073709551616 must be at most"),  # a raw OverflowError
    (dict(n_fft=10**9), r"n_fft=1000000000 must be at most 131,072"),  # 33 GiB asked for
    (dict(n_fft=2**64), r"n_fft=18446744073709551616 must be at most"),
    (dict(sample_rate=10**7), r"sample_rate=10000000 must be at most 2,000,000"),  # past the build's own limit
    (dict(sample_rate=10**400), r"sample_rate=1000.* must be at most 2,000,000"),  # a raw OverflowError in rate / 2
    (dict(n_mels=10**6), r"n_mels=1000000 with n_fft=1024 makes a filter bank of 513,000,000 weights"),
    (dict(n_fft=2**17, n_mels=1024), r"n_mels=1024 with n_fft=131072 makes a filter bank"),
    (dict(log_c=1e39), r"log_c=1e\+39 must lie within float32's normal range"),  # inf in float32: NaN features
    (dict(log_c=1e-300), r"log_c=1e-300 must lie within float32's normal range"),  # 0 in float32: all zeros
    (dict(n_fft=2), r"a symmetric Hann window of 2 samples is all zeros"),
    (dict(win_length=2), r"a symmetric Hann window of 2 samples is all zeros"),
    (dict(power=1 + 0j), r"power=\(1\+0j\) must be 1 \(magnitude\) or 2"),  # 1+0j == 1
    (dict(power=np.complex128(2)), r"power=.*must be 1 \(magnitude\) or 2"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        MelSpectrogram(**kwargs)


def test_bad_calls():
    with pytest.raises(ParameterError, match="sample_rate=44100 differs from the transform's sample_rate=22050"):
        MelSpectrogram(sample_rate=22050)(np.zeros(100, np.float32), 44100)
    with pytest.raises(ParameterError, match=r"shape \(100, 2\) must be one-dimensional"):
        MelSpectrogram()(np.zeros((100, 2), np.float32), 44100)
    with pytest.raises(ParameterError, match="dtype int16 must be floating point"):
        MelSpectrogram()(np.zeros(100, np.int16), 44100)
    with pytest.raises(ParameterError, match="sample_rate=0 must be a positive integer"):
        MelSpectrogram()(np.zeros(100, np.float32), 0)
    with pytest.raises(ParameterError, match="fmax=11025 must be <= sample_rate / 2 = 8000"):
        MelSpectrogram(fmax=11025.0)(np.zeros(100, np.float32), 16000)
    with pytest.raises(ParameterError, match="n_samples=-1 must be a non-negative integer"):
        MelSpectrogram().n_frames(-1)
    with pytest.raises(ParameterError, match="n_samples=1.5 must be a non-negative integer"):
        MelSpectrogram().n_frames(1.5)
    with pytest.raises(ParameterError, match="hop=0 must be a positive integer"):
        stft(np.zeros(10, np.float32), hop=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sample_rate=0, n_fft=1024), "sample_rate=0 must be a positive integer"),
    (dict(sample_rate=44100, n_fft=0), "n_fft=0 must be a positive integer"),
    (dict(sample_rate=44100, n_fft=1024, n_mels=-3), "n_mels=-3 must be a positive integer"),
    (dict(sample_rate=44100, n_fft=1024, fmin=-5.0), "fmin=-5.0 must be a finite number >= 0"),
    (dict(sample_rate=44100, n_fft=1024, fmin=500.0, fmax=500.0), "fmax=500.0 must be a finite number > 500"),
    (dict(sample_rate=44100, n_fft=1024, norm="l2"), "norm='l2' must be 'slaney', None or a positive number"),
    (dict(sample_rate=3 * 10**6, n_fft=1024), "sample_rate=3000000 must be at most 2,000,000"),
    (dict(sample_rate=44100, n_fft=2**18), "n_fft=262144 must be at most 131,072"),
    (dict(sample_rate=44100, n_fft=1024, n_mels=2**20), "makes a filter bank of"),
    # a p-norm with a tiny p: length (sum w**p)**(1/p) overflows or dwarfs every weight, all zeros in float32
    (dict(sample_rate=44100, n_fft=1024, norm=1e-10), r"norm=1e-10 scales mel band \d+ to zero in float32"),
    (dict(sample_rate=44100, n_fft=1024, norm=0.01), r"norm=0.01 scales mel band \d+ to zero in float32"),
])
def test_bad_filterbank_arguments(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        mel_filterbank(**kwargs)


@pytest.mark.parametrize("text, match", [
    ("{", "not valid JSON"),
    ("[1, 2]", "must be a JSON object, got list"),
    ('{"kind": "pickle"}', "kind='pickle' must be one of"),
    ('{"n_fft": 1024}', "kind=None must be one of"),
    ('{"kind": "mel", "bogus": 1}', r"unknown mel settings \['bogus'\]"),
    ('{"kind": "spectrogram", "n_mels": 96}', r"unknown spectrogram settings \['n_mels'\]"),
    ('{"kind": "mel", "n_fft": "1024"}', "n_fft='1024' must be a positive integer"),
    ('{"kind": "mel", "fmin": NaN}', "fmin=nan must be a finite number"),
    ('{"kind": "mel", "window": ["hann"]}', r"window=\['hann'\] must be one of"),
    ('{"kind": "mel", "power": "2"}', "power='2' must be 1"),
    ('{"kind": "mel", "pad": "' + "x" * 70000 + '"}', "at most 65536 characters"),
    ("[" * 60000, "not valid JSON: maximum recursion depth"),  # a raw RecursionError, under the length limit
])
def test_bad_configurations(text, match):
    with pytest.raises(ParameterError, match=match):
        transform_from_json(text)


def test_bad_configuration_types():
    with pytest.raises(ParameterError, match="must be a JSON string"):
        transform_from_json(None)
    with pytest.raises(ParameterError, match="must be a JSON object, got str"):
        transform_from_dict("mel")


def test_docstring_examples_run():
    failed, attempted = doctest.testmod(features, optionflags=doctest.ELLIPSIS)
    assert attempted >= 8 and failed == 0


def test_benchmark_script_runs_and_checks_agreement(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "bench_features.py"
    spec = importlib.util.spec_from_file_location("bench_features", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--files", "2", "--seconds", "1", "--reps", "1", "--threads", "0"]) == 0
    out = capsys.readouterr().out
    assert "vs librosa" in out and "librosa.feature.melspectrogram" in out and "1.00x" in out


@pytest.mark.parametrize("norm", [np.int64(2), np.uint8(1), np.float32(2.0), np.float16(1.0)])
def test_a_numpy_norm_is_stored_as_a_plain_number(norm):
    """A numpy norm computed its features and then failed to_json (so every build with it) with a TypeError."""
    t = MelSpectrogram(n_mels=16, norm=norm)
    assert type(t.norm) in (int, float) and t.norm == norm
    assert transform_from_json(t.to_json()) == t
    x = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    np.testing.assert_array_equal(t(x, 8000), MelSpectrogram(n_mels=16, norm=type(t.norm)(norm))(x, 8000))


def test_the_longest_hop_frames_the_signal_without_reading_past_it():
    """At the largest hop the frames after the first lie past the signal: exactly zero, as a plain framing says."""
    x = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    t = Spectrogram(n_fft=256, hop=MAX_HOP, window="hann", framing="center", magnitude_norm="none")
    got = t(x, 8000)
    frame = np.pad(x, 128)[:256] * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(256) / 256))
    assert got.shape == (t.n_frames(len(x)), 129) == (1, 129)
    np.testing.assert_allclose(got[0], np.abs(np.fft.rfft(frame)), rtol=1e-4, atol=1e-4)
    t = Spectrogram(n_fft=256, hop=MAX_HOP)  # tutorial framing: frames at 0, hop, 2 hop
    got = t(x, 8000)
    assert got.shape == (3, 129) and np.abs(got[0]).max() > 0 and not got[1:].any()

