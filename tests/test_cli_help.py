import subprocess
import sys

import pytest

from search.cli import build_parser

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_top_level_help_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "search.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: mmsa {command}" in out
