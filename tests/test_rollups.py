"""The dashboard reads per-minute rollups (clickhouse/init/sql/002_rollups.sql, and per segment 004_segments.sql) plus
the raw table for partial edge minutes; its answers must equal the raw-table SQL's (tests/raw_panels/) for any range,
minute-aligned or not, for everyone and filtered by device type and country."""

from __future__ import annotations

import json
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingest.grafana.dashboard import load_dashboard, panel_queries
from ingest.grafana.macros import QueryRange, expand
from ingest.grafana.variables import dashboard_variables, substitute
from ingest.storage.ddl import ddl_files, statements
from ingest.storage.rollups import rebuild
from ingest.storage.sink import Sink

from .harness.engine import read_only_database
from .harness.panel_truth import COLUMNS, COUNTRIES, DEVICES, MS, SELECTIONS, chosen

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "tests" / "raw_panels"
RAW_SQL = {"Active users": "active_users.sql", "Signup funnel": "signup_funnel.sql",
           "Top features": "top_features.sql", "Error rate": "error_rate.sql"}
UNSEGMENTED = ("events_per_minute", "active_sessions_5m", "feature_users_per_minute", "feature_users_per_hour")
SEGMENTED = ("events_per_minute_by_segment", "active_sessions_5m_by_segment", "feature_users_per_minute_by_segment",
             "feature_users_per_hour_by_segment")
ROLLUPS = (*UNSEGMENTED, *SEGMENTED, "segments_per_day")

# Three hours of traffic ending an hour ago, on whole minutes; the ranges below cut it in every way a picker can.
B = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(hours=4)
S = timedelta(seconds=1)
RANGES = {
    "whole minutes": (B + timedelta(minutes=30), B + timedelta(hours=2, minutes=30)),
    "ends mid-minute": (B + timedelta(minutes=30, seconds=17), B + timedelta(hours=2, seconds=41)),
    "start mid-minute": (B + timedelta(minutes=9, seconds=59), B + timedelta(hours=1)),
    "end mid-minute": (B + timedelta(minutes=1), B + timedelta(hours=2, minutes=7, seconds=1)),
    "milliseconds on the ends": (B + timedelta(minutes=44, seconds=3, milliseconds=700),
                                 B + timedelta(hours=1, minutes=50, seconds=12, milliseconds=999)),
    "inside one minute": (B + timedelta(hours=1, seconds=5), B + timedelta(hours=1, seconds=50)),
    "across one minute boundary": (B + timedelta(hours=1, minutes=3, seconds=40),
                                   B + timedelta(hours=1, minutes=4, seconds=20)),
    "all of it": (B - timedelta(minutes=10), B + timedelta(hours=3, minutes=10)),
}


def _ev(name, at, session, user=None, feature=None, device="mobile", country="FR"):
    props = json.dumps({"feature": feature}) if feature is not None else "{}"
    return (name, at, session, user, device, country, props)


def random_events(seed: int = 5) -> list[tuple]:
    """Random traffic, plus events on every range's ends (the filter is inclusive to the second) and next to them."""
    rnd = random.Random(seed)
    names = ["page_view"] * 5 + ["button_click"] * 3 + ["signup_started", "signup_completed", "error_occurred"] \
        + ["feature_used"] * 4
    span_ms = 3 * 3600 * 1000
    events = []
    for _ in range(4000):
        at = B + rnd.randrange(span_ms) * MS
        if rnd.random() < 0.05:  # exactly on a minute: the edge between two rollup rows
            at = at.replace(second=0, microsecond=0)
        name = rnd.choice(names)
        user = None if rnd.random() < 0.3 else f"u{rnd.randrange(50)}"
        feature = f"f{rnd.randrange(14):02d}" if name == "feature_used" else None
        device, country = rnd.choice(DEVICES), rnd.choice(COUNTRIES)
        events.append(_ev(name, at, f"s{rnd.randrange(80)}", user, feature, device, country))
    for i, (start, end) in enumerate(RANGES.values()):
        for at in (start.replace(microsecond=0), end.replace(microsecond=0)):
            for offset in (-MS, 0 * MS, MS, 999 * MS):
                name = rnd.choice(["error_occurred", "feature_used", "signup_started", "page_view"])
                feature = "f-edge" if name == "feature_used" else None
                device, country = rnd.choice(DEVICES), rnd.choice(COUNTRIES)
                events.append(_ev(name, at + offset, f"s-edge-{i}", None, feature, device, country))
        # Inside every range, each kind of event in a segment each filter of SELECTIONS keeps, so no comparison is
        # between two empty answers.
        for k, (device, country) in enumerate((("mobile", "DE"), ("tablet", "FR"), ("desktop", "US"))):
            for name in ("error_occurred", "feature_used", "signup_started", "page_view"):
                feature = "f-mid" if name == "feature_used" else None
                events.append(_ev(name, start + (end - start) / 2 + k * MS, f"s-mid-{i}-{k}", None, feature, device,
                                  country))
    rnd.shuffle(events)
    return events


