"""The founding scene: the Signup steps and Signup conversion over time panels and the conversion-drop alert, run on
the real engine as Grafana would run them, give the answers computed here in plain Python from the test's own
events; with and without a verification incident, with and without a breakdown, at the range's edges."""

from __future__ import annotations

import json
import random
import re
import uuid
from datetime import datetime, timedelta, timezone

import clickhouse_connect
import pytest

from ingest.grafana.alerting import AlertError, evaluate_all, load_rules
from ingest.grafana.dashboard import load_dashboard, load_options, run_panels
from ingest.grafana.macros import QueryRange
from ingest.grafana.variables import dashboard_variables
from ingest.storage.sink import Sink
from ingest.terminal.status import BUFFER_TROUBLE, FRESH_SECONDS, STALE_SECONDS, live_status

STEPS = ["signup_started", "email_verified", "signup_completed"]
WINDOW = timedelta(hours=1)
S = timedelta(seconds=1)
# The range: 3 hours ending on a whole second, an hour ago (the alert looks at the 2 h 15 min before its own now).
T = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
F = T - timedelta(hours=3)
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "hotmail.com", "proton.me", "gmx.de", "web.de",
           "acme.io", "example.org", "fastmail.com", "hey.com", "aol.com"]  # 13 values: 10 named, the rest Other


def _event(name, at, session, props=None, device="desktop", country="DE"):
    return (name, at, session, None, device, country, json.dumps(props or {}))


def _signup(events, rng, session, at, domain, verify, complete, device="desktop"):
    events.append(_event("signup_started", at, session, {"email_domain": domain, "plan": "free"}, device))
    if verify:
        at += timedelta(seconds=rng.randrange(5, 600))
        events.append(_event("email_verified", at, session, {"email_domain": domain}, device))
        if complete:
            events.append(_event("signup_completed", at + timedelta(seconds=rng.randrange(1, 900)), session,
                                 {"method": "email"}, device))


def build_events(incident: bool) -> list[tuple]:
    """Sign-ups over the range (and around it), gmail.com's verification failing in the last 40 minutes when
    `incident`; plus the edge cases the panels must get right."""
    rng = random.Random(20261204 + incident)
    events: list[tuple] = []
    start = F - timedelta(minutes=140)  # the alert's 2 h 15 min before T, and the hour before that
    for i in range(2600):
        at = start + timedelta(milliseconds=rng.randrange(int((T - start) / timedelta(milliseconds=1))))
        domain = rng.choices(DOMAINS, weights=[40, 12, 8, 6, 5, 4, 3, 3, 2, 2, 1, 1, 1])[0]
        failing = incident and domain == "gmail.com" and at >= T - timedelta(minutes=40)
        verify = rng.random() < (0.05 if failing else 0.8)
        _signup(events, rng, f"s{i}", at, domain, verify, rng.random() < 0.75, rng.choice(["desktop", "mobile"]))
    edges = [
        # First step exactly on the range's start, and on its end: counted.
        [("signup_started", F, {"email_domain": "edge.io"}), ("email_verified", F + 10 * S, {})],
        [("signup_started", T, {"email_domain": "edge.io"}), ("email_verified", T + 30 * S, {}),
         ("signup_completed", T + 59 * S, {})],  # its later steps fall after the range: counted too
        # A second before the start: not counted, though its later steps are inside the range.
        [("signup_started", F - S, {"email_domain": "edge.io"}), ("email_verified", F + 5 * S, {})],
        # Its first step before the range, another one inside it: the session is not new, not counted.
        [("signup_started", F - timedelta(minutes=20), {"email_domain": "edge.io"}),
         ("signup_started", F + timedelta(minutes=5), {"email_domain": "edge.io"})],
        # Verified more than an hour after its first step: reaches step 1 only.
        [("signup_started", F + timedelta(minutes=10), {"email_domain": "slow.io"}),
         ("email_verified", F + timedelta(minutes=70, seconds=1), {})],
        # Steps out of order: completed before verified, verified before started.
        [("email_verified", F + timedelta(minutes=30), {}),
         ("signup_started", F + timedelta(minutes=31), {"email_domain": "odd.io"}),
         ("signup_completed", F + timedelta(minutes=32), {}),
         ("email_verified", F + timedelta(minutes=33), {})],
        # Its first step carries no email_domain (''), a later step-1 event does: the first one's value counts.
        [("signup_started", F + timedelta(minutes=40), {"plan": "pro"}),
         ("signup_started", F + timedelta(minutes=41), {"email_domain": "late.io"}),
         ("email_verified", F + timedelta(minutes=42), {})],
        # Every step in the same second: in order, counted to the end.
        [("signup_started", F + timedelta(minutes=50), {"email_domain": "fast.io"}),
         ("email_verified", F + timedelta(minutes=50), {}), ("signup_completed", F + timedelta(minutes=50), {})],
    ]
    for n, steps in enumerate(edges):
        for name, at, props in steps:
            events.append(_event(name, at, f"edge{n}", props))
    # Events of other kinds never count.
    events += [_event("page_view", F + timedelta(minutes=m), f"s{m}", {"path": "/"}) for m in range(0, 180, 7)]
    return events


