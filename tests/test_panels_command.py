"""`python -m ingest panels` prints the dashboard's four panels from the configured ClickHouse."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from ingest import panels
from ingest.__main__ import main as cli
from ingest.sink import Sink


def test_panels_prints_the_four_panels_with_numbers_from_the_table(ch, settings):
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    now = datetime.now(timezone.utc)
    rows = [("page_view", now - timedelta(seconds=30 + i), f"s{i}", None, "mobile", "US", "{}") for i in range(7)]
    rows += [("feature_used", now - timedelta(minutes=20), "s1", "u1", "desktop", "DE", '{"feature": "export"}'),
             ("error_occurred", now - timedelta(minutes=20), "s1", "u1", "desktop", "DE", "{}"),
             ("signup_started", now - timedelta(minutes=10), "s2", None, "desktop", "DE", "{}")]
    ch.insert("events", rows, column_names=["event_name", "timestamp", "session_id", "user_id", "device_type",
                                             "country_code", "properties"])
    out = io.StringIO()
    assert panels.main(settings, "1h", False, None, out) == 0
    text = out.getvalue()
    for title in ("Active users", "Signup funnel", "Top features", "Error rate"):
        assert f"\n{title}\n" in text
    assert "\n  7 active sessions " in text        # 7 sessions in the last 5 minutes
    assert " 1. export " in text
    assert "50.0%" in text                           # the minute with 1 error among 2 events
    assert "query failed" not in text
    assert "\nTemplate variables: none in the dashboard, nothing substituted.\n" in text


def test_panels_subcommand_rejects_ranges_the_picker_does_not_offer(capsys):
    import pytest

    with pytest.raises(SystemExit):
        cli(["panels", "--range", "7d"])
    assert "invalid choice" in capsys.readouterr().err


def test_a_query_the_plugin_refuses_shows_the_plugins_message_and_never_reaches_clickhouse():
    dashboard = panels.load_dashboard()
    dashboard["panels"][0]["targets"][0]["rawSql"] = "SELECT $__timeGroup(timestamp) AS time, 1 AS n FROM events"
    ran = []
    qrange = panels.query_range("1h", datetime(2026, 11, 27, 12, tzinfo=timezone.utc))
    results = panels.run_panels(dashboard, qrange, lambda sql: ran.append(sql) or (["x"], []))
    (refused,) = [r for r in results if r.error]
    assert refused.error == ("Could not apply macros: macro $__timeGroup(timestamp): unexpected number of arguments: "
                             "$__timeGroup expected 2 argument(s), received 1")
    assert len(ran) == len(results) - 1
