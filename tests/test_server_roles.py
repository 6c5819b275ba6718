"""The stack's ClickHouse users (admin, ingest, grafana) doing their real work on the real engine.

Each role runs in its own process over one data directory (tests/server_users.py, which also lists what this cannot
prove). In order: the compose stack's `schema` service runs, as admin, its own command with its own environment
against the engine over ClickHouse's HTTP interface, creating the schema and, by SQL, the roles and users; ingest
inserts events as the service does, with the grants that run gave its role; grafana runs every panel query and the
alert query of the provisioned files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
import yaml

from ingest.grafana.dashboard import load_dashboard, panel_queries
from ingest.grafana.macros import QueryRange, expand
from ingest.grafana.variables import dashboard_variables, substitute
from ingest.storage.sink import failure_kind

from .harness import panel_truth as truth
from .harness.events import iso
from .server_users import ServerUsers, definer
from .stack import ROOT, compose, environment, init_table_names, interpolate, stack_env

pytestmark = pytest.mark.slow
DB = "analytics"
VIEWS_SQL = (f"SELECT name, create_table_query FROM system.tables WHERE database = '{DB}' "
             "AND engine = 'MaterializedView'")
ROLLUPS = ("events_per_minute", "active_sessions_5m", "feature_users_per_minute", "feature_users_per_hour",
           "events_per_minute_by_segment", "active_sessions_5m_by_segment", "feature_users_per_minute_by_segment",
           "feature_users_per_hour_by_segment", "segments_per_day")


def as_event(row: tuple) -> dict:
    """A build_events() row as a client would send it."""
    name, at, session, user, device, country, props = row
    return {"event_name": name, "timestamp": iso(at), "session_id": session, "user_id": user,
            "device_type": device, "country_code": country, "properties": json.loads(props)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A data directory initialised by admin, with an unrelated database beside the analytics one."""
    users = ServerUsers(tmp_path_factory.mktemp("server-users"), DB)
    run = users.apply_schema()
    assert run.returncode == 0, run.stderr
    outcomes = users.run("admin", [("command", None, "CREATE DATABASE other"),
                                   ("command", None, "CREATE TABLE other.t (x UInt8) ENGINE = MergeTree ORDER BY x")])
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    return users


@pytest.fixture(scope="module")
def ingested(stack):
    """The panel-truth events, inserted by the ingest role as the service inserts them."""
    events = truth.build_events()
    outcomes = stack.run("ingest", [("ingest", [as_event(e) for e in events[i:i + 500]], f"test-batch-{i}")
                                    for i in range(0, len(events), 500)])
    return events, outcomes


# --- admin ---------------------------------------------------------------------------------------------------------

def test_admin_creates_every_table_and_view_of_the_init_sql(stack):
    (tables,) = stack.run("admin", [("query", None, f"SELECT name FROM system.tables WHERE database = '{DB}'", None)])
    names = {r[0] for r in tables.rows}
    assert set(init_table_names()) <= names
    assert {f"{r}_mv" for r in ROLLUPS} <= names


def test_every_view_runs_as_admin_its_definer(stack):
    """On a server the schema service's user (admin) is every view's definer; a view without one runs as the
    inserting user, and ClickHouse 26.8 then refuses every insert by ingest."""
    assert stack.schema_user == "admin"
    (views,) = stack.run("admin", [("query", None, VIEWS_SQL, None)])
    assert len(views.rows) == len(ROLLUPS)
    for name, create in views.rows:
        assert definer(create) == ("admin", "DEFINER"), name


def test_the_schema_service_says_what_it_did_and_sends_everything_as_admin(stack):
    run = stack.schema_runs[-1]
    assert f"database {DB}, its tables and views; roles ingest_writer and grafana_reader, users ingest and grafana" \
        in run.stderr
    assert stack.env["CLICKHOUSE_ADMIN_PASSWORD"] not in run.stdout + run.stderr  # the URL is redacted
    assert {s["user"] for s in stack.statements} == {"admin"}
    assert not [s for s in stack.statements if s.get("error")]
    # Everything but the access statements ran on the engine; those the engine's parser took (see server_users.py).
    assert not stack.access.unread
    assert set(stack.access.user_roles) == {"ingest", "grafana"}


# --- ingest --------------------------------------------------------------------------------------------------------

def test_ingest_stores_events_and_fills_every_rollup(stack, ingested):
    events, outcomes = ingested
    assert all(o.ok for o in outcomes), outcomes[0].error
    assert sum(o.rows[0][0] for o in outcomes) == len(events)
    checks = stack.run("grafana", [
        ("query", DB, "SELECT count() FROM events", None),
        ("query", DB, "SELECT sum(events) FROM events_per_minute", None),
        *[("query", DB, f"SELECT count() FROM {r}", None) for r in ROLLUPS]])
    assert all(c.ok for c in checks), [c.error for c in checks if not c.ok]
    assert checks[0].rows == [(len(events),)]
    assert checks[1].rows == [(len(events),)]
    for rollup, check in zip(ROLLUPS, checks[2:], strict=True):
        assert check.rows[0][0] > 0, f"{rollup} is empty"


