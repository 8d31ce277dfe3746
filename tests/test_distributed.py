"""A build on a real Dask LocalCluster equals a local build."""

from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed")

from memstore import cli  # noqa: E402
from memstore.build import build_store  # noqa: E402
from memstore.store import open_store  # noqa: E402


def test_dask_build_equals_local_build(demo_root, demo_store, tmp_path):
    from test_build import same_store

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        report = build_store(demo_root, tmp_path / "d.h5", executor=client, progress=False)
    assert report.stored == 18
    same_store(tmp_path / "d.h5", demo_store)
    assert not (tmp_path / "d.h5.partial.shards").exists()


def test_cli_dask_local(demo_root, demo_store, tmp_path, capsys):
    assert cli.main(["build", str(demo_root), str(tmp_path / "c.h5"), "--dask", "local:2", "--quiet"]) == 0
    with open_store(tmp_path / "c.h5") as s:
        assert len(s) == 18
    assert cli.main(["build", str(demo_root), str(tmp_path / "e.h5"), "--dask", "udp://x"]) == 1
    assert "tcp://HOST:PORT" in capsys.readouterr().err
