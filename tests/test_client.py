"""The Python client (ingest_client) against the real service: delivery, retries, a restart, exit, a bounded queue."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from ingest.api.app import create_app
from ingest_client import Client

from .harness.engine import break_storage, count, count_rows, repair_storage
from .harness.events import event
from .harness.ports import reserved_port
from .harness.service import Service
from .live import LostAnswers, serving


def test_events_are_batched_and_delivered_with_their_fields(settings, ch, caplog):
    with serving(create_app(settings)) as url:
        client = Client(url, flush_interval=0.1)
        at = datetime.now(timezone.utc) - timedelta(minutes=5)
        for i in range(1200):
            assert client.track("page_view", session_id=f"s-{i}", properties={"path": f"/p/{i}"}) is True
        client.track("feature_used", session_id="known", user_id="u-42", device_type="mobile", country_code="DE",
                     properties={"feature": "export", "options": {"format": "csv"}}, timestamp=at)
        with caplog.at_level(logging.WARNING, logger="ingest_client"):
            client.track("feature_used", session_id="bad-1", properties={})  # refused by the service: no feature
            client.track("feature_used", session_id="bad-2", properties={})
            assert client.flush(timeout=30) is True
        stats = client.stats
        assert client.close(timeout=10) is True
    assert (stats.tracked, stats.accepted, stats.rejected, stats.dropped, stats.failed) == (1203, 1201, 2, 0, 0)
    assert stats.requests >= 3 and set(stats.statuses) == {202}  # at most 500 events a request
    assert count(ch) == 1201 and count(ch, "country_code = 'ZZ'") == 1200
    [row] = ch.query("SELECT user_id, device_type, toString(country_code), properties, "
                     "toUnixTimestamp64Milli(timestamp) FROM events WHERE session_id = 'known'").result_rows
    assert row[:3] == ("u-42", "mobile", "DE") and json.loads(row[3]) == {"feature": "export",
                                                                          "options": {"format": "csv"}}
    assert row[4] == int(at.timestamp() * 1000)
    now_ms = time.time() * 1000
    assert ch.command("SELECT min(toUnixTimestamp64Milli(timestamp)) FROM events WHERE session_id LIKE 's-%'") \
        > now_ms - 60_000
    refusals = [r.getMessage() for r in caplog.records if "refused a feature_used event" in r.getMessage()]
    assert len(refusals) == 1 and "/properties/feature: is required" in refusals[0]  # once, not per event


def test_what_can_never_be_sent_is_refused_at_track(settings):
    with Client("http://127.0.0.1:9", flush_interval=60, exit_timeout=0) as client:
        with pytest.raises(ValueError, match="page_view, button_click"):
            client.track("purchase", session_id="s")
        with pytest.raises(ValueError):
            client.track("page_view", session_id="s", properties={"x": float("nan")})  # not JSON
        with pytest.raises(TypeError):
            client.track("page_view", session_id="s", properties=[1, 2])
        assert client.stats.tracked == 0


def test_a_503_is_resent_after_retry_after_until_the_service_takes_it(settings, ch):
    full = dataclasses.replace(settings, buffer_max_events=5, flush_events=5, flush_interval_seconds=0.2,
                               retry_max_seconds=0.2)
    with serving(create_app(full)) as url:
        requests.get(f"{url}/health", timeout=10)  # the table exists
        break_storage(ch)  # inserts fail, so the buffer fills: the service answers 503 + Retry-After: 1
        assert requests.post(f"{url}/events", json=[event(session_id=f"fill-{i}") for i in range(5)],
                             timeout=10).status_code == 202
        client = Client(url, flush_interval=0.05, max_backoff=0.05)  # a backoff far shorter than Retry-After
        for i in range(3):
            client.track("signup_started", session_id=f"c-{i}")
        assert client.flush(timeout=3.5) is False  # still refused: storage is down
        stats = client.stats
        assert stats.statuses == {503: stats.requests} and 3 <= stats.requests <= 5  # about one a second
        repair_storage(settings)
        assert client.flush(timeout=30) is True
        client.close()
        stats = client.stats
    assert stats.accepted == 3 and stats.retried_requests >= 3 and stats.failed == 0
    assert count(ch, "session_id LIKE 'c-%'") == 3  # each once


def test_a_batch_whose_answer_was_lost_is_sent_again_and_stored_once(settings, ch):
    """The service took the batch but the answer never came (a cut connection): the client sends the same bytes with
    the same Idempotency-Key, and the service answers the first answer again instead of storing it twice."""
    with serving(create_app(settings)) as url:
        relay = LostAnswers(int(url.rsplit(":", 1)[1]), lose=2)
        try:
            client = Client(f"http://127.0.0.1:{relay.port}", flush_interval=0.05, max_backoff=0.2)
            for i in range(10):
                client.track("page_view", session_id=f"lost-{i}")
            assert client.flush(timeout=30) is True
            stats = client.stats
            assert client.close(timeout=10) is True
        finally:
            relay.close()
    assert (stats.requests, stats.retried_requests, stats.accepted, stats.failed) == (3, 2, 10, 0)
    assert count(ch) == 10 and ch.command("SELECT uniqExact(session_id) FROM events") == 10


@pytest.fixture
def port():
    """The client's one address: refused while the service is down, the service's while it runs (it is started on
    this port, again after a restart)."""
    with reserved_port() as reserved:
        yield reserved


def _service(tmp_path, port: int) -> Service:
    return Service(tmp_path, INGEST_PORT=str(port), CLICKHOUSE_URL=f"chdb://{tmp_path / 'data'}",
                   CLICKHOUSE_DATABASE="client", INGEST_WAL_DIR=str(tmp_path / "wal"),
                   INGEST_DEAD_LETTER_PATH=str(tmp_path / "dead-letter.jsonl"),
                   INGEST_FLUSH_INTERVAL_SECONDS="0.2")


@pytest.mark.slow
def test_events_tracked_while_the_service_restarts_are_delivered_once_it_is_back(tmp_path, port):
    service = _service(tmp_path, port).wait_healthy()
    client = Client(f"http://127.0.0.1:{port}", flush_interval=0.05, max_backoff=0.3)
    try:
        for i in range(5):
            client.track("page_view", session_id=f"before-{i}")
        assert client.flush(timeout=30) is True
        assert service.stop() == 0
        for i in range(10):
            client.track("page_view", session_id=f"during-{i}")
        assert client.flush(timeout=1.5) is False  # nobody answers
        down = client.stats
        assert down.requests > 1 and down.last_error and down.accepted == 5
        service = _service(tmp_path, port).wait_healthy()
        assert client.flush(timeout=30) is True
        assert client.close(timeout=10) is True
    finally:
        assert service.stop() == 0
    stats = client.stats
    assert (stats.accepted, stats.failed, stats.dropped) == (15, 0, 0) and stats.retried >= 10
    assert count_rows(tmp_path / "data", "client") == 15


@pytest.mark.slow
def test_the_queue_is_bounded_while_the_service_is_down_dropping_the_oldest(tmp_path, port):
    client = Client(f"http://127.0.0.1:{port}", batch_size=10, max_queue=50, flush_interval=0.05, max_backoff=0.2)
    for i in range(200):
        client.track("page_view", session_id=f"q-{i:03d}")
    time.sleep(0.5)
    stats = client.stats
    assert client.pending <= 60  # 50 waiting, and one batch of 10 being retried
    assert stats.dropped == 200 - client.pending and stats.failed == 0
    service = _service(tmp_path, port).wait_healthy()
    try:
        assert client.flush(timeout=30) is True
        assert client.close(timeout=10) is True
    finally:
        assert service.stop() == 0
    stats = client.stats
    stored = count_rows(tmp_path / "data", "client")
    assert stored == stats.accepted and stored + stats.dropped == 200  # every event stored or counted as dropped
    newest = count_rows(tmp_path / "data", "client", "session_id >= 'q-160'")
    assert newest == 40  # the oldest went first


SCRIPT = """
import sys
for name in ("aiohttp", "orjson", "jsonschema", "jsonschema_rs", "clickhouse_connect", "chdb", "prometheus_client"):
    sys.modules[name] = None  # the client must work without the service's dependencies
from ingest_client import Client

client = Client(sys.argv[1], flush_interval=3600)  # only the exit can send them
for i in range(7):
    client.track("button_click", session_id=f"exit-{i}", properties={"button": "buy"})
print("tracked", client.pending)
"""


def test_a_program_that_exits_without_close_still_delivers_what_it_tracked(settings, ch, tmp_path):
    with serving(create_app(settings)) as url:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), url], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.strip() == "tracked 7", done.stderr
        assert done.stderr == ""
        await_rows = time.monotonic() + 10
        while count(ch, "session_id LIKE 'exit-%'") < 7 and time.monotonic() < await_rows:
            time.sleep(0.1)
    assert count(ch, "session_id LIKE 'exit-%'") == 7