def test_ingest_health_check_answers(stack):
    (ping,) = stack.run("ingest", [("ping",)])
    assert ping.ok and ping.rows == [(True,)]


INGEST_MAY_NOT = [
    # What the events say, and who sent them: ingest may read which insert stored a row, never its content.
    f"SELECT session_id FROM {DB}.events",
    f"SELECT user_id FROM {DB}.events",
    f"SELECT properties FROM {DB}.events",
    f"SELECT * FROM {DB}.events",
    f"SELECT count() FROM {DB}.active_sessions_5m",
    f"SELECT count() FROM {DB}.feature_users_per_minute",
    "SELECT count() FROM other.t",
    f"CREATE TABLE {DB}.extra (x UInt8) ENGINE = MergeTree ORDER BY x",
    f"DROP TABLE {DB}.events",
    f"TRUNCATE TABLE {DB}.events",
    f"ALTER TABLE {DB}.events DELETE WHERE 1",
    f"ALTER TABLE {DB}.events_per_minute DELETE WHERE 1",
    "INSERT INTO other.t VALUES (1)",
    "CREATE DATABASE more",
    "SELECT name FROM system.users",
]


def test_ingest_may_do_nothing_but_insert_and_check_its_inserts(stack):
    outcomes = stack.run("ingest", [("command", None, sql) for sql in INGEST_MAY_NOT])
    allowed = {sql: o for sql, o in zip(INGEST_MAY_NOT, outcomes, strict=True) if not o.refused()}
    assert not allowed


def test_ingest_finds_its_inserts_after_a_crash_and_repairs_a_rollup_that_missed_one(stack):
    """After a crash the service asks which inserts of a batch are stored and makes the rollups agree; as ingest, on
    the server's grants. A counting rollup that lacks the insert gets it once; one that has it is left alone."""
    at = truth.T - timedelta(days=3)  # a day of its own in the shared data: the rollups' keys hold only this batch
    batch = [{**as_event(truth.build_events()[0]), "timestamp": iso(at + timedelta(seconds=i)),
              "session_id": f"repair-{i}", "event_name": "page_view"} for i in range(40)]
    token = "0c0ffee0:7-9"
    inserted, stored = stack.run("ingest", [("ingest", batch, f"{token}[0:40]"), ("stored_inserts", token, batch)])
    assert inserted.ok and stored.ok, inserted.error or stored.error
    assert stored.rows == [(f"{token}[0:40]", 40)]
    (lost,) = stack.run("admin", [("command", DB, "ALTER TABLE events_per_minute DELETE WHERE minute >= "
                                  f"toDateTime('{at:%Y-%m-%d %H:%M:%S}', 'UTC') - 60 AND minute < "
                                  f"toDateTime('{at:%Y-%m-%d %H:%M:%S}', 'UTC') + 120 SETTINGS mutations_sync = 2")])
    assert lost.ok, lost.error
    first_ms = int(at.timestamp() * 1000)
    (repair,) = stack.run("ingest", [("repair", f"{token}[0:40]", first_ms, first_ms + 39_000)])
    assert repair.ok, repair.error
    outcomes = dict(repair.rows)
    assert outcomes.pop("events_per_minute") == "added"
    assert outcomes.pop("events_per_minute_by_segment") == outcomes.pop("segments_per_day") == "present"
    assert set(outcomes.values()) == {"added"}  # distinct counts take the rows again: a repeat changes nothing
    (sums,) = stack.run("grafana", [("query", DB, "SELECT sum(events) FROM events_per_minute WHERE toDate(minute) = "
                                    f"'{at:%Y-%m-%d}'", None)])
    assert sums.rows == [(40,)]


# --- grafana -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("selection", ["everyone", "several devices, several countries"])
def test_grafana_panels_show_what_ingest_stored(stack, ingested, selection):
    events, _ = ingested
    keep = truth.keeps(selection)
    dashboard = load_dashboard()
    variables = dashboard_variables(dashboard, truth.chosen(selection))
    panels = panel_queries(dashboard)
    qrange = QueryRange(truth.F, truth.T)
    outcomes = stack.run("grafana", [("query", DB, expand(substitute(p.raw_sql, variables), qrange), None)
                                     for p in panels])
    got = {p.title: o for p, o in zip(panels, outcomes, strict=True)}
    assert all(o.ok for o in outcomes), {t: o.error for t, o in got.items() if not o.ok}
    assert [(truth.utc(t), v) for t, v in got["Active users"].rows] == truth.expected_active(events, keep)
    assert [(truth.utc(t), s, c) for t, s, c, _ in got["Signup funnel"].rows] == \
        [r[:3] for r in truth.expected_funnel(events, keep)]
    assert got["Top features"].rows == truth.expected_top(events, keep)
    rates = [(truth.utc(t), v) for t, v in got["Error rate"].rows]
    expected = truth.expected_error_rate(events, keep)
    assert [t for t, _ in rates] == [t for t, _ in expected]
    assert all((g is None) == (w is None) and (w is None or g == pytest.approx(w))
               for (_, g), (_, w) in zip(rates, expected, strict=True))


