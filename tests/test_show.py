"""``memstore show``: real PNGs of the right size that are not blank, selections, and the missing extra."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from memstore import cli
from memstore.audio import write_wav
from memstore.build import build_store
from memstore.errors import ParameterError
from memstore.features import MelSpectrogram, Spectrogram
from memstore.plot import MAX_COLUMNS, band_frequencies, display_image, select_files
from memstore.store import open_store

matplotlib_image = pytest.importorskip("matplotlib.image")


def png(path):
    img = matplotlib_image.imread(path)
    return img[..., :3]


def test_one_file_png_size_and_content(demo_store, tmp_path, capsys):
    out = tmp_path / "one.png"
    assert cli.main(["show", str(demo_store), "--file", "4", "-o", str(out), "--dpi", "40"]) == 0
    assert f"wrote {out} (1 file(s))" in capsys.readouterr().out
    img = png(out)
    assert img.shape == (6 * 40, 12 * 40, 3)  # (1 file + histograms) x 3 in high, 12 in wide
    assert img.std() > 0.05
    top = img[: 3 * 40 - 10]  # the spectrogram's band: an image, not a blank panel
    assert len(np.unique(top.reshape(-1, 3), axis=0)) > 50


def test_default_output_is_beside_the_store(demo_store, tmp_path, capsys):
    link = tmp_path / "mystore.h5"
    os.symlink(demo_store, link)
    assert cli.main(["show", str(link), "--path", "vio/*", "--limit", "1", "--dpi", "20"]) == 0
    assert (tmp_path / "mystore.png").exists() and str(tmp_path / "mystore.png") in capsys.readouterr().out


def test_selection(demo_store):
    with open_store(demo_store) as s:
        assert select_files(s, file=-1) == [len(s) - 1]
        vio = select_files(s, path="vio/*", limit=10)
        assert len(vio) == 3 and all(s.paths[i].startswith("vio/") for i in vio)
        assert select_files(s, cls="flu", limit=2) == [i for i in range(len(s)) if s.paths[i].startswith("flu/")][:2]
        assert select_files(s, path="*", cls="cel", limit=99) == select_files(s, path="cel/*", limit=99)
        for kwargs, match in (({"file": 18}, r"--file 18 must be an integer in \[-18, 18\)"),
                              ({"cls": "kazoo"}, "--class 'kazoo' is not one of"),
                              ({"path": "nope/*"}, "no file matches the selection path='nope/\\*'"),
                              ({"file": 0, "cls": "vio"}, "no file matches"),
                              ({"limit": 0}, "limit=0 must be a positive integer")):
            with pytest.raises(ParameterError, match=match):
                select_files(s, **kwargs)


def test_cli_errors(demo_store, tmp_path, capsys):
    assert cli.main(["show", str(demo_store), "--class", "kazoo", "-o", str(tmp_path / "x.png")]) == 1
    assert "memstore show: error: --class 'kazoo'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        cli.main(["show", str(demo_store), "--file", "1", "--path", "*"])
    assert done.value.code == 2
    assert not (tmp_path / "x.png").exists()



def test_bad_outputs_are_named_before_drawing(demo_store, tmp_path, capsys):
    # each of these ended in a traceback from matplotlib (or a std::bad_alloc), or, for a folder, wrote
    # folder.png and said it wrote the folder
    (tmp_path / "adir").mkdir()
    for args, why in ((["-o", str(tmp_path / "x.txt")], "'.txt' is not an image format this matplotlib writes"),
                      (["-o", str(tmp_path / "no" / "x.png")], "the folder .* does not exist"),
                      (["-o", str(tmp_path / "x.png"), "--dpi", "100000"], "makes an image of 1200000 x"),
                      (["-o", str(tmp_path / "adir")], "adir is a folder; give an image file name")):
        assert cli.main(["show", str(demo_store), "--file", "0", *args]) == 1
        assert re.search(why, capsys.readouterr().err), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]
    assert cli.main(["show", str(demo_store), "--file", "0", "--dpi", "20", "-o", str(tmp_path / "plain")]) == 0
    assert f"wrote {tmp_path / 'plain.png'} (1 file(s))" in capsys.readouterr().out  # the file it wrote
    assert (tmp_path / "plain.png").stat().st_size > 0


def test_the_store_itself_or_an_empty_name_is_refused_as_the_image(demo_store, tmp_path, capsys):
    # found by the command-line hunt: the image was written over the store (exit 0), -o '' was ignored,
    # and a file where the folder should be was called a folder that "does not exist"
    store = tmp_path / "features.png"  # a store whose default image name is its own
    shutil.copy(demo_store, store)
    (tmp_path / "link.png").symlink_to(store)
    (tmp_path / "afile").write_text("x")
    before = store.read_bytes()
    for args, why in (([], "features.png is the store itself"),
                      (["-o", str(tmp_path / "link.png")], "link.png is the store itself"),
                      (["-o", ""], "is a folder; give an image file name"),
                      (["-o", str(tmp_path / "afile" / "x.png")], "the folder .*afile is not a folder")):
        assert cli.main(["show", str(store), "--file", "0", *args]) == 1
        assert re.search(why, capsys.readouterr().err), args
    assert store.read_bytes() == before


def test_file_and_class_names_that_are_not_utf8_are_drawn(tmp_path, capsys):
    # found by the command-line hunt: a Latin-1 name (a lone surrogate in Python) made matplotlib raise TypeError
    root = tmp_path / "a"
    (root / "caf\udce9").mkdir(parents=True)
    write_wav(root / "caf\udce9" / "n\udce9.wav", np.sin(np.arange(8000, dtype=np.float32)) * 0.1, 8000)
    write_wav(root / "caf\udce9" / "b.wav", np.zeros(8000, np.float32), 8000)
    build_store(root, tmp_path / "s.h5", workers=1, progress=False)
    assert cli.main(["show", str(tmp_path / "s.h5"), "--dpi", "20", "-o", str(tmp_path / "s.png")]) == 0
    assert png(tmp_path / "s.png").shape[0] > 0


def test_band_frequencies_follow_the_configuration():
    mel = band_frequencies(MelSpectrogram(sample_rate=44100))
    assert mel.shape == (96,) and np.all(np.diff(mel) > 0) and 0 < mel[0] < 200 and 18000 < mel[-1] < 22050
    htk = band_frequencies(MelSpectrogram(sample_rate=16000, n_mels=40, fmin=100.0, fmax=4000.0, mel_scale="htk"))
    assert 100 < htk[0] < htk[-1] < 4000
    lin = band_frequencies(Spectrogram(sample_rate=8000, n_fft=256))
    assert lin.shape == (129,) and lin[0] == 0 and lin[-1] == 4000
    with pytest.raises(ParameterError, match="no sample rate"):
        band_frequencies(MelSpectrogram())


def test_display_image_log_and_reduction():
    cfg = MelSpectrogram(sample_rate=44100)
    x = np.zeros((10, 96), np.float32)
    x[3, 5] = 0.09
    image, step = display_image(x, cfg)
    assert step == 1 and image.shape == (96, 10) and image[5, 3] == pytest.approx(1.0)  # log10(1 + 100 * 0.09)
    long = np.zeros((3 * MAX_COLUMNS + 7, 4), np.float32)
    long[11111, 2] = 1.0
    image, step = display_image(long, MelSpectrogram(sample_rate=8000, n_mels=4, log="log10p"))
    assert step == 4 and image.shape[1] <= MAX_COLUMNS and image.max() == 1.0  # a short event survives


def test_store_without_classes(tmp_path):
    from memstore.legacy import import_legacy

    src = tmp_path / "f"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        x = rng.random((200, 96)).astype(np.float32).astype(np.float64)
        x.tofile(src / f"{name}_mel_.data")
        (src / f"{name}_mel_.shape").write_text("#200\t96\n")
    import_legacy(src, tmp_path / "s.h5")
    assert cli.main(["show", str(tmp_path / "s.h5"), "-o", str(tmp_path / "s.png"), "--dpi", "20"]) == 0
    assert png(tmp_path / "s.png").shape == (9 * 20, 12 * 20, 3)


def run_python(code, *args):
    env = dict(os.environ, MPLBACKEND="")  # the library must not rely on the environment's backend
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          check=False, env=env)


def test_missing_matplotlib_names_the_extra(demo_store, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from memstore import cli\n"
            "sys.exit(cli.main(['show', sys.argv[1], '-o', sys.argv[2]]))\n")
    done = run_python(code, demo_store, tmp_path / "y.png")
    assert done.returncode == 1, done.stderr
    assert "memstore[plot]" in done.stderr and "matplotlib" in done.stderr
    assert not (tmp_path / "y.png").exists()


def test_drawing_leaves_no_pyplot_state(demo_store, tmp_path):
    code = ("import sys\n"
            "from memstore import cli\n"
            "assert cli.main(['show', sys.argv[1], '-o', sys.argv[2], '--dpi', '20']) == 0\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n")
    done = run_python(code, demo_store, tmp_path / "z.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "z.png").stat().st_size > 1000
