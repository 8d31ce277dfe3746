"""The ``memstore`` command line.

Each sub-command lives in its own module under :mod:`memstore.commands`,
exposing ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only
when their command runs, so ``memstore --help`` is quick and a missing
optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .errors import MemstoreError

# command name -> module under memstore.commands (the order is the --help order)
COMMANDS = {
    "demo": "demo",
    "build": "build",
    "info": "info",
    "show": "show",
    "verify": "verify",
    "bench": "bench",
    "import-legacy": "legacy",
    "export-legacy": "legacy",
}

_SUMMARIES = {
    "demo": "synthesize a labelled demo folder, build a store, stream an epoch",
    "build": "build one HDF5 feature store from a folder of audio, in parallel",
    "info": "summarise a store: files, frames, classes, configuration, statistics",
    "show": "plot spectrograms and class/length histograms of a store (needs [plot])",
    "verify": "recompute checksums and check a store's index; non-zero exit on corruption",
    "bench": "measure batch throughput and shuffle quality of a store",
    "import-legacy": "read the tutorial's .data/.shape feature files into a store",
    "export-legacy": "write a store back out as the tutorial's .data/.shape files",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memstore",
        description=(
            "Turn folders of audio into one out-of-core HDF5 feature store and "
            "stream shuffled training batches from it under a memory budget. "
            "Run 'memstore COMMAND --help' for the options of a command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"memstore {_version()}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="log more (-v: info, -vv: debug)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        sub.add_parser(name, help=_SUMMARIES[name], add_help=False)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module = importlib.import_module(f"memstore.commands.{COMMANDS[name]}")
    parser = argparse.ArgumentParser(
        prog=f"memstore {name}",
        description=getattr(module, "DESCRIPTIONS", {}).get(name, _SUMMARIES[name]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser, name)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # a file name the terminal's encoding cannot show (PYTHONIOENCODING=ascii, a C locale) is printed
    # escaped, not a UnicodeEncodeError traceback after the work is done
    errors = getattr(sys.stdout, "errors", None)
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return _main(argv)
    finally:  # a caller that runs main() in its own process keeps its stdout as it was
        with contextlib.suppress(AttributeError, ValueError, TypeError, OSError):
            sys.stdout.reconfigure(errors=errors)


def _main(argv: list[str]) -> int:
    top = _parser()
    # split global options from the sub-command and its own arguments
    split = next((i for i, a in enumerate(argv) if a in COMMANDS), None)
    if split is None:
        top.parse_args(argv)  # handles --help / --version
        top.print_help()
        return 2
    top_args = top.parse_args(argv[: split + 1])
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(top_args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    name = argv[split]
    parser, module = _command_parser(name)
    args = parser.parse_args(argv[split + 1:])
    args.command = name
    try:
        status = int(module.run(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except MemstoreError as err:
        print(f"memstore {name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"memstore {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as err:
        if _stdout_closed():  # its reader went away (`| head`): nothing more to tell it, no traceback
            _drop_stdout()
            return 1
        print(f"memstore {name}: error: {err}", file=sys.stderr)  # another pipe: a FIFO given as a path
        return 1
    except OSError as err:  # a path the command cannot write or make: a read-only folder, a file as a folder
        logging.getLogger(__name__).debug("memstore %s failed", name, exc_info=True)  # -vv shows where
        print(f"memstore {name}: error: {err}", file=sys.stderr)
        return 1


def _stdout_closed() -> bool:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    return False


def _drop_stdout() -> None:
    """Point stdout at the null device, so that flushing it at exit does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture): nothing buffered to lose
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