# --- the answers, in plain Python -----------------------------------------------------------------------------------

def _sessions(events, steps, start, end, lookback_after=WINDOW, window=3600, end_open=False):
    """Per session whose first step lies in [start, end] ([start, end) with end_open): (first step's time, level
    reached within `window` seconds, first step's props)."""
    lo, hi = start - WINDOW, end + lookback_after
    by_session: dict[str, list[tuple]] = {}
    for e in events:
        if e[0] in steps and lo <= e[1] <= hi:
            by_session.setdefault(e[2], []).append(e)
    found = {}
    for session, evs in by_session.items():
        firsts = sorted((e for e in evs if e[0] == steps[0]), key=lambda e: e[1])
        if not firsts or not start <= firsts[0][1] <= end or (end_open and firsts[0][1] == end):
            continue
        found[session] = (firsts[0][1], _level(evs, steps, window), json.loads(firsts[0][6]))
    return found


def _level(evs, steps, window=3600) -> int:
    """The most steps reached in order, the last within an hour of the first (at whole seconds, as windowFunnel)."""
    marks = sorted((int(e[1].timestamp()), steps.index(e[0])) for e in evs)
    best = 0
    for t0, idx in marks:
        if idx != 0:
            continue
        level, at = 1, t0
        for t, i in marks:
            if i == level and t >= at and t <= t0 + window:
                level, at = level + 1, t
                if level == len(steps):
                    break
        best = max(best, level)
    return best


def _grouped(sessions, key):
    """Each session's breakdown value: its first step's, the 10 with the most sessions by name, the rest Other."""
    if not key:
        return {s: "" for s in sessions}
    values = {s: str(props.get(key, "")) if isinstance(props.get(key, ""), str) else ""
              for s, (_, _, props) in sessions.items()}
    counts: dict[str, int] = {}
    for v in values.values():
        counts[v] = counts.get(v, 0) + 1
    top = set(sorted(counts, key=lambda v: (-counts[v], v))[:10])
    return {s: v if v in top else "Other" for s, v in values.items()}


def expected_steps(events, steps=STEPS, key="", start=F, end=T):
    sessions = _sessions(events, steps, start, end)
    groups = _grouped(sessions, key)
    rows = []
    for value in set(groups.values()):
        members = [s for s in sessions if groups[s] == value]
        counts = [sum(1 for s in members if sessions[s][1] >= k) for k in range(1, len(steps) + 1)]
        for k, count in enumerate(counts, 1):
            previous = counts[k - 2] if k > 1 else None
            pct = 100.0 if k == 1 else (None if previous == 0 else 100 * count / previous)
            rows.append((k, steps[k - 1], count, pct, value))
    total = {v: sum(r[2] for r in rows if r[4] == v) for v in set(groups.values())}
    return sorted(rows, key=lambda r: (r[4] == "Other", -total[r[4]], r[4], r[0]))