def _normal(rows):
    return [tuple(v.astimezone(timezone.utc) if isinstance(v, datetime) and v.tzinfo
                  else v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) else v for v in row)
            for row in rows]


def _insert_in_batches(ch, events, batches=5):
    # Several inserts: the views write one set of rollup rows per insert, so a query must merge across parts.
    size = len(events) // batches + 1
    for i in range(0, len(events), size):
        ch.insert("events", events[i:i + size], column_names=COLUMNS)


def _pairs(selection="everyone"):
    """(title, dashboard SQL, raw-table SQL) for the four panels that read rollups (the others and the alerts read
    the raw table), with the dashboard variables substituted for the selection as Grafana's frontend does."""
    dashboard = load_dashboard()
    variables = dashboard_variables(dashboard, chosen(selection))
    return [(p.title, substitute(p.raw_sql, variables), substitute((RAW / RAW_SQL[p.title]).read_text(), variables))
            for p in panel_queries(dashboard) if p.title in RAW_SQL]


def test_only_the_panels_with_a_raw_table_twin_read_rollups():
    # A panel reading a rollup must have its raw-table twin here, or nothing checks that it counts what the raw
    # table holds.
    for panel in panel_queries(load_dashboard()):
        tables = set(re.findall(r"\bFROM\s+(\w+)", re.sub(r"--[^\n]*", "", panel.raw_sql)))
        if panel.title in RAW_SQL:
            assert tables & set(ROLLUPS), panel.title
        else:
            assert not tables & set(ROLLUPS), f"{panel.title} reads {sorted(tables & set(ROLLUPS))}: add its twin"


@pytest.fixture(scope="module")
def shared(chdb_path):
    """random_events() loaded once (in batches) into a database of this module's own: the tests that take it only
    read it."""
    def load(client):
        events = random_events()
        _insert_in_batches(client, events)
        return events

    with read_only_database(chdb_path, load) as shared:
        yield shared


@pytest.fixture
def reader(shared):
    """A read-only client on the shared database."""
    return shared[0]


@pytest.fixture
def loaded(shared):
    """The events the shared database holds."""
    return shared[1]


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_every_panel_answers_as_the_raw_table_for_any_range(reader, loaded, selection):
    assert len(_pairs(selection)) == 4
    for range_name, (start, end) in RANGES.items():
        qrange = QueryRange(start, end, timedelta(seconds=10))
        for name, dashboard_sql, raw_sql in _pairs(selection):
            got = _normal(reader.query(expand(dashboard_sql, qrange)).result_rows)
            want = _normal(reader.query(expand(raw_sql, qrange)).result_rows)
            assert want, f"{name}, {range_name}: the reference returned nothing, the comparison would prove nothing"
            assert got == want, f"{name}, {range_name}, {selection}"


def _estimate(ch, sql: str) -> dict[str, int]:
    """Rows ClickHouse plans to read per table (EXPLAIN ESTIMATE, after index analysis)."""
    rows: dict[str, int] = {}
    for _, table, _, n, _ in ch.query("EXPLAIN ESTIMATE " + sql).result_rows:
        rows[table] = rows.get(table, 0) + n
    return rows


def test_all_reads_only_the_unsegmented_rollups_and_a_filter_only_the_segmented_ones(reader, loaded):
    """"All" must cost what the dashboard cost before the segments: its query plans no row of a segmented rollup;
    a filter plans no row of an unsegmented one (the branch it does not take has a constant-false WHERE)."""
    qrange = QueryRange(*RANGES["all of it"])
    for selection in SELECTIONS:
        for name, dashboard_sql, _ in _pairs(selection):
            planned = _estimate(reader, expand(dashboard_sql, qrange))
            skipped = SEGMENTED if selection == "everyone" else UNSEGMENTED
            assert not {t: n for t, n in planned.items() if t in skipped and n}, (name, selection, planned)
            assert any(planned.get(t) for t in set(ROLLUPS) - set(skipped)), (name, selection, planned)


def test_the_ranges_cut_through_minutes_that_hold_events(loaded):
    # Otherwise the raw-table part of the dashboard SQL (the partial edge minutes) would go untested.
    cut = 0
    for start, end in RANGES.values():
        f, t = start.replace(microsecond=0), end.replace(microsecond=0)
        first_whole = f if f.second == 0 else f.replace(second=0) + timedelta(minutes=1)
        last_partial = t.replace(second=0)
        cut += any(f <= e[1] < first_whole or last_partial <= e[1] <= t for e in loaded
                   if (f.second or t.second))
    assert cut >= 5


