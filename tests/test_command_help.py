"""Every command's --help prints its usage and exits 0: argparse formats help text with %, so a stray one in a
help string turns `--help` into a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .stack import ROOT

COMMANDS = ["serve", "panels", "demo", "rebuild-rollups", "schema"]


def test_the_top_level_help_lists_every_command():
    shown = subprocess.run([sys.executable, "-m", "ingest", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert all(command in shown.stdout for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_prints_its_usage(command):
    shown = subprocess.run([sys.executable, "-m", "ingest", command, "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-500:]
    assert shown.stdout.startswith(f"usage: python -m ingest {command}") and "Traceback" not in shown.stderr
