"""The dashboard's panel SQL and the alert query, expanded like the plugin and run on the real engine, give the
answers computed in plain Python from the test's own events."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from ingest.macros import QueryRange, expand
from ingest.dashboard import load_dashboard, panel_queries
from ingest.sink import Sink

ROOT = Path(__file__).resolve().parent.parent
MS = timedelta(milliseconds=1)
COLUMNS = ["event_name", "timestamp", "session_id", "user_id", "device_type", "country_code", "properties"]

# The range: 6 hours ending mid-hour, a few hours ago (well inside the table's 90-day TTL).
T = (datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
     + timedelta(minutes=30))
F = T - timedelta(hours=6)
EMPTY_MINUTE = (T - timedelta(minutes=20)).replace(second=0)  # no event at all in this minute
NO_START_HOUR = (F + timedelta(hours=2)).replace(minute=0)     # completions but no starts in this hour


def _ev(name, at, session, user=None, feature=None):
    props = json.dumps({"feature": feature}) if feature is not None else "{}"
    return (name, at, session, user, "desktop", "DE", props)


def build_events() -> list[tuple]:
    """Random traffic plus the edge cases the panels must get right."""
    rnd = random.Random(20261127)
    names = ["page_view"] * 6 + ["button_click"] * 3 + ["signup_started"] * 2 + ["signup_completed"] * 2 \
        + ["feature_used"] * 4 + ["error_occurred"]
    span_ms = int((T - F) / MS) + 10 * 60_000  # also before the range, where only the 5-minute window looks
    events = []
    for _ in range(1500):
        at = F - timedelta(minutes=10) + rnd.randrange(span_ms) * MS
        name = rnd.choice(names)
        if at.replace(second=0, microsecond=0) == EMPTY_MINUTE:
            continue
        if name == "signup_started" and at.replace(minute=0, second=0, microsecond=0) == NO_START_HOUR:
            continue
        user = None if rnd.random() < 0.3 else f"u{rnd.randrange(25)}"
        feature = f"f{rnd.randrange(14):02d}" if name == "feature_used" else None
        events.append(_ev(name, at, f"s{rnd.randrange(60)}", user, feature))
    events += [
        _ev("signup_completed", NO_START_HOUR + timedelta(minutes=7), "s-late"),
        # Exactly on the range's ends: inside (the filter is inclusive at second precision); 1 ms out: outside.
        _ev("error_occurred", F, "s-edge-from"), _ev("page_view", T, "s-edge-to"),
        _ev("error_occurred", F - MS, "s-before"), _ev("error_occurred", T + MS, "s-after"),
        # The 5-minute window of the big number is (T-5m, T]: the first is out, the second in.
        _ev("page_view", T - timedelta(minutes=5), "s-window-out"),
        _ev("page_view", T - timedelta(minutes=5) + MS, "s-window-in"),
        # A tie in the ranking, broken alphabetically; anonymous users count once per session.
        *[_ev("feature_used", T - timedelta(minutes=30), f"s-tie-{i}", f"tie-user-{i}", "zz_tied") for i in range(40)],
        *[_ev("feature_used", T - timedelta(minutes=31), f"s-tie-{i}", None, "aa_tied") for i in range(39)],
        _ev("feature_used", T - timedelta(minutes=31), "s-tie-0", None, "aa_tied"),  # same session: no new user
        _ev("feature_used", T - timedelta(minutes=31), "s-tie-x", "tie-user-x", "aa_tied"),
    ]
    return events


def in_range(at, start=F, end=T) -> bool:
    return start <= at <= end


def floor_to(at, seconds):
    epoch = int(at.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(epoch, timezone.utc)


def expected_active(events):
    """(time, distinct sessions in (time - 5m, time]) for time = T, T-1m, ... back to F."""
    points = []
    p = 0
    while T - timedelta(minutes=p) >= F:
        point = T - timedelta(minutes=p)
        points.append((point, len({e[2] for e in events if point - timedelta(minutes=5) < e[1] <= point})))
        p += 1
    return sorted(points)


def expected_funnel(events):
    started, completed = defaultdict(int), defaultdict(int)
    for name, at, *_ in events:
        if in_range(at) and name in ("signup_started", "signup_completed"):
            (started if name == "signup_started" else completed)[floor_to(at, 3600)] += 1
    rows, hour = [], floor_to(F, 3600)
    while hour <= T:
        s, c = started[hour], completed[hour]
        rows.append((hour, s, c, None if s == 0 else 100 * c / s))
        hour += timedelta(hours=1)
    return rows


def expected_top(events):
    users = defaultdict(set)
    for name, at, session, user, _, _, props in events:
        if name == "feature_used" and in_range(at):
            users[json.loads(props)["feature"]].add(("user", user) if user is not None else ("anonymous", session))
    return sorted(((f, len(u)) for f, u in users.items()), key=lambda r: (-r[1], r[0]))[:10]


def expected_error_rate(events, start=F, end=T):
    total, errors = defaultdict(int), defaultdict(int)
    for name, at, *_ in events:
        if in_range(at, start, end):
            total[floor_to(at, 60)] += 1
            errors[floor_to(at, 60)] += name == "error_occurred"
    rows, minute = [], floor_to(start, 60)
    while minute <= end:
        rows.append((minute, None if total[minute] == 0 else 100 * errors[minute] / total[minute]))
        minute += timedelta(minutes=1)
    return rows


def utc(value):
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@pytest.fixture
def loaded(ch, settings):
    """The events table in the test's database, filled with build_events()."""
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    events = build_events()
    ch.insert("events", events, column_names=COLUMNS)
    return events


