"""The README's promises: CI runs the README's test command, and the Quickstart commands are real."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, re.S)


def test_quickstart_has_one_run_command_and_one_test_command():
    run, test = _quickstart_commands()[:2]
    assert "\n" not in run and "python -m ingest serve" in run and "pip install" in run
    assert "\n" not in test and "pytest" in test and "pip install" in test


def test_ci_runs_the_readme_test_command_verbatim():
    test = _quickstart_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
