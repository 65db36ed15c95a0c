"""`--help` names what each option takes (`--db-image IMAGE`, `--port PORT`), never Click's
`<str>` or `<int range>`."""

from __future__ import annotations

import re

import pytest

from conftest import run_cli

COMMANDS = [["scan"], ["up"], ["down"], ["status"], ["bundle", "save"], ["bundle", "load"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_real_metavars(command):
    result = run_cli([*command, "--help"])
    assert result.code == 0, result.stderr
    assert not re.search(r"-[\w-]+ (<[\w|]+( range)?>|TEXT|INTEGER|FLOAT)", result.stdout), result.stdout


def test_scan_help_names_the_values():
    text = run_cli(["scan", "--help"]).stdout
    for option in (
        "--port PORT",
        "--db-image IMAGE",
        "--clair-image IMAGE",
        "--clair-timeout SECONDS",
        "--ready-timeout SECONDS",
        "--max-db-age DAYS",
        "--log FILE",
        "--pull WHEN",
        "--network MODE",
        "--output FORMAT[=FILE]",
    ):
        assert option in text, option
