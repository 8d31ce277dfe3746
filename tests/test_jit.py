"""One JIT switch (memstore._jit) for the slicer's and the spectral kernels; the features never import the slicer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from memstore import _jit, slicer, spectral
from memstore.features import MelSpectrogram, Spectrogram


def _run(code: str, **env) -> str:
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                          check=True).stdout


def test_features_do_not_import_the_batch_slicer():
    out = _run("import sys, memstore.features\n"
               "print(sorted(m for m in sys.modules if m.startswith('memstore.')))\n")
    loaded = set(json.loads(out.replace("'", '"')))
    assert {"memstore.features", "memstore.spectral", "memstore._jit"} <= loaded
    assert "memstore.slicer" not in loaded


def test_slicer_and_spectral_kernels_share_the_switch():
    assert slicer.JIT is _jit.JIT
    kernels = (spectral._frame_window, spectral._mel_project, slicer.gather, slicer.gather_half)
    if _jit.JIT:
        assert all(type(k) is type(slicer.gather) and k.py_func is not k for k in kernels)
    else:
        assert all(k.py_func is k for k in kernels)


DISABLED = """
import json, numpy as np
from memstore import _jit, slicer, spectral
from memstore.features import MelSpectrogram, Spectrogram
x = np.random.default_rng(3).uniform(-0.5, 0.5, 5000).astype(np.float32)
kernels = (spectral._frame_window, spectral._mel_project, slicer.gather, slicer.gather_half)
print(json.dumps(dict(x=x.tolist(), jit=_jit.JIT, slicer_jit=slicer.JIT, plain=all(k.py_func is k for k in kernels),
                      mel=MelSpectrogram(n_mels=40)(x, 16000).tolist(),
                      spec=Spectrogram(power=2.0, framing="center")(x, 16000).tolist())))
"""


def test_disabled_jit_runs_the_spectral_kernels_as_python():
    got = json.loads(_run(DISABLED, MEMSTORE_DISABLE_JIT="1"))
    assert got["jit"] is False and got["slicer_jit"] is False and got["plain"] is True
    x = np.array(got["x"], np.float32)
    # windowing is a product and the linear magnitude is numpy's: exact; the mel sums run in Python's float32
    np.testing.assert_array_equal(np.array(got["spec"], np.float32), Spectrogram(power=2.0, framing="center")(x, 16000))
    np.testing.assert_allclose(np.array(got["mel"], np.float32), MelSpectrogram(n_mels=40)(x, 16000), rtol=1e-6,
                               atol=1e-12)
