"""tools/cpu_paths.py lists the other SIMD paths, and the dB floor is exactly -100 on each of them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "cpu_paths.py"


def _tool():
    spec = importlib.util.spec_from_file_location("cpu_paths", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paths_switch_off_only_targets_this_cpu_has():
    tool = _tool()
    supported = tool.supported_targets()
    paths = dict(tool.other_paths())
    for disabled in paths.values():
        assert disabled.split() and set(disabled.split()) <= set(supported)
    if supported:
        assert paths["baseline"].split() == supported
    if "X86_V4" in supported:
        assert "X86_V3" not in paths["avx2"].split() and "X86_V4" in paths["avx2"].split()
    out = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, check=True).stdout
    assert [tuple(line.split(" ", 1)) for line in out.splitlines()] == list(paths.items())


PROBE = """
import json, numpy as np
from memstore.features import MelSpectrogram
db2 = MelSpectrogram(log="db", power=2.0)(np.zeros(4096, np.float32), 44100)
db1 = MelSpectrogram(log="db", power=1.0)(np.zeros(4096, np.float32), 44100)
print(json.dumps([float(db2.min()), float(db2.max()), float(db1.min()), float(db1.max())]))
"""


@pytest.mark.parametrize("label", ["default", "avx2", "baseline"])
def test_db_floor_is_exact_on_every_simd_path(label):
    """Silence is exactly -100 dB with numpy's own kernels and with each faster kernel switched off."""
    paths = dict(_tool().other_paths())
    if label != "default" and label not in paths:
        pytest.skip(f"this CPU has no {label} path besides numpy's default")
    env = dict(os.environ, NUMBA_CPU_NAME="generic") if label != "default" else dict(os.environ)
    if label != "default":
        env["NPY_DISABLE_CPU_FEATURES"] = paths[label]
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [-100.0] * 4
