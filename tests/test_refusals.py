"""What the service does when ClickHouse refuses inserts, on the real engine: rows it refuses for their content,
a table or view that refuses everything, and faults only an operator can fix.

The rule (docs/operations.md, "When ClickHouse refuses an insert"): rows are dead-lettered only when other rows of the
same batch went in, which proves the table takes data. A batch none of whose rows goes in is held and retried, together
with the rows that arrive after it, until some go in; a view that fails holds its batch, which is retried unchanged
(same token) so that nothing is stored twice.
"""

from __future__ import annotations

import logging

from ingest.delivery.deadletter import DeadLetterFile

from .harness.engine import count
from .harness.events import event
from .harness.polling import eventually


async def _health(client) -> dict:
    resp = await client.get("/health")
    return {**(await resp.json()), "http": resp.status}


async def _healthy(client) -> bool:
    return (await _health(client))["http"] == 200


async def _failing_with(client, kind: str, failures: int = 2):
    async def check():
        body = await _health(client)
        last = body["last_flush"]
        return body["http"] == 503 and last["error_kind"] == kind and last["consecutive_failures"] >= failures \
            and body
    return await eventually(check, timeout=15)


def _failures(text: str, kind: str) -> float:
    line = next(sample for sample in text.splitlines()
                if sample.startswith(f'ingest_flush_failures_total{{kind="{kind}"}}'))
    return float(line.split()[-1])


async def test_a_table_that_refuses_every_row_holds_the_batch_instead_of_dead_lettering_it(make_client, ch,
                                                                                              settings):
    """Schema drift: every row fails to convert. Nothing is dead-lettered; once the table is fixed, all is stored."""
    client = await make_client(flush_interval_seconds=0.05, retry_max_seconds=0.2)
    await client.get("/health")
    ch.command("ALTER TABLE events MODIFY COLUMN session_id UInt64")  # the table no longer takes the service's rows
    resp = await client.post("/events", json=[event(session_id=f"s{i}") for i in range(30)])
    assert resp.status == 202

    body = await _failing_with(client, "rows_refused", failures=3)
    assert "CANNOT_PARSE" in body["last_flush"]["error"] and body["buffer"]["events"] == 30
    assert DeadLetterFile(settings.dead_letter_path).read() == []
    assert _failures(await (await client.get("/metrics")).text(), "rows_refused") >= 3

    ch.command("ALTER TABLE events MODIFY COLUMN session_id String")
    await eventually(lambda: count(ch) == 30, timeout=10)
    await eventually(lambda: _healthy(client))
    assert DeadLetterFile(settings.dead_letter_path).read() == []
    assert ch.command("SELECT uniqExact(session_id) FROM events") == 30


async def test_a_batch_of_only_bad_rows_is_dead_lettered_once_later_rows_go_in(make_client, ch, settings):
    """All-poison batches must not block later data: the rows after them show that the table works."""
    client = await make_client(flush_interval_seconds=0.05, retry_max_seconds=0.2)
    await client.get("/health")
    ch.command("ALTER TABLE events ADD CONSTRAINT no_poison CHECK session_id NOT LIKE 'poison%'")
    await client.post("/events", json=[event(session_id=f"poison-{i}") for i in range(3)])
    await _failing_with(client, "rows_refused")
    assert DeadLetterFile(settings.dead_letter_path).read() == []  # not yet: a broken table would look the same

    await client.post("/events", json=[event(session_id=f"good-{i}") for i in range(5)])
    await eventually(lambda: count(ch) == 5, timeout=10)
    await eventually(lambda: len(DeadLetterFile(settings.dead_letter_path).read()) == 3, timeout=10)
    letters = DeadLetterFile(settings.dead_letter_path).read()
    assert sorted(d["event"]["session_id"] for d in letters) == ["poison-0", "poison-1", "poison-2"]
    assert all("VIOLATED_CONSTRAINT" in d["reason"] for d in letters)
    await eventually(lambda: _healthy(client))
    await client.post("/events", json=[event(session_id="after")])
    await eventually(lambda: count(ch, "session_id = 'after'") == 1)


async def test_a_broken_view_holds_the_batch_and_it_is_stored_once_when_the_view_is_fixed(make_client, ch, settings):
    """A view that fails on every row: events takes each block before the view fails, so the batch must be retried
    unchanged (its token makes events drop the repeat) rather than split into parts with new tokens."""
    client = await make_client(flush_interval_seconds=0.05, retry_max_seconds=0.2)
    await client.get("/health")
    ch.command("CREATE TABLE numbers_of_sessions (n UInt32) ENGINE = MergeTree ORDER BY n")
    ch.command("CREATE MATERIALIZED VIEW broken_mv TO numbers_of_sessions AS "
               "SELECT toUInt32(session_id) AS n FROM events")  # fails on every session id the tests send
    await client.post("/events", json=[event(session_id=f"s{i}") for i in range(20)])
    body = await _failing_with(client, "view_failed", failures=3)
    assert "broken_mv" in body["last_flush"]["error"]
    assert DeadLetterFile(settings.dead_letter_path).read() == []

    ch.command("DROP VIEW broken_mv")
    await eventually(lambda: (ch.command("SELECT sum(events) FROM events_per_minute") or 0) == 20, timeout=10)
    assert count(ch) == 20  # every row once, though events took the block at every failed attempt
    # ... and so does every other view (an insert writes them one after another: poll, not look once).
    await eventually(lambda: (ch.command("SELECT sum(events) FROM events_per_minute_by_segment "
                                         "WHERE device_type != '' AND country_code != ''") or 0) == 20, timeout=10)
    await eventually(lambda: _healthy(client))
    assert DeadLetterFile(settings.dead_letter_path).read() == []


async def test_a_fault_only_an_operator_can_fix_is_logged_once_as_an_error_and_named_in_health(make_client, ch,
                                                                                                 settings, caplog):
    client = await make_client(flush_interval_seconds=0.05, retry_max_seconds=0.1)
    await client.get("/health")
    ch.command("DROP TABLE events SYNC")
    caplog.set_level(logging.INFO, logger="ingest")
    await client.post("/events", json=[event()])
    body = await _failing_with(client, "unknown_table", failures=5)
    assert "init" in " ".join(body["problems"])  # what to do, not only what failed
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING and "insert of" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert "UNKNOWN_TABLE" in errors[0].getMessage() and "unknown_table" in errors[0].getMessage()
    assert _failures(await (await client.get("/metrics")).text(), "unknown_table") >= 5

    from ingest.storage.sink import Sink
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    await eventually(lambda: count(ch) == 1, timeout=10)
    await eventually(lambda: _healthy(client))
    assert (await _health(client))["last_flush"]["error_kind"] is None
    assert any("succeed again" in r.getMessage() for r in caplog.records)
