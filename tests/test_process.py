"""The service as users run it: a real process on a real port, stopped by a signal; and the built wheel."""

from __future__ import annotations

import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .harness.engine import count_rows
from .harness.service import Service

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_service_after_it_flushes_its_buffer(tmp_path, sig):
    data_dir = tmp_path / "data"
    with Service(tmp_path, CLICKHOUSE_URL=f"chdb://{data_dir}", CLICKHOUSE_DATABASE="proc",
                 INGEST_FLUSH_INTERVAL_SECONDS="3600") as service:  # only the shutdown flush can store the events
        service.wait_healthy()
        assert service.post_events(5, "p") == 5
        status, health = service.get("/health")
        assert status == 200 and health["buffer"]["events"] == 5
        service.proc.send_signal(sig)
        assert service.wait_exit() == 0, service.output()
    assert count_rows(data_dir, "proc") == 5


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
