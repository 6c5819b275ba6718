"""Fault tests on a real process: kill -9 under load, again and again; every 202 is stored exactly once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .harness.events import event
from .test_process import _free_port

pytestmark = pytest.mark.slow
KILLS = 10


def _start(env: dict, cwd: Path) -> subprocess.Popen:
    # The services' logs go to one file, shown if the test fails (a loss must be diagnosable from CI's output).
    proc = subprocess.Popen([sys.executable, "-m", "ingest", "serve"], env=env, cwd=cwd,
                            stdout=open(cwd / "services.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{env['INGEST_PORT']}/health", timeout=2):
                return proc
        except (OSError, urllib.error.HTTPError):
            assert proc.poll() is None, "service exited during startup"
            assert time.monotonic() < deadline, "service did not start"
            time.sleep(0.1)


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


def _stored_ids(data_dir: Path) -> list[str]:
    code = ("import clickhouse_connect, json, sys; c = clickhouse_connect.get_client(dsn=sys.argv[1], "
            "database='faults'); print(json.dumps([r[0] for r in c.query('SELECT session_id FROM events')"
            ".result_rows]))")
    out = subprocess.run([sys.executable, "-c", code, f"chdb://{data_dir}"], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout)


def test_every_acknowledged_event_survives_repeated_kill_9_exactly_once(tmp_path):
    port = _free_port()
    env = {**os.environ, "INGEST_HOST": "127.0.0.1", "INGEST_PORT": str(port),
           "CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}", "CLICKHOUSE_DATABASE": "faults",
           "INGEST_FLUSH_INTERVAL_SECONDS": "0.3", "INGEST_FLUSH_EVENTS": "500"}
    rng = random.Random(7)
    proc = _start(env, tmp_path)
    try:
        with Load(port) as load:
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.5, 1.5))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc = _start(env, tmp_path)
            time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = _stored_ids(tmp_path / "ch")
    print(f"\nkills={KILLS} sent={load.sent} acknowledged={len(load.acked)} stored={len(stored)}")
    assert len(load.acked) > 1000, "the load did not get going"
    assert len(stored) == len(set(stored)), "some events were stored twice"
    missing = load.acked - set(stored)
    log = (tmp_path / "services.log").read_text(errors="replace")
    assert not missing, (f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}; warnings and errors "
                         "of the services:\n" + "\n".join(line for line in log.splitlines()
                                                          if " WARNING " in line or " ERROR " in line)[-5000:])
