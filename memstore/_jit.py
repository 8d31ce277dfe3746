"""The JIT switch: ``njit`` for every numba kernel in memstore, and ``MEMSTORE_DISABLE_JIT``.

Set ``MEMSTORE_DISABLE_JIT=1`` (or ``true``, ``yes``) in the environment
before memstore is imported to run every kernel — the batch slicer's and the
spectral ones — as the plain Python it is written in, for tests and
debugging. The decorated function then keeps its own source, and
``f.py_func`` is ``f`` itself, as with a numba dispatcher, so code that
compares a kernel with its Python run works either way.

The switch is read once, at import: the kernels are decorated then.
"""

from __future__ import annotations

import os

__all__ = ["JIT", "njit"]

#: False when ``MEMSTORE_DISABLE_JIT`` is set: the kernels run interpreted.
JIT = os.environ.get("MEMSTORE_DISABLE_JIT", "") not in ("1", "true", "yes")

if JIT:
    from numba import njit
else:  # pragma: no cover - exercised by a subprocess test
    def njit(*args, **kwargs):
        """Stand-in for ``numba.njit(...)``: the function itself, with ``py_func`` pointing to it."""
        def wrap(f):
            f.py_func = f
            return f
        return wrap