def expected_conversion(events, steps=STEPS, key="", start=F, end=T):
    sessions = _sessions(events, steps, start, end)
    groups = _grouped(sessions, key)
    bucket = 1800 if (end - start).total_seconds() > 6 * 3600 else 300
    cells: dict[tuple, list[int]] = {}
    for s, (first, level, _) in sessions.items():
        time = datetime.fromtimestamp(int(first.timestamp()) // bucket * bucket, timezone.utc)
        for t in range(1, len(steps)):
            label = f"{steps[t]} / {steps[t - 1]}" + (f" · {groups[s]}" if key else "")
            cell = cells.setdefault((time, label), [0, 0])
            cell[0] += level >= t
            cell[1] += level >= t + 1
    return sorted(((time, label, None if before == 0 else 100 * after / before)
                   for (time, label), (before, after) in cells.items()), key=lambda r: (r[0], r[1]))


def expected_drops(events, now=T):
    """Per step after the first: the alert's relative drop (%), 0 when quiet. The sessions compared are those whose
    first step lies in the 15 minutes that ended 10 minutes before now, against the 2 hours before; a step counts
    within 10 minutes of the first."""
    settled = now - timedelta(minutes=10)
    recent_from = settled - timedelta(minutes=15)
    start = recent_from - timedelta(hours=2)
    sessions = _sessions(events, STEPS, start, settled, lookback_after=now - settled, window=600, end_open=True)
    drops = {}
    for t in range(1, len(STEPS)):
        recent = [lv for first, lv, _ in sessions.values() if first >= recent_from]
        before = [lv for first, lv, _ in sessions.values() if first < recent_from]
        rb, rr = sum(lv >= t for lv in recent), sum(lv >= t + 1 for lv in recent)
        bb, br = sum(lv >= t for lv in before), sum(lv >= t + 1 for lv in before)
        drops[STEPS[t]] = 0.0 if rb < 30 or bb == 0 or br == 0 else 100 * (1 - (rr / rb) / (br / bb))
    return drops


# --- the engine -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(chdb_path):
    """Two databases, filled once: one with a verification incident in the last 15 minutes, one without."""
    made = {}
    for incident in (False, True):
        database = f"scene_{'incident' if incident else 'calm'}_{uuid.uuid4().hex[:8]}"
        sink = Sink(f"chdb://{chdb_path}", database)
        sink.open()
        events = build_events(incident)
        rows = [(n, int(at.timestamp() * 1000), s, u, d, c, p) for n, at, s, u, d, c, p in events]
        sink.insert(rows, f"scene:{incident}[0:{len(rows)}]")
        sink.close()
        client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=database)
        made[incident] = (client, events)
    yield made
    for client, _ in made.values():
        client.command(f"DROP DATABASE IF EXISTS `{client.database}` SYNC")
        client.close()


def _runner(client):
    def run(sql):
        result = client.query(sql, settings={"readonly": 1})
        return list(result.column_names), [tuple(row) for row in result.result_rows]
    return run


RANGE = QueryRange(F, T)


def _panel(client, title, chosen=None, qrange=RANGE):
    dashboard = load_dashboard()
    run = _runner(client)
    variables = dashboard_variables(dashboard, chosen or {}, load_options(dashboard, qrange, run, chosen))
    (result,) = [r for r in run_panels(dashboard, qrange, run, variables) if r.panel.title == title]
    assert result.error is None, result.error
    return result


def _close(got, want):
    return all(g == w if not isinstance(w, float) else g is not None and abs(g - w) <= 0.051
               for g, w in zip(got, want, strict=True))


# --- the panels -------------------------------------------------------------------------------------------------

