"""Building on a Dask cluster (optional ``dask`` extra, imported lazily).

``build_store(..., executor=client)`` plans the build and allocates the
``.partial`` store in the client process, as a local build does; then
:func:`memstore.extract.extract_files` hands the extraction tasks to
:func:`extract_on_cluster` here. Each task runs :func:`_extract_shard` on a
worker: it reads its audio files from the shared file system, computes their
features (:func:`memstore.extract.compute_files`, the same per-file code as a
local build) and writes them to a raw ``.npy`` shard file of its own in
``<store>.partial.shards/``, then returns checksums and statistics. The
client copies each shard into the ``.partial`` file at the planned offsets,
marks those files done and deletes the shard: only the client writes the
store. Paths are sent as absolute paths, so the workers need the audio root
and the store's folder at the same paths as the client (see
``docs/distributed.md``). Task keys and shard names carry an id of the run,
so a late shard of an earlier, failed run is never read; the next run
deletes it.

A task that fails stops the build: the other tasks are cancelled and the
error comes back as a :class:`~memstore.errors.BuildError` (memory running
out says so). The files already copied stay done, so running the same build
again resumes.

:func:`connect` turns the command line's ``--dask`` addresses into a client.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
import zlib
from pathlib import Path

import numpy as np

from .errors import BuildError, ParameterError, require
from .extract import compute_files
from .stats import RunningStats

__all__ = ["connect"]


def connect(address: str):
    """Return ``(client, cluster_or_None)`` for ``tcp://HOST:PORT`` (also ``tls://``, ``ucx://``) or
    ``local[:N]``, a LocalCluster of ``N`` processes (default 2, at most 4 per core, as a local build)."""
    from .build import WORKERS_PER_CORE

    distributed = require("distributed", "dask")
    local = re.fullmatch(r"local(?::([0-9]+))?", address) if isinstance(address, str) else None
    if local:
        n, most = int(local.group(1) or 2), WORKERS_PER_CORE * (os.cpu_count() or 1)
        if not 1 <= n <= most:  # local:0 started a cluster without workers, and the build waited forever
            raise ParameterError(f"--dask {address!r}: N must be from 1 to {most} ({WORKERS_PER_CORE} per core)")
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        return distributed.Client(cluster), cluster
    if not isinstance(address, str) or not address.startswith(("tcp://", "tls://", "ucx://")):
        # localhost:8786 was read as local:8786, a LocalCluster of 8786 processes
        raise ParameterError(f"--dask {address!r} must be tcp://HOST:PORT (a scheduler, e.g. tcp://localhost:8786) "
                             "or local[:N] (a cluster started here)")
    try:
        return distributed.Client(address), None
    except (OSError, TimeoutError) as err:
        raise BuildError(f"cannot reach the Dask scheduler at {address}: {err}") from err


def _extract_shard(shard: str, n_bins: int, dtype: str, config_json: str, rate: int,
                   items: list[tuple[int, str, int, int, int, int]]) -> list[tuple]:
    """Cluster worker: write the rows of several files into a shard file of its own (raw ``.npy``).

    Returns ``(i, crc, packed statistics, first row in the shard)`` per file, or ``(i, None, reason)``.
    """
    results, parts, first = [], [], 0
    for i, _, rows in compute_files(config_json, rate, n_bins, dtype, items):
        if isinstance(rows, str):
            results.append((i, None, rows))
            continue
        parts.append(rows)
        results.append((i, zlib.crc32(rows.data), RunningStats.of_rows(rows).packed(), first))
        first += len(rows)
    tmp = shard + ".tmp"
    with open(tmp, "wb") as f:
        np.lib.format.write_array(f, np.concatenate(parts) if parts else np.zeros((0, n_bins), dtype),
                                  allow_pickle=False)
    os.replace(tmp, shard)
    return results


def extract_on_cluster(client, args, tasks, record) -> None:
    """Run tasks on a Dask cluster: each task writes a shard file; this process copies it into place.

    ``args`` are ``(partial, data_offset, n_bins, dtype, config_json, rate)``
    and ``tasks`` the lists of items of :func:`memstore.extract.tasks`;
    ``record`` gets each task's ``(i, crc, packed statistics)`` or ``(i, None,
    reason)`` once its rows are in the partial file. No two processes write
    one file: workers write their own shards next to the store (a shared file
    system), and only this process writes the partial store. Paths are made
    absolute here, because a worker resolves a relative path against its own
    working directory. If a task fails, the others are cancelled and the
    error comes back as a :class:`BuildError` (a :class:`MemoryError` as it
    is); the files already copied stay done, so rerunning the build resumes.
    """
    from distributed import as_completed

    partial, data_offset, n_bins, dtype, config_json, rate = args
    partial = os.path.abspath(partial)
    shard_dir = Path(partial + ".shards")
    shard_dir.mkdir(exist_ok=True)
    _clear_shards(shard_dir)
    run = uuid.uuid4().hex  # keys and shard names of this run only: never a stale result or shard of another
    futures, shards, planned = [], {}, {}
    try:
        for k, items in enumerate(tasks):
            items = [(i, os.path.abspath(path), *rest) for i, path, *rest in items]
            shard = str(shard_dir / f"{run}-{k:08d}.npy")
            fut = client.submit(_extract_shard, shard, n_bins, dtype, config_json, rate, items,
                                pure=False, key=f"memstore-extract-{run}-{k}")
            futures.append(fut)
            shards[fut.key] = shard
            planned[fut.key] = {i: row for i, _, row, *_ in items}
        for fut in as_completed(futures):
            try:
                results = fut.result()
            except MemoryError:
                raise
            except Exception as err:
                raise BuildError(f"a Dask task failed on a worker ({type(err).__name__}: {err}); the other "
                                 f"tasks were cancelled; run the same build again to resume from {partial}"
                                 ) from err
            _copy_shard(shards[fut.key], results, planned[fut.key], partial, data_offset, n_bins, dtype)
            record([r[:3] for r in results])
            os.unlink(shards[fut.key])
    finally:
        if futures:  # after a failure the rest must not run on; the finished ones free their results
            client.cancel(futures)
        _clear_shards(shard_dir)
        with contextlib.suppress(OSError):
            shard_dir.rmdir()


def _copy_shard(shard: str, results, planned: dict[int, int], partial: str, data_offset: int, n_bins: int,
                dtype: str) -> None:
    """Copy the stored files' rows of one finished shard to their planned rows of the partial store."""
    itemsize = np.dtype(dtype).itemsize
    try:
        src = np.load(shard, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as err:
        raise BuildError(f"{shard}, written by a Dask worker, is not visible here: the workers must see "
                         f"the store's folder at the same path (a shared file system)") from err
    for item in results:
        if item[1] is None:
            continue
        i, n, first = item[0], item[2][0], item[3]
        dst = np.memmap(partial, dtype=dtype, mode="r+", offset=data_offset + planned[i] * n_bins * itemsize,
                        shape=(n, n_bins))
        dst[:] = src[first:first + n]
        dst.flush()  # the rows reach the file before record() marks them done
        del dst
    del src


def _clear_shards(shard_dir: Path) -> None:
    """Delete what a failed run left (its names carry its run id: never read again).

    A task that was already running when its build failed may still add its
    shard later; the next run of the build deletes it.
    """
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(shard_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(shard_dir / name)