def run_panel(ch, title, qrange=QueryRange(F, T)):
    (panel,) = [p for p in panel_queries(load_dashboard()) if p.title == title]
    result = ch.query(expand(panel.raw_sql, qrange))
    return panel, list(result.column_names), result.result_rows


def test_dataset_has_the_edge_cases_it_claims(loaded):
    expected = dict(expected_error_rate(loaded))
    assert expected[EMPTY_MINUTE] is None
    funnel = {hour: (s, c) for hour, s, c, _ in expected_funnel(loaded)}
    assert funnel[NO_START_HOUR][0] == 0 and funnel[NO_START_HOUR][1] > 0
    top = dict(expected_top(loaded))
    assert top["aa_tied"] == top["zz_tied"] == 40
    assert any(e[3] is None and e[0] == "feature_used" for e in loaded)


def test_active_users_is_distinct_sessions_in_the_last_5_minutes_with_a_per_minute_sparkline(ch, loaded):
    panel, columns, rows = run_panel(ch, "Active users")
    got = [(utc(t), v) for t, v in rows]
    expected = expected_active(loaded)
    assert got == expected
    # The big number (Grafana's "last" of the series) is the window ending at the range's end.
    assert got[-1] == (T, len({e[2] for e in loaded if T - timedelta(minutes=5) < e[1] <= T}))
    assert "s-window-in" in {e[2] for e in loaded if T - timedelta(minutes=5) < e[1] <= T}


def test_signup_funnel_counts_per_hour_and_conversion_without_division_by_zero(ch, loaded):
    panel, columns, rows = run_panel(ch, "Signup funnel")
    assert columns == ["time", "started", "completed", "conversion_pct"]
    got = [(utc(t), s, c, pct) for t, s, c, pct in rows]
    expected = expected_funnel(loaded)
    assert [r[:3] for r in got] == [r[:3] for r in expected]
    for (_, _, _, got_pct), (hour, _, _, want_pct) in zip(got, expected):
        assert (got_pct is None) == (want_pct is None), hour
        if want_pct is not None:
            assert got_pct == pytest.approx(want_pct)
    assert dict((r[0], r[3]) for r in got)[NO_START_HOUR] is None


def test_top_features_ranks_ten_by_unique_users_ties_alphabetical(ch, loaded):
    panel, columns, rows = run_panel(ch, "Top features")
    assert columns == ["feature", "users"]
    assert [tuple(r) for r in rows] == expected_top(loaded)
    assert len(rows) == 10


def test_error_rate_is_percent_of_events_per_minute_with_gaps_for_empty_minutes(ch, loaded):
    panel, columns, rows = run_panel(ch, "Error rate")
    got = [(utc(t), v) for t, v in rows]
    expected = expected_error_rate(loaded)
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (t, g), (_, want) in zip(got, expected):
        assert (g is None) == (want is None), t
        if want is not None:
            assert g == pytest.approx(want), t
    assert dict(got)[EMPTY_MINUTE] is None
    # The range's first and last second hold the boundary events.
    assert dict(got)[floor_to(F, 60)] is not None and dict(got)[floor_to(T, 60)] is not None


def _alert_rule():
    doc = yaml.safe_load((ROOT / "grafana" / "provisioning" / "alerting" / "error-rate.yaml").read_text())
    (group,) = doc["groups"]
    (rule,) = group["rules"]
    return group, rule


def test_alert_query_returns_the_error_rate_its_threshold_compares(ch, loaded):
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
        rows = ch.query(expand(query["model"]["rawSql"], qrange)).result_rows
        window_events = [e for e in loaded if in_range(e[1], end - window, end)]
        want = 0.0 if not window_events else \
            100 * sum(e[0] == "error_occurred" for e in window_events) / len(window_events)
        assert len(rows) == 1
        assert utc(rows[0][0]) == end
        assert rows[0][1] == pytest.approx(want)


def test_alert_fires_on_a_window_above_one_percent_and_not_below(ch, settings):
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    end = T
    calm = [_ev("page_view", end - timedelta(seconds=i), f"c{i}") for i in range(1, 200)] + \
        [_ev("error_occurred", end - timedelta(seconds=250), "c-err")]            # 1 of 200 = 0.5 %
    ch.insert("events", calm, column_names=COLUMNS)
    _, rule = _alert_rule()
    sql = {d["refId"]: d for d in rule["data"]}["A"]["model"]["rawSql"]
    window = QueryRange(end - timedelta(minutes=5), end)
    assert ch.query(expand(sql, window)).result_rows[0][1] == pytest.approx(0.5)
    ch.insert("events", [_ev("error_occurred", end - timedelta(seconds=10), f"e{i}") for i in range(3)],
              column_names=COLUMNS)                                            # 4 of 203 ≈ 1.97 %
    assert ch.query(expand(sql, window)).result_rows[0][1] == pytest.approx(100 * 4 / 203)
    assert ch.query(expand(sql, window)).result_rows[0][1] > 1
