"""The dashboard's panel SQL and the alert query, expanded like the plugin and run on the real engine, give the
answers computed in plain Python from the test's own events: for everyone (the variables at All) and filtered by
device type and country (one value, several, one variable at All), over a minute-aligned and an unaligned range."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from ingest.grafana.macros import QueryRange, expand
from ingest.grafana.dashboard import load_dashboard, load_options, panel_queries
from ingest.storage.sink import Sink
from ingest.grafana.variables import ALL, dashboard_variables, substitute

ROOT = Path(__file__).resolve().parent.parent
MS = timedelta(milliseconds=1)
COLUMNS = ["event_name", "timestamp", "session_id", "user_id", "device_type", "country_code", "properties"]

# The range: 6 hours ending mid-hour, a few hours ago (well inside the table's 90-day TTL).
T = (datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
     + timedelta(minutes=30))
F = T - timedelta(hours=6)
EMPTY_MINUTE = (T - timedelta(minutes=20)).replace(second=0)  # no event at all in this minute
NO_START_HOUR = (F + timedelta(hours=2)).replace(minute=0)     # completions but no starts in this hour
# A range whose ends are not on a minute: the panels read its partial first and last minute from the raw table.
UF, UT = F + timedelta(minutes=7, seconds=17), T - timedelta(minutes=3, seconds=41)
DEVICES = ["desktop", "mobile", "tablet", "other"]
COUNTRIES = ["DE", "FR", "US", "BR"]
# The dashboard variables' selections (None: All), as `python -m ingest panels --device ... --country ...` sets them.
SELECTIONS = {
    "everyone": (None, None),
    "one device, one country": (["mobile"], ["DE"]),
    "several devices, several countries": (["mobile", "tablet"], ["DE", "FR"]),
    "every device, one country": (None, ["FR"]),
    "one device, every country": (["desktop"], None),
}


def _ev(name, at, session, user=None, feature=None, device="desktop", country="DE"):
    props = json.dumps({"feature": feature}) if feature is not None else "{}"
    return (name, at, session, user, device, country, props)


def keeps(selection):
    """The selection as a predicate on an event row: what the panels must count."""
    devices, countries = SELECTIONS[selection]
    return lambda e: (devices is None or e[4] in devices) and (countries is None or e[5] in countries)


def everything(e) -> bool:
    return True


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
        # Device and country per event, so one session (one user) shows up in several segments: a filter on
        # several of them must still count it once.
        device, country = rnd.choice(DEVICES), rnd.choices(COUNTRIES, weights=[4, 3, 2, 1])[0]
        events.append(_ev(name, at, f"s{rnd.randrange(60)}", user, feature, device, country))
    # On the unaligned range's ends and next to them (1 ms before, on it, 1 ms and 999 ms after: the filter is
    # inclusive to the second), in segments some selections keep and others drop.
    for i, at in enumerate((UF, UT)):
        for offset, name, device, country in ((-MS, "error_occurred", "mobile", "DE"),
                                              (0 * MS, "feature_used", "mobile", "FR"),
                                              (MS, "signup_started", "tablet", "DE"),
                                              (999 * MS, "page_view", "desktop", "US")):
            feature = "f-edge" if name == "feature_used" else None
            events.append(_ev(name, at + offset, f"s-uedge-{i}", None, feature, device, country))
        for name in ("error_occurred", "feature_used", "signup_started", "page_view"):  # a segment no filter keeps
            events.append(_ev(name, at, f"s-uedge-other-{i}", None, "f-edge" if name == "feature_used" else None,
                              "other", "BR"))
    # f-edge, the feature used on the unaligned ends, is also used by 6 visitors of each segment inside both ranges,
    # so it ranks in every filter's top 10 and a wrong edge minute shows in its count.
    for i in range(6 * len(DEVICES) * len(COUNTRIES)):
        events.append(_ev("feature_used", T - timedelta(hours=2) + i * 10 * 1000 * MS, f"s-f-edge-{i}", None, "f-edge",
                          DEVICES[i % 4], COUNTRIES[i // 4 % 4]))
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


def second(at):
    """The plugin's macros take the range's ends in whole Unix seconds, rounded down."""
    return at.replace(microsecond=0)


def in_range(at, start=F, end=T) -> bool:
    return second(start) <= at <= second(end)


def floor_to(at, seconds):
    epoch = int(at.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(epoch, timezone.utc)


def expected_active(events, keep=everything, start=F, end=T):
    """(time, distinct sessions in (time - 5m, time]) for every whole minute in [start, end) (every 5 minutes on a
    range longer than 6 hours), then end itself."""
    start, end = second(start), second(end)
    step = 300 if end - start > timedelta(hours=6) else 60
    points, point = [], start if start == floor_to(start, step) else floor_to(start, step) + timedelta(seconds=step)
    while point < end:
        points.append(point)
        point += timedelta(seconds=step)
    return [(p, len({e[2] for e in events if keep(e) and p - timedelta(minutes=5) < e[1] <= p}))
            for p in points + [end]]


def expected_funnel(events, keep=everything, start=F, end=T):
    started, completed = defaultdict(int), defaultdict(int)
    for e in events:
        name, at = e[0], e[1]
        if keep(e) and in_range(at, start, end) and name in ("signup_started", "signup_completed"):
            (started if name == "signup_started" else completed)[floor_to(at, 3600)] += 1
    rows, hour = [], floor_to(start, 3600)
    while hour <= second(end):
        s, c = started[hour], completed[hour]
        rows.append((hour, s, c, None if s == 0 else 100 * c / s))
        hour += timedelta(hours=1)
    return rows


def expected_top(events, keep=everything, start=F, end=T):
    users = defaultdict(set)
    for e in events:
        name, at, session, user, _, _, props = e
        if keep(e) and name == "feature_used" and in_range(at, start, end):
            users[json.loads(props)["feature"]].add(("user", user) if user is not None else ("anonymous", session))
    return sorted(((f, len(u)) for f, u in users.items()), key=lambda r: (-r[1], r[0]))[:10]


def expected_error_rate(events, keep=everything, start=F, end=T):
    total, errors = defaultdict(int), defaultdict(int)
    for e in events:
        name, at = e[0], e[1]
        if keep(e) and in_range(at, start, end):
            total[floor_to(at, 60)] += 1
            errors[floor_to(at, 60)] += name == "error_occurred"
    rows, minute = [], floor_to(start, 60)
    while minute <= second(end):
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


def chosen(selection) -> dict[str, list[str]]:
    """The selection as variable values, All written as Grafana stores it."""
    devices, countries = SELECTIONS[selection]
    return {"device_type": devices or [ALL], "country_code": countries or [ALL]}


def run_panel(ch, title, qrange=QueryRange(F, T), selection="everyone"):
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
        ch, loaded, selection, range_name):
    start, end = RANGES[range_name]
    panel, columns, rows = run_panel(ch, "Active users", QueryRange(start, end), selection)
    got = [(utc(t), v) for t, v in rows]
    expected = expected_active(loaded, keeps(selection), start, end)
    assert got == expected
    # The big number (Grafana's "last" of the series) is the window ending at the range's end.
    end = second(end)
    assert got[-1] == (end, len({e[2] for e in loaded if keeps(selection)(e) and end - timedelta(minutes=5) < e[1]
                                 <= end}))
    assert got[-1][1] > 0 and any(v > 0 for _, v in got[:-1])


def test_the_big_numbers_window_is_open_at_its_start_and_closed_at_its_end(ch, loaded):
    _, _, rows = run_panel(ch, "Active users")
    window = {e[2] for e in loaded if T - timedelta(minutes=5) < e[1] <= T}
    assert "s-window-in" in window and "s-window-out" not in window
    assert rows[-1][1] == len(window)


@pytest.mark.parametrize("selection, range_name", CASES)
def test_signup_funnel_counts_per_hour_and_conversion_without_division_by_zero(ch, loaded, selection, range_name):
    start, end = RANGES[range_name]
    panel, columns, rows = run_panel(ch, "Signup funnel", QueryRange(start, end), selection)
    assert columns == ["time", "started", "completed", "conversion_pct"]
    got = [(utc(t), s, c, pct) for t, s, c, pct in rows]
    expected = expected_funnel(loaded, keeps(selection), start, end)
    assert [r[:3] for r in got] == [r[:3] for r in expected]
    assert sum(r[1] for r in expected) > 0
    for (_, _, _, got_pct), (hour, _, _, want_pct) in zip(got, expected):
        assert (got_pct is None) == (want_pct is None), hour
        if want_pct is not None:
            assert got_pct == pytest.approx(want_pct)
    if selection == "everyone":
        assert dict((r[0], r[3]) for r in got)[NO_START_HOUR] is None


@pytest.mark.parametrize("selection, range_name", CASES)
def test_top_features_ranks_ten_by_unique_users_ties_alphabetical(ch, loaded, selection, range_name):
    start, end = RANGES[range_name]
    panel, columns, rows = run_panel(ch, "Top features", QueryRange(start, end), selection)
    assert columns == ["feature", "users"]
    assert [tuple(r) for r in rows] == expected_top(loaded, keeps(selection), start, end)
    assert len(rows) == 10


@pytest.mark.parametrize("selection, range_name", CASES)
def test_error_rate_is_percent_of_events_per_minute_with_gaps_for_empty_minutes(ch, loaded, selection, range_name):
    start, end = RANGES[range_name]
    panel, columns, rows = run_panel(ch, "Error rate", QueryRange(start, end), selection)
    got = [(utc(t), v) for t, v in rows]
    expected = expected_error_rate(loaded, keeps(selection), start, end)
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (t, g), (_, want) in zip(got, expected):
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
