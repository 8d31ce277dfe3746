"""info, verify, show, bench and legacy import/export, through the command line in-process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from memstore import cli
from memstore.errors import ParameterError
from memstore.legacy import export_legacy, import_legacy, write_tensor
from memstore.store import open_store
from memstore.verify import verify_store


def test_info_text_and_json(demo_store, capsys):
    assert cli.main(["info", str(demo_store)]) == 0
    out = capsys.readouterr().out
    assert "18 files" in out and "cel (3)" in out and "n_mels=96" in out
    assert cli.main(["info", str(demo_store), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["files"] == 18 and data["classes"]["vio"] == 3 and data["dtype"] == "float32"
    assert data["stats"]["count"] == data["frames"]


def test_verify_clean_and_flipped_bytes(demo_store, tmp_path, capsys):
    assert cli.main(["verify", str(demo_store), "--quiet"]) == 0
    bad = tmp_path / "bad.h5"
    shutil.copy(demo_store, bad)
    with open_store(bad) as s:
        victim = 7
        pos = s.data_offset + (int(s.index["offset"][victim]) + 5) * s.n_bins * 4 + 12
        name = s.paths[victim]
    with open(bad, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = verify_store(bad)
    assert not report.ok and [p for p, _ in report.problems] == [name]
    assert cli.main(["verify", str(bad), "--quiet"]) == 1
    assert name in capsys.readouterr().out
    (tmp_path / "junk.h5").write_bytes(b"junk")
    assert cli.main(["verify", str(tmp_path / "junk.h5"), "--quiet"]) == 1


def test_show_writes_a_non_blank_png(demo_store, tmp_path):
    import matplotlib.image

    out = tmp_path / "x.png"
    assert cli.main(["show", str(demo_store), "--class", "flu", "--limit", "2", "-o", str(out), "--dpi", "50"]) == 0
    img = matplotlib.image.imread(out)
    assert img.shape[:2] == (9 * 50, 12 * 50)  # (2 files + histograms) x 3 in at 50 dpi, 12 in wide
    assert img[..., :3].std() > 0.05
    assert cli.main(["show", str(demo_store), "--path", "pia/*", "-o", str(out)]) == 0
    assert cli.main(["show", str(demo_store), "--class", "nope", "-o", str(out)]) == 1


def test_show_without_matplotlib_names_the_extra(demo_store, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from memstore import cli\n"
            "sys.exit(cli.main(['show', sys.argv[1], '-o', sys.argv[2]]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(demo_store), str(tmp_path / "y.png")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "memstore[plot]" in done.stderr


def test_bench_reports_throughput_ratios_and_shuffle(demo_store, capsys):
    assert cli.main(["bench", str(demo_store), "--batch-size", "8", "--memory-limit", "2MB", "--cold",
                     "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["out_of_core"] is True and r["stream"]["blocks"] > 0
    assert set(r["ratios"]) == {"stream_vs_sequential_read", "stream_vs_naive_random"}
    assert r["shuffle"]["stream"]["distinct_files_per_batch"] > 1



@pytest.mark.parametrize("extra, match", [
    (["--batch-size", "8", "--max-batches", "1"], "--max-batches 1 must be at least 2"),
    # 54 blocks of 128 frames, fewer than one batch of 64: it printed "0 blocks/s" as a measurement
    ([], r"gives 0 batch\(es\) of 64 blocks of 128 frames per epoch, 0 in all: nothing to time"),
    (["--batch-size", "54"], r"gives 1 batch\(es\) of 54 blocks .* 1 in all: nothing to time .* or raise --epochs"),
])
def test_bench_refuses_a_run_that_times_no_batch(demo_store, capsys, extra, match):
    assert cli.main(["bench", str(demo_store), *extra]) == 1  # --max-batches 1 raised ZeroDivisionError
    assert re.search(match, capsys.readouterr().err)
    assert cli.main(["bench", str(demo_store), "--batch-size", "54", "--epochs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stream"]["blocks"] == 54  # the second epoch's one batch

def make_legacy_dir(root, n=5, bins=96):
    """Feature files exactly as the tutorial writes them (float64 np.tofile + '#d0\\td1' shape files)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        base = f"{i:03d}__[vio][nod][cou_fol]2194__{i}"
        x = rng.random((100 + 17 * i, bins)).astype(np.float32).astype(np.float64)
        x.tofile(root / f"{base}_mel_.data")
        (root / f"{base}_mel_.shape").write_text(f"#{x.shape[0]}\t{x.shape[1]}\n")
        np.array([i % 3], dtype=float).tofile(root / f"{base}_label_.data")
        (root / f"{base}_label_.shape").write_text("#1\n")
    return root


def test_legacy_round_trip_gives_equal_bytes(tmp_path, capsys):
    src = make_legacy_dir(tmp_path / "legacy")
    assert cli.main(["import-legacy", str(src), str(tmp_path / "l.h5")]) == 0
    with open_store(tmp_path / "l.h5") as s:
        assert len(s) == 5 and s.classes == ["0", "1", "2"]
        assert s.label_index.tolist() == [0, 1, 2, 0, 1]
    assert cli.main(["export-legacy", str(tmp_path / "l.h5"), str(tmp_path / "out")]) == 0
    before = sorted(p.name for p in src.iterdir())
    assert before == sorted(p.name for p in (tmp_path / "out").iterdir())
    for name in before:
        assert (src / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_legacy_errors(tmp_path):
    src = make_legacy_dir(tmp_path / "legacy", n=2)
    np.full((3, 96), 0.1).tofile(src / "x_mel_.data")  # 0.1 is not a float32 value
    (src / "x_mel_.shape").write_text("#3\t96\n")
    with pytest.raises(ParameterError, match="not exactly representable in float32"):
        import_legacy(src, tmp_path / "a.h5")
    with pytest.warns(UserWarning, match="rounded"):
        import_legacy(src, tmp_path / "a.h5", allow_rounding=True)
    (src / "x_mel_.shape").write_text("#4\t96\n")
    with pytest.raises(ParameterError, match="do not hold a float64 array of shape"):
        import_legacy(src, tmp_path / "b.h5", allow_rounding=True)
    (src / "x_mel_.shape").write_text("3 96")
    with pytest.raises(ParameterError, match="bad shape line"):
        import_legacy(src, tmp_path / "b.h5")
    (src / "x_mel_.shape").unlink()
    with pytest.raises(ParameterError, match="cannot read the shape file"):
        import_legacy(src, tmp_path / "b.h5")
    with pytest.raises(ParameterError, match="no '\\*_cqt_.data' files"):
        import_legacy(src, tmp_path / "b.h5", suffix_in="_cqt_")


def test_export_of_a_built_store_uses_class_indices(demo_store, tmp_path):
    assert export_legacy(demo_store, tmp_path / "o") == 18
    files = sorted((tmp_path / "o").glob("*_label_.data"))
    assert len(files) == 18
    with h5py.File(demo_store, "r") as f:
        first = f["paths"][0].decode().split("/")[-1][:-4]
    assert np.fromfile(tmp_path / "o" / f"{first}_label_.data").tolist() == [0.0]
    write_tensor(np.zeros((2, 3)), tmp_path / "z.data")
    assert (tmp_path / "z.shape").read_text() == "#2\t3\n"
