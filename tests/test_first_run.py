"""What a new user meets at the first start (issue 23): a relative embedded path, a misspelled variable, a second
service on the same embedded data. Real `python -m ingest serve` processes, real files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ingest.config import KNOWN_ENV_VARS, ConfigError, Settings, unknown_env_names

from .harness.engine import count_rows
from .harness.ports import busy_port
from .harness.service import Service, command, one_line_error

ROOT = Path(__file__).resolve().parent.parent


# -- a relative CLICKHOUSE_URL ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_documented_relative_embedded_path_works_from_the_current_directory(tmp_path):
    """`chdb://./data/clickhouse` (docs/configuration.md's default) failed with `Database data does not exist` and
    left the engine's tmp/ in the current directory."""
    service = Service(tmp_path, CLICKHOUSE_URL="chdb://./data/clickhouse").wait_healthy()
    try:
        assert service.post_events(3, "rel") == 3
        assert f"storage chdb://{tmp_path / 'data' / 'clickhouse'}," in service.output()
    finally:
        assert service.stop() == 0, service.output()
    assert count_rows(tmp_path / "data" / "clickhouse", "analytics") == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["data"]  # no tmp/ beside it


@pytest.mark.parametrize("url", ["chdb://./data/clickhouse", "chdb://data/clickhouse", "chdb://data/clickhouse/"])
def test_a_relative_embedded_path_means_the_same_directory_from_the_current_directory(url):
    assert Settings.from_env({"CLICKHOUSE_URL": url}).clickhouse_url == "chdb://" + os.path.abspath("data/clickhouse")


def test_an_embedded_url_without_a_directory_is_refused_in_words():
    with pytest.raises(ConfigError, match="CLICKHOUSE_URL=chdb:// names no directory"):
        Settings.from_env({"CLICKHOUSE_URL": "chdb://"})


def test_the_docs_describe_the_relative_form_they_show():
    table = (ROOT / "docs" / "configuration.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `CLICKHOUSE_URL` |"))
    assert "chdb://./data/clickhouse" in row and "current directory" in row


# -- unknown INGEST_* / CLICKHOUSE_* names -------------------------------------------------------------------------

# Every INGEST_/CLICKHOUSE_ name the stack's files set or read: each is some program's, never a misspelling.
_STACK_FILES = [".env.example", "docker-compose.yml", "docker-compose.cluster.yml",
                *[str(p.relative_to(ROOT)) for p in (ROOT / "clickhouse").rglob("*.xml")],
                *[str(p.relative_to(ROOT)) for p in (ROOT / "grafana" / "provisioning").rglob("*.yaml")]]


def _names_in_stack_files() -> set[str]:
    """The names those files use, and the rows of docs/configuration.md's table (its prose shows a misspelling)."""
    names = set(re.findall(r"^\| `((?:INGEST|CLICKHOUSE)_[A-Z0-9_]+)` \|",
                           (ROOT / "docs" / "configuration.md").read_text(), re.M))
    for name in _STACK_FILES:
        names |= set(re.findall(r"\b((?:INGEST|CLICKHOUSE)_[A-Z0-9_]*[A-Z0-9])\b", (ROOT / name).read_text()))
    return names


def test_no_name_the_stack_uses_or_documents_is_warned_about():
    names = _names_in_stack_files()
    assert {"CLICKHOUSE_HOST", "CLICKHOUSE_ADMIN_URL", "CLICKHOUSE_CLUSTER_SECRET", "INGEST_LB_PORT"} <= names
    assert unknown_env_names({name: "x" for name in names}) == []


def test_the_clickhouse_images_own_variables_are_not_warned_about():
    image = ["CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_DB", "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT",
             "CLICKHOUSE_SKIP_USER_SETUP", "CLICKHOUSE_CONNECT_NATIVE_CODEC"]
    assert unknown_env_names({name: "1" for name in image}) == []


