"""``memstore verify``: recompute checksums; exit 1 on any corruption."""

from __future__ import annotations

import argparse

DESCRIPTIONS = {"verify": (
    "Recompute the crc32 of every file's feature rows and compare it with the index,\n"
    "and check the index, labels and statistics for consistency. Corrupt files are\n"
    "reported by their source path. Exit status: 0 clean, 1 corrupt or unreadable.")}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("store", metavar="STORE", help="store file to check")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (shown when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    from ..verify import verify_store

    report = verify_store(args.store, progress=False if args.quiet else None)
    if report.ok:
        print(f"{args.store}: OK, {report.files} file(s) verified")
        return 0
    print(f"{args.store}: {len(report.problems)} problem(s)")
    for where, what in report.problems:
        print(f"  {where}: {what}")
    return 1
