"""Building on a Dask cluster (optional ``dask`` extra, imported lazily).

``build_store(..., executor=client)`` plans the build and allocates the
``.partial`` store in the client process, as a local build does, then sends
the extraction tasks to the cluster (``memstore.build._extract_dask``). Each
task reads its audio files from the shared file system, computes their
features and writes them to a raw ``.npy`` shard file of its own in
``<store>.partial.shards/``, then returns checksums and statistics. The
client copies each shard into the ``.partial`` file at the planned offsets,
marks those files done and deletes the shard: only the client writes the
store. Paths are sent as absolute paths, so the workers need the audio root
and the store's folder at the same paths as the client (see
``docs/distributed.md``).

A task that fails stops the build: the other tasks are cancelled and the
error comes back as a :class:`~memstore.errors.BuildError` (memory running
out says so). The files already copied stay done, so running the same build
again resumes.

This module only connects: :func:`connect` turns ``--dask`` addresses into a
client.
"""

from __future__ import annotations

from .errors import ParameterError, require

__all__ = ["connect"]


def connect(address: str):
    """Return ``(client, cluster_or_None)`` for ``tcp://HOST:PORT`` or ``local[:N]``."""
    distributed = require("distributed", "dask")
    if address.startswith("local"):
        n = address.partition(":")[2]
        if n and not n.isdigit():
            raise ParameterError(f"--dask {address!r}: use local or local:N with N a positive integer")
        cluster = distributed.LocalCluster(n_workers=int(n or 2), threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        return distributed.Client(cluster), cluster
    if not address.startswith(("tcp://", "tls://", "ucx://")):
        raise ParameterError(f"--dask {address!r} must be tcp://HOST:PORT or local[:N]")
    return distributed.Client(address), None
