"""Settings come from the environment in one place; the docs list exactly the variables the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingest.config import ENV_VARS, ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_unset_variables_keep_the_documented_defaults():
    s = Settings.from_env({})
    assert (s.host, s.port, s.clickhouse_database) == ("127.0.0.1", 3001, "analytics")  # loopback unless told
    assert s.clickhouse_url.startswith("chdb:///") and s.clickhouse_url.endswith("data/clickhouse")
    assert (s.flush_events, s.flush_interval_seconds) == (1000, 2.0)


def test_slow_client_deadlines_and_the_connection_limit_have_defaults_and_can_be_set():
    s = Settings.from_env({})
    assert (s.header_timeout_seconds, s.body_timeout_seconds, s.keepalive_timeout_seconds) == (10.0, 30.0, 15.0)
    assert s.max_connections == 4096
    s = Settings.from_env({"INGEST_HEADER_TIMEOUT_SECONDS": "0.5", "INGEST_BODY_TIMEOUT_SECONDS": "2.5",
                           "INGEST_KEEPALIVE_TIMEOUT_SECONDS": "1", "INGEST_MAX_CONNECTIONS": "100"})
    assert (s.header_timeout_seconds, s.body_timeout_seconds, s.keepalive_timeout_seconds) == (0.5, 2.5, 1.0)
    assert s.max_connections == 100


def test_set_variables_are_parsed_to_their_types():
    s = Settings.from_env({"INGEST_PORT": "8080", "INGEST_FLUSH_INTERVAL_SECONDS": "0.5",
                           "CLICKHOUSE_URL": "http://ingest:pw@ch:8123", "CLICKHOUSE_DATABASE": "prod_events"})
    assert (s.port, s.flush_interval_seconds, s.clickhouse_database) == (8080, 0.5, "prod_events")
    assert s.redacted_url == "http://ingest:***@ch:8123"
    assert "pw" not in repr(s)


def test_a_password_holding_an_at_sign_is_redacted_whole():
    s = Settings.from_env({"CLICKHOUSE_URL": "http://ingest:p@ss@ch:8123/x"})
    assert s.redacted_url == "http://ingest:***@ch:8123/x"


@pytest.mark.parametrize(("env", "message"), [
    ({"INGEST_PORT": "http"}, "INGEST_PORT"),
    ({"INGEST_PORT": "70000"}, "INGEST_PORT"),
    ({"INGEST_FLUSH_EVENTS": "0"}, "INGEST_FLUSH_EVENTS"),
    ({"CLICKHOUSE_DATABASE": "analytics; DROP"}, "CLICKHOUSE_DATABASE"),
    ({"CLICKHOUSE_URL": "postgres://x"}, "CLICKHOUSE_URL"),
    ({"INGEST_BUFFER_MAX_EVENTS": "10"}, "INGEST_BUFFER_MAX_EVENTS"),
    ({"INGEST_FLUSH_INTERVAL_SECONDS": "inf"}, "INGEST_FLUSH_INTERVAL_SECONDS"),
    ({"INGEST_RETRY_MAX_SECONDS": "nan"}, "INGEST_RETRY_MAX_SECONDS"),
    ({"INGEST_BODY_TIMEOUT_SECONDS": "0"}, "INGEST_BODY_TIMEOUT_SECONDS"),
    ({"INGEST_HEADER_TIMEOUT_SECONDS": "inf"}, "INGEST_HEADER_TIMEOUT_SECONDS"),
    ({"INGEST_KEEPALIVE_TIMEOUT_SECONDS": "-1"}, "INGEST_KEEPALIVE_TIMEOUT_SECONDS"),
    ({"INGEST_MAX_CONNECTIONS": "0"}, "INGEST_MAX_CONNECTIONS"),
    ({"INGEST_MAX_CONNECTIONS": "many"}, "INGEST_MAX_CONNECTIONS"),
    ({"INGEST_COUNTRY_HEADER": "CF IPCountry"}, "INGEST_COUNTRY_HEADER"),
    ({"INGEST_COUNTRY_HEADER": "CF-IPCountry:"}, "INGEST_COUNTRY_HEADER"),
])
def test_bad_values_are_refused_with_the_variable_named(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_env_example_documents_every_setting():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))
    assert set(ENV_VARS) <= documented


def test_the_configuration_table_lists_every_setting():
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", text, re.M))
    assert set(ENV_VARS) <= rows


def test_only_config_reads_the_environment():
    offenders = [p.name for p in (ROOT / "ingest").glob("*.py")
                 if p.name != "config.py" and re.search(r"os\.environ|getenv", p.read_text())]
    assert offenders == []


def test_serve_help_lists_every_variable_with_its_default(capsys):
    from ingest.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = re.sub(r"\n {4,}", " ", capsys.readouterr().out)  # each variable's wrapped lines as one
    for name in ENV_VARS:
        assert re.search(rf"^  {name} +\S.* \(default: ", text, re.M), name  # a meaning, then the default
    assert "INGEST_HOST" in text and "(default: 127.0.0.1)" in text and ".env is read by docker compose only" in text
