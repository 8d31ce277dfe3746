"""memstore.spectral: bit-exact against plain numpy; configs hold settings only; plans are shared read-only."""

from __future__ import annotations

import copy
import dataclasses
import doctest
import math
import pickle
import warnings

import numpy as np
import pytest
import scipy.fft

import memstore.features as features
import memstore.spectral as spectral
from memstore.features import MelSpectrogram, Spectrogram, mel_filterbank


@pytest.fixture(scope="module")
def signal():
    """20 s of noise and a chirp at 16 kHz, float32: 627 tutorial frames of 512, three chunks of 256."""
    rng = np.random.default_rng(11)
    t = np.arange(20 * 16000 + 123) / 16000
    return (0.4 * np.sin(2 * np.pi * (200 + 150 * t) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def plain_frames(x, cfg):
    """All frames at once: pad the signal, stride over it, multiply by the float32 window (no chunks, no numba)."""
    win = cfg.n_fft if cfg.win_length is None else cfg.win_length
    w = np.hanning(win) if cfg.window == "hann_symmetric" else 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    if cfg.framing == "center":
        left = (cfg.n_fft - win) // 2
        w, pad = np.pad(w, (left, cfg.n_fft - win - left)), cfg.n_fft // 2
    else:
        pad = win // 2
    n_frames = cfg.n_frames(len(x))
    padded = np.zeros(pad + (n_frames - 1) * cfg.hop + len(w), np.float32)
    padded[pad:pad + len(x)] = x[:len(padded) - pad]
    frames = np.lib.stride_tricks.sliding_window_view(padded, len(w))[::cfg.hop][:n_frames]
    return frames * w.astype(np.float32)


def plain_features(x, cfg, rate):
    """The transform's arithmetic written out plainly: one rfft of every frame, then each step over the whole array."""
    spec = scipy.fft.rfft(plain_frames(x, cfg), n=cfg.n_fft, axis=1, workers=1)
    scale = np.float32(1 / math.sqrt(cfg.n_fft)) if cfg.magnitude_norm == "sqrt_nfft" else None
    if isinstance(cfg, MelSpectrogram):
        # the mel kernel's own magnitude: sqrt(re^2 + im^2), then each band a float32 sum over its bins in order
        mag = np.sqrt(spec.real * spec.real + spec.imag * spec.imag) * (scale or np.float32(1.0))
        mag = mag * mag if cfg.power == 2 else mag
        fb = mel_filterbank(rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax, htk=cfg.mel_scale == "htk",
                            norm=cfg.norm).astype(np.float32)
        out = np.zeros((len(mag), cfg.n_mels), np.float32)
        for m in range(cfg.n_mels):
            for f in np.flatnonzero(fb[m]):
                out[:, m] += mag[:, f] * fb[m, f]
    else:
        out = np.abs(spec)
        if scale is not None:
            out *= scale
        out = out * out if cfg.power == 2 else out
    if cfg.log == "log10p":
        return np.log1p(out * np.float32(cfg.log_c)) * np.float32(1 / math.log(10))
    return out


@pytest.mark.parametrize("cfg", [
    MelSpectrogram(),
    MelSpectrogram.librosa(n_mels=64, fmin=30.0, fmax=7000.0, log="log10p"),
    MelSpectrogram(mel_scale="htk", norm=None, win_length=700, hop=300),
    Spectrogram(),
    Spectrogram(window="hann", framing="center", magnitude_norm="none", power=2.0, n_fft=511, win_length=400),
], ids=["tutorial-mel", "librosa-mel-log10p", "htk-short-window", "tutorial-linear", "center-odd-power2"])
def test_features_equal_a_plain_numpy_pipeline_bit_for_bit(signal, cfg):
    """Chunks, the numba kernels and the cached plans change no bit of what the plain formulas give."""
    got = cfg(signal, 16000)
    ref = plain_features(signal, cfg, 16000)
    assert got.shape == ref.shape == (cfg.n_frames(len(signal)), cfg.n_bins) and len(got) > 2 * spectral.CHUNK_FRAMES
    assert got.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_configs_hold_their_settings_and_nothing_else(signal):
    """Computing caches nothing inside the frozen config: same attributes, same pickle, same hash, same JSON."""
    mel = MelSpectrogram(n_mels=40)
    names = {f.name for f in dataclasses.fields(mel)}
    before = pickle.dumps(mel), hash(mel), mel.to_json()
    for rate in (16000, 22050):
        mel(signal[:4000], rate)
    assert set(vars(mel)) == names
    assert (pickle.dumps(mel), hash(mel), mel.to_json()) == before
    assert pickle.loads(before[0]) == mel == copy.deepcopy(mel) == features.transform_from_json(mel.to_json())
    with pytest.raises(dataclasses.FrozenInstanceError):
        mel.n_mels = 41


def test_plans_are_shared_and_read_only():
    a = spectral.mel_bands(16000, 512, 40, 0.0, None, False, "slaney")
    assert spectral.mel_bands(16000, 512, 40, 0.0, None, False, "slaney") is a
    w, pad = MelSpectrogram(n_fft=512)._geometry()
    assert MelSpectrogram(n_fft=512, n_mels=20)._geometry()[0] is w and pad == 256
    for arr in (*a, w):
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
    # typed: norm=2 and norm=2.0 are equal settings, kept apart as they were given
    assert spectral.mel_bands(16000, 512, 40, 0.0, None, False, 2) is not spectral.mel_bands(
        16000, 512, 40, 0.0, None, False, 2.0)


def test_a_rate_that_empties_bands_warns_at_every_call_under_error_filters():
    """A call that raises is not cached, so the warning is not lost after the first failure."""
    mel = MelSpectrogram(n_fft=128, n_mels=64)
    x = np.zeros(1000, np.float32)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(UserWarning, match="empty mel bands"):
                mel(x, 16000)
    with pytest.warns(UserWarning, match="empty mel bands"):
        assert mel(x, 16001).shape == (mel.n_frames(1000), 64)


def test_spectral_docstring_examples_run():
    failed, attempted = doctest.testmod(spectral, optionflags=doctest.ELLIPSIS)
    assert attempted >= 1 and failed == 0
