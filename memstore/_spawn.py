"""How a build's worker processes start: without the caller's main module, or behind its main guard.

``multiprocessing``'s spawn makes every child import the caller's main
script again (as ``__mp_main__``) before it does any work: a script's own
imports (torch: 0.6 s of CPU and 200 MB per worker, measured) and
module-level code ran in every worker, and a script that calls
``build_store`` at module level, outside ``if __name__ == "__main__":``, had
every worker start the build again. A :class:`WorkerPool` starts its
workers with spawn's own launch minus the main module
(:func:`_launch_without_main`: CPython's function, given a private
``spawn`` whose preparation data name no main module), so neither happens
and a build needs no guard. Where that launch is not available
(:data:`STARTS_WITHOUT_MAIN` is False: not POSIX, or a Python whose spawn
launches otherwise), workers import the main script again and the guard is
checked:
:func:`check_main_guard` walks the stack (and the main thread's) to the
module-level frame of a file-backed ``__main__`` and asks :mod:`ast` whether
the line running there sits inside an ``if __name__ == "__main__":`` block,
before any worker starts. Code without a file (a notebook, ``python -c``,
the interactive prompt) and ``python -m pkg`` (a package's ``__main__``,
which spawn never re-runs) always pass; a script piped to ``python -`` (file
name ``<stdin>``, which spawn cannot import) is refused up front; when the
check cannot decide, a worker that calls ``build_store`` while it is still
starting raises the same advice, and the parent, seeing workers die before
they did any work, says so too. Whatever the start, a build in any process
that multiprocessing is still starting is refused, even with ``workers=1``
(a child of another library re-running an unguarded serial build would
write the same files as its siblings).

:mod:`memstore._workers` starts its pool with :data:`STARTS_WITHOUT_MAIN`
and :class:`_WorkerContext` from here; the flag is read as this module's
attribute, so a test or a benchmark that sets it to False here gets
``multiprocessing``'s own spawn, main module and guard check and all.
"""

from __future__ import annotations

import ast
import multiprocessing
import multiprocessing.context
import os
import sys
import threading
import tokenize
import types

from .errors import BuildError

__all__ = ["check_main_guard", "STARTS_WITHOUT_MAIN", "GUARD_ADVICE"]

GUARD_ADVICE = ('put the call under `if __name__ == "__main__":` (spawned worker processes import the '
                'main script again), or use workers=1')


# --- the main guard ------------------------------------------------------------------------

def check_main_guard(*, spawns: bool) -> None:
    """Raise :class:`BuildError` if worker processes would run the caller's build again, or cannot start.

    Called by every build; ``spawns`` says whether it is about to start a local
    pool. In a process that multiprocessing is still starting, any build is
    the re-run of a main script's module-level code (a sibling process would
    run the same build on the same files), and is refused. Otherwise it passes
    when :data:`STARTS_WITHOUT_MAIN` (workers never import the main module);
    else, with ``spawns``: passes when spawn does not re-import ``__main__`` (no file, or
    a package's ``__main__``), when the module-level line that led here is
    inside ``if __name__ == "__main__":``, and when that cannot be decided.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise BuildError("build_store was called while a worker process was starting, that is, by the "
                         f"module-level code of the main script, which every worker runs again: {GUARD_ADVICE}")
    if not spawns or STARTS_WITHOUT_MAIN:
        return
    main = sys.modules.get("__main__")
    path = _reimported_path(main)
    if path is None:
        return
    if not os.path.isfile(path):
        raise BuildError(f"the main script {getattr(main, '__file__', '')!r} is not a file (read from stdin?), "
                         "and spawned worker processes must import it again: save it to a file and put the "
                         "call under `if __name__ == \"__main__\":`, run it with python -c, or use workers=1")
    where = _unguarded_main_line(main)
    if where is not None:
        raise BuildError(f"build_store with worker processes was called at module level of {where[0]} "
                         f"(line {where[1]}) without a main guard, so every worker would run it again: "
                         f"{GUARD_ADVICE}")


def _reimported_path(main) -> str | None:
    """The file a spawned worker imports again as ``__mp_main__``, as :mod:`multiprocessing.spawn` decides."""
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    if spec is not None:  # run with -m: re-imported by name, except a package's __main__
        if spec.name == "__main__" or spec.name.endswith(".__main__"):
            return None
        return getattr(main, "__file__", None) or None
    path = getattr(main, "__file__", None)
    if not path:
        return None  # a notebook, python -c, the interactive prompt: nothing to re-import
    if os.path.splitext(os.path.basename(path))[0] == "ipython":
        return None
    original = multiprocessing.process.ORIGINAL_DIR
    return path if os.path.isabs(path) or original is None else os.path.join(original, path)


def _unguarded_main_line(main) -> tuple[str, int] | None:
    """``(file, line)`` of the unguarded module-level line of ``__main__`` now running, or None."""
    stacks = [sys._getframe(1)]
    if threading.current_thread() is not threading.main_thread():
        main_frame = sys._current_frames().get(threading.main_thread().ident)
        if main_frame is not None:
            stacks.append(main_frame)
    for frame in stacks:
        while frame is not None:
            if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
                guarded = _is_guarded(frame.f_code.co_filename, frame.f_lineno)
                if guarded is False:
                    return frame.f_code.co_filename, frame.f_lineno
            frame = frame.f_back
    return None


def _is_guarded(filename: str, lineno: int) -> bool | None:
    """Whether ``lineno`` of a module's source is inside ``if __name__ == "__main__":``; None if unknown."""
    try:
        with tokenize.open(filename) as f:
            tree = ast.parse(f.read(), filename)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.body:
            if node.body[0].lineno <= lineno <= (node.body[-1].end_lineno or node.body[-1].lineno):
                return True
    return False


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = (test.left, test.comparators[0])
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


