"""The dashboard's panel SQL and the alert query, expanded like the plugin and run on the real engine, give the
answers computed in plain Python from the test's own events: for everyone (the variables at All) and filtered by
device type and country (one value, several, one variable at All), over a minute-aligned and an unaligned range."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from ingest.grafana.dashboard import load_dashboard, load_options, panel_queries
from ingest.grafana.macros import QueryRange, expand
from ingest.grafana.variables import dashboard_variables, substitute
from ingest.storage.sink import Sink

from .harness.engine import read_only_database
from .harness.panel_truth import (
    COLUMNS,
    EMPTY_MINUTE,
    NO_START_HOUR,
    SELECTIONS,
    UF,
    UT,
    F,
    T,
    build_events,
    chosen,
    event_row,
    expected_active,
    expected_error_rate,
    expected_funnel,
    expected_top,
    floor_to,
    in_range,
    keeps,
    second,
    utc,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shared(chdb_path):
    """build_events() loaded once into a database of this module's own: the tests that take it only read it."""
    def load(client):
        events = build_events()
        client.insert("events", events, column_names=COLUMNS)
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


ALIGNED = QueryRange(F, T)  # run_panel's default range


def run_panel(ch, title, qrange=ALIGNED, selection="everyone"):
    """The panel's SQL as Grafana's frontend (template variables, their options loaded by their own queries) and
    the plugin's backend (macros) make it, run on the engine."""
    dashboard = load_dashboard()
    (panel,) = [p for p in panel_queries(dashboard) if p.title == title]

    def run(sql):
        result = ch.query(sql)
        return list(result.column_names), result.result_rows
    variables = dashboard_variables(dashboard, chosen(selection), load_options(dashboard, qrange, run))
    result = ch.query(expand(substitute(panel.raw_sql, variables), qrange))
    return panel, list(result.column_names), result.result_rows


# The picker's 24 h, ending off the minute: the Active users sparkline has a point every 5 minutes there.
RANGES = {"aligned": (F, T), "unaligned": (UF, UT), "24 h": (UT - timedelta(hours=24), UT)}
CASES = [(s, r) for s in SELECTIONS for r in RANGES]


def test_dataset_has_the_edge_cases_it_claims(loaded):
    expected = dict(expected_error_rate(loaded))
    assert expected[EMPTY_MINUTE] is None
    funnel = {hour: (s, c) for hour, s, c, _ in expected_funnel(loaded)}
    assert funnel[NO_START_HOUR][0] == 0 and funnel[NO_START_HOUR][1] > 0
    top = dict(expected_top(loaded))
    assert top["aa_tied"] == top["zz_tied"] == 40
    assert any(e[3] is None and e[0] == "feature_used" for e in loaded)
    # Both ranges cut through minutes that hold events, so the raw-table part of every panel is exercised.
    assert any(UF <= e[1] < floor_to(UF, 60) + timedelta(minutes=1) for e in loaded)
    assert any(floor_to(UT, 60) <= e[1] <= UT for e in loaded)
    assert UF != floor_to(UF, 60) and UT != floor_to(UT, 60)


@pytest.mark.parametrize("selection", list(SELECTIONS)[1:])
def test_every_filter_keeps_some_events_and_drops_others_of_each_kind(loaded, selection):
    keep = keeps(selection)
    for name in ("page_view", "signup_started", "signup_completed", "feature_used", "error_occurred"):
        kept = [e for e in loaded if e[0] == name and in_range(e[1]) and keep(e)]
        assert kept and len(kept) < sum(e[0] == name and in_range(e[1]) for e in loaded), (selection, name)
    # A session seen in two segments the filter keeps: it must be counted once.
    segments = defaultdict(set)
    for e in loaded:
        if keep(e):
            segments[e[2]].add((e[4], e[5]))
    assert selection == "one device, one country" or any(len(s) > 1 for s in segments.values())


@pytest.mark.parametrize("selection, range_name", CASES)
def test_active_users_is_distinct_sessions_in_the_last_5_minutes_with_a_sparkline_of_5_minute_windows(
        reader, loaded, selection, range_name):
    start, end = RANGES[range_name]
    panel, columns, rows = run_panel(reader, "Active users", QueryRange(start, end), selection)
    got = [(utc(t), v) for t, v in rows]
    expected = expected_active(loaded, keeps(selection), start, end)
    assert got == expected
    # The big number (Grafana's "last" of the series) is the window ending at the range's end.
    end = second(end)
    assert got[-1] == (end, len({e[2] for e in loaded if keeps(selection)(e) and end - timedelta(minutes=5) < e[1]
                                 <= end}))
    assert got[-1][1] > 0 and any(v > 0 for _, v in got[:-1])


def test_the_big_numbers_window_is_open_at_its_start_and_closed_at_its_end(reader, loaded):
    _, _, rows = run_panel(reader, "Active users")
    window = {e[2] for e in loaded if T - timedelta(minutes=5) < e[1] <= T}
    assert "s-window-in" in window and "s-window-out" not in window
    assert rows[-1][1] == len(window)


