"""``memstore import-legacy`` / ``export-legacy``: the tutorial's .data/.shape files."""

from __future__ import annotations

import argparse

DESCRIPTIONS = {
    "import-legacy": (
        "Read a folder of the tutorial's feature files into a store: NAME<suffix-in>.data\n"
        "(raw float64 from np.tofile) with NAME<suffix-in>.shape ('#d0<TAB>d1'), and the\n"
        "class index (0 to 65535) in NAME<suffix-out>.data; a file without a label file is\n"
        "stored unlabelled, and a .shape without its .data is an error. The features are\n"
        "recorded as made with the tutorial's settings (96-band mel; 513 bins = magnitude\n"
        "spectrogram)."),
    "export-legacy": (
        "Write a store back out as the tutorial's .data/.shape files, one pair per file,\n"
        "plus a label file per labelled file. export(import(dir)) gives equal bytes."),
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "import-legacy":
        parser.add_argument("feature_dir", metavar="FEATURE_DIR", help="folder of .data/.shape files")
        parser.add_argument("store", metavar="STORE",
                            help="store file to write; a store already there is replaced once the new one is complete")
        parser.add_argument("--sample-rate", type=int, default=44100,
                            help="audio rate the features were computed at (default: 44100, IRMAS)")
        parser.add_argument("--allow-rounding", action="store_true",
                            help="accept float64 values that float32 cannot hold exactly (rounded, with a warning)")
    else:
        parser.add_argument("store", metavar="STORE", help="store file to read")
        parser.add_argument("out_dir", metavar="OUT_DIR",
                            help="folder to write the .data/.shape files into (made if missing); files of the same "
                                 "names are replaced, and an interrupted export leaves the files written so far")
    parser.add_argument("--suffix-in", default="_mel_", help="suffix of the feature files (default: _mel_)")
    parser.add_argument("--suffix-out", default="_label_", help="suffix of the label files (default: _label_)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (shown when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    from ..legacy import export_legacy, import_legacy

    if args.command == "import-legacy":
        report = import_legacy(args.feature_dir, args.store, suffix_in=args.suffix_in,
                               suffix_out=args.suffix_out, allow_rounding=args.allow_rounding,
                               sample_rate=args.sample_rate, progress=False if args.quiet else None)
        print(f"{args.store}: imported {report.stored} file(s), {report.frames} frames")
    else:
        n = export_legacy(args.store, args.out_dir, suffix_in=args.suffix_in, suffix_out=args.suffix_out,
                          progress=False if args.quiet else None)
        print(f"{args.out_dir}: wrote {n} feature file(s)")
    return 0
