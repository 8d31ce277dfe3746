"""Shared argument checks: each names the bad value and the rule, as in ``hop=0 must be a positive integer``.

``bool`` is refused wherever an integer is asked for (``True`` is an ``int``
in Python, and ``batch_size=True`` is always a mistake). numpy integers are
accepted and returned as plain ``int``.
"""

from __future__ import annotations

import numpy as np

from .errors import ParameterError

__all__ = ["positive_int", "int_at_least", "int_up_to", "is_int", "choice", "flag"]


def is_int(value) -> bool:
    """True for Python and numpy integers, False for ``bool`` and everything else."""
    return not isinstance(value, bool | np.bool_) and isinstance(value, int | np.integer)


def positive_int(name: str, value) -> int:
    """``value`` as an ``int``, or ``ParameterError("name=value must be a positive integer")``."""
    if not is_int(value) or value <= 0:
        raise ParameterError(f"{name}={value!r} must be a positive integer")
    return int(value)


def int_at_least(name: str, value, low: int) -> int:
    """``value`` as an ``int`` when it is an integer ``>= low``; otherwise a ``ParameterError``."""
    if not is_int(value) or value < low:
        raise ParameterError(f"{name}={value!r} must be an integer >= {low}")
    return int(value)


def int_up_to(name: str, value, high: int, why: str) -> int:
    """``value`` as an ``int`` in ``[1, high]``; otherwise a ``ParameterError`` that gives ``why`` for the bound."""
    value = positive_int(name, value)
    if value > high:
        raise ParameterError(f"{name}={value!r} must be at most {high:,} ({why})")
    return value


def choice(name: str, value, allowed: tuple):
    """``value`` when it is one of ``allowed``; otherwise a ``ParameterError``.

    ``allowed`` holds strings, ``None`` and ``False``/``True``. The flags and
    ``None`` match by identity, so ``0`` is not ``False``; strings match by
    equality.
    """
    for a in allowed:
        if value is a or (isinstance(a, str) and isinstance(value, str) and value == a):
            return value
    raise ParameterError(f"{name}={value!r} must be one of {allowed}")


def flag(name: str, value) -> bool:
    """``value`` as a ``bool`` when it is ``True`` or ``False``; otherwise a ``ParameterError``."""
    if not isinstance(value, bool | np.bool_):
        raise ParameterError(f"{name}={value!r} must be True or False")
    return bool(value)
