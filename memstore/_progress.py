"""One rule for progress output, for every function of the library that can take long.

The rule
--------
- Long work (``build_store``, ``verify_store``, ``import_legacy``,
  ``export_legacy``) takes ``progress: bool | None = None``.
- ``None`` (the default) shows a bar when someone is watching: standard error
  is a terminal, or the code runs in a Jupyter kernel. Scripts whose output
  goes to a log file and test runs stay quiet without saying so.
- ``True`` always shows the bar, ``False`` never does.
- Bars go to standard error, never standard output, so a command's printed
  result can be piped. Warnings go through :mod:`warnings`, diagnostics through
  :mod:`logging` (logger ``memstore.*``), never through a bar.
- The command line follows the same rule; ``--quiet`` switches bars off.
"""

from __future__ import annotations

import sys

from .errors import ParameterError


def wanted(progress: bool | None) -> bool:
    """Whether to show a bar for ``progress`` (see the module's rule)."""
    if progress is None:
        return _watched()
    if isinstance(progress, bool):
        return progress
    raise ParameterError(f"progress={progress!r} must be True, False or None (a bar when stderr is a terminal)")


def _watched() -> bool:
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def bar(*, total: int, desc: str, unit: str, progress: bool | None, initial: int = 0, **kwargs):
    """A tqdm bar on standard error that follows the rule; a disabled bar costs nothing."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not wanted(progress),
                dynamic_ncols=True, file=sys.stderr, **kwargs)


def track(items, *, desc: str, unit: str, progress: bool | None):
    """Iterate ``items`` (a sized collection) under a bar that follows the rule."""
    with bar(total=len(items), desc=desc, unit=unit, progress=progress) as b:
        for item in items:
            yield item
            b.update()