def test_the_dataset_holds_the_edges_and_more_than_ten_breakdown_values(engine):
    _, events = engine[False]
    sessions = _sessions(events, STEPS, F, T)
    assert {"edge0", "edge1", "edge4", "edge5", "edge6", "edge7"} <= set(sessions)
    assert not {"edge2", "edge3"} & set(sessions)
    assert [sessions[s][1] for s in ("edge4", "edge5", "edge7")] == [1, 2, 3]
    assert len({props.get("email_domain") for _, _, props in sessions.values()}) > 11


@pytest.mark.parametrize("key", ["", "email_domain"])
@pytest.mark.parametrize("incident", [False, True])
def test_signup_steps_counts_sessions_per_step_with_conversion_and_breakdown(engine, incident, key):
    client, events = engine[incident]
    got = _panel(client, "Signup steps", {"breakdown": [key]} if key else None)
    assert got.columns == ["step", "step_name", "sessions", "conversion_pct", "breakdown_value"]
    want = expected_steps(events, key=key)
    assert len(got.rows) == len(want)
    assert all(_close(g, w) for g, w in zip(got.rows, want, strict=True)), (got.rows[:6], want[:6])
    if key:
        values = {r[4] for r in got.rows}
        assert "Other" in values and len(values) == 11


def test_signup_steps_follow_the_steps_variable_and_the_device_filter(engine):
    client, events = engine[False]
    steps = ["signup_started", "signup_completed"]
    got = _panel(client, "Signup steps", {"steps": [",".join(steps)], "device_type": ["mobile"]})
    mobile = [e for e in events if e[4] == "mobile"]
    want = expected_steps(mobile, steps=steps)
    assert [r[1] for r in got.rows] == steps
    assert all(_close(g, w) for g, w in zip(got.rows, want, strict=True)), (got.rows, want)


@pytest.mark.parametrize("key", ["", "email_domain"])
def test_conversion_over_time_is_per_transition_and_value_in_5_minute_points(engine, key):
    client, events = engine[True]
    got = _panel(client, "Signup conversion over time", {"breakdown": [key]} if key else None)
    assert got.columns == ["time", "step", "conversion_pct"]
    want = expected_conversion(events, key=key)
    rows = [(t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t, s, v) for t, s, v in got.rows]
    assert len(rows) == len(want)
    assert all(_close(g, w) for g, w in zip(rows, want, strict=True))
    assert rows == sorted(rows, key=lambda r: r[0])  # long series: ascending in time, as the plugin needs


def test_conversion_over_time_falls_for_the_incidents_domain_only(engine):
    """The 5 minutes that began 15 minutes before the range's end (its sessions have had 10 minutes to verify)."""
    client, _ = engine[True]
    got = _panel(client, "Signup conversion over time", {"breakdown": ["email_domain"]})
    point = datetime.fromtimestamp(int((T - timedelta(minutes=15)).timestamp()) // 300 * 300, timezone.utc)
    at = {step: pct for time, step, pct in got.rows if time.replace(tzinfo=timezone.utc) == point}
    assert at["email_verified / signup_started · gmail.com"] < 40
    assert at["email_verified / signup_started · outlook.com"] > 60


def test_the_funnel_panels_read_only_the_steps_events_and_read_them_once(chdb_path):
    """The steps' events are a small share of a real table: each funnel panel's plan skips the other events by the
    primary key (event name first) and reads the table once, with and without a breakdown."""
    database = f"scene_plan_{uuid.uuid4().hex[:8]}"
    sink = Sink(f"chdb://{chdb_path}", database)
    sink.open()
    rng = random.Random(7)
    views = [("page_view", int((F + timedelta(seconds=rng.randrange(3 * 3600))).timestamp() * 1000), f"v{i}", None,
              "desktop", "DE", "{}") for i in range(60_000)]
    signups = [(n, int(at.timestamp() * 1000), s, u, d, c, p) for n, at, s, u, d, c, p in build_events(False)]
    sink.insert(views + signups, "scene-plan[0:1]")
    sink.close()
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=database)
    try:
        asked: list[str] = []
        run = _runner(client)

        def recorded(sql):
            asked.append(sql)
            return run(sql)

        dashboard = load_dashboard()
        for key in ("", "email_domain"):
            asked.clear()
            chosen = {"breakdown": [key]} if key else {}
            variables = dashboard_variables(dashboard, chosen, load_options(dashboard, RANGE, run, chosen))
            run_panels(dashboard, RANGE, recorded, variables)
            funnels = [sql for sql in asked if "windowFunnel(3600)" in sql]
            assert len(funnels) == 2
            for sql in funnels:
                planned = sum(n for _, table, _, n, _ in client.query("EXPLAIN ESTIMATE " + sql).result_rows
                              if table == "events")
                assert planned < len(views) / 2, (key, planned, sql[:300])
                plan = client.command("EXPLAIN " + sql)
                assert str(plan).count("ReadFromMergeTree") == 1, (key, plan)
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
        client.close()


