"""StoreMeta: the one validated form of a store's metadata, for open_store, verify and the builder alike."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from memstore import layout
from memstore.errors import ParameterError, StoreFormatError
from memstore.features import MelSpectrogram
from memstore.store import Store, StoreMeta, open_store, read_metadata

#: the keys of the dict read_metadata returned before StoreMeta; build.py and users index them
FORMER_KEYS = {"path", "dtype", "total", "n_bins", "data_offset", "config", "classes", "index", "paths",
               "labels", "segments", "stats", "report", "generation", "label_mode", "file_size"}


def test_read_metadata_returns_a_frozen_store_meta_that_still_reads_like_the_old_dict(demo_store):
    meta = read_metadata(demo_store)
    assert isinstance(meta, StoreMeta) and meta.fd is None
    assert set(meta.to_dict()) == FORMER_KEYS
    for key in FORMER_KEYS:
        assert meta[key] is getattr(meta, key)
    for key in ("fd", "nope"):
        with pytest.raises(KeyError):
            meta[key]
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.total = 0
    with h5py.File(demo_store, "r") as f:
        n_frames, n_bins = f["features"].shape
        np.testing.assert_array_equal(meta.index, f["index"][()])
        assert meta.paths == [os.fsdecode(p) for p in f["paths"][()]]
        np.testing.assert_array_equal(meta.stats["m2"], f["stats/m2"][()])
    assert (meta.total, meta.n_bins, meta.dtype, meta.file_size) == (n_frames, n_bins, np.float32,
                                                                    demo_store.stat().st_size)
    assert meta.config == MelSpectrogram(sample_rate=44100) and meta.generation == 0 and meta.label_mode == "folder"


def test_keep_fd_gives_the_descriptor_to_the_store(demo_store):
    meta = read_metadata(demo_store, keep_fd=True)
    assert meta["fd"] == meta.fd and set(meta.to_dict()) == FORMER_KEYS | {"fd"}
    assert os.path.samefile(f"/proc/self/fd/{meta.fd}", demo_store)
    with Store(meta) as store:
        assert store.source == f"/proc/self/fd/{meta.fd}"
    with pytest.raises(OSError):
        os.fstat(meta.fd)  # closed by the store


def test_from_dict_round_trip_makes_the_same_store(demo_store):
    meta = read_metadata(demo_store)
    d = meta.to_dict()
    d.update(config=meta.config.to_dict(), dtype="float32")  # the JSON forms are parsed as the file's are
    again = StoreMeta.from_dict(d)
    assert again.config == meta.config and again.dtype == np.float32
    with open_store(demo_store) as ref, Store(again) as store, Store(meta.to_dict()) as from_plain_dict:
        for s in (store, from_plain_dict):
            assert (len(s), s.paths, s.classes, s.n_frames_total, s.data_offset) == \
                   (len(ref), ref.paths, ref.classes, ref.n_frames_total, ref.data_offset)
            np.testing.assert_array_equal(s.frames(5), ref.frames(5))
            np.testing.assert_array_equal(s.label_index, ref.label_index)
        assert not hasattr(store, "_meta")


def test_from_dict_names_unknown_and_missing_keys(demo_store):
    d = read_metadata(demo_store).to_dict()
    d["colour"] = "blue"
    del d["segments"]
    with pytest.raises(ParameterError, match=re.escape("unknown keys ['colour'] and lacks ['segments']")):
        StoreMeta.from_dict(d)


def _label_77(meta):
    index = meta.index.copy()
    index["label"][1] = 77
    return {"index": index}


def _offset_5(meta):
    index = meta.index.copy()
    index["offset"][0] = 5
    return {"index": index}


def _empty_segment(meta):
    return {"segments": np.concatenate([meta.segments, np.zeros(1, layout.SEGMENT_DTYPE)])}


@pytest.mark.parametrize("change, match", [
    (lambda m: {"classes": "x"}, "classes attribute must be a JSON list of strings"),
    (lambda m: {"config": {"kind": "mel", "hop": 0}}, "bad feature configuration: hop=0"),
    # found by a bad-input hunt: a lost setting read back as its default (n_fft=2048 as 1024), unnoticed
    (lambda m: {"config": {k: v for k, v in m.config.to_dict().items() if k not in ("n_fft", "sample_rate")}},
     "bad feature configuration: it lacks n_fft, sample_rate"),
    (lambda m: {"dtype": "float64"}, "dtype 'float64' must be one of"),
    (lambda m: {"n_bins": 95}, "features have 95 bins but the configuration gives 96"),
    (lambda m: {"file_size": m.data_offset}, "features need bytes"),
    (lambda m: {"index": np.zeros(len(m.index), [("offset", "<i8")])}, "is not the version 1 index"),
    (lambda m: {"paths": m.paths[1:]}, "disagree"),
    (_empty_segment, r"segment 1 is empty \(0 files, 0 frames\)"),
    (_offset_5, "do not tile"),
    (_label_77, "index labels out of range"),
    (lambda m: {"stats": dict(m.stats, mean=np.zeros(3))}, "statistics have the wrong shape"),
    (lambda m: {"total": 1.5}, "total=1.5 must be an integer"),
    (lambda m: {"generation": -5}, r"generation=-5 must be >= 0"),  # found by the command-line hunt: passed verify
])
def test_from_dict_applies_the_rules_of_open_store(demo_store, change, match):
    meta = read_metadata(demo_store)
    with pytest.raises(StoreFormatError, match=match) as err:
        StoreMeta.from_dict(dict(meta.to_dict(), **change(meta)))
    assert str(err.value).startswith(f"{demo_store}: ")


@pytest.mark.parametrize("edit", [
    lambda f: f["index"].__setitem__((1, "label"), 77),
    lambda f: f["index"].__setitem__((0, "offset"), 5),
    lambda f: f.attrs.__setitem__("config", '{"kind": "mel", "hop": 0}'),
    lambda f: f.attrs.__setitem__("config", json.dumps({k: v for k, v in json.loads(f.attrs["config"]).items()
                                                        if k != "n_fft"})),
])
def test_a_damaged_file_and_a_damaged_dict_fail_with_the_same_words(demo_store, tmp_path, edit):
    """One set of rules: the message for the file is the message for the same change made to the dict."""
    bad = tmp_path / "bad.h5"
    shutil.copy(demo_store, bad)
    meta = read_metadata(demo_store)
    with h5py.File(bad, "r+") as f:
        edit(f)
        config = layout.loads(f.attrs["config"], "config attribute")
        changed = dict(meta.to_dict(), path=bad, index=f["index"][()], config=config)
    with pytest.raises(StoreFormatError) as from_file:
        open_store(bad)
    with pytest.raises(StoreFormatError) as from_dict:
        StoreMeta.from_dict(changed)
    assert str(from_file.value) == str(from_dict.value)


def test_a_failed_validation_closes_the_kept_descriptor(demo_store, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(demo_store, bad)
    with h5py.File(bad, "r+") as f:
        f["index"][1, "label"] = 77
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(StoreFormatError, match="labels out of range"):
            open_store(bad)
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_verify_needs_no_private_name_of_the_builder():
    """verify reads the statistics maths from memstore.stats, not from build's private helpers."""
    code = "import sys, memstore.verify; print(sorted(m for m in sys.modules if m.startswith('memstore.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "memstore.stats" in out and "memstore.build" not in out


def test_a_store_with_settings_past_todays_limits_still_opens(demo_store, tmp_path):
    """A store written before a setting got its upper bound (a 2.5 MHz rate from the headers, n_fft 2**18)
    opens, shows its configuration, and refuses only to compute with it (found by a review: it could not
    be opened at all)."""
    old = tmp_path / "old.h5"
    shutil.copy(demo_store, old)
    with h5py.File(old, "r+") as f:
        config = json.loads(f.attrs["config"])
        config.update(sample_rate=2_500_000, n_fft=2**18)
        f.attrs["config"] = json.dumps(config)
    with open_store(old) as store:
        assert store.config.sample_rate == 2_500_000 and store.config.n_fft == 2**18
        with pytest.raises(ParameterError, match="sample_rate=2500000 must be at most 2,000,000"):
            store.config(np.zeros(1000, np.float32), 2_500_000)
    with pytest.raises(ParameterError, match="sample_rate=2500000 must be at most"):  # made anew: refused
        MelSpectrogram(**{k: v for k, v in config.items() if k != "kind"})
