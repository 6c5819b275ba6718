"""Buffer-to-ClickHouse delivery on the real engine: flush triggers, retries, back-pressure, shutdown."""

from __future__ import annotations

import asyncio
import time

from ingest.storage.sink import Sink

from .harness.engine import break_storage, count, repair_storage
from .harness.events import event
from .harness.polling import eventually


async def test_a_full_batch_is_flushed_without_waiting_for_the_interval(make_client, ch):
    client = await make_client(flush_events=10, flush_interval_seconds=60)
    await client.post("/events", json=[event(session_id=f"s{i}") for i in range(9)])
    await asyncio.sleep(0.3)
    assert count(ch) == 0  # 9 < 10 and the interval is a minute away
    await client.post("/events", json=[event(session_id="s9")])
    await eventually(lambda: count(ch) == 10, timeout=5)


async def test_a_partial_batch_is_flushed_once_the_interval_passes(make_client, ch):
    client = await make_client(flush_events=1000, flush_interval_seconds=1.0)
    posted = time.monotonic()  # the interval runs from the batch's first event, which arrives after this
    await client.post("/events", json=[event()])
    assert count(ch) == 0
    await eventually(lambda: count(ch) == 1, timeout=5)
    assert time.monotonic() - posted >= 1.0, "the batch was flushed before its interval passed"


async def test_shutdown_flushes_what_is_buffered(make_client, ch):
    client = await make_client(flush_events=1000, flush_interval_seconds=3600)
    resp = await client.post("/events", json=[event(session_id=f"s{i}") for i in range(7)])
    assert resp.status == 202
    await asyncio.sleep(0.1)
    assert count(ch) == 0
    await client.close()  # runs the app's cleanup: stop the flusher, flush the rest
    assert count(ch) == 7


async def test_a_failed_insert_is_retried_until_it_lands_exactly_once(make_client, ch, settings):
    client = await make_client(flush_interval_seconds=0.05, retry_max_seconds=0.2)
    health = await client.get("/health")
    assert health.status == 200
    break_storage(ch)
    await client.post("/events", json=[event(session_id=f"s{i}") for i in range(5)])

    async def failing_twice():
        resp = await client.get("/health")
        body = await resp.json()
        return resp.status == 503 and body["last_flush"]["consecutive_failures"] >= 2 and body

    body = await eventually(failing_twice, timeout=5)
    assert body["last_flush"]["error_kind"] == "unknown_table", body["last_flush"]
    assert "UNKNOWN_TABLE" in body["last_flush"]["error"], body["last_flush"]
    assert body["buffer"]["events"] == 5

    repair_storage(settings)

    async def recovered():  # the insert has returned: rows show in the table a little before that
        resp = await client.get("/health")
        body = await resp.json()
        return resp.status == 200 and body["last_flush"]["error"] is None and body["buffer"]["events"] == 0

    await eventually(recovered, timeout=5)
    await asyncio.sleep(0.3)  # a duplicate insert would show up by now
    assert count(ch) == 5


async def test_a_full_buffer_answers_503_and_loses_nothing_it_accepted(make_client, ch, settings):
    client = await make_client(buffer_max_events=20, flush_events=10, flush_interval_seconds=0.05,
                               retry_max_seconds=0.1)
    await client.get("/health")  # the table exists
    break_storage(ch)
    accepted, statuses = 0, []
    for i in range(8):
        resp = await client.post("/events", json=[event(session_id=f"r{i}-{j}") for j in range(4)])
        statuses.append(resp.status)
        if resp.status == 202:
            accepted += (await resp.json())["accepted"]
        else:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"] == "buffer_full"
    assert accepted == 20 and statuses.count(503) == 3
    health = await client.get("/health")
    assert health.status == 503 and "buffer full" in (await health.json())["problems"]

    repair_storage(settings)
    await eventually(lambda: count(ch) == 20, timeout=5)
    assert ch.command("SELECT uniqExact(session_id) FROM events") == 20  # no duplicates either
    # Room again: the service takes new events.
    resp = await client.post("/events", json=[event(session_id="late")])
    assert resp.status == 202
    await eventually(lambda: count(ch) == 21, timeout=5)


def test_every_value_reaches_the_table_exactly_as_the_service_built_it(ch, settings):
    """The insert encoding (JSON columns, parsed by the engine) keeps every millisecond, null and character."""
    import time

    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    now_ms = int(time.time() * 1000)
    base = now_ms - now_ms % 1000
    stamps = [base, base + 1, base + 999, base + 100, base - 89 * 86_400_000 + 7, now_ms + 3_599_999]
    rows = [("page_view", ms, f"s{i}\"'\\\\", None if i % 2 else f"u\u00e9{i}", "mobile", "DE",
             '{"path": "/a\\\\b\\"c", "nul": "\\u0000", "emoji": "\U0001F600", "n": 1.5e300}')
            for i, ms in enumerate(stamps)]
    sink = Sink(settings.clickhouse_url, settings.clickhouse_database)
    sink.insert(rows, "exact-values")
    stored = ch.query("SELECT event_name, toUnixTimestamp64Milli(timestamp), session_id, user_id, device_type, "
                      "country_code, properties FROM events ORDER BY session_id").result_rows
    # FixedString comes back as bytes from the client.
    assert sorted((*r[:5], r[5].decode(), r[6]) for r in stored) == sorted(rows)
    sink.close()


async def test_a_bug_in_the_insert_path_is_reported_as_one_with_its_traceback_not_as_an_outage(make_client, ch,
                                                                                               monkeypatch, caplog):
    """A programming error (here: in the encoder, our code) is neither ClickHouse's nor the network's: the log has its
    traceback, the metric counts it apart, /health names it; the events stay and go in once the code works."""
    import ingest.storage.sink as sink_module

    real = sink_module.encode_columns

    def broken(rows):
        raise ZeroDivisionError("a bug")

    client = await make_client(flush_interval_seconds=0.05, retry_max_seconds=0.1)
    await client.get("/health")
    monkeypatch.setattr(sink_module, "encode_columns", broken)
    assert (await client.post("/events", json=[event(session_id="kept")])).status == 202

    async def reported():
        return (await (await client.get("/health")).json())["last_flush"]["error_kind"] == "internal_error"

    await eventually(reported)
    health = await (await client.get("/health")).json()
    assert health["status"] == "failing" and any("a bug in this service" in p for p in health["problems"])
    assert 'ingest_flush_failures_total{kind="internal_error"}' in await (await client.get("/metrics")).text()
    bug_lines = [r for r in caplog.records if "bug in the service" in r.getMessage()]
    assert len(bug_lines) == 1 and bug_lines[0].exc_info and bug_lines[0].exc_info[0] is ZeroDivisionError
    monkeypatch.setattr(sink_module, "encode_columns", real)
    await eventually(lambda: count(ch) == 1, timeout=10)