# --- a worker's start, without the caller's main module ------------------------------------

class _SpawnWithoutMain:
    """``multiprocessing.spawn`` as a worker's start sees it: its preparation data name no main module.

    Everything else is the real module's. Without the ``init_main*`` entries
    (3.11-3.13: ``init_main_from_path``, ``init_main_from_name``), the child
    never runs the caller's main script or module again as ``__mp_main__``.
    """

    def __init__(self, spawn):
        self._spawn = spawn

    def __getattr__(self, name):
        return getattr(self._spawn, name)

    def get_preparation_data(self, name):
        data = self._spawn.get_preparation_data(name)
        for key in [k for k in data if k.startswith("init_main")]:  # any way a version may have to name it
            del data[key]
        return data


def _launch_without_main():
    """Spawn's own launch (``popen_spawn_posix.Popen._launch``) reading ``spawn`` from a private namespace.

    The function is CPython's, byte code and all, given a copy of its module's
    globals in which ``spawn`` is :class:`_SpawnWithoutMain`: nothing of
    ``multiprocessing`` is changed for anyone else, and whatever else a
    version's launch does, it still does. None where this Python does not
    launch that way (not POSIX, no ``popen_spawn_posix``, or a launch that
    does not take its preparation data from ``spawn``): the pool then spawns
    as ``multiprocessing`` does, main module and all, and the main guard is
    checked (:func:`check_main_guard`).
    """
    if os.name != "posix":  # popen_spawn_posix may import on Windows, but its launch cannot run there
        return None
    try:
        from multiprocessing import popen_spawn_posix, spawn
    except ImportError:
        return None
    launch = getattr(popen_spawn_posix.Popen, "_launch", None)
    if not (isinstance(launch, types.FunctionType) and launch.__globals__.get("spawn") is spawn
            and "get_preparation_data" in launch.__code__.co_names and callable(spawn.get_preparation_data)):
        return None
    namespace = dict(launch.__globals__, spawn=_SpawnWithoutMain(spawn))
    copy = types.FunctionType(launch.__code__, namespace, launch.__name__, launch.__defaults__, launch.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = launch.__kwdefaults__, launch.__qualname__
    return copy


_LAUNCH = _launch_without_main()
#: whether a :class:`WorkerPool`'s workers start without importing the caller's main module again (the pool's
#: own spawn start, :func:`_launch_without_main`); False where only ``multiprocessing``'s spawn is available,
#: and then a script must keep its build under ``if __name__ == "__main__":`` (:func:`check_main_guard`)
STARTS_WITHOUT_MAIN = _LAUNCH is not None

if STARTS_WITHOUT_MAIN:
    from multiprocessing import popen_spawn_posix as _popen_spawn_posix

    class _WorkerPopen(_popen_spawn_posix.Popen):
        _launch = _LAUNCH

    class _WorkerProcess(multiprocessing.context.SpawnProcess):
        @staticmethod
        def _Popen(process_obj):
            return _WorkerPopen(process_obj)

    class _WorkerContext(multiprocessing.context.SpawnContext):
        """The spawn context, whose processes start without the caller's main module."""

        Process = _WorkerProcess
