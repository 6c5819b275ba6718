"""Starting the service as users get it wrong: one clear line and a non-zero exit, never a traceback, and never
two services on one write-ahead log (which lost acknowledged events)."""

from __future__ import annotations

import socket

import pytest

from .harness.engine import count_rows
from .harness.ports import busy_port
from .harness.service import Service, command, one_line_error

pytestmark = pytest.mark.slow


def test_a_second_service_on_the_same_log_directory_refuses_to_start(tmp_path):
    """Two services with their own storage but one INGEST_WAL_DIR wrote the same log positions: data loss."""
    wal = str(tmp_path / "wal")
    first = Service(tmp_path, CLICKHOUSE_URL=f"chdb://{tmp_path / 'a'}", INGEST_WAL_DIR=wal).wait_healthy()
    try:
        second = Service(tmp_path, CLICKHOUSE_URL=f"chdb://{tmp_path / 'b'}", INGEST_WAL_DIR=wal)
        assert second.wait_exit() != 0
        one_line_error(second.output(), "INGEST_WAL_DIR", wal, "in use", str(first.proc.pid))
        assert first.post_events(3, "first") == 3  # the first goes on undisturbed
    finally:
        assert first.stop() == 0
    assert count_rows(tmp_path / "a", "analytics") == 3


def test_a_log_is_only_replayed_into_the_storage_it_was_written_for(tmp_path):
    wal = str(tmp_path / "wal")
    original = {"CLICKHOUSE_URL": f"chdb://{tmp_path / 'a'}", "INGEST_WAL_DIR": wal,
                "INGEST_FLUSH_INTERVAL_SECONDS": "3600"}  # the events stay in the log until the restart
    service = Service(tmp_path, **original).wait_healthy()
    assert service.post_events(4, "kept") == 4
    service.kill()  # acknowledged, in the log, not yet in storage

    elsewhere = Service(tmp_path, **{**original, "CLICKHOUSE_URL": f"chdb://{tmp_path / 'b'}"})
    assert elsewhere.wait_exit() != 0
    line = one_line_error(elsewhere.output(), "4 undelivered events", str(tmp_path / "a"), str(tmp_path / "b"))
    assert "move the directory away" in line
    other_db = Service(tmp_path, **original, CLICKHOUSE_DATABASE="other")
    assert other_db.wait_exit() != 0
    one_line_error(other_db.output(), "database analytics", "database other")

    back = Service(tmp_path, **original).wait_healthy()
    assert back.stop() == 0
    assert count_rows(tmp_path / "a", "analytics") == 4


def test_once_everything_is_stored_no_log_segment_stays_on_disk(tmp_path):
    wal = tmp_path / "wal"
    service = Service(tmp_path, CLICKHOUSE_URL=f"chdb://{tmp_path / 'a'}", INGEST_WAL_DIR=str(wal),
                      INGEST_FLUSH_INTERVAL_SECONDS="0.1").wait_healthy()
    try:
        for i in range(5):
            assert service.post_events(100, f"seg{i}") == 100
        import time
        deadline = time.monotonic() + 30
        while service.get("/health")[1]["buffer"]["events"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        _, metrics = service.get("/metrics")
        assert "ingest_wal_bytes 0.0" in metrics
        assert sum(p.stat().st_size for p in wal.glob("*.wal")) == 0
    finally:
        assert service.stop() == 0


@pytest.mark.parametrize("env,words", [
    ({"CLICKHOUSE_URL": "chdb://{tmp}/file/data"}, ["CLICKHOUSE_URL", "is a file, not a directory"]),
    ({"INGEST_WAL_DIR": "{tmp}/file/wal"}, ["INGEST_WAL_DIR", "is a file, not a directory"]),
    ({"INGEST_DEAD_LETTER_PATH": "{tmp}/file/dead.jsonl"}, ["INGEST_DEAD_LETTER_PATH", "is a file, not a directory"]),
    ({"INGEST_LOG_LEVEL": "verbose"}, ["INGEST_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR"]),
    ({"INGEST_HOST": "no-such-host.invalid"}, ["INGEST_HOST"]),
])
def test_a_misconfigured_service_says_what_is_wrong_in_one_line(tmp_path, env, words):
    (tmp_path / "file").write_text("not a directory")
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    # Port 0: a service already on the default port would be the one error said, whatever else is wrong.
    env = {"CLICKHOUSE_URL": f"chdb://{tmp_path / 'data'}", "INGEST_WAL_DIR": str(tmp_path / "wal"),
           "INGEST_HOST": "127.0.0.1", "INGEST_PORT": "0", **env}
    result = command(["serve"], tmp_path, **env)
    assert result.returncode != 0
    one_line_error(result.stdout + result.stderr, *words)


def test_a_second_service_on_the_same_embedded_data_says_which_process_holds_it(tmp_path):
    data = tmp_path / "data"
    first = Service(tmp_path, CLICKHOUSE_URL=f"chdb://{data}", INGEST_WAL_DIR=str(tmp_path / "wal1")).wait_healthy()
    try:
        result = command(["serve"], tmp_path, CLICKHOUSE_URL=f"chdb://{data}", INGEST_WAL_DIR=str(tmp_path / "wal2"),
                         INGEST_HOST="127.0.0.1", INGEST_PORT="0")
        assert result.returncode != 0
        one_line_error(result.stdout + result.stderr, str(data), "in use", str(first.proc.pid))
    finally:
        assert first.stop() == 0


def test_the_tests_run_with_something_listening_on_the_default_port():
    """conftest.py's default_port_taken: every test passes with 127.0.0.1:3001 taken, as on a machine where the
    Quickstart's service runs in another terminal."""
    with socket.create_connection(("127.0.0.1", 3001), timeout=5):
        pass


def test_a_busy_port_is_refused_before_anything_is_opened(tmp_path):
    with busy_port() as port:
        result = command(["serve"], tmp_path, INGEST_PORT=str(port), CLICKHOUSE_URL=f"chdb://{tmp_path / 'b'}",
                         INGEST_WAL_DIR=str(tmp_path / "w2"), INGEST_HOST="127.0.0.1")
    assert result.returncode != 0
    one_line_error(result.stdout + result.stderr, f"127.0.0.1:{port}", "INGEST_PORT")
    assert "ingest ready" not in result.stdout + result.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "w2").exists()