@pytest.mark.parametrize("selection", ["everyone", "every device, one country"])
def test_edge_minutes_are_read_whole_when_an_index_granule_starts_just_before_a_minute(ch, settings, selection):
    # 20,000 signups 10 ms apart in one insert: one part, index granules of 8,192 rows, the second starting 80 ms
    # before minute M. A strict `timestamp < M` written with a DateTime constant loses that granule's first 80 ms
    # (ClickHouse 26.9 primary-key analysis); the dashboard must not.
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    m = B + timedelta(hours=1)
    first = m - timedelta(seconds=82)
    ch.insert("events", [_ev("signup_started", first + i * 10 * MS, f"s{i % 50}") for i in range(20_000)],
              column_names=COLUMNS)
    (granule_start,) = ch.query("SELECT timestamp FROM events WHERE _part_offset = 8192").result_rows[0]
    assert timedelta(0) < m - granule_start.replace(tzinfo=timezone.utc) < timedelta(seconds=1)
    qrange = QueryRange(m - timedelta(seconds=30), m + timedelta(minutes=2, seconds=5))
    for name, dashboard_sql, raw_sql in _pairs(selection):
        assert _normal(ch.query(expand(dashboard_sql, qrange)).result_rows) == \
            _normal(ch.query(expand(raw_sql, qrange)).result_rows), name
    funnel_sql = {title: sql for title, sql, _ in _pairs(selection)}["Signup funnel"]
    ((started,),) = ch.query(f"SELECT sum(started) FROM ({expand(funnel_sql, qrange)})").result_rows
    assert started == sum(qrange.start <= first + i * 10 * MS <= qrange.end for i in range(20_000))


@pytest.mark.parametrize("selection", ["everyone", "every device, one country"])
def test_the_big_number_counts_every_session_when_an_index_granule_starts_just_after_the_window_opens(
        ch, settings, selection):
    # As above for the window's strict lower bound: the second granule starts 200 ms after end - 5 min; a strict
    # `timestamp > <DateTime>` drops the sessions of the first granule's last 200 ms.
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    opens = B + timedelta(hours=1)
    first = opens - timedelta(seconds=81.92) + timedelta(milliseconds=200)
    rows = [_ev("page_view", first + i * 10 * MS, f"s{i // 10}") for i in range(20_000)]
    ch.insert("events", rows, column_names=COLUMNS)
    (granule_start,) = ch.query("SELECT timestamp FROM events WHERE _part_offset = 8192").result_rows[0]
    assert timedelta(0) < granule_start.replace(tzinfo=timezone.utc) - opens < timedelta(seconds=1)
    end = opens + timedelta(minutes=5)
    active_sql = {title: sql for title, sql, _ in _pairs(selection)}["Active users"]
    last = ch.query(expand(active_sql, QueryRange(end - timedelta(hours=1), end))).result_rows[-1]
    assert last[1] == len({e[2] for e in rows if opens < e[1] <= end})


def _apply_only_the_events_table(settings):
    """A deployment from before the rollups: only 001_events.sql applied."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=settings.clickhouse_url, database=settings.clickhouse_database)
    try:
        (name, text), *_ = ddl_files()
        assert name == "001_events.sql"
        for statement in statements(text):
            client.command(statement)
    finally:
        client.close()


def test_events_from_before_the_rollups_existed_appear_after_a_rebuild(ch, settings):
    _apply_only_the_events_table(settings)
    old = random_events(seed=7)
    _insert_in_batches(ch, old[:3000])
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()  # the upgrade: views from now on
    _insert_in_batches(ch, old[3000:], batches=2)
    qrange = QueryRange(*RANGES["ends mid-minute"])
    (_, dashboard_sql, raw_sql) = [p for p in _pairs("one device, one country") if p[0] == "Error rate"][0]

    def agree():
        return ch.query(expand(dashboard_sql, qrange)).result_rows == ch.query(expand(raw_sql, qrange)).result_rows

    assert not agree(), "the views only see inserts made after they exist"
    counts = rebuild(ch)
    assert set(counts) == set(ROLLUPS)
    assert all(n > 0 for n in counts.values())
    for selection in SELECTIONS:
        for name, dashboard_sql, raw_sql in _pairs(selection):
            assert _normal(ch.query(expand(dashboard_sql, qrange)).result_rows) == \
                _normal(ch.query(expand(raw_sql, qrange)).result_rows), (name, selection)
    assert rebuild(ch) == counts, "a second rebuild starts from empty tables again: nothing is counted twice"
    assert agree()


def test_rollups_keep_the_events_tables_retention_and_monthly_partitions(reader, loaded):
    tables = dict(reader.query("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() "
                           "AND engine LIKE '%MergeTree'").result_rows)
    assert set(tables) == {"events", *ROLLUPS}
    for name, engine in tables.items():
        if name != "events":
            assert "PARTITION BY toYYYYMM(" in engine and "TTL " in engine, name
            assert "+ toIntervalDay(90)" in engine, name


def test_rebuild_rollups_command_refills_the_configured_database(ch, settings, monkeypatch, capsys):
    from ingest.cli import main as cli

    _apply_only_the_events_table(settings)
    _insert_in_batches(ch, random_events(seed=9)[:500], batches=1)
    monkeypatch.setenv("CLICKHOUSE_URL", settings.clickhouse_url)
    monkeypatch.setenv("CLICKHOUSE_DATABASE", settings.clickhouse_database)
    assert cli(["rebuild-rollups"]) == 0
    assert "events_per_minute: " in capsys.readouterr().out
    assert ch.command("SELECT sum(events) FROM events_per_minute") == 500
