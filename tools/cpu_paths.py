"""Print the other SIMD paths this CPU can run, one per line: ``<label> <NPY_DISABLE_CPU_FEATURES value>``.

numpy compiles several versions of its float kernels (SSE4.2 baseline, AVX2 as
``X86_V3``, AVX-512 as ``X86_V4`` and newer groups) and picks the best one the
CPU has at import. The same code can therefore give results one ulp apart on two
machines. ``.ci/run`` runs the suite once with numpy's choice, then once for
every line printed here, with ``NPY_DISABLE_CPU_FEATURES`` set to that value
(and numba told to generate code for a generic CPU), so a test that holds on one
SIMD path only fails here rather than on a user's machine.

Paths printed, where the CPU has more than the baseline:

- ``avx2``: only when the CPU has AVX-512 — every dispatched target above
  ``X86_V3`` switched off, the path of most laptops and CI runners;
- ``baseline``: every dispatched target switched off (numpy's compile-time
  baseline only).

Usage: ``python tools/cpu_paths.py`` (no arguments). Prints nothing where the
CPU has nothing above numpy's baseline.
"""

from __future__ import annotations

import sys


def supported_targets() -> list[str]:
    """numpy's dispatched SIMD targets that this CPU has (and are not switched off), lowest first."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]


def other_paths() -> list[tuple[str, str]]:
    """(label, value for NPY_DISABLE_CPU_FEATURES) for each SIMD path besides numpy's default on this CPU."""
    supported = supported_targets()
    paths = []
    if "X86_V3" in supported and len(supported) > supported.index("X86_V3") + 1:
        paths.append(("avx2", " ".join(supported[supported.index("X86_V3") + 1:])))
    if supported:
        paths.append(("baseline", " ".join(supported)))
    return paths


def main() -> int:
    if len(sys.argv) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    for label, disable in other_paths():
        print(label, disable)
    return 0


if __name__ == "__main__":
    sys.exit(main())
