"""Building on a Dask cluster (optional ``dask`` extra, imported lazily).

``build_store(..., executor=client)`` sends the extraction tasks to the
cluster's workers. Each task reads its audio files from the shared file
system, computes the features and writes them at their planned offsets of
the ``.partial`` file through its own memory map, then returns checksums and
statistics; the parent alone touches HDF5 metadata. The workers therefore
need the same shared path to the audio root and the store's folder (see
``docs/distributed.md``).
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
