"""The tutorial's .data/.shape feature files: import, export, byte round trip, and every bad input."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from memstore import cli
from memstore.build import write_store_from_arrays
from memstore.errors import ParameterError, StoreFormatError
from memstore.features import MelSpectrogram
from memstore.legacy import MAX_CLASS, export_legacy, import_legacy, read_tensor, write_tensor
from memstore.store import open_store
from memstore.verify import verify_store


def save_tensor(t, out_path, suffix=""):
    """The tutorial's util.saveTensor, written out: raw tofile + '#d0<TAB>d1' shape line."""
    t.tofile(out_path.replace(".data", suffix + ".data"))
    with open(out_path.replace(".data", suffix + ".shape"), "w") as f:
        f.write("#" + "\t".join(str(e) for e in t.shape) + "\n")


def tutorial_dir(root, labels, bins=96, seed=0):
    """One feature file per label value (None = no label file), float32-valued float64 like a float32 pipeline."""
    root.mkdir()
    rng = np.random.default_rng(seed)
    bases = []
    for i, lab in enumerate(labels):
        audio_file = f"{i:03d}__[x][nod][cou_fol]{i}__1.wav"
        out = str(root / audio_file.replace(".wav", ".data"))
        x = (rng.random((50 + 13 * i, bins)) * 10).astype(np.float32).astype(np.float64)
        save_tensor(x, out, suffix="_mel_")
        if lab is not None:
            save_tensor(np.array([lab], dtype=float), out, suffix="_label_")
        bases.append((audio_file[:-4], x))
    return bases


