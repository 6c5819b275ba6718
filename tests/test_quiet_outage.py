"""While ClickHouse is unreachable the log says so once per cause (issue 23): no urllib3 or clickhouse-connect line
per retry beside ours, and /health's pings (Docker's healthcheck, every 10 s) do not repeat it."""

from __future__ import annotations

import logging
import re
import time

import pytest

from ingest.storage.chatter import ClientChatter, client_call

from .harness.logs import wait_for_line
from .harness.ports import reserved_port
from .harness.service import LISTENING, Service


@pytest.mark.slow
def test_an_unreachable_clickhouse_is_said_once_however_often_inserts_retry_and_health_is_asked(tmp_path):
    with reserved_port() as port:  # nothing answers there: every connection is refused
        service = Service(tmp_path, CLICKHOUSE_URL=f"http://ingest:pw@127.0.0.1:{port}",
                          INGEST_WAL_DIR=str(tmp_path / "wal"), INGEST_DEAD_LETTER_PATH=str(tmp_path / "dead.jsonl"),
                          INGEST_FLUSH_INTERVAL_SECONDS="0.1", INGEST_RETRY_MAX_SECONDS="0.2")
        try:
            service.port = int(wait_for_line(service.log, LISTENING, service.proc)["port"])
            assert service.post_events(1, "down") == 1
            for _ in range(5):
                status, health = service.get("/health")
                assert status == 503 and "storage unreachable" in health["problems"]
            deadline = time.monotonic() + 30
            while service.metric("ingest_flush_failures_total", kind="unreachable") < 5:
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.1)
        finally:
            service.kill()  # the events stay in the log; a shutdown would retry them for its full grace period
    output = service.output()
    assert not re.search(r" (urllib3|clickhouse_connect)[.:]", output), output
    storage_lines = re.findall(r".* WARNING ingest\.storage\.sink: .*", output)
    assert len(storage_lines) == 1 and "not reachable yet" in storage_lines[0], output  # at start; pings add none
    assert len(re.findall(r"insert of 1 events failed", output)) == 1, output


def _records(level: int = logging.INFO) -> tuple[list[logging.LogRecord], logging.Handler]:
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    handler.addFilter(ClientChatter())
    logging.getLogger("ingest").setLevel(level)
    return seen, handler


def test_only_records_made_during_our_clients_calls_are_held_back():
    seen, handler = _records()
    urllib3 = logging.getLogger("urllib3.connectionpool")
    urllib3.addHandler(handler)
    try:
        urllib3.warning("Retrying outside our client")  # a user's own use of urllib3: logged as ever
        with client_call():
            urllib3.warning("Retrying inside our client")
            urllib3.error("an error still shows")
            logging.getLogger("ingest.storage.sink").addHandler(handler)
            logging.getLogger("ingest.storage.sink").warning("our own line shows")
    finally:
        urllib3.removeHandler(handler)
        logging.getLogger("ingest.storage.sink").removeHandler(handler)
        logging.getLogger("ingest").setLevel(logging.NOTSET)
    assert [r.getMessage() for r in seen] == ["Retrying outside our client", "an error still shows",
                                              "our own line shows"]


def test_with_debug_logging_the_clients_chatter_shows():
    seen, handler = _records(logging.DEBUG)
    urllib3 = logging.getLogger("urllib3.connectionpool")
    urllib3.addHandler(handler)
    try:
        with client_call():
            urllib3.warning("Retrying inside our client")
    finally:
        urllib3.removeHandler(handler)
        logging.getLogger("ingest").setLevel(logging.NOTSET)
    assert [r.getMessage() for r in seen] == ["Retrying inside our client"]
