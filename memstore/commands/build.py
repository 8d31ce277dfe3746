"""``memstore build``: one HDF5 feature store from a folder of audio."""

from __future__ import annotations

import argparse
import sys

DESCRIPTIONS = {
    "build": (
        "Build one HDF5 feature store from a folder of audio, on every core.\n\n"
        "Files are found recursively (WAV, FLAC, MP3, OGG, AIFF, AU, CAF, W64 ...: every\n"
        "format the installed libsndfile reads; other files are counted by extension). Every\n"
        "file is either stored or listed as skipped with its reason. An interrupted\n"
        "build resumes when run again; the store appears only when complete.\n\n"
        "Defaults are the tutorial's features: 96-band mel, n_fft 1024, hop 512,\n"
        "symmetric Hann window, magnitude / sqrt(n_fft). --librosa switches to\n"
        "librosa's conventions (periodic Hann, centred frames, power 2)."
    )
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("audio_root", metavar="AUDIO_ROOT", help="folder of audio files (searched recursively)")
    parser.add_argument("store", metavar="STORE.h5",
                        help="store file to create; a store already there is replaced once the new one is "
                             "complete (--append adds to it instead)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes that extract (default: all cores; 1 = this process only; N > 1 = this "
                             "process and N-1 spawned workers; at most 4 per core)")
    parser.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                        help="resample every file to this rate, at most 2,000,000 (default: the most common rate)")
    parser.add_argument("--labels", default="folder", metavar="{folder,irmas,none,PATH}",
                        help="folder: first folder under the root is the class; irmas: IRMAS "
                             "[cls] tags and .txt files; none: no labels; PATH: a .csv, .tsv or .jsonl "
                             "table with file_name and label columns (Hugging Face AudioFolder), looked up in "
                             "AUDIO_ROOT first, then here (default: folder)")
    parser.add_argument("--file-column", default="file_name", metavar="NAME",
                        help="with --labels PATH: the column of file names (default: file_name)")
    parser.add_argument("--label-column", default="label", metavar="NAME",
                        help="with --labels PATH: the column of labels (default: label)")
    parser.add_argument("--label-sep", default=";", metavar="SEP",
                        help="with --labels PATH: separator of several labels in one cell (default: ;)")
    parser.add_argument("--relative-to", default=None, metavar="DIR",
                        help="with --labels PATH: folder the file names are relative to (default: the table's)")
    fixed = parser.add_mutually_exclusive_group()
    fixed.add_argument("--classes-from", default=None, metavar="TRAIN.h5",
                       help="use the class list (and its order) of an existing store, so label columns line up "
                            "with it; files with other labels are skipped")
    fixed.add_argument("--classes", default=None, metavar="A,B,C",
                       help="fix the class list and its order (comma-separated); files with other labels "
                            "are skipped")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="feature storage type (default: float32)")
    parser.add_argument("--strict", action="store_true",
                        help="fail before writing anything if any file would be skipped")
    parser.add_argument("--no-resume", action="store_true",
                        help="discard an interrupted build's .partial file instead of resuming it")
    parser.add_argument("--append", action="store_true",
                        help="add the folder's new files to an existing store as a new segment")
    parser.add_argument("--spectrogram", action="store_true",
                        help="store the magnitude spectrogram (n_fft/2+1 bins) instead of mel bands")
    parser.add_argument("--n-mels", type=int, default=None, metavar="N", help="mel bands (default: 96)")
    parser.add_argument("--n-fft", type=int, default=1024, metavar="N", help="FFT size (default: 1024; at most 131072)")
    parser.add_argument("--hop", type=int, default=512, metavar="N",
                        help="hop in samples (default: 512; at most 2**30)")
    parser.add_argument("--fmin", type=float, default=None, metavar="HZ", help="lowest mel frequency (default: 0)")
    parser.add_argument("--fmax", type=float, default=None, metavar="HZ",
                        help="highest mel frequency (default: half the sample rate)")
    parser.add_argument("--librosa", action="store_true",
                        help="librosa conventions: periodic Hann, centred frames, power 2, no sqrt(n_fft)")
    parser.add_argument("--power", type=float, default=None, choices=[1.0, 2.0],
                        help="1 magnitude, 2 power (default: 1, or 2 with --librosa)")
    parser.add_argument("--log", choices=["none", "log10p", "db"], default="none",
                        help="store log10(1 + 100 x) or decibels instead of linear values (default: none)")
    parser.add_argument("--dask", default=None, metavar="ADDRESS",
                        help="run extraction on a Dask cluster: tcp://HOST:PORT (a scheduler), or local[:N] for "
                             "a LocalCluster of N worker processes, default 2, at most 4 per core (needs "
                             "memstore[dask]); not with --workers")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (shown when stderr is a terminal)")


