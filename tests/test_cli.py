"""The command line dispatcher: every command explains itself."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from memstore import cli


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_help_for_every_option(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"memstore {name}" in out
    parser, _ = cli._command_parser(name)
    for action in parser._actions:
        assert action.help, f"memstore {name}: option {action.option_strings or action.dest} has no help"


def test_console_script_runs_in_a_real_process():
    done = subprocess.run(
        [sys.executable, "-m", "memstore", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("memstore ")


def test_every_public_name_resolves():
    import memstore

    for name in memstore.__all__:
        assert getattr(memstore, name) is not None, name
    assert "read_audio" in dir(memstore)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        memstore.nope  # noqa: B018


def test_a_closed_stdout_ends_a_command_without_a_traceback(demo_store):
    # found by the command-line hunt: `memstore info S | head` printed a BrokenPipeError traceback; the
    # reading end is closed before the command starts, so its first write fails on every machine
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "memstore", "info", str(demo_store)], stdout=write,
                              stderr=subprocess.PIPE, text=True, check=False, cwd=os.path.dirname(demo_store))
    finally:
        os.close(write)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_paths_a_command_cannot_write_or_that_name_nothing_are_one_line_errors(demo_root, demo_store, tmp_path,
                                                                               capsys):
    # found by the command-line hunt: tracebacks (NotADirectoryError, FileExistsError), or the working folder used
    (tmp_path / "afile").write_text("x")
    for args, why in ((["build", str(demo_root), str(tmp_path / "afile" / "s.h5"), "--quiet"], "File exists"),
                      (["export-legacy", str(demo_store), str(tmp_path / "afile")], "File exists"),
                      (["build", "", str(tmp_path / "s.h5"), "--quiet"], "audio_root='' names no folder"),
                      (["export-legacy", str(demo_store), ""], "out_dir='' names no folder")):
        assert cli.main(args) == 1, args
        err = capsys.readouterr().err
        assert err.startswith(f"memstore {args[0]}: error: ") and why in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_names_the_output_encoding_cannot_hold_are_printed_escaped(tmp_path):
    # found by the command-line hunt: PYTHONIOENCODING=ascii made `memstore info` end in UnicodeEncodeError
    from memstore.audio import write_wav
    from memstore.build import build_store

    (tmp_path / "a" / "caf\u00e9").mkdir(parents=True)
    write_wav(tmp_path / "a" / "caf\u00e9" / "\u00e9t\u00e9.wav", np.zeros(8000, np.float32), 8000)
    build_store(tmp_path / "a", tmp_path / "s.h5", workers=1, progress=False)
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    done = subprocess.run([sys.executable, "-m", "memstore", "info", str(tmp_path / "s.h5")],
                          capture_output=True, text=True, check=False, env=env, cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "caf\\xe9" in done.stdout


def test_a_broken_pipe_that_is_not_stdout_is_reported(monkeypatch, capsys):
    """Only a closed stdout ends a command without a word (a review: any BrokenPipeError did)."""
    import memstore.commands.info as info

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe", "/tmp/a-fifo")

    monkeypatch.setattr(info, "run", broken)
    assert cli.main(["info", "whatever.h5"]) == 1
    assert "memstore info: error: [Errno 32] Broken pipe: '/tmp/a-fifo'" in capsys.readouterr().err

