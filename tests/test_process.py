"""The service as users run it: a real process on a real port, stopped by a signal; and the built wheel."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from .harness.events import event

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count_rows(data_dir: Path, database: str) -> int:
    # The embedded path belongs to one process at a time: read it from a fresh one.
    code = ("import clickhouse_connect, sys; "
            "print(clickhouse_connect.get_client(dsn=sys.argv[1], database=sys.argv[2])"
            ".command('SELECT count() FROM events'))")
    out = subprocess.run([sys.executable, "-c", code, f"chdb://{data_dir}", database],
                         capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_service_after_it_flushes_its_buffer(tmp_path, sig):
    port = _free_port()
    data_dir = tmp_path / "data"
    env = {**os.environ, "INGEST_HOST": "127.0.0.1", "INGEST_PORT": str(port),
           "CLICKHOUSE_URL": f"chdb://{data_dir}", "CLICKHOUSE_DATABASE": "proc",
           "INGEST_FLUSH_INTERVAL_SECONDS": "3600"}  # only the shutdown flush can store the events
    proc = subprocess.Popen([sys.executable, "-m", "ingest", "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "service did not become healthy"
                time.sleep(0.2)
        body = json.dumps([event(session_id=f"p{i}") for i in range(5)]).encode()
        req = urllib.request.Request(f"{base}/events", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202 and json.load(resp)["accepted"] == 5
        with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
            assert json.load(resp)["buffer"]["events"] == 5
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _count_rows(data_dir, "proc") == 5


def test_the_wheel_carries_the_schema_document_and_the_init_ddl(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, timeout=300, capture_output=True)
    [wheel] = tmp_path.glob("ingest-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = sorted(p.name for p in (ROOT / "clickhouse" / "init" / "sql").glob("*.sql"))
    assert {"ingest/contract/event.schema.json", "ingest/api/openapi.json", "ingest/tracker.js",
            "ingest/dashboards/product-analytics.json"} <= names
    assert {f"ingest/ddl/{n}" for n in sql} <= names
    assert "ingest/Dockerfile" not in names
    # The embedded engine is an extra: a server's install does not pull it in.
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "chdb" in r] == ["Requires-Dist: chdb>=4.1.7; extra == 'embedded'"]
