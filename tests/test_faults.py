"""Fault tests on a real process: kill -9 under load, again and again; every 202 is stored exactly once."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request

import pytest

from .harness.engine import read_rows
from .harness.events import event
from .harness.ports import reserved_port
from .harness.service import Service

pytestmark = pytest.mark.slow


class Load:
    """Clients posting batches of uniquely tagged events; remembers which were acknowledged with 202."""

    def __init__(self, port: int, clients: int = 3, batch: int = 50) -> None:
        self.url = f"http://127.0.0.1:{port}/events"
        self.batch = batch
        self.acked: set[str] = set()
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def _run(self, client: int) -> None:
        seq = 0
        while not self._stop.is_set():
            ids = [f"c{client}-{seq}-{i}" for i in range(self.batch)]
            seq += 1
            body = json.dumps([event(session_id=s) for s in ids]).encode()
            req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            with self._lock:
                self.sent += len(ids)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    if resp.status == 202:
                        with self._lock:
                            self.acked.update(ids)
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.05)  # the service is down (being killed or restarting)

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


@pytest.fixture
def port():
    """The load's one address across the restarts: refused while no service runs, each new service's once it does."""
    with reserved_port() as reserved:
        yield reserved


# Three kills land in different moments of the insert cycle (seeded); ten, the soak, run with `-m soak`.
@pytest.mark.parametrize("kills", [3, pytest.param(10, marks=pytest.mark.soak)])
def test_every_acknowledged_event_survives_repeated_kill_9_exactly_once(tmp_path, port, kills):
    env = {"CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}", "CLICKHOUSE_DATABASE": "faults",
           "INGEST_PORT": str(port), "INGEST_FLUSH_INTERVAL_SECONDS": "0.3", "INGEST_FLUSH_EVENTS": "500"}
    # The services' logs go to one file, shown if the test fails (a loss must be diagnosable from CI's output).
    log = tmp_path / "services.log"
    rng = random.Random(7)
    service = Service(tmp_path, log=log, **env).wait_healthy()
    try:
        with Load(port) as load:
            for _ in range(kills):
                time.sleep(rng.uniform(0.5, 1.5))
                service.kill()
                service = Service(tmp_path, log=log, **env).wait_healthy()
            time.sleep(1)
        assert service.stop() == 0
    finally:
        if service.proc.poll() is None:
            service.kill()
    stored = [session for [session] in read_rows(tmp_path / "ch", "faults", "SELECT session_id FROM events",
                                                  timeout=300)]
    print(f"\nkills={kills} sent={load.sent} acknowledged={len(load.acked)} stored={len(stored)}")
    assert len(load.acked) > 1000, "the load did not get going"
    assert len(stored) == len(set(stored)), "some events were stored twice"
    missing = load.acked - set(stored)
    log_text = log.read_text(errors="replace")
    assert not missing, (f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}; warnings and errors "
                         "of the services:\n" + "\n".join(line for line in log_text.splitlines()
                                                          if " WARNING " in line or " ERROR " in line)[-5000:])

