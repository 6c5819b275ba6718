"""The terminal dashboard's frame at the sizes terminals come in: demo traffic in the real engine, rendered at explicit
sizes, and `python -m ingest panels` in a real pseudo-terminal of a given size."""

from __future__ import annotations

import json
import os
import pty
import random
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from ingest.demo import Traffic
from ingest.grafana.dashboard import load_dashboard
from ingest.storage.sink import Sink
from ingest.terminal import panels

from .harness.service import Service

LONG_FEATURE = "integrations_slack_notifications"  # longer than any column the frame gives a name
COLUMNS = ["event_name", "timestamp", "session_id", "user_id", "device_type", "country_code", "properties"]


def _events(now: datetime) -> list[dict]:
    """40 minutes of demo traffic, and a long-named feature used by more users than any other (it ranks first)."""
    traffic, events = Traffic(random.Random(23)), []
    for minute in range(40, 0, -1):
        stamp = (now - timedelta(minutes=minute)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events += traffic.events(60, stamp)
    stamp = (now - timedelta(minutes=2)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events += [{"event_name": "feature_used", "timestamp": stamp, "session_id": f"long-{i}", "user_id": f"u-long-{i}",
                "device_type": "desktop", "country_code": "DE", "properties": {"feature": LONG_FEATURE}}
               for i in range(200)]
    return events


@pytest.fixture
def frame(ch, settings) -> panels.Frame:
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    rows = [(e["event_name"], datetime.fromisoformat(e["timestamp"]), e["session_id"], e["user_id"], e["device_type"],
             e["country_code"], json.dumps(e["properties"])) for e in _events(datetime.now(timezone.utc))]
    ch.insert("events", rows, column_names=COLUMNS)
    source = panels.open_source(settings, load_dashboard(), {"breakdown": ["email_domain"]})
    try:
        return source.frame("24h")
    finally:
        source.close()


def _sparklines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("  ") and set(line.strip()) <= set(panels._SPARK + " ")
            and line.strip()]


def test_the_frame_takes_the_width_it_is_given_and_cuts_names_with_an_ellipsis(frame):
    at = {width: panels.render(frame, width, None).splitlines() for width in (40, 60, 80, 132)}
    for width, lines in at.items():
        assert max(map(len, lines)) <= width, (width, lines)
        assert lines[0].startswith("Product analytics  ")
        # Every panel is there, and the long feature name ranks first, cut with an ellipsis where it does not fit.
        assert all(any(line.startswith(title) for line in lines) for title in (
            "Active users", "Signup funnel", "Top features", "Error rate", "Signup steps",
            "Signup conversion over time")), lines
        [first] = [line for line in lines if line.startswith("   1. ")]
        assert LONG_FEATURE in first or (LONG_FEATURE[:10] in first and "…" in first), first
        assert LONG_FEATURE[:20] + " " not in first, first  # never cut without saying so
    # Narrow: features in one column; 80 columns: two, as before.
    assert [line for line in at[60] if line.startswith("   2. ")] and not [
        line for line in at[60] if line.startswith("   1. ") and " 6. " in line]
    assert any(line.startswith("   1. ") and " 6. " in line for line in at[80])
    # The 24 h sparklines (289 points) get more marks in a wider window: 58 at 80 columns, 97 at 132.
    widest = {width: max(map(len, _sparklines(lines))) - 2 for width, lines in at.items()}
    assert widest[40] < widest[60] < widest[80] < widest[132], widest
    assert widest[132] > 80, widest
    # Conversion lines: the breakdown value stays whole where the name is cut (it tells the lines apart).
    conversion = {width: lines[next(i for i, line in enumerate(lines) if line.startswith("Signup conversion")) + 1:]
                  for width, lines in at.items()}
    assert len(conversion[132][0]) > len(conversion[80][0]), conversion
    assert any("… · gmail.com  " in line for line in conversion[80]), conversion[80]
    assert all(len(lines) == len(conversion[80]) for lines in conversion.values())


def test_a_short_terminal_keeps_the_title_and_a_tiny_one_is_told_so(frame):
    lines = panels.render(frame, 80, 18).splitlines()
    every = panels.render(frame, 80, None).splitlines()
    assert len(lines) == 18 and lines[:14] == every[:14] and lines[0].startswith("Product analytics  ")
    assert re.fullmatch(r"… \d+ more lines not shown \(a taller terminal shows them\)", lines[-1]), lines[-1]
    for width, height in ((39, 24), (80, 7), (20, 5)):
        [line] = panels.render(frame, width, height).splitlines()
        assert len(line) <= width and line.startswith(f"The terminal is {width}x{height}"[:width - 1]), line
    assert panels.render(frame, 60, 8).count("\n") == 7


@pytest.mark.slow
@pytest.mark.parametrize("columns,lines", [(60, 20), (120, 40)])
def test_panels_in_a_terminal_fits_its_size(tmp_path, columns, lines):
    data = tmp_path / "data"
    env = {"CLICKHOUSE_URL": f"chdb://{data}", "INGEST_WAL_DIR": str(tmp_path / "wal")}
    with Service(tmp_path, **env, INGEST_FLUSH_INTERVAL_SECONDS="0.1").wait_healthy() as service:
        events = _events(datetime.now(timezone.utc))
        assert sum(service.post(events[i:i + 500]) for i in range(0, len(events), 500)) == len(events)
    assert service.proc.returncode == 0  # stopped: its buffer flushed, the data free for panels to open
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ingest", "panels", "--range", "24h"], cwd=tmp_path,
                                env={**os.environ, **env, "COLUMNS": str(columns), "LINES": str(lines)},
                                stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE)
        os.close(terminal)
        out = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(controller)
    shown = out.decode().replace("\r\n", "\n").rstrip("\n").split("\n")
    # One line fewer than the terminal (the prompt's), none wider than it: nothing wraps, the title stays in view.
    assert len(shown) <= lines - 1 and max(map(len, shown)) <= columns, shown
    assert shown[0].startswith("Product analytics  "), shown
    if len(shown) == lines - 1:
        assert shown[-1].startswith("… ") and "more lines not shown" in shown[-1]
    assert any(line.startswith("Top features") for line in shown), shown
    if columns > 80:  # a wider window gets wider charts: more of the 24 h's 289 points, up to the width less 8
        assert max(map(len, _sparklines(shown))) > 80, shown
