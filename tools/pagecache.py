"""How a warm file's page cache maps: the share of it in 2 MB pages (Linux), for the benchmarks' reports.

The in-memory path gathers from the store's memory map, and its speed depends
on how the kernel holds the file: cached in large folios, the map uses 2 MB
page-table entries and the gather misses the TLB far less (measured: 355-390k
against 186-200k blocks/s for two copies of one store, ``docs/performance.md``).
A file written or read in large pieces tends to be cached that way, one filled
by small reads does not. The benchmarks print this share beside the in-memory
rates, so two runs can be told apart.
"""

from __future__ import annotations

import re

import numpy as np


def huge_mapped_share(path) -> float | None:
    """The part of ``path``'s bytes that a fresh read-only map of it maps in 2 MB pages, after touching them all.

    Touching reads the file once (from the page cache when it is warm). None where
    ``/proc/self/smaps`` does not tell (not Linux, or no ``FilePmdMapped`` field).
    """
    m = np.memmap(path, np.uint8, mode="r")
    try:
        int(m[::4096].sum())  # every page once
        start = m.ctypes.data
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return None
    finally:
        del m
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        lo, hi = (int(x, 16) for x in block.split(None, 1)[0].split("-"))
        if lo <= start < hi:
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", block, re.M))
            if "FilePmdMapped" not in fields or not int(fields.get("Rss", 0)):
                return None
            return int(fields["FilePmdMapped"]) / int(fields["Rss"])
    return None
