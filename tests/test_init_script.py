"""clickhouse/init/00_schema.sh, run as the ClickHouse image runs it, with a stand-in `clickhouse`
command that records each call; the recorded SQL is then replayed on the embedded engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import clickhouse_connect
import pytest

from ingest.storage.ddl import ddl_files, statements

from .stack import ROOT

SCRIPT = ROOT / "clickhouse" / "init" / "00_schema.sh"

# A `clickhouse` on PATH that appends {"argv": [...], "stdin": "..."} to $RECORD and exits with $FAIL_WITH.
FAKE_CLICKHOUSE = f"""#!{sys.executable}
import json, os, sys
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": stdin}}) + "\\n")
sys.exit(int(os.environ.get("FAIL_WITH", "0")))
"""


@pytest.fixture
def fake_clickhouse(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "clickhouse"
    fake.write_text(FAKE_CLICKHOUSE)
    fake.chmod(0o755)
    record = tmp_path / "calls.jsonl"

    def run(command: list[str], **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
        full_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record),
                    "CLICKHOUSE_USER": "admin", "CLICKHOUSE_PASSWORD": "s3cret", "CLICKHOUSE_DB": "analytics"}
        full_env.update(env)
        full_env = {k: v for k, v in full_env.items() if v is not None}
        result = subprocess.run(command, capture_output=True, text=True, env=full_env, stdin=subprocess.DEVNULL,
                                timeout=60)
        calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        return result, calls

    return run


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_init_script_creates_the_events_table_in_clickhouse_db_as_the_admin_user(fake_clickhouse, chdb_path):
    database = f"init_{uuid.uuid4().hex[:8]}"
    result, calls = fake_clickhouse([str(SCRIPT)], CLICKHOUSE_DB=database)
    assert result.returncode == 0, result.stderr
    assert calls, "the script ran no client"
    for call in calls:
        argv = call["argv"]
        assert argv[0] == "client"
        # The image's temporary init server listens on 127.0.0.1 only; the `default` user is gone.
        assert option(argv, "--host") == "127.0.0.1"
        assert (option(argv, "--user"), option(argv, "--password")) == ("admin", "s3cret")

    # Replay what the server would have received on the real (embedded) engine.
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    try:
        for call in calls:
            argv = call["argv"]
            if option(argv, "--query"):
                client.command(option(argv, "--query"))
            else:
                assert option(argv, "--database") == database and "--multiquery" in argv
                scoped = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=database)
                for statement in statements(call["stdin"]):
                    scoped.command(statement)
                scoped.close()
        tables = client.query("SELECT name FROM system.tables WHERE database = %(d)s", parameters={"d": database})
        created = {name for _, text in ddl_files()
                   for name in re.findall(r"CREATE (?:TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS (\w+)", text)}
        assert "events" in created
        assert {r[0] for r in tables.result_rows} == created
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
        client.close()


def test_init_script_applies_every_sql_file_in_order(fake_clickhouse):
    result, calls = fake_clickhouse([str(SCRIPT)])
    assert result.returncode == 0, result.stderr
    applied = [c["stdin"] for c in calls if "--multiquery" in c["argv"]]
    expected = [p.read_text() for p in sorted((ROOT / "clickhouse" / "init" / "sql").glob("*.sql"))]
    assert applied == expected


@pytest.mark.parametrize("database", ["bad-name", "x; DROP TABLE y", "1abc", ""])
def test_init_script_refuses_a_database_name_it_cannot_quote(fake_clickhouse, database):
    result, calls = fake_clickhouse([str(SCRIPT)], CLICKHOUSE_DB=database)
    assert result.returncode != 0
    assert calls == []


@pytest.mark.parametrize("missing", ["CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_DB"])
def test_init_script_refuses_to_run_without_the_admin_credentials_or_database(fake_clickhouse, missing):
    result, calls = fake_clickhouse([str(SCRIPT)], **{missing: None})
    assert result.returncode != 0 and missing in result.stderr
    assert calls == []


def test_init_script_sourced_by_the_entrypoint_leaves_its_shell_alone(fake_clickhouse):
    """The image sources a non-executable *.sh: its `set -u` or `exit` must not leak into the entrypoint."""
    result, calls = fake_clickhouse(["bash", "-c", f'set -eo pipefail; . "{SCRIPT}"; [[ $- != *u* ]] && echo survived'])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("survived") and calls


def test_init_script_failure_stops_the_entrypoint(fake_clickhouse):
    """The entrypoint runs with `set -e`: a failed init must stop it, executed or sourced."""
    executed, _ = fake_clickhouse([str(SCRIPT)], FAIL_WITH="1")
    assert executed.returncode != 0
    sourced, _ = fake_clickhouse(["bash", "-c", f'set -eo pipefail; . "{SCRIPT}"; echo survived'], FAIL_WITH="1")
    assert sourced.returncode != 0 and "survived" not in sourced.stdout


def test_init_script_is_executable():
    """The image executes an executable *.sh (and sources the others); git keeps the mode bit."""
    assert os.access(SCRIPT, os.X_OK)


def test_only_the_script_sits_at_the_top_of_the_init_directory():
    """The image runs every *.sh/*.sql at the top level; the DDL must only run through the script."""
    top = sorted(p.name for p in (ROOT / "clickhouse" / "init").iterdir())
    assert top == ["00_schema.sh", "sql"]