def test_round_trip_is_byte_exact_with_eleven_classes_and_unlabelled_files(tmp_path, capsys):
    labels = [0, 10, 3, None, 7, 3, 1, 10]  # 11 tutorial classes, some absent, one file without a label
    src = tmp_path / "features"
    made = tutorial_dir(src, labels)
    assert cli.main(["import-legacy", str(src), str(tmp_path / "s.h5")]) == 0
    assert "imported 8 file(s)" in capsys.readouterr().out
    with open_store(tmp_path / "s.h5") as s:
        assert s.classes == [f"{k:02d}" for k in range(11)]       # sorted names keep numeric order
        assert s.label_index.tolist() == [-1 if v is None else v for v in labels]  # index = tutorial value
        for i, (base, x) in enumerate(made):
            assert s.paths[i] == base and np.array_equal(np.asarray(s.frames(i), np.float64), x)
        assert s.config.n_mels == 96 and s.config.sample_rate == 44100
    assert verify_store(tmp_path / "s.h5").ok
    assert cli.main(["export-legacy", str(tmp_path / "s.h5"), str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in src.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "out").iterdir()) and len(names) == 8 * 2 + 7 * 2
    for name in names:
        assert (src / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_custom_suffixes_spectrogram_bins_and_float16_free_values(tmp_path):
    src = tmp_path / "f"
    src.mkdir()
    x = np.arange(20 * 513, dtype=np.float64).reshape(20, 513) / 4  # exact in float32
    save_tensor(x, str(src / "a.data"), suffix="_stft_")
    save_tensor(np.array([2.0]), str(src / "a.data"), suffix="_y_")
    report = import_legacy(src, tmp_path / "s.h5", suffix_in="_stft_", suffix_out="_y_", sample_rate=22050)
    assert report.stored == 1 and report.frames == 20
    with open_store(tmp_path / "s.h5") as s:
        assert type(s.config).__name__ == "Spectrogram" and s.config.sample_rate == 22050
        assert s.classes == ["0", "1", "2"] and s.label_index.tolist() == [2]
    assert export_legacy(tmp_path / "s.h5", tmp_path / "o", suffix_in="_stft_", suffix_out="_y_") == 1
    for name in ("a_stft_.data", "a_stft_.shape", "a_y_.data", "a_y_.shape"):
        assert (src / name).read_bytes() == (tmp_path / "o" / name).read_bytes()


def test_read_tensor_accepts_blanks_and_extra_lines_like_get_shape(tmp_path):
    np.ones((2, 3)).tofile(tmp_path / "t.data")
    (tmp_path / "t.shape").write_text("#2 3  \nignored\n")
    assert read_tensor(tmp_path / "t.data").shape == (2, 3)
    write_tensor(np.zeros((4, 1)), tmp_path / "u.data")
    assert (tmp_path / "u.shape").read_text() == "#4\t1\n" and (tmp_path / "u.data").stat().st_size == 32


@pytest.fixture
def good(tmp_path):
    src = tmp_path / "in"
    tutorial_dir(src, [0, 1])
    return src


def bad_file(src, name, x, shape_line):
    x.tofile(src / f"{name}.data")
    (src / f"{name}.shape").write_text(shape_line)


@pytest.mark.parametrize("case, match", [
    ("missing_shape", r"z_mel_\.shape: cannot read the shape file"),
    ("size_mismatch", r"z_mel_\.data: 2304 bytes do not hold a float64 array of shape \(4, 96\)"),
    ("garbage", r"z_mel_\.shape: bad shape line 'three by ninety-six'"),
    ("no_hash", r"bad shape line '3\\t96' \(no leading '#'\)"),
    ("empty_shape", r"bad shape line '#' \(empty or negative shape\)"),
    ("one_d", r"z_mel_\.data: features of shape \(288,\) must be 2-D"),
    ("nan", r"z_mel_\.data: 1 value\(s\) are NaN or infinite"),
    ("not_float32", r"z_mel_\.data: 288 value\(s\) are not exactly representable in float32"),
    ("other_bins", "feature files have different numbers of bins"),
    ("zero_frames", r"features of shape \(0, 96\) must be"),
    # 4 x (2**62 + 3) wraps to 12 in int64: the size check must use the true product
    ("wrapping_shape", r"z_mel_\.data: 96 bytes do not hold a float64 array of shape \(4, 4611686018427387907\) "
                       r"\(147573952589676413024 bytes\)"),
    ("folder_data", r"z_mel_\.data: the data file is not a regular file"),
    ("fifo_shape", r"z_mel_\.shape: the shape file is not a regular file"),
    ("orphan_shape", r"z_mel_\.shape: a shape file without its \.data file"),
    ("orphan_label_shape", r"z_label_\.shape: a shape file without its \.data file"),
    ("fifo_label", r"z_label_\.data: the data file is not a regular file"),
])
def test_bad_feature_files_name_the_file(good, tmp_path, case, match):
    x = np.ones((3, 96))
    if case == "missing_shape":
        x.tofile(good / "z_mel_.data")
    elif case == "size_mismatch":
        bad_file(good, "z_mel_", x[:, :96], "#4\t96\n")
    elif case == "garbage":
        bad_file(good, "z_mel_", x, "three by ninety-six\n")
    elif case == "no_hash":
        bad_file(good, "z_mel_", x, "3\t96\n")
    elif case == "empty_shape":
        bad_file(good, "z_mel_", x, "#\n")
    elif case == "one_d":
        bad_file(good, "z_mel_", x.ravel(), "#288\n")
    elif case == "nan":
        x[1, 2] = np.nan
        bad_file(good, "z_mel_", x, "#3\t96\n")
    elif case == "not_float32":
        bad_file(good, "z_mel_", x * 0.1, "#3\t96\n")
    elif case == "other_bins":
        bad_file(good, "z_mel_", np.ones((3, 40)), "#3\t40\n")
    elif case == "zero_frames":
        bad_file(good, "z_mel_", np.ones((0, 96)), "#0\t96\n")
    elif case == "wrapping_shape":
        bad_file(good, "z_mel_", np.ones((3, 4)), "#4\t4611686018427387907\n")
    elif case == "folder_data":
        (good / "z_mel_.data").mkdir()
        (good / "z_mel_.shape").write_text(f"#{(good / 'z_mel_.data').stat().st_size // 8}\t1\n")  # sizes agree
    elif case in ("fifo_shape", "fifo_label"):
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        if case == "fifo_shape":  # opening a FIFO for reading blocks until a writer comes: never opened so
            x.tofile(good / "z_mel_.data")
            os.mkfifo(good / "z_mel_.shape")
        else:
            save_tensor(x, str(good / "z.data"), suffix="_mel_")
            os.mkfifo(good / "z_label_.data")
            (good / "z_label_.shape").write_text("#1\n")
    elif case == "orphan_shape":
        (good / "z_mel_.shape").write_text("#3\t96\n")  # its .data lost
    elif case == "orphan_label_shape":
        save_tensor(x, str(good / "z.data"), suffix="_mel_")
        (good / "z_label_.shape").write_text("#1\n")  # was stored unlabelled, without a word
    with pytest.raises(ParameterError, match=match):
        import_legacy(good, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("value", [[1.5], [-1.0], [np.nan], [1.0, 2.0]])
def test_bad_label_files(good, tmp_path, value):
    save_tensor(np.ones((3, 96)), str(good / "z.data"), suffix="_mel_")
    save_tensor(np.array(value), str(good / "z.data"), suffix="_label_")
    with pytest.raises(ParameterError, match=r"z_label_\.data: a label must be one non-negative integer"):
        import_legacy(good, tmp_path / "x.h5")


def test_label_values_are_capped_so_the_class_list_stays_bounded(good, tmp_path):
    # classes 0..max all go into the store: 1e12 used to build a list of a trillion names
    save_tensor(np.ones((3, 96)), str(good / "z.data"), suffix="_mel_")
    save_tensor(np.array([1e12]), str(good / "z.data"), suffix="_label_")
    with pytest.raises(ParameterError, match=r"z_label_\.data: class index 1000000000000 is above 65535"):
        import_legacy(good, tmp_path / "x.h5")
    save_tensor(np.array([float(MAX_CLASS)]), str(good / "z.data"), suffix="_label_")
    import_legacy(good, tmp_path / "x.h5")
    with open_store(tmp_path / "x.h5") as store:
        assert len(store.classes) == MAX_CLASS + 1 and int(store.label_index[2]) == MAX_CLASS


def test_rounding_is_refused_unless_allowed(good, tmp_path):
    save_tensor(np.full((3, 96), 0.1), str(good / "z.data"), suffix="_mel_")
    with pytest.warns(UserWarning, match="288 feature value"):
        import_legacy(good, tmp_path / "x.h5", allow_rounding=True)
    with open_store(tmp_path / "x.h5") as s:
        assert np.asarray(s.frames(2))[0, 0] == np.float32(0.1)


def test_folder_and_suffix_errors(tmp_path, good):
    with pytest.raises(ParameterError, match="is not a folder"):
        import_legacy(tmp_path / "nope", tmp_path / "x.h5")
    with pytest.raises(ParameterError, match=r"no '\*_cqt_\.data' files"):
        import_legacy(good, tmp_path / "x.h5", suffix_in="_cqt_")
    with pytest.raises(ParameterError, match="must be non-empty and differ"):
        import_legacy(good, tmp_path / "x.h5", suffix_in="_a_", suffix_out="_a_")
    assert cli.main(["import-legacy", str(tmp_path / "nope"), str(tmp_path / "x.h5")]) == 1


def test_export_of_a_built_store(demo_store, tmp_path):
    assert export_legacy(demo_store, tmp_path / "o") == 18
    with open_store(demo_store) as s:
        for i, path in enumerate(s.paths):
            base = path.rsplit("/", 1)[-1][: -len(".wav")]
            x = read_tensor(tmp_path / "o" / f"{base}_mel_.data")
            assert np.array_equal(x, np.asarray(s.frames(i), np.float64))
            assert read_tensor(tmp_path / "o" / f"{base}_label_.data").tolist() == [float(s.label_index[i])]


@pytest.mark.parametrize("suffix_in, suffix_out, match", [
    ("_x_", "_x_", "must be non-empty and differ"),  # each label file was written over its features, exit 0
    ("", "", "must be non-empty and differ"),
    ("a/b", "_label_", "must be text without a path separator"),  # a raw FileNotFoundError part way
    ("_mel_", None, "must be text without a path separator"),
])
def test_export_refuses_suffixes_that_cannot_name_both_files(demo_store, tmp_path, suffix_in, suffix_out, match):
    with pytest.raises(ParameterError, match=match):
        export_legacy(demo_store, tmp_path / "o", suffix_in=suffix_in, suffix_out=suffix_out)
    assert not (tmp_path / "o").exists()


def test_export_refuses_suffixes_that_give_two_files_one_name(tmp_path):
    """a's label file and a_y's feature file are both a_y_f.data with suffixes '_y_f' and '_f'."""
    rows = [np.ones((2, 4), np.float32), np.zeros((3, 4), np.float32)]
    store = tmp_path / "s.h5"
    write_store_from_arrays(store, rows, ["a.wav", "a_y.wav"], ["c"], np.ones((2, 1), np.uint8),
                            MelSpectrogram(n_mels=4, sample_rate=8000))
    with pytest.raises(StoreFormatError, match=r"the names \['a_y_f'\] would be written twice"):
        export_legacy(store, tmp_path / "o", suffix_in="_f", suffix_out="_y_f")
    assert not (tmp_path / "o").exists()
    assert export_legacy(store, tmp_path / "o") == 2


def test_export_refuses_clashing_names_and_warns_about_multi_labels(demo_store, tmp_path):
    clash = tmp_path / "clash.h5"
    shutil.copy(demo_store, clash)
    with h5py.File(clash, "r+") as f:
        paths = f["paths"][()]
        paths[1] = b"other/" + paths[0].split(b"/")[-1]
        labels = f["labels"][()]
        labels[2, :2] = 1
        idx = f["index"][()]
        idx["label"][2] = -1
        f["paths"][...] = paths
        f["labels"][...] = labels
        f["index"][...] = idx
    with pytest.raises(StoreFormatError, match="share the name"):
        export_legacy(clash, tmp_path / "o")
    with h5py.File(clash, "r+") as f:
        paths[1] = b"other/unique.wav"
        f["paths"][...] = paths
    with pytest.warns(UserWarning, match="1 multi-label file"):
        assert export_legacy(clash, tmp_path / "o") == 18
    assert len(list((tmp_path / "o").glob("*_label_.data"))) == 17
