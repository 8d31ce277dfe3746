"""librosa as the oracle: MelSpectrogram.librosa(), the filterbank, the STFT and the dB scales equal librosa's."""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_features import rel_err

from memstore.features import MelSpectrogram, Spectrogram, mel_filterbank, stft

# --- librosa as the oracle ----------------------------------------------------------------------


def librosa_mel(x, sr, p):
    return librosa.feature.melspectrogram(
        y=x, sr=sr, n_fft=p["n_fft"], hop_length=p["hop"], win_length=p.get("win_length"), window="hann",
        center=True, pad_mode="constant", power=p["power"], n_mels=p["n_mels"], fmin=p["fmin"], fmax=p["fmax"],
        htk=p["htk"], norm=p["norm"]).T


def ours_librosa(p):
    return MelSpectrogram.librosa(n_fft=p["n_fft"], hop=p["hop"], win_length=p.get("win_length"), power=p["power"],
                                  n_mels=p["n_mels"], mel_scale="htk" if p["htk"] else "slaney", norm=p["norm"],
                                  fmin=p["fmin"], fmax=p["fmax"])


PARAMS = [
    dict(sr=22050, n_fft=2048, hop=512, power=2.0, n_mels=128, htk=False, norm="slaney", fmin=0.0, fmax=None),
    dict(sr=44100, n_fft=1024, hop=256, power=1.0, n_mels=96, htk=True, norm=None, fmin=30.0, fmax=16000.0),
    dict(sr=16000, n_fft=512, hop=128, power=2.0, n_mels=40, htk=True, norm="slaney", fmin=20.0, fmax=7600.0),
    dict(sr=44100, n_fft=2048, hop=441, power=1.0, n_mels=64, htk=False, norm=None, fmin=0.0, fmax=11025.0),
    dict(sr=16000, n_fft=1024, hop=160, power=1.0, n_mels=80, htk=False, norm="slaney", fmin=125.0, fmax=None),
    dict(sr=22050, n_fft=512, hop=256, power=2.0, n_mels=32, htk=True, norm=None, fmin=0.0, fmax=None),
    dict(sr=44100, n_fft=1024, hop=512, power=2.0, n_mels=96, htk=False, norm=2.0, fmin=0.0, fmax=None),
    dict(sr=22050, n_fft=1023, hop=300, power=1.0, n_mels=48, htk=False, norm=1.0, fmin=50.0, fmax=10000.0),
    dict(sr=22050, n_fft=1024, hop=300, win_length=600, power=2.0, n_mels=96, htk=False, norm="slaney",
         fmin=0.0, fmax=None),
]


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: f"{p['sr']}-{p['n_fft']}-{p['hop']}-p{p['power']:g}")
def test_librosa_conventions_match_librosa(signal, p):
    x = signal[: p["sr"] * 2]
    ours = ours_librosa(p)(x, p["sr"])
    ref = librosa_mel(x, p["sr"], p)
    assert ours.shape == ref.shape == (ours_librosa(p).n_frames(len(x)), p["n_mels"])
    assert rel_err(ours, ref) < 1e-4


@settings(max_examples=15, deadline=None)
@given(sr=st.sampled_from([16000, 22050, 44100]), n_fft=st.sampled_from([512, 1024, 2048]),
       hop=st.sampled_from([128, 256, 512]), power=st.sampled_from([1.0, 2.0]), htk=st.booleans(),
       norm=st.sampled_from(["slaney", None]), n_mels=st.integers(16, 64), fmin=st.sampled_from([0.0, 40.0, 300.0]),
       fmax_frac=st.sampled_from([None, 0.5, 0.9]), n=st.integers(4096, 20000))
