"""memstore bench helpers: eviction, the sequential baseline and the distinct-frame count (never speed)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memstore.commands.bench import _distinct_rows, evict, sequential_read


def test_sequential_read_reads_every_byte(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(bytes(range(256)) * 1000 + b"tail")
    n, dt = sequential_read(p, chunk=4096)
    assert n == p.stat().st_size and dt >= 0


def test_evict_runs_on_a_clean_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 10000)
    assert evict(p) is hasattr(__import__("os"), "posix_fadvise")
    assert p.read_bytes() == b"x" * 10000  # eviction never changes content


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40)), max_size=30))
def test_distinct_rows_is_the_size_of_the_union(blocks):
    rows = np.array([b[0] for b in blocks], np.int64)
    valid = np.array([b[1] for b in blocks], np.int64)
    covered = set()
    for r, v in blocks:
        covered.update(range(r, r + v))
    assert _distinct_rows(rows, valid) == len(covered)


def test_bench_counts_whole_epochs_and_reports_the_first_batch(demo_store, capsys):
    import json

    from memstore import BatchStream
    from memstore.cli import main

    with BatchStream(demo_store, batch_size=8, split="all") as s:
        per_epoch = len(s) * 8
    assert main(["bench", str(demo_store), "--batch-size", "8", "--epochs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # two epochs, less the first batch, whose wait is the time to first batch and not throughput
    assert out["stream"]["blocks"] == 2 * per_epoch - 8
    assert out["stream"]["epochs"] == 2 and out["stream"]["time_to_first_batch_s"] > 0
    assert main(["bench", str(demo_store), "--epochs", "0"]) == 1
    assert "--epochs 0" in capsys.readouterr().err


def test_bench_epochs_tool_compares_checkouts_in_fresh_processes(tmp_path):
    """``tools/bench_epochs.py`` on a small store: one line per checkout, a ratio each; a bad --tree is refused."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_epochs.py"
    tree = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, str(tool), "--size", "8MB", "--limit", "16MB", "--reps", "1",
                          "--dir", str(tmp_path), "--tree", tree, "--tree", tree],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "out of core / in memory" in line]
    assert len(lines) == 2 and all(str(Path(tree) / "memstore" / "__init__.py") in line for line in lines)
    assert (tmp_path / "epochs-8MB.h5").is_file()
    bad = subprocess.run([sys.executable, str(tool), "--tree", str(tmp_path), "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no memstore package there" in bad.stderr


def test_bench_lanes_tool_reads_every_plan_and_counts_the_mixing(tmp_path):
    """``tools/bench_lanes.py`` on a small class-by-class store: a row per lane count; more lanes mix better.

    The plan is a pure function of the seed, so the mixing column is exact: 16 lanes spread over the
    11 classes written one after another, 2 lanes cannot. Bad ``--lanes`` is refused before any work.
    """
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_lanes.py"
    out = subprocess.run([sys.executable, str(tool), "--limit", "16MB", "--ratio", "2", "--lanes", "16,2",
                          "--reps", "1", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = {int(line.split()[0]): line.split() for line in out.stdout.splitlines()
            if line.split() and line.split()[0].isdigit()}
    assert sorted(rows) == [2, 16]
    mix = {k: float(v[-1]) for k, v in rows.items()}
    assert mix[16] >= 0.8 and mix[2] < 0.5, out.stdout
    assert all(float(v[3]) > 0 and float(v[4]) > 0 for v in rows.values())  # reader alone, whole epoch
    assert list(tmp_path.iterdir()) == []  # the scratch store is removed
    for flag, bad, says in [("--lanes", "16,x", "--lanes must be"), ("--lanes", "0", "--lanes must be"),
                            ("--lanes", "", "--lanes must be"), ("--ratio", "0", "--ratio must be positive"),
                            ("--limit", "12XB", "--limit: memory_limit")]:
        r = subprocess.run([sys.executable, str(tool), flag, bad, "--dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and says in r.stderr, (flag, bad, r.stderr)
    assert list(tmp_path.iterdir()) == []


def test_lanes_mixing_is_one_for_a_global_shuffle_and_low_for_class_order():
    """The mixing figure of ``tools/bench_lanes.py``: a class-sorted order mixes far worse than a shuffle."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from bench_lanes import mixing

    classes = np.repeat(np.arange(11), 640)
    shuffled = np.random.default_rng(3).permutation(len(classes))
    assert abs(mixing(shuffled, classes) - 1.0) < 0.05
    assert mixing(np.arange(len(classes)), classes) < 0.2  # 64 blocks of one class, at most two
    assert np.isnan(mixing(np.arange(10), classes))  # fewer blocks than one batch


def test_bench_plan_tool_plans_each_size_and_refuses_a_bad_one():
    """``tools/bench_plan.py`` plans synthetic block tables: a row per size, more windows for a larger store."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_plan.py"
    out = subprocess.run([sys.executable, str(tool), "--sizes", "40MB,200MB", "--reps", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.split() and line.split()[0].endswith("G")]
    assert len(rows) == 2
    blocks, windows = [int(r[1]) for r in rows], [int(r[2]) for r in rows]
    assert blocks[0] < blocks[1] and 0 < windows[0] < windows[1]
    # first stretch, all stretches, whole plan, rank, balanced epochs 0 and 1
    assert all(" ".join(r).count("(") == 6 for r in rows)
    assert "rank 1 of 2" in out.stdout and "balanced ep 0 s" in out.stdout and "balanced ep 1 s" in out.stdout
    for flag, bad in [("--sizes", "1x"), ("--limit", "1KB"), ("--reps", "0"), ("--world", "0")]:
        r = subprocess.run([sys.executable, str(tool), flag, bad], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "error" in r.stderr, (flag, bad, r.stderr)


def test_bench_spawn_tool_builds_with_both_starts_and_skips_what_is_not_installed(tmp_path):
    """``tools/bench_spawn.py`` on a tiny folder: both starts build, each prints its line and the ratios; an
    import list that cannot be imported is skipped with a note; a malformed one is refused."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_spawn.py"
    work = tmp_path / "w"
    out = subprocess.run([sys.executable, str(tool), "--files", "6", "--reps", "1", "--imports", "numpy",
                          "--imports", "numpy,no_such_module_here", "--dir", str(work)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "skipped --imports numpy,no_such_module_here: no_such_module_here not installed" in lines
    for start in ("memstore", "spawn"):
        line = next(x for x in lines if x.startswith(f"script imports numpy, {start} start: first build "))
        assert "warm build" in line and "peak worker RSS" in line
    assert any(x.startswith("script imports numpy: spawn / memstore: warm build ") for x in lines)
    assert not work.exists()  # the scratch folder is removed
    bad = subprocess.run([sys.executable, str(tool), "--imports", "numpy;rm", "--dir", str(work)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be comma-separated module names" in bad.stderr
