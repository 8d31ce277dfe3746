"""``memstore show``: spectrogram images and histograms of a store (needs memstore[plot])."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTIONS = {"show": (
    "Draw spectrograms of selected files the way the tutorial plots them\n"
    "(log10(1 + 100 x), time on x in seconds, frequency on y in Hz, origin lower),\n"
    "plus a histogram of classes and one of file lengths, into a PNG file.\n"
    "Needs matplotlib: pip install 'memstore[plot]'.")}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("store", metavar="STORE", help="store file")
    sel = parser.add_mutually_exclusive_group()
    sel.add_argument("--file", type=int, default=None, metavar="N", help="draw file number N")
    sel.add_argument("--path", default=None, metavar="GLOB", help="draw files whose source path matches GLOB")
    parser.add_argument("--class", dest="cls", default=None, metavar="C", help="only files of class C")
    parser.add_argument("--limit", type=int, default=4, metavar="K", help="draw at most K files (default: 4)")
    parser.add_argument("-o", "--output", default=None, metavar="OUT.png",
                        help="image to write (default: STORE's name with .png)")
    parser.add_argument("--dpi", type=int, default=100, help="image resolution (default: 100)")


def run(args: argparse.Namespace) -> int:
    from ..errors import require
    from ..plot import plot_store, select_files
    from ..store import open_store

    require("matplotlib", "plot")
    out = Path(args.output) if args.output is not None else Path(args.store).with_suffix(".png")  # '' refused
    with open_store(args.store) as store:
        files = select_files(store, file=args.file, path=args.path, cls=args.cls, limit=args.limit)
        out = plot_store(store, out, files, dpi=args.dpi)
    print(f"wrote {out} ({len(files)} file(s))")
    return 0