# --- the alert --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("incident", [False, True])
def test_the_conversion_alert_fires_for_the_step_that_fell_and_only_then(engine, incident):
    client, events = engine[incident]
    rules = [r for r in load_rules() if r["uid"] == "signup-conversion-drop"]
    states = {s.labels["step"]: s for s in evaluate_all(_runner(client), T, rules)}
    want = expected_drops(events)
    assert set(states) == set(want) == {"email_verified", "signup_completed"}
    for step, state in states.items():
        assert state.error is None and abs(state.value - want[step]) < 1e-6, (step, state, want[step])
        assert state.condition_met == (want[step] >= 30)
        assert state.labels["severity"] == "warning"
    assert states["email_verified"].condition_met is incident
    assert not states["signup_completed"].condition_met


def test_the_conversion_alert_stays_quiet_at_low_volume(engine):
    """Under 30 sessions at the step before in the last 15 minutes: no alert, however steep the fall."""
    client, events = engine[True]
    rules = [r for r in load_rules() if r["uid"] == "signup-conversion-drop"]
    # Forty minutes after the incident's data ends, the 15 minutes compared hold no sign-ups at all.
    later = T + timedelta(minutes=40)
    states = evaluate_all(_runner(client), later, rules)
    assert states and not any(s.condition_met for s in states)
    assert expected_drops(events, later)["email_verified"] == 0.0


def test_the_conversion_alert_answers_zero_per_step_when_there_were_no_sign_ups(engine):
    """A night without sign-ups is quiet, not NoData: Grafana raises a DatasourceNoData alert for a query that
    returns no rows, so the rule answers 0 for each step when its windows hold no session at all."""
    client, _ = engine[True]
    rules = [r for r in load_rules() if r["uid"] == "signup-conversion-drop"]
    states = evaluate_all(_runner(client), T + timedelta(hours=5), rules)
    assert {s.labels.get("step"): s.value for s in states} == {"email_verified": 0.0, "signup_completed": 0.0}
    assert not any(s.condition_met or s.error for s in states)


def test_every_rule_evaluates_and_the_error_rate_rule_reads_its_reduce(engine):
    client, _ = engine[False]
    states = evaluate_all(_runner(client), T)
    titles = {s.title for s in states}
    assert titles == {"error rate above 1%", "signup conversion drop"}
    assert all(s.error is None for s in states)
    (error_rate,) = [s for s in states if s.title == "error rate above 1%"]
    assert error_rate.value == 0.0 and not error_rate.condition_met  # no error_occurred event in this dataset


# --- the emulated expressions ----------------------------------------------------------------------------------------