@pytest.mark.parametrize("selection, range_name", CASES)
def test_signup_funnel_counts_per_hour_and_conversion_without_division_by_zero(reader, loaded, selection, range_name):
    start, end = RANGES[range_name]
    panel, columns, rows = run_panel(reader, "Signup funnel", QueryRange(start, end), selection)
    assert columns == ["time", "started", "completed", "conversion_pct"]
    got = [(utc(t), s, c, pct) for t, s, c, pct in rows]
    expected = expected_funnel(loaded, keeps(selection), start, end)
    assert [r[:3] for r in got] == [r[:3] for r in expected]
    assert sum(r[1] for r in expected) > 0
    for (_, _, _, got_pct), (hour, _, _, want_pct) in zip(got, expected, strict=True):
        assert (got_pct is None) == (want_pct is None), hour
        if want_pct is not None:
            assert got_pct == pytest.approx(want_pct)
    if selection == "everyone":
        assert dict((r[0], r[3]) for r in got)[NO_START_HOUR] is None


@pytest.mark.parametrize("selection, range_name", CASES)
def test_top_features_ranks_ten_by_unique_users_ties_alphabetical(reader, loaded, selection, range_name):
    start, end = RANGES[range_name]
    panel, columns, rows = run_panel(reader, "Top features", QueryRange(start, end), selection)
    assert columns == ["feature", "users"]
    assert [tuple(r) for r in rows] == expected_top(loaded, keeps(selection), start, end)
    assert len(rows) == 10


@pytest.mark.parametrize("selection, range_name", CASES)
def test_error_rate_is_percent_of_events_per_minute_with_gaps_for_empty_minutes(reader, loaded, selection, range_name):
    start, end = RANGES[range_name]
    panel, columns, rows = run_panel(reader, "Error rate", QueryRange(start, end), selection)
    got = [(utc(t), v) for t, v in rows]
    expected = expected_error_rate(loaded, keeps(selection), start, end)
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (t, g), (_, want) in zip(got, expected, strict=True):
        assert (g is None) == (want is None), t
        if want is not None:
            assert g == pytest.approx(want), t
    assert dict(got)[EMPTY_MINUTE] is None
    assert any(v for _, v in expected) and any(v is None for _, v in expected)
    if selection == "everyone" and range_name == "aligned":
        # The range's first and last second hold the boundary events.
        assert dict(got)[floor_to(F, 60)] is not None and dict(got)[floor_to(T, 60)] is not None


def _alert_rule():
    doc = yaml.safe_load((ROOT / "grafana" / "provisioning" / "alerting" / "error-rate.yaml").read_text())
    (group,) = doc["groups"]
    (rule,) = group["rules"]
    return group, rule


def test_alert_query_returns_the_error_rate_its_threshold_compares(reader, loaded):
    group, rule = _alert_rule()
    data = {d["refId"]: d for d in rule["data"]}
    query = data["A"]
    window = timedelta(seconds=query["relativeTimeRange"]["from"])
    assert window == timedelta(minutes=5) and query["relativeTimeRange"]["to"] == 0
    # The condition is: last value of A > 1 (percent).
    assert data["B"]["model"]["type"] == "reduce" and data["B"]["model"]["expression"] == "A"
    assert data["B"]["model"]["reducer"] == "last"
    assert rule["condition"] == "C" and data["C"]["model"]["expression"] == "B"
    (cond,) = data["C"]["model"]["conditions"]
    assert cond["evaluator"] == {"type": "gt", "params": [1]}

    for end in (T, T - timedelta(minutes=42), F - timedelta(hours=1)):  # the last window holds no events at all
        qrange = QueryRange(end - window, end, timedelta(milliseconds=query["model"]["intervalMs"]))
        rows = reader.query(expand(query["model"]["rawSql"], qrange)).result_rows
        window_events = [e for e in loaded if in_range(e[1], end - window, end)]
        want = 0.0 if not window_events else \
            100 * sum(e[0] == "error_occurred" for e in window_events) / len(window_events)
        assert len(rows) == 1
        assert utc(rows[0][0]) == end
        assert rows[0][1] == pytest.approx(want)


def test_alert_fires_on_a_window_above_one_percent_and_not_below(ch, settings):
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    end = T
    calm = [event_row("page_view", end - timedelta(seconds=i), f"c{i}") for i in range(1, 200)] + \
        [event_row("error_occurred", end - timedelta(seconds=250), "c-err")]            # 1 of 200 = 0.5 %
    ch.insert("events", calm, column_names=COLUMNS)
    _, rule = _alert_rule()
    sql = {d["refId"]: d for d in rule["data"]}["A"]["model"]["rawSql"]
    window = QueryRange(end - timedelta(minutes=5), end)
    assert ch.query(expand(sql, window)).result_rows[0][1] == pytest.approx(0.5)
    ch.insert("events", [event_row("error_occurred", end - timedelta(seconds=10), f"e{i}") for i in range(3)],
              column_names=COLUMNS)                                            # 4 of 203 ≈ 1.97 %
    assert ch.query(expand(sql, window)).result_rows[0][1] == pytest.approx(100 * 4 / 203)
    assert ch.query(expand(sql, window)).result_rows[0][1] > 1