def test_grafana_reads_the_values_the_variables_offer(stack, ingested):
    events, _ = ingested
    dashboard = load_dashboard()
    specs = [s for s in dashboard["templating"]["list"] if s["type"] == "query"]
    # A variable's query may use the variables above it (breakdown: the steps), substituted as Grafana does.
    saved = dashboard_variables({"templating": {"list": [s for s in dashboard["templating"]["list"]
                                                         if s["type"] == "textbox"]}})
    outcomes = stack.run("grafana", [("query", DB, substitute(spec["query"]["rawSql"], saved), None)
                                     for spec in specs])
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    got = {spec["name"]: [row[0] for row in o.rows] for spec, o in zip(specs, outcomes, strict=True)}
    assert got["device_type"] == sorted({e[4] for e in events})
    assert [c.decode() if isinstance(c, bytes) else c for c in got["country_code"]] == sorted({e[5] for e in events})
    first_step = saved["steps"].value.split(",")[0]
    assert got["breakdown"] == [""] + sorted({k for e in events if e[0] == first_step for k in json.loads(e[6])})


def test_grafana_runs_the_alert_query(stack, ingested):
    events, _ = ingested
    rule = yaml.safe_load((ROOT / "grafana" / "provisioning" / "alerting" / "error-rate.yaml").read_text())
    (query,) = [d for d in rule["groups"][0]["rules"][0]["data"] if d["refId"] == "A"]
    window = timedelta(seconds=query["relativeTimeRange"]["from"])
    end = truth.T
    (outcome,) = stack.run("grafana", [("query", DB, expand(query["model"]["rawSql"], QueryRange(end - window, end)),
                                        None)])
    assert outcome.ok, outcome.error
    in_window = [e for e in events if end - window <= e[1] <= end]
    assert outcome.rows[0][1] == pytest.approx(100 * sum(e[0] == "error_occurred" for e in in_window) / len(in_window))


GRAFANA_MAY_NOT = [
    (f"INSERT INTO {DB}.events (event_name, timestamp, session_id, device_type, country_code, properties) "
     "VALUES ('page_view', now64(), 's', 'desktop', 'DE', '{}')", None),
    (f"CREATE TABLE {DB}.extra (x UInt8) ENGINE = MergeTree ORDER BY x", None),
    (f"DROP TABLE {DB}.events", None),
    (f"TRUNCATE TABLE {DB}.events_per_minute", None),
    ("SELECT count() FROM other.t", None),
    ("SELECT name FROM system.users", None),
    ("SET readonly = 0", None),
    ("SET max_memory_usage = 1000000000000", None),
    # As SQL: for a readonly user clickhouse-connect refuses a settings argument itself, before the server can.
    ("SELECT 1 SETTINGS max_result_rows = 1000000000", None),
    ("SELECT 1 SETTINGS readonly = 0", None),
]


def test_grafana_may_only_read(stack):
    outcomes = stack.run("grafana", [("query", DB, sql, settings) for sql, settings in GRAFANA_MAY_NOT])
    allowed = {f"{sql} {settings or ''}": o for (sql, settings), o in zip(GRAFANA_MAY_NOT, outcomes, strict=True)
               if not o.refused()}
    assert not allowed


# --- a volume initialised before the views had a definer ------------------------------------------------------------

