"""``memstore demo`` end to end, in-process, on a small synthetic folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from memstore import cli
from memstore.store import open_store


def test_demo_builds_a_store_and_streams_out_of_core(tmp_path, capsys):
    status = cli.main(["demo", str(tmp_path), "--per-class", "2", "--workers", "2", "--quiet"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "out-of-core pager" in out
    with open_store(tmp_path / "demo.h5") as store:
        assert len(store) == sum(1 for _ in (tmp_path / "Training").rglob("*.wav"))
        assert len(store.classes) >= 2


def test_demo_refuses_what_would_mix_lose_or_never_end(tmp_path, capsys):
    # found by the command-line hunt: each of these ran and exited 0
    (tmp_path / "mine" / "Training" / "mine").mkdir(parents=True)
    (tmp_path / "mine" / "Training" / "mine" / "x.wav").write_bytes(b"")
    for args, why in ((["demo", str(tmp_path / "mine")], "Training already holds files"),  # built into the store
                      (["demo", ""], "DIR '' names no folder"),  # wrote into the working folder
                      (["demo", "--per-class", str(10**30)], f"--per-class={10**30} must be from 1 to 1000"),
                      # it wrote 1.7 GB a minute
                      (["demo", str(tmp_path / "d"), "--per-class", "1", "--batch-size", "100000", "--quiet"],
                       r"--batch-size 100000 is more than the \d+ blocks")):  # "0 batches of shape None", "done"
        assert cli.main(args) == 1, args
        assert re.search(why, capsys.readouterr().err), args
    assert sorted(p.name for p in (tmp_path / "mine" / "Training").iterdir()) == ["mine"]


def test_a_terminated_demo_removes_its_temporary_folder(tmp_path):
    # found by the command-line hunt: SIGTERM left the "removed at the end" folder (SIGINT did not)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-m", "memstore", "demo", "--per-class", "200", "--quiet"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("memstore-demo-*/Training")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob("memstore-demo-*/Training")), "the demo never started writing"
    child.terminate()
    assert child.wait(timeout=60) == 128 + signal.SIGTERM
    assert not list(tmp_path.glob("memstore-demo-*"))
