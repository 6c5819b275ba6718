"""Events whose dashboard answers are known: a dataset with the edge cases the panels must get right, the filters
the dashboard variables make, and each panel's answer computed in plain Python from the same events.

The panel tests run the dashboard's SQL on these events and compare; the rollup and server-role tests reuse them.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from ingest.grafana.variables import ALL

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


def event_row(name, at, session, user=None, feature=None, device="desktop", country="DE"):
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
        events.append(event_row(name, at, f"s{rnd.randrange(60)}", user, feature, device, country))
    # On the unaligned range's ends and next to them (1 ms before, on it, 1 ms and 999 ms after: the filter is
    # inclusive to the second), in segments some selections keep and others drop.
    for i, at in enumerate((UF, UT)):
        for offset, name, device, country in ((-MS, "error_occurred", "mobile", "DE"),
                                              (0 * MS, "feature_used", "mobile", "FR"),
                                              (MS, "signup_started", "tablet", "DE"),
                                              (999 * MS, "page_view", "desktop", "US")):
            feature = "f-edge" if name == "feature_used" else None
            events.append(event_row(name, at + offset, f"s-uedge-{i}", None, feature, device, country))
        for name in ("error_occurred", "feature_used", "signup_started", "page_view"):  # a segment no filter keeps
            events.append(event_row(name, at, f"s-uedge-other-{i}", None, "f-edge" if name == "feature_used" else None,
                              "other", "BR"))
    # f-edge, the feature used on the unaligned ends, is also used by 6 visitors of each segment inside both ranges,
    # so it ranks in every filter's top 10 and a wrong edge minute shows in its count.
    for i in range(6 * len(DEVICES) * len(COUNTRIES)):
        events.append(event_row("feature_used", T - timedelta(hours=2) + i * 10 * 1000 * MS, f"s-f-edge-{i}", None,
                                "f-edge", DEVICES[i % 4], COUNTRIES[i // 4 % 4]))
    events += [
        event_row("signup_completed", NO_START_HOUR + timedelta(minutes=7), "s-late"),
        # Exactly on the range's ends: inside (the filter is inclusive at second precision); 1 ms out: outside.
        event_row("error_occurred", F, "s-edge-from"), event_row("page_view", T, "s-edge-to"),
        event_row("error_occurred", F - MS, "s-before"), event_row("error_occurred", T + MS, "s-after"),
        # The 5-minute window of the big number is (T-5m, T]: the first is out, the second in.
        event_row("page_view", T - timedelta(minutes=5), "s-window-out"),
        event_row("page_view", T - timedelta(minutes=5) + MS, "s-window-in"),
        # A tie in the ranking, broken alphabetically; anonymous users count once per session.
        *[event_row("feature_used", T - timedelta(minutes=30), f"s-tie-{i}", f"tie-user-{i}", "zz_tied")
          for i in range(40)],
        *[event_row("feature_used", T - timedelta(minutes=31), f"s-tie-{i}", None, "aa_tied") for i in range(39)],
        event_row("feature_used", T - timedelta(minutes=31), "s-tie-0", None, "aa_tied"),  # same session: no new user
        event_row("feature_used", T - timedelta(minutes=31), "s-tie-x", "tie-user-x", "aa_tied"),
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


def chosen(selection) -> dict[str, list[str]]:
    """The selection as variable values, All written as Grafana stores it."""
    devices, countries = SELECTIONS[selection]
    return {"device_type": devices or [ALL], "country_code": countries or [ALL]}
