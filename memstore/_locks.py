"""The locks of a store being written: ``<store>.lock`` for the whole write, and HDF5's own.

:class:`StoreLock` makes one writer per store; :func:`open_h5` tells a
conflict on HDF5's lock of a file as another build writing it, after waiting
out the short conflicts a forked process causes.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import h5py

from .errors import BuildError

__all__ = ["LOCK_RETRY_SECONDS", "StoreLock", "open_h5"]

#: how long a lock conflict on a file this writer owns may last before it is reported, in seconds
LOCK_RETRY_SECONDS = 2.0


def open_h5(path: Path, mode: str, **kwargs) -> h5py.File:
    """``h5py.File``, with HDF5's lock conflict told as another build writing the file.

    A conflict is retried for :data:`LOCK_RETRY_SECONDS` first: a process
    forked by another thread of this process (a second build's workers, any
    ``subprocess``) holds a copy of our last HDF5 handle, and so its lock,
    from its fork until it closes its descriptors just before ``exec``.
    """
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        try:
            return h5py.File(path, mode, **kwargs)
        except BlockingIOError as err:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise BuildError(f"another build is writing {path} (HDF5 cannot lock it: {err}); wait for it to "
                             f"finish and run this build again") from err


class StoreLock:
    """Exclusive lock ``<store>.lock`` held for a whole build or append of that store.

    ``flock`` on a lock file of its own, not on the store or its partial file:
    HDF5 takes ``flock`` locks on those itself, and they are replaced by
    rename. The lock dies with its process, so a killed build leaves no stale
    lock; the file is removed on release, and a taker checks that the file it
    locked is still the one at the path (else a releaser removed it first).
    """

    def __init__(self, store_path: Path):
        self.store_path = store_path
        self.path = store_path.with_name(store_path.name + ".lock")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                os.close(fd)
                raise BuildError(f"another build is writing {self.store_path} (it holds {self.path}); wait "
                                 f"for it to finish and run this build again") from err
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