def _transform(args):
    from ..errors import ParameterError
    from ..features import MelSpectrogram, Spectrogram

    settings = dict(n_fft=args.n_fft, hop=args.hop, log=None if args.log == "none" else args.log)
    if args.librosa:
        settings.update(window="hann", framing="center", magnitude_norm="none", power=2.0)
    if args.power is not None:
        settings["power"] = args.power
    mel = {"--n-mels": args.n_mels, "--fmin": args.fmin, "--fmax": args.fmax}
    if args.spectrogram:
        given = [name for name, value in mel.items() if value is not None]
        if given:  # they were ignored without a word
            raise ParameterError(f"{', '.join(given)} set mel bands, and --spectrogram stores FFT bins: drop one")
        return Spectrogram(**settings)
    return MelSpectrogram(n_mels=96 if args.n_mels is None else args.n_mels,
                          fmin=0.0 if args.fmin is None else args.fmin, fmax=args.fmax, **settings)


def _labels(args):
    from ..errors import ParameterError
    from ..labeltable import LabelTable, find_table

    if args.labels in ("folder", "irmas", "none"):
        table_options = (args.file_column != "file_name" or args.label_column != "label" or args.label_sep != ";"
                         or args.relative_to is not None)
        if table_options:
            raise ParameterError(f"--file-column, --label-column, --label-sep and --relative-to need --labels PATH, "
                                 f"not --labels {args.labels}")
        return args.labels
    return LabelTable(find_table(args.labels, args.audio_root), file_column=args.file_column,
                      label_column=args.label_column, sep=args.label_sep, relative_to=args.relative_to)


def _classes(args):
    if args.classes_from is not None:
        from ..store import open_store

        with open_store(args.classes_from) as store:
            return list(store.classes)
    if args.classes is not None:
        return [c.strip() for c in args.classes.split(",")]  # build_store names an empty or repeated one
    return None


def run(args: argparse.Namespace) -> int:
    from ..build import build_store

    transform = _transform(args)
    labels = _labels(args)
    classes = _classes(args)
    client = cluster = None
    if args.dask is not None:
        from ..distributed import connect
        from ..errors import ParameterError

        if args.workers is not None:  # it was ignored without a word: the cluster's workers extract
            raise ParameterError("--workers sets this machine's processes; with --dask the cluster's workers "
                                 "extract (local:N sets their number)")

        client, cluster = connect(args.dask)
    try:
        report = build_store(
            args.audio_root, args.store, transform=transform, labels=labels, workers=args.workers,
            sample_rate=args.sample_rate, dtype=args.dtype, strict=args.strict,
            resume=not args.no_resume, mode="append" if args.append else "create",
            executor=client, progress=False if args.quiet else None, classes=classes,
        )
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    speed = report.audio_seconds / max(report.wall_seconds, 1e-9)
    print(f"{args.store}: {report.stored} file(s) stored, {len(report.skipped)} skipped; "
          f"{report.audio_seconds / 3600:.2f} h of audio at {report.target_rate} Hz, {report.frames} frames, "
          f"{report.bytes / 1e6:.1f} MB in {report.wall_seconds:.1f} s ({speed:.0f}x real time)")
    for note in report.notes:
        print(f"  note: {note}")
    for path, why in report.skipped[:20]:
        print(f"  skipped {path}: {why}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more (see 'memstore info {args.store}')", file=sys.stderr)
    return 0
