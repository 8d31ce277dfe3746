"""The library's one progress rule (memstore._progress): bars on stderr when someone watches, or when asked."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import pytest

from memstore import _progress
from memstore.errors import ParameterError
from memstore.legacy import export_legacy, import_legacy


def test_explicit_values_win_and_bad_values_are_refused(capsys):
    assert _progress.wanted(True) and not _progress.wanted(False)
    with pytest.raises(ParameterError, match="True, False or None"):
        _progress.wanted("yes")
    assert list(_progress.track([1, 2, 3], desc="counting", unit="x", progress=True)) == [1, 2, 3]
    err = capsys.readouterr()
    assert "counting" in err.err and "counting" not in err.out
    list(_progress.track([1, 2], desc="silent", unit="x", progress=False))
    assert "silent" not in capsys.readouterr().err


def test_default_is_quiet_when_stderr_is_not_a_terminal(demo_store, tmp_path, capsys):
    """pytest captures stderr (not a terminal): the None default shows nothing, for every long function."""
    assert not sys.stderr.isatty()
    assert not _progress.wanted(None)
    n = export_legacy(demo_store, tmp_path / "legacy")
    import_legacy(tmp_path / "legacy", tmp_path / "back.h5")
    err = capsys.readouterr().err
    assert n == 18 and "exporting" not in err and "importing" not in err
    export_legacy(demo_store, tmp_path / "again", progress=True)
    assert "exporting" in capsys.readouterr().err


def _on_a_terminal(argv) -> tuple[int, str, bytes]:
    """Run ``memstore ARGV`` with stderr on a pseudo-terminal read by a thread: (exit code, stdout, terminal bytes)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    seen = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the other end is closed and everything was read
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "memstore", *argv], stdout=subprocess.PIPE, stderr=child,
                              text=True, timeout=120)
    finally:
        os.close(child)
        reader.join(timeout=30)
        os.close(main)
    return proc.returncode, proc.stdout, bytes(seen)


def test_command_shows_a_bar_on_a_terminal_and_none_in_a_pipe_or_with_quiet(demo_store):
    code, out, seen = _on_a_terminal(["verify", str(demo_store)])
    assert code == 0 and "OK" in out and b"verifying" in seen, seen[-500:]
    proc = subprocess.run([sys.executable, "-m", "memstore", "verify", str(demo_store)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout and "verifying" not in proc.stderr
    code, out, seen = _on_a_terminal(["verify", "--quiet", str(demo_store)])
    assert code == 0 and "OK" in out and b"verifying" not in seen
