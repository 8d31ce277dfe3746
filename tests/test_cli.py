"""The command line dispatcher: every command explains itself."""

from __future__ import annotations

import subprocess
import sys

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