def test_a_volume_from_the_old_ddl_is_repaired_by_the_next_schema_run(tmp_path):
    """Views created without a definer (the DDL before 003_view_definers.sql) refuse ingest's inserts until the
    schema runs again, as it does at every `docker compose up`. The refused insert had already written its block to
    events (a failing view does not undo that); the service's retry of the same batch (same token) is dropped there
    and fills the rollups, so every count ends exact."""
    users = ServerUsers(tmp_path, DB)
    assert users.apply_schema().returncode == 0
    sql_dir = ROOT / "clickhouse" / "init" / "sql"
    old_rollups = (sql_dir / "002_rollups.sql").read_text().replace("DEFINER = CURRENT_USER SQL SECURITY DEFINER", "")
    old = users.run("admin", [*[("command", DB, f"DROP VIEW {r}_mv SYNC") for r in ROLLUPS[:4]],
                              ("multiquery", DB, old_rollups)])
    assert all(o.ok for o in old), [o.error for o in old if not o.ok]
    (views,) = users.run("admin", [("query", None, VIEWS_SQL, None)])
    assert sum(definer(create) == (None, None) for _, create in views.rows) == 4
    event = as_event(truth.build_events()[0])
    (refused,) = users.run("ingest", [("ingest", [event], "old-volume")])
    assert refused.code == 497 and "while pushing to view" in refused.error
    # The service reads this as a fault only an operator can fix (logged as an error, named in /health).
    assert failure_kind(Exception(refused.error)) == "access_denied"

    assert users.apply_schema().returncode == 0
    (stored,) = users.run("ingest", [("ingest", [event], "old-volume")])  # the service retries the same batch
    assert stored.ok, stored.error
    counts = users.run("grafana", [("query", DB, f"SELECT count() FROM {r}", None) for r in ("events", *ROLLUPS[:2])])
    assert [c.rows for c in counts] == [[(1,)], [(1,)], [(5,)]]  # one event, its minute, its five 5-minute windows


# --- the schema at every `up`, and what "healthy" means -------------------------------------------------------------

def test_the_schema_service_can_run_at_every_up(tmp_path):
    """The one-shot schema service runs at every `docker compose up`: the second run must succeed, change no table
    and send the same access statements (a role's grants revoked and given again, passwords set again)."""
    users = ServerUsers(tmp_path, DB)
    assert users.apply_schema().returncode == 0
    first = [s["sql"] for s in users.statements if not s["executed"]]
    (before,) = users.run("admin", [("query", None, f"SELECT name, create_table_query FROM system.tables "
                                                    f"WHERE database = '{DB}' ORDER BY name", None)])
    again = users.apply_schema()
    assert again.returncode == 0, again.stderr
    (after,) = users.run("admin", [("query", None, f"SELECT name, create_table_query FROM system.tables "
                                                   f"WHERE database = '{DB}' ORDER BY name", None)])
    assert after.rows == before.rows
    assert [s["sql"] for s in users.statements if not s["executed"]] == first


def test_the_schema_service_fails_without_the_admins_password(tmp_path):
    """A schema step that cannot log in exits non-zero, so ingest and Grafana (service_completed_successfully)
    never start on a half-made schema; it says why, without the password."""
    users = ServerUsers(tmp_path, DB)
    users.env = {**users.env, "CLICKHOUSE_ADMIN_PASSWORD": "another-password"}
    run = users.apply_schema()
    assert run.returncode == 1
    assert "schema apply on http://admin:***@" in run.stderr and "Authentication failed" in run.stderr
    assert stack_env()["CLICKHOUSE_ADMIN_PASSWORD"] not in run.stderr


FAKE_CLIENT = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ["ANSWER"] == "error":
    sys.exit("Code: 210. DB::NetException: Connection refused (3f2a9c1d7e4b:9000). (NETWORK_ERROR)")
print(os.environ["ANSWER"])
"""


def test_clickhouse_is_healthy_when_the_server_answers_admin_on_its_network_address(tmp_path):
    """Compose's healthcheck, run as Docker runs CMD-SHELL, against a stand-in client; what it asks is then
    asked of the real engine as admin."""
    (kind, command), = [services_healthcheck()]
    assert kind == "CMD-SHELL"
    env = environment("clickhouse", stack_env())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "clickhouse").write_text(FAKE_CLIENT)
    (bin_dir / "clickhouse").chmod(0o755)
    record = tmp_path / "calls.jsonl"

    def healthy(answer: str) -> bool:
        run_env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(record), "ANSWER": answer,
                   "HOSTNAME": "3f2a9c1d7e4b"}  # Docker sets HOSTNAME to the container's name
        return subprocess.run(["/bin/sh", "-c", command], env=run_env, capture_output=True, timeout=30).returncode == 0

    assert healthy("1") and not healthy("0") and not healthy("error")
    argv = json.loads(record.read_text().splitlines()[0])
    option = dict(zip(argv[1::2], argv[2::2], strict=True)) if argv[0] == "client" else {}
    # The container's own address, which the other services reach, not loopback.
    assert option["--host"] == "3f2a9c1d7e4b"
    assert (option["--user"], option["--password"]) == ("admin", env["CLICKHOUSE_ADMIN_PASSWORD"])
    assert set(option) == {"--host", "--user", "--password", "--query"}

    users = ServerUsers(tmp_path / "engine", DB)
    (answer,) = users.run("admin", [("query", None, option["--query"], None)])
    assert answer.ok and answer.rows == [(1,)]


def services_healthcheck() -> tuple[str, str]:
    """The ClickHouse healthcheck's test, as compose hands it to Docker ($$ is a literal $)."""
    test = compose()["services"]["clickhouse"]["healthcheck"]["test"]
    return test[0], interpolate(test[1], {})
