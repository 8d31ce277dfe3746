"""``memstore demo`` end to end, in-process, on a small synthetic folder."""

from __future__ import annotations

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
