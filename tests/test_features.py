"""Features: exactly the tutorial by default, librosa's on request."""

from __future__ import annotations

import math
import tracemalloc

import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memstore.errors import ParameterError
from memstore.features import (
    MelSpectrogram,
    Spectrogram,
    mel_filterbank,
    stft,
    transform_from_dict,
    transform_from_json,
)


def tutorial_reference(x, n_fft=1024, hop=512, n_mels=96, sr=44100):
    """The tutorial's stft_norm + mel, written as plainly as it was: a loop over frames."""
    window = np.hanning(n_fft)
    n_frames = int(math.ceil(len(x) / float(hop))) + 2
    padded = np.zeros((n_frames - 1) * hop + n_fft)
    padded[n_fft // 2: n_fft // 2 + len(x)] = x
    mag = np.zeros((n_frames, n_fft // 2 + 1))
    for n in range(n_frames):
        frame = window * padded[n * hop: n * hop + n_fft]
        mag[n] = np.abs(np.fft.rfft(frame, n_fft))
    mag /= np.sqrt(n_fft)
    mel_basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0, fmax=sr / 2, htk=False, norm="slaney")
    return np.dot(mel_basis, mag.T).T, mag


@pytest.fixture(scope="module")
def signal():
    rng = np.random.default_rng(0)
    t = np.arange(132299) / 44100
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_default_is_the_tutorial(signal):
    mel = MelSpectrogram()
    out = mel(signal, 44100)
    ref, mag = tutorial_reference(signal.astype(np.float64))
    assert out.shape == (261, 96) == ref.shape and out.dtype == np.float32 and out.flags.c_contiguous
    assert mel.n_frames(132299) == 261
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5
    spec = Spectrogram()(signal, 44100)
    assert spec.shape == (261, 513)
    assert np.abs(spec - mag).max() / mag.max() < 1e-5


PARAMS = [
    dict(sr=22050, n_fft=2048, hop=512, power=2.0, n_mels=128, htk=False, norm="slaney", fmin=0.0, fmax=None),
    dict(sr=44100, n_fft=1024, hop=256, power=1.0, n_mels=96, htk=True, norm=None, fmin=30.0, fmax=16000.0),
    dict(sr=16000, n_fft=512, hop=128, power=2.0, n_mels=40, htk=True, norm="slaney", fmin=20.0, fmax=7600.0),
    dict(sr=44100, n_fft=2048, hop=441, power=1.0, n_mels=64, htk=False, norm=None, fmin=0.0, fmax=11025.0),
]


@pytest.mark.parametrize("p", PARAMS)
def test_librosa_conventions_match_librosa(signal, p):
    x = signal[: p["sr"] * 2]
    mel = MelSpectrogram.librosa(n_fft=p["n_fft"], hop=p["hop"], power=p["power"], n_mels=p["n_mels"],
                                 mel_scale="htk" if p["htk"] else "slaney", norm=p["norm"], fmin=p["fmin"],
                                 fmax=p["fmax"])
    ours = mel(x, p["sr"])
    ref = librosa.feature.melspectrogram(y=x, sr=p["sr"], n_fft=p["n_fft"], hop_length=p["hop"], window="hann",
                                         center=True, pad_mode="constant", power=p["power"], n_mels=p["n_mels"],
                                         fmin=p["fmin"], fmax=p["fmax"], htk=p["htk"], norm=p["norm"]).T
    assert ours.shape == ref.shape == (1 + len(x) // p["hop"], p["n_mels"])
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_short_window_inside_n_fft_matches_librosa(signal):
    x = signal[:20000]
    ours = MelSpectrogram.librosa(n_fft=1024, win_length=600, hop=300)(x, 22050)
    ref = librosa.feature.melspectrogram(y=x, sr=22050, n_fft=1024, win_length=600, hop_length=300,
                                         pad_mode="constant", n_mels=96).T
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("norm", ["slaney", None])
def test_filterbank_matches_librosa(htk, norm):
    for sr, n_fft, n_mels, fmin, fmax in [(44100, 1024, 96, 0.0, None), (16000, 512, 40, 50.0, 7000.0)]:
        ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm)
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm)
        assert np.abs(ours - ref).max() < 1e-6


def test_log_compressions(signal):
    base = MelSpectrogram()(signal, 44100)
    log10p = MelSpectrogram(log="log10p")(signal, 44100)
    np.testing.assert_allclose(log10p, np.log10(1 + 100 * base), rtol=1e-5, atol=1e-6)
    power = MelSpectrogram.librosa()(signal, 44100)
    db = MelSpectrogram.librosa(log="db")(signal, 44100)
    np.testing.assert_allclose(db, librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=80.0), atol=1e-3)