@pytest.mark.parametrize(("name", "closest"), [
    ("INGEST_FLUSH_INTERVAL", "INGEST_FLUSH_INTERVAL_SECONDS"), ("INGEST_WRITEKEYS", "INGEST_WRITE_KEYS"),
    ("INGEST_PROT", "INGEST_PORT"), ("INGEST_DATABASE", "CLICKHOUSE_DATABASE"), ("CLICKHOUSE_URI", "CLICKHOUSE_URL"),
])
def test_a_misspelled_name_is_named_with_the_closest_known_one(name, closest):
    [warning] = unknown_env_names({name: "5", "PATH": "/bin"})
    assert warning.startswith(f"{name} is set but is not a setting") and f"did you mean {closest}?" in warning


def test_a_name_like_no_known_one_gets_no_guess():
    [warning] = unknown_env_names({"INGEST_FOO": "1"})
    assert "did you mean" not in warning and "serve --help" in warning


def test_every_known_name_is_a_setting_or_named_in_the_stack_files_or_by_the_clickhouse_image():
    """The list of others' names is kept in step with the files that use them (no stale name hides a typo)."""
    image = {"CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_DB", "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT",
             "CLICKHOUSE_SKIP_USER_SETUP", "CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS", "CLICKHOUSE_INIT_TIMEOUT",
             "CLICKHOUSE_CONFIG", "CLICKHOUSE_DO_NOT_CHOWN", "CLICKHOUSE_UID", "CLICKHOUSE_GID",
             "CLICKHOUSE_RUN_AS_ROOT", "CLICKHOUSE_WATCHDOG_ENABLE"}
    assert KNOWN_ENV_VARS - _names_in_stack_files() - image == set()


@pytest.mark.slow
def test_serve_warns_once_at_start_about_a_misspelled_variable(tmp_path):
    # A busy port ends the start right after the settings are read: the warning comes before anything opens.
    with busy_port() as port:
        result = command(["serve"], tmp_path, INGEST_HOST="127.0.0.1", INGEST_PORT=str(port),
                         INGEST_FLUSH_INTERVAL="5", INGEST_LB_PORT="8080", CLICKHOUSE_HOST="clickhouse",
                         CLICKHOUSE_USER="default", CLICKHOUSE_ADMIN_URL="http://admin:pw@ch:8123",
                         CLICKHOUSE_URL=f"chdb://{tmp_path / 'data'}", INGEST_WAL_DIR=str(tmp_path / "wal"))
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, output
    assert "INGEST_FLUSH_INTERVAL is set but is not a setting" in warnings[0]
    assert "did you mean INGEST_FLUSH_INTERVAL_SECONDS?" in warnings[0]


# -- a second service on the same embedded data --------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_service_on_the_same_embedded_data_is_told_so_first_and_leaves_nothing_behind(tmp_path):
    """It used to be told to take its own INGEST_WAL_DIR; with one, chdb's raw `Code: 76 ... Cannot lock file` and a
    log left in the new directory followed."""
    data = tmp_path / "data"
    first = Service(tmp_path, CLICKHOUSE_URL=f"chdb://{data}", INGEST_WAL_DIR=str(tmp_path / "wal1")).wait_healthy()
    try:
        for wal in ("wal1", "wal2"):  # the first's own log, then one of its own
            result = command(["serve"], tmp_path, CLICKHOUSE_URL=f"chdb://{data}", INGEST_WAL_DIR=str(tmp_path / wal),
                             INGEST_DEAD_LETTER_PATH=str(tmp_path / "dead2" / "dead-letter.jsonl"),
                             INGEST_HOST="127.0.0.1", INGEST_PORT="0")
            output = result.stdout + result.stderr
            assert result.returncode != 0
            one_line_error(output, str(data), "in use", str(first.proc.pid), "one process per data directory")
            assert "Code: 76" not in output and "INGEST_WAL_DIR" not in output, output
        assert not (tmp_path / "wal2").exists() and not (tmp_path / "dead2").exists()
        assert first.post_events(2, "first") == 2  # the first goes on undisturbed
    finally:
        assert first.stop() == 0