def _math_rule(expression, a_sql):
    return {"uid": "x", "title": "x", "condition": "C", "data": [
        {"refId": "A", "datasourceUid": "clickhouse", "relativeTimeRange": {"from": 60, "to": 0},
         "model": {"rawSql": a_sql}},
        {"refId": "B", "datasourceUid": "__expr__", "model": {"type": "reduce", "expression": "A", "reducer": "max"}},
        {"refId": "C", "datasourceUid": "__expr__", "model": {"type": "math", "expression": expression}}]}


@pytest.mark.parametrize("expression, want", [
    ("$B >= 3", [1.0, 1.0, 0.0]),
    ("$B * 2 + 1 > 7 && !($B == 5)", [0.0, 1.0, 0.0]),
    ("2 * (($B > 4) || ($B < 2)) + 1 - 1", [2.0, 0.0, 2.0]),
    ("-$B % 3", [-2.0, -1.0, -1.0]),
])
def test_math_expressions_follow_grafanas_precedence_per_series(engine, expression, want):
    client, _ = engine[False]
    sql = "SELECT now() AS time, s, v FROM values('s String, v Float64', ('a', 5), ('b', 4), ('c', 1))"
    states = evaluate_all(_runner(client), T, [_math_rule(expression, sql)])
    got = {s.labels["s"]: s for s in states}
    assert [got[k].value for k in "abc"] == [5.0, 4.0, 1.0]  # the reduce it reads
    assert [float(got[k].condition_met) for k in "abc"] == [bool(w) for w in want]


def test_an_expression_this_emulation_does_not_know_is_said_not_guessed(engine):
    client, _ = engine[False]
    rule = _math_rule("$B", "SELECT 1")
    rule["data"][2]["model"] = {"type": "resample", "expression": "B"}
    (state,) = evaluate_all(_runner(client), T, [rule])
    assert state.error and "resample" in state.error and not state.condition_met
    assert issubclass(AlertError, ValueError)


# --- the live status --------------------------------------------------------------------------------------------

def _health(events=0, capacity=200_000, failures=0):
    return {"buffer": {"events": events, "capacity": capacity}, "last_flush": {"consecutive_failures": failures}}


@pytest.mark.parametrize("age, health, level", [
    (2.0, _health(), "live"),
    (FRESH_SECONDS + 1, _health(), "delayed"),
    (2.0, _health(events=int(0.81 * 200_000)), "delayed"),
    (2.0, _health(failures=2), "delayed"),
    (STALE_SECONDS + 1, _health(), "down"),
    (None, _health(), "down"),
    (2.0, None, "down"),
])
def test_the_live_status_rule(age, health, level):
    status = live_status(age, health, "connection refused")
    assert status.level == level
    assert status.line().startswith(f"Live status: {level}")


def test_the_live_status_panel_computes_the_same_rule_in_grafana():
    """The panel's math expression (over ClickHouse's newest event age A and Prometheus' B, C, D) has the rule's
    thresholds: evaluated here for the same inputs, it gives the same levels."""
    from ingest.grafana.alerting import _evaluate, _tokens

    dashboard = load_dashboard()
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Live status"]
    (math_target,) = [t for t in panel["targets"] if t.get("type") == "math"]
    expression = math_target["expression"]
    numbers = {float(n) for n in re.findall(r"(?<![$\w])(\d+(?:\.\d+)?)", expression)}
    assert {FRESH_SECONDS, STALE_SECONDS, BUFFER_TROUBLE} <= numbers
    mappings = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    levels = {float(value): option["text"] for value, option in mappings.items()}
    for age, up, buffer, failed in [(2, 1, 0.1, 0), (20, 1, 0.1, 0), (2, 1, 0.9, 0), (2, 1, 0.1, 3), (200, 1, 0, 0),
                                    (2, 0, 0, 0)]:
        grafana = levels[_evaluate(_tokens(expression), {"A": age, "B": up, "C": buffer, "D": failed})]
        health = None if up == 0 else _health(events=int(buffer * 200_000), failures=failed)
        assert grafana == live_status(age, health).level, (age, up, buffer, failed)
