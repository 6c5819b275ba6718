"""`python -m ingest panels`: the dashboard's four panels in a terminal, from the configured ClickHouse or, beside a
running service on the embedded engine, through the service; one clear line when it cannot."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from ingest.cli import main as cli
from ingest.grafana.dashboard import load_dashboard, panel_queries
from ingest.storage.sink import Sink
from ingest.terminal import panels

from .harness.service import Service, command

COLUMNS = ["event_name", "timestamp", "session_id", "user_id", "device_type", "country_code", "properties"]


def _load(ch, settings):
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    now = datetime.now(timezone.utc)
    rows = [("page_view", now - timedelta(seconds=30 + i), f"s{i}", None, "mobile", "US", "{}") for i in range(7)]
    rows += [("feature_used", now - timedelta(minutes=20), "s1", "u1", "desktop", "DE", '{"feature": "export"}'),
             ("error_occurred", now - timedelta(minutes=20), "s1", "u1", "desktop", "DE", "{}"),
             ("signup_started", now - timedelta(hours=20), "s2", None, "desktop", "DE", "{}")]
    ch.insert("events", rows, column_names=COLUMNS)


@pytest.mark.parametrize("range_name", ["1h", "24h"])
def test_panels_prints_every_panel_80_columns_wide_and_a_24_line_terminal_keeps_the_top(ch, settings, range_name):
    _load(ch, settings)
    out = io.StringIO()
    assert panels.main(settings, range_name, False, None, out) == 0
    text = out.getvalue()
    lines = text.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 80, text
    titles = [q.title for q in panel_queries(load_dashboard()) if q.title != "Live status"]
    assert all(f"\n{title}" in text for title in titles), text  # into a pipe: every panel, nothing cut
    assert lines[0].startswith("Product analytics  ") and any(line.startswith("Live status: ") for line in lines[:8])
    # A 24-line terminal: the header, the status and the first panels, and a last line saying what was cut.
    source = panels.open_source(settings, load_dashboard())
    try:
        framed = panels.render(source.frame(range_name), 80, 24).splitlines()
    finally:
        source.close()
    assert len(framed) == 24 and framed[0].startswith("Product analytics  ") and framed[1:6] == lines[1:6]
    assert framed[-1] == f"… {len(lines) - 23} more lines not shown (a taller terminal shows them)"
    assert any(line.startswith("Active users  ") for line in framed), framed
    assert "Active users  7 sessions in the last 5 minutes" in text
    assert " 1. export " in text
    assert "max 50.0%" in text                       # the minute with 1 error among 2 events
    assert "query failed" not in text and "\033" not in text
    # The dashboard's variables at their saved selection, All: no filter.
    assert "\n  Filter: device_type All  (saved selection; SQL: $__conditionalAll -> 1=1)\n" in text
    assert "\n  Filter: country_code All  (saved selection; SQL: $__conditionalAll -> 1=1)\n" in text
    assert "more lines not shown" not in text
    # Every sparkline comes with its scale: lowest, highest, minutes per mark, the span it covers.
    assert text.count("  min ") == 2
    if range_name == "1h":
        assert text.count("1 mark = 1 min") == 2
    else:  # Active users: 289 points 5 minutes apart in 60 marks, 5 points (25 minutes) a mark
        assert re.findall(r"1 mark = max of (\d+) min", text)[0] == "25", text
    if range_name == "24h":
        assert "signup" not in text.split("Signup funnel")[1].split("\n\n")[0].lower().split("conversion")[1]
        assert " 1 " in text.split("Signup funnel")[1].split("Top features")[0]  # the start 20 h ago


def test_a_query_the_plugin_refuses_shows_the_plugins_message_and_never_reaches_clickhouse():
    from ingest.grafana import dashboard as dash

    board = dash.load_dashboard()
    board["panels"][0]["targets"][0]["rawSql"] = "SELECT $__timeGroup(timestamp) AS time, 1 AS n FROM events"
    ran = []
    qrange = dash.query_range("1h", datetime(2026, 11, 27, 12, tzinfo=timezone.utc))
    results = dash.run_panels(board, qrange, lambda sql: ran.append(sql) or (["x"], []))
    (refused,) = [r for r in results if r.error]
    assert refused.error == ("Could not apply macros: macro $__timeGroup(timestamp): unexpected number of arguments: "
                             "$__timeGroup expected 2 argument(s), received 1")
    assert len(ran) == len(results) - 1


def test_a_query_failing_without_a_message_shows_the_failures_kind_and_the_other_panels_still_run():
    from ingest.grafana import dashboard as dash

    board = dash.load_dashboard()
    qrange = dash.query_range("1h", datetime(2026, 11, 27, 12, tzinfo=timezone.utc))
    calls = []

    def run(sql):  # the first panel's query times out with an empty message, as a socket timeout can
        calls.append(sql)
        if len(calls) == 1:
            raise TimeoutError()
        return ["x"], []

    results = dash.run_panels(board, qrange, run)
    assert [r.error for r in results] == ["TimeoutError"] + [None] * (len(results) - 1)


def test_panels_subcommand_rejects_ranges_the_picker_does_not_offer(capsys):
    with pytest.raises(SystemExit):
        cli(["panels", "--range", "7d"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_panels_shows_live_data_beside_the_running_service_with_the_same_answers(tmp_path):
    data = tmp_path / "data"
    env = {"CLICKHOUSE_URL": f"chdb://{data}", "INGEST_WAL_DIR": str(tmp_path / "wal"),
           "INGEST_FLUSH_INTERVAL_SECONDS": "0.1"}
    service = Service(tmp_path, **env).wait_healthy()
    try:
        assert service.post_events(12, "live") == 12
        deadline = time.monotonic() + 20
        while service.get("/health")[1]["buffer"]["events"] and time.monotonic() < deadline:
            time.sleep(0.1)
        beside = command(["panels"], tmp_path, **env, INGEST_PORT=str(service.port))
        assert beside.returncode == 0, beside.stderr
        assert "\n  via the service at http://127.0.0.1:" in beside.stdout, beside.stdout
        assert "Active users  12 sessions in the last 5 minutes" in beside.stdout
        # Filters go to the service, which loads the variables' values and refuses one it does not offer.
        device = "desktop"  # every event the service got (tests/harness/events.py event())
        filtered = command(["panels", "--device", device], tmp_path, **env, INGEST_PORT=str(service.port))
        assert filtered.returncode == 0, filtered.stderr
        assert f"\n  Filter: device_type {device}  (command line; SQL: '{device}')\n" in filtered.stdout
        assert "Active users  12 sessions in the last 5 minutes" in filtered.stdout
        unknown = command(["panels", "--country", "XX"], tmp_path, **env, INGEST_PORT=str(service.port))
        assert unknown.returncode == 1 and not unknown.stdout
        assert unknown.stderr.startswith("ingest panels: template variables: country_code has no value 'XX' (the "
                                         "values it offers: ") and unknown.stderr.count("\n") == 1, unknown.stderr
        assert service.post_events(1, "still-serving") == 1  # the service was not disturbed
    finally:
        assert service.stop() == 0
    alone = command(["panels"], tmp_path, **env, INGEST_PORT=str(service.port))
    assert alone.returncode == 0, alone.stderr
    assert "via the service" not in alone.stdout
    assert "Active users  13 sessions in the last 5 minutes" in alone.stdout

    def panel_lines(text):  # the numbers, without the header (time, source) and the time-dependent marks
        body = text.split("\n\n", 1)[1]
        return [line for line in body.splitlines() if "min " not in line and not set(line.strip()) <= set(
            panels._SPARK + " ")]
    assert panel_lines(beside.stdout.replace("12 sessions", "13 sessions")) == panel_lines(alone.stdout)


@pytest.mark.slow
def test_panels_beside_a_service_on_another_port_names_the_port_to_set(tmp_path):
    # Issue 23: "... at http://127.0.0.1:3001: Connection refused>" (urllib's repr leaked its ">") and no word of
    # INGEST_PORT. A socket bound but not listening stands for the default port where nothing answers.
    data = tmp_path / "data"
    env = {"CLICKHOUSE_URL": f"chdb://{data}", "INGEST_WAL_DIR": str(tmp_path / "wal")}
    service = Service(tmp_path, **env).wait_healthy()
    with socket.socket() as nobody:
        nobody.bind(("127.0.0.1", 0))
        wrong = nobody.getsockname()[1]
        try:
            result = command(["panels"], tmp_path, **env, INGEST_PORT=str(wrong))
        finally:
            assert service.stop() == 0
    assert result.returncode == 1 and not result.stdout
    assert result.stderr.count("\n") == 1 and ">" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"ingest panels: no service answers GET /panels at http://127.0.0.1:"
                                    f"{wrong} (Connection refused); process "), result.stderr
    assert f"holds the embedded data in {data} and listens on port {service.port}: run panels with " \
           f"INGEST_PORT={service.port}\n" in result.stderr, result.stderr


@pytest.mark.slow
def test_panels_watch_into_a_pipe_prints_frames_without_screen_codes(tmp_path, monkeypatch):
    data = tmp_path / "data"
    Service(tmp_path, CLICKHOUSE_URL=f"chdb://{data}", INGEST_WAL_DIR=str(tmp_path / "wal")).wait_healthy().stop()
    proc = subprocess.Popen([sys.executable, "-m", "ingest", "panels", "--watch", "--refresh", "0.2"], cwd=tmp_path,
                            env={**__import__("os").environ, "CLICKHOUSE_URL": f"chdb://{data}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A run started in the background of a shell (`pytest &`) ignores SIGINT, and children
                            # inherit that: give this one Ctrl-C as a terminal would.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    hang = threading.Timer(60, proc.kill)  # a watch that never prints its second frame fails, not hangs
    hang.start()
    seen = []
    while sum("Product analytics" in line for line in seen) < 2 and (line := proc.stdout.readline()):
        seen.append(line)  # frames arrive one after another as they are drawn, not at exit
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    hang.cancel()
    out = "".join(seen) + out
    assert proc.returncode == 0, err
    assert out.count("Product analytics") >= 2 and "\033" not in out


def test_the_panels_endpoint_answers_this_machine_only(make_client):
    from aiohttp.test_utils import make_mocked_request

    from ingest.api.app import _from_this_machine

    for peer, local in (("127.0.0.1", True), ("::1", True), ("10.1.2.3", False), ("172.18.0.1", False)):
        transport = type("T", (), {"get_extra_info": lambda self, name, default=None, peer=peer: (peer, 1234)})()
        assert _from_this_machine(make_mocked_request("GET", "/panels", transport=transport)) is local


async def test_the_panels_endpoint_runs_the_dashboard_read_only(make_client, ch, settings):
    client = await make_client()
    _load(ch, settings)
    resp = await client.get("/panels?range=1h")
    assert resp.status == 200
    body = await resp.json()
    assert [p["title"] for p in body["panels"]] == [
        "Live status", "Active users", "Signup funnel", "Top features", "Error rate", "Signup steps",
        "Signup conversion over time"]
    assert all(p["error"] is None for p in body["panels"])
    assert body["storage"] == settings.storage_owner
    assert (await client.get("/panels?range=7d")).status == 400
    for bad in ("device_type", "=mobile", "colour=red"):  # no value, no name, no such variable
        refused = await client.get("/panels", params={"range": "1h", "var": bad})
        assert refused.status == 400 and (await refused.json())["error"] == "bad_variable", bad


@pytest.mark.parametrize("args,env,words", [
    (["panels", "--dashboard", "{tmp}/missing.json"], {}, ["cannot read the dashboard", "missing.json"]),
    (["panels", "--dashboard", "{tmp}/list.json"], {}, ["not a Grafana dashboard"]),
    (["panels"], {"CLICKHOUSE_URL": "http://default:x@127.0.0.1:9"}, ["cannot reach ClickHouse at",
                                                                      "http://default:***@127.0.0.1:9"]),
    (["panels"], {"CLICKHOUSE_URL": "chdb://{tmp}/nothing-here"}, ["no embedded ClickHouse data in",
                                                                     "nothing-here"]),
    (["rebuild-rollups"], {"CLICKHOUSE_URL": "http://default:x@127.0.0.1:9"}, ["cannot reach ClickHouse at"]),
])
def test_commands_say_what_is_wrong_in_one_line(tmp_path, args, env, words):
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    args = [a.format(tmp=tmp_path) for a in args]
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    result = command(args, tmp_path, timeout=120, **env)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    assert all(word in output for word in words), output
    assert not (tmp_path / "data").exists()  # nothing created where the command happened to run
