"""`python -m ingest ... --help` and usage errors as a user sees them: real subprocesses in an 80-column terminal."""

from __future__ import annotations

import re

import pytest

from ingest.config import ENV_VARS

from .harness.service import command

COMMANDS = [["serve"], ["panels"], ["demo"], ["rebuild-rollups"], ["schema"], ["schema", "show"], ["schema", "apply"]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_explains_itself_and_states_each_default_once(tmp_path, args):
    result = command([*args, "--help"], tmp_path, COLUMNS="80")
    assert result.returncode == 0 and not result.stderr, result.stderr  # demo --help died on a "%" in a help
    usage, _, rest = result.stdout.partition("\n\n")
    assert usage.startswith(f"usage: python -m ingest {' '.join(args)} ")
    description = rest.split("\n\n", 1)[0]
    assert not description.startswith(("options:", "positional arguments:")), result.stdout  # it has one
    # Options' help, a paragraph each: argparse's "(default: X)" only where the help does not say it already and
    # there is a value to show.
    options = rest[rest.index("options:\n"):].split("\n\n", 1)[0]
    for entry in re.split(r"\n(?=  -)", options):
        said = " ".join(entry.split())
        assert said.count("default") <= 1, said
        for nothing in ("(default: None)", "(default: [])", "(default: False)"):
            assert nothing not in said, said


def test_serve_help_keeps_the_environment_in_two_columns_within_80(tmp_path):
    text = command(["serve", "--help"], tmp_path, COLUMNS="80").stdout
    env = text[text.index("\nenvironment ") + 1:].splitlines()
    names = [line for line in env if re.match(r"  [A-Z]", line)]
    assert [line.split()[0] for line in names] == list(ENV_VARS)
    column = {re.match(r"  \S+ +", line).end() for line in names}  # type: ignore[union-attr]
    assert len(column) == 1, names  # INGEST_KEEPALIVE_TIMEOUT_SECONDS and the longest names too
    [column_at] = column
    first = env.index(names[0])
    for line in env[first:]:
        if line in names:
            continue
        # A continuation starts at the column; only an unbreakable default (a path) may pass 78 characters.
        assert line.startswith(" " * column_at) and line[column_at] != " ", line
        assert len(line) <= 78 or re.fullmatch(r" +\(default: \S+\)", line), line
    assert all(len(line) <= 78 for line in names)
    entries = re.split(r"\n(?=  [A-Z])", "\n".join(env[first:]))
    assert all(re.search(r"\(default: [^)\n]*\)$", entry) for entry in entries), entries


def test_a_panels_usage_error_shows_panels_usage(tmp_path):
    result = command(["panels", "--var", "device_type"], tmp_path, COLUMNS="80")
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith("usage: python -m ingest panels "), result.stderr
    assert result.stderr.rstrip().endswith("python -m ingest panels: error: --var: a variable's value is chosen as "
                                           "NAME=VALUE, not 'device_type'"), result.stderr
