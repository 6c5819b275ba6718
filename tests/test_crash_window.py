"""The engine killed at the exact syscalls of an insert (gdb): every acknowledged event is stored once, and the rollups
agree with the events table afterwards.

The engine writes an insert's deduplication record before it renames the part into place, and replays the records at
start without checking the parts (docs/operations.md, "How delivery works"): a kill between the two must not make the
re-sent batch look like a repeat.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from .crash_point import KillAt, stored, table_dir
from .harness.events import event
from .harness.service import Service
from .harness.tools import require_tool

pytestmark = pytest.mark.slow
EVENTS = 300


def _env(tmp_path) -> dict[str, str]:
    return {"CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}", "CLICKHOUSE_DATABASE": "crash",
            "INGEST_WAL_DIR": str(tmp_path / "wal"), "INGEST_DEAD_LETTER_PATH": str(tmp_path / "dead.jsonl"),
            "INGEST_FLUSH_INTERVAL_SECONDS": "0.3"}


@pytest.mark.parametrize("table, point", [
    ("events", "before_rename"),          # after the deduplication record, before the part is in place
    ("events", "part_written"),           # control: before the deduplication record
    ("events", "after_rename"),           # control: the part is in place, the rollups are not yet
    ("events_per_minute", "before_rename"),   # a counting rollup's own window
    ("active_sessions_5m", "before_rename"),  # a distinct-count rollup's own window
])
def test_a_kill_at_any_step_of_an_insert_stores_every_acknowledged_event_once(tmp_path, table, point):
    gdb = require_tool("gdb")
    env = _env(tmp_path)
    service = Service(tmp_path, **env).wait_healthy()
    kill = KillAt(gdb, service.proc.pid, table_dir(tmp_path / "ch", "crash", table), point).armed()
    assert service.post_events(EVENTS, "crash") == EVENTS
    at = kill.killed()
    assert service.wait_exit() == -9, service.output()
    assert "tmp_insert_" in at

    again = Service(tmp_path, **env).wait_healthy()
    assert again.stop() == 0, again.output()
    found = stored(tmp_path / "ch", "crash")
    assert found["sessions"] == sorted(f"crash-{i}" for i in range(EVENTS)), again.output()
    assert found["events"] == EVENTS, "stored twice"
    assert found["rollups_off"] == [], "rollups disagree with the events table"


def test_a_batch_across_two_months_killed_between_its_inserts_is_completed_once(tmp_path):
    """A batch is inserted one month (the table's partition) at a time; the kill lets the first month in and stops
    the second in its window: recovery keeps the first and sends only the second."""
    gdb = require_tool("gdb")
    env = _env(tmp_path)
    service = Service(tmp_path, **env).wait_healthy()
    now = datetime.now(timezone.utc)
    last_month = now - timedelta(days=now.day + 2)  # another month, well within the 90 days kept
    body = [event(session_id=f"crash-{i}", at=last_month if i % 2 else now - timedelta(seconds=5))
            for i in range(EVENTS)]
    kill = KillAt(gdb, service.proc.pid, table_dir(tmp_path / "ch", "crash", "events"), "before_rename",
                  skip=1).armed()
    assert service.post(body) == EVENTS
    kill.killed()
    assert service.wait_exit() == -9, service.output()

    again = Service(tmp_path, **env).wait_healthy()
    assert again.stop() == 0, again.output()
    found = stored(tmp_path / "ch", "crash")
    assert found["sessions"] == sorted(f"crash-{i}" for i in range(EVENTS)), again.output()
    assert found["events"] == EVENTS, "stored twice"
    assert found["rollups_off"] == [], "rollups disagree with the events table"
    assert "150 of the 300 events of an interrupted insert were stored" in again.output()