def test_stft_and_magnitude(signal):
    s = stft(signal[:5000], n_fft=512, hop=128, window="hann", framing="center")
    ref = librosa.stft(signal[:5000], n_fft=512, hop_length=128, pad_mode="constant").T
    assert np.abs(np.abs(s) - np.abs(ref)).max() / np.abs(ref).max() < 1e-5


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 20000), hop=st.sampled_from([64, 100, 256, 512]),
       framing=st.sampled_from(["tutorial", "center"]))
def test_n_frames_is_exact(n, hop, framing):
    t = Spectrogram(n_fft=512, hop=hop, framing=framing)
    assert t(np.zeros(n, np.float32), 8000).shape[0] == t.n_frames(n)


def test_chunked_equals_whole(signal, monkeypatch):
    import memstore.features as features

    whole = MelSpectrogram()(signal, 44100)
    monkeypatch.setattr(features, "CHUNK_FRAMES", 7)
    # only BLAS blocking of the matmul differs between chunk sizes
    np.testing.assert_allclose(MelSpectrogram()(signal, 44100), whole, rtol=2e-6, atol=1e-9)


def test_one_hour_needs_under_300_mb_beyond_its_samples():
    x = np.zeros(3600 * 44100, np.float32)
    x[::1000] = 0.5
    tracemalloc.start()
    try:
        out = MelSpectrogram()(x, 44100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (MelSpectrogram().n_frames(len(x)), 96)
    assert peak < 300e6, f"peak {peak / 1e6:.0f} MB"


def test_json_round_trip_and_every_setting_recorded():
    for t in (MelSpectrogram(), MelSpectrogram.librosa(n_mels=40, fmax=8000.0, log="db", sample_rate=16000),
              Spectrogram(power=2.0, log="log10p", log_c=10.0)):
        back = transform_from_json(t.to_json())
        assert back == t and type(back) is type(t)
    keys = set(MelSpectrogram().to_dict())
    for k in ("sample_rate", "n_fft", "win_length", "hop", "window", "framing", "n_mels", "fmin", "fmax",
              "mel_scale", "norm", "power", "log"):
        assert k in keys


@pytest.mark.parametrize("kwargs, match", [
    (dict(hop=0), "hop=0 must be a positive integer"),
    (dict(n_fft=-1), "n_fft=-1 must be a positive integer"),
    (dict(win_length=2048), "win_length=2048 must be <= n_fft=1024"),
    (dict(window="hamming"), "window='hamming' must be one of"),
    (dict(power=3), "power=3 must be 1"),
    (dict(mel_scale="bark"), "mel_scale='bark'"),
    (dict(fmin=100.0, fmax=50.0), "fmax=50.0 must be None or greater"),
    (dict(log="ln"), "log='ln' must be one of"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        MelSpectrogram(**kwargs)


def test_bad_calls_and_configs():
    mel = MelSpectrogram(sample_rate=22050)
    with pytest.raises(ParameterError, match="differs from the transform's sample_rate"):
        mel(np.zeros(100, np.float32), 44100)
    with pytest.raises(ParameterError, match="one-dimensional"):
        MelSpectrogram()(np.zeros((100, 2), np.float32), 44100)
    with pytest.raises(ParameterError, match="unknown mel settings"):
        transform_from_dict({"kind": "mel", "bogus": 1})
    with pytest.raises(ParameterError, match="kind="):
        transform_from_dict({"kind": "pickle"})
    with pytest.raises(ParameterError, match="not valid JSON"):
        transform_from_json("{")