def test_librosa_oracle_property(signal, sr, n_fft, hop, power, htk, norm, n_mels, fmin, fmax_frac, n):
    p = dict(n_fft=n_fft, hop=hop, power=power, htk=htk, norm=norm, n_mels=n_mels, fmin=fmin,
             fmax=None if fmax_frac is None else fmax_frac * sr / 2)
    x = signal[1000:1000 + n]
    # too many mels for a small n_fft leaves bands empty: both libraries warn, and that case has its own test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            mel_filterbank(sr, n_fft, n_mels, fmin, p["fmax"], htk=htk, norm=norm)
        except UserWarning:
            assume(False)
    assert rel_err(ours_librosa(p)(x, sr), librosa_mel(x, sr, p)) < 1e-4


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("norm", ["slaney", None, 1, 2.0, np.inf])
def test_filterbank_matches_librosa(htk, norm):
    for sr, n_fft, n_mels, fmin, fmax in [(44100, 1024, 96, 0.0, None), (16000, 512, 40, 50.0, 7000.0),
                                          (22050, 2048, 128, 20.0, 11025.0), (8000, 255, 20, 0.0, 3000.0)]:
        ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm)
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm,
                                  dtype=np.float64)
        assert ours.shape == ref.shape == (n_mels, 1 + n_fft // 2) and ours.dtype == np.float64
        assert np.abs(ours - ref).max() < 1e-6


def test_filterbank_warns_about_empty_bands_like_librosa():
    with pytest.warns(UserWarning, match="empty mel bands"):
        ours = mel_filterbank(16000, 128, 64)
    with pytest.warns(UserWarning, match="Empty filters"):
        ref = librosa.filters.mel(sr=16000, n_fft=128, n_mels=64, dtype=np.float64)
    assert np.abs(ours - ref).max() < 1e-6


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_spectrogram_matches_librosa_stft(signal, power):
    x = signal[:40000]
    ours = Spectrogram(window="hann", framing="center", magnitude_norm="none", power=power, n_fft=512, hop=128)(x, 8000)
    ref = np.abs(librosa.stft(x, n_fft=512, hop_length=128, window="hann", center=True, pad_mode="constant")) ** power
    assert ours.shape == ref.T.shape and rel_err(ours, ref.T) < 1e-5


def test_a_periodic_window_of_one_sample_is_librosas(signal):
    """scipy's (and librosa's) periodic Hann of length 1 is [1]; the formula gave [0], every feature 0."""
    x = signal[:3000]
    ours = Spectrogram(window="hann", framing="center", magnitude_norm="none", n_fft=8, win_length=1, hop=4)(x, 8000)
    ref = np.abs(librosa.stft(x, n_fft=8, hop_length=4, win_length=1, window="hann", center=True,
                              pad_mode="constant"))
    assert ours.shape == ref.T.shape and ours.any() and rel_err(ours, ref.T) < 1e-5


def test_stft_is_librosas_complex_stft(signal):
    x = signal[:20000]
    ours = stft(x, n_fft=1024, hop=256, win_length=800, window="hann", framing="center")
    ref = librosa.stft(x, n_fft=1024, hop_length=256, win_length=800, pad_mode="constant").T
    assert ours.dtype == np.complex64 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5  # phase included


def test_log_compressions(signal):
    base = MelSpectrogram()(signal, 44100)
    log10p = MelSpectrogram(log="log10p")(signal, 44100)
    np.testing.assert_allclose(log10p, np.log10(1 + 100 * base.astype(np.float64)), rtol=1e-5, atol=1e-6)
    log10p_c = MelSpectrogram(log="log10p", log_c=3.5)(signal, 44100)
    np.testing.assert_allclose(log10p_c, np.log10(1 + 3.5 * base.astype(np.float64)), rtol=1e-5, atol=1e-6)

    quiet = signal.copy()
    quiet[40000:90000] = 0  # silence: below amin and below top_db
    power = MelSpectrogram.librosa()(quiet, 44100)
    db = MelSpectrogram.librosa(log="db")(quiet, 44100)
    np.testing.assert_allclose(db, librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=80.0), atol=1e-3)
    db_all = MelSpectrogram.librosa(log="db", top_db=None)(quiet, 44100)
    np.testing.assert_allclose(db_all, librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None), atol=1e-3)
    assert db_all.min() == -100.0 < db.min() == pytest.approx(db.max() - 80.0)

    amp = MelSpectrogram.librosa(power=1.0)(quiet, 44100)
    db_amp = MelSpectrogram.librosa(power=1.0, log="db")(quiet, 44100)
    np.testing.assert_allclose(db_amp, librosa.amplitude_to_db(amp, ref=1.0, amin=1e-5, top_db=80.0), atol=1e-3)
    for out in (log10p, db, db_amp):
        assert out.dtype == np.float32 and out.flags.c_contiguous
