"""Exceptions raised by memstore.

Every exception derives from :class:`MemstoreError`, and each subclass also
inherits the built-in exception a caller would naturally catch, so
``except ValueError`` keeps working for code that does not know memstore.
"""

from __future__ import annotations

__all__ = [
    "MemstoreError",
    "ParameterError",
    "AudioDecodeError",
    "StoreFormatError",
    "BuildError",
    "MissingDependencyError",
]


class MemstoreError(Exception):
    """Root of every error memstore raises on purpose."""


class ParameterError(MemstoreError, ValueError):
    """An argument has a bad value; the message names the value and the rule."""


class AudioDecodeError(MemstoreError, OSError):
    """An audio file cannot be read; the message names the file and the reason."""


class StoreFormatError(MemstoreError, OSError):
    """A store file is missing, half-written, corrupt or of another format version."""


class BuildError(MemstoreError, RuntimeError):
    """A store build cannot go on (strict mode, no input files, a worker failure)."""


class MissingDependencyError(MemstoreError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require(module: str, extra: str):
    """Import an optional dependency or raise an error naming the extra.

    Parameters
    ----------
    module : str
        Importable module name, e.g. ``"matplotlib.pyplot"``.
    extra : str
        The ``pip install 'memstore[extra]'`` extra that provides it.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{module!r} is not installed; install it with "
            f"pip install 'memstore[{extra}]'"
        ) from err
