"""tools/train_example.py learns the demo classes: labels and blocks line up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_example  # noqa: E402

from memstore.build import build_store  # noqa: E402
from memstore.demo import make_demo_folder  # noqa: E402


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    build_store(make_demo_folder(d, n_per_class=8, seed=2), d / "t.h5", workers=2, progress=False)
    return d / "t.h5"


def test_numpy_classifier_is_well_above_chance(train_store, capsys):
    history = train_example.run(train_store, epochs=20, memory_limit="2MB", batch_size=8)
    assert "out of core" in capsys.readouterr().out
    assert history[-1] >= 0.5  # chance is 1/6


def test_torch_cnn_runs_and_learns(train_store):
    pytest.importorskip("torch")
    history = train_example.run(train_store, epochs=4, model="torch", batch_size=8, memory_limit=None)
    assert max(history) > 1 / 6 + 0.15
