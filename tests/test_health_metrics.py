"""/health and /metrics report what really happened in the pipeline."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from ingest.storage.failures import FAILURE_KINDS

from .harness.engine import count
from .harness.events import event
from .harness.polling import eventually


async def _metrics(client) -> dict[tuple[str, tuple], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def test_health_of_a_fresh_service_is_ok_with_an_empty_buffer(make_client, settings):
    client = await make_client()
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["problems"] == []
    assert body["buffer"] == {"events": 0, "capacity": settings.buffer_max_events, "in_flight": 0}
    assert body["last_flush"]["at"] is None and body["last_flush"]["error"] is None
    assert body["storage"]["reachable"] is True
    assert body["storage"]["database"] == settings.clickhouse_database


async def test_health_shows_waiting_events_then_the_flush_that_stored_them(make_client, ch):
    client = await make_client(flush_interval_seconds=0.6)
    before = time.time()
    await client.post("/events", json=[event(session_id=f"s{i}") for i in range(3)])
    waiting = await (await client.get("/health")).json()
    assert waiting["buffer"]["events"] == 3
    await eventually(lambda: count(ch) == 3)

    async def flushed():
        body = await (await client.get("/health")).json()
        return body["last_flush"]["at"] and body

    body = await eventually(flushed)
    assert body["buffer"]["events"] == 0
    assert body["last_flush"]["rows"] == 3
    from datetime import datetime
    assert datetime.fromisoformat(body["last_flush"]["at"]).timestamp() >= before - 0.001


async def test_metrics_count_accepted_rejected_requests_and_flushes(make_client, ch):
    client = await make_client()
    await client.post("/events", json=[event(), event(), event(device_type="toaster")])
    await client.post("/events", json=[event(country_code="?")])
    await client.post("/events", data=b"[", headers={"Content-Type": "application/json"})
    await eventually(lambda: count(ch) == 2)

    async def stored():
        m = await _metrics(client)
        return m.get(("ingest_events_stored_total", ())) == 2 and m

    m = await eventually(stored)
    assert m[("ingest_events_accepted_total", ())] == 2
    assert m[("ingest_events_rejected_total", ())] == 2
    assert m[("ingest_http_requests_total", (("route", "/events"), ("status", "202")))] == 1
    assert m[("ingest_http_requests_total", (("route", "/events"), ("status", "400")))] == 2
    assert m[("ingest_flush_rows_count", ())] == 1 and m[("ingest_flush_rows_sum", ())] == 2
    assert m[("ingest_flush_duration_seconds_count", ())] == 1
    failures = {labels: v for (name, labels), v in m.items() if name == "ingest_flush_failures_total"}
    assert set(failures) == {(("kind", k),) for k in FAILURE_KINDS} and not any(failures.values())
    assert m[("ingest_buffer_events", ())] == 0
    assert abs(m[("ingest_last_flush_success_timestamp_seconds", ())] - time.time()) < 30
    assert m[("ingest_http_request_duration_seconds_count", ())] == 1


async def test_each_app_has_its_own_metrics(make_client, ch, settings):
    first = await make_client()
    second = await make_client(wal_dir=settings.wal_dir + "-second")  # one log per service
    await first.post("/events", json=[event()])
    assert (await _metrics(first))[("ingest_events_accepted_total", ())] == 1
    assert (await _metrics(second))[("ingest_events_accepted_total", ())] == 0


async def test_health_answers_within_a_healthcheck_timeout_while_an_insert_holds_storage(make_client):
    from ingest.api.app import PIPELINE

    client = await make_client()
    assert (await client.get("/health")).status == 200
    sink = client.server.app[PIPELINE].sink
    sink._lock.acquire()  # as a long insert does
    try:
        started = time.monotonic()
        resp = await client.get("/health")
        elapsed = time.monotonic() - started
    finally:
        sink._lock.release()
    assert resp.status == 200 and (await resp.json())["storage"]["reachable"] is True
    assert elapsed < 3  # the Dockerfile's healthcheck timeout
