"""haproxy/haproxy.cfg, run for real: Debian's haproxy in front of two real ingest processes on the embedded engine
(each its own data and log directory), the way the compose cluster runs the same file in front of its containers.

What it must do: send a repeated Idempotency-Key to the process that answered it (which replays the first answer
and stores nothing), spread requests without a key, never send one request twice, move traffic off a killed or
unhealthy process within a couple of seconds (a process killed with -9 keeps every event it acknowledged in its
write-ahead log), keep taking events while ClickHouse is down, and forward only the public API.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from .harness.engine import read_rows
from .harness.events import event
from .harness.logs import log_text
from .harness.ports import reserved_port
from .harness.service import LISTENING, Service, fetch
from .harness.tools import require_tool

pytestmark = pytest.mark.slow  # real processes: haproxy, ingest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "haproxy" / "haproxy.cfg"
OPENAPI = json.loads((ROOT / "ingest" / "api" / "openapi.json").read_text())
# Read on each process directly, never through the load balancer (the config says why).
NOT_FORWARDED = {"/metrics", "/panels"}


def haproxy_env(bind: str, server_1: str, server_2: str) -> dict[str, str]:
    """The environment the compose cluster gives the file, with these addresses."""
    return {**os.environ, "LB_BIND": bind, "LB_SERVER_1": server_1, "LB_SERVER_2": server_2}


class LoadBalancer:
    """haproxy with the repository's file, in the foreground, on a loopback port, in front of two addresses.

    A second file adds what only the test needs: a stats socket, to read which servers HAProxy holds up or down.
    """

    def __init__(self, tmp_path: Path, port: int, server_1: str, server_2: str) -> None:
        self.port = port
        self.socket = tmp_path / "haproxy.sock"
        extra = tmp_path / "test-only.cfg"
        extra.write_text(f"global\n    stats socket {self.socket} mode 600 level user\n")
        self.log = tmp_path / "haproxy.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([require_tool("haproxy"), "-db", "-f", str(CONFIG), "-f", str(extra)],
                                         env=haproxy_env(f"127.0.0.1:{port}", server_1, server_2),
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not start ({self.proc.poll()}):\n{self.output()}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return log_text(self.log)

    def states(self) -> dict[tuple[str, str], str]:
        """{(backend, server): status} as HAProxy holds it now: UP, DOWN, or on the way ("UP 1/2", "DOWN 1/2")."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {(r["pxname"], r["svname"]): r["status"] for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_states(self, wanted: dict[tuple[str, str], str], timeout: float = 10) -> float:
        """Seconds until every (backend, server) in `wanted` has its status; fails with HAProxy's log."""
        start = time.monotonic()
        while True:
            states = self.states()
            if all(states.get(k) == v for k, v in wanted.items()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"haproxy states {states}, wanted {wanted}:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def send(url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, Any, bytes]:
    """POST a JSON body: (status, headers, body); error statuses are returned, not raised. The headers are looked
    up without regard to case (HAProxy forwards them in lower case, as HTTP/2 would)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def batch(tag: str, n: int = 2) -> tuple[list[str], bytes]:
    """n events with session ids tag-0.. and the exact bytes to send (a resend must be the same bytes)."""
    sessions = [f"{tag}-{i}" for i in range(n)]
    return sessions, json.dumps([event(session_id=s) for s in sessions]).encode()


def start_ingest(tmp_path: Path, name: str, port: int, clickhouse_url: str | None = None, **env: str) -> Service:
    """An ingest process on its own data and log directories (`tmp_path/name/`), listening on `port`; with
    clickhouse_url, on that storage instead of its own embedded engine. Its output goes to `tmp_path/name.log`
    (a restart appends to it)."""
    home = tmp_path / name
    return Service(tmp_path, log=tmp_path / f"{name}.log", INGEST_PORT=str(port),
                   CLICKHOUSE_URL=clickhouse_url or f"chdb://{home / 'clickhouse'}",
                   INGEST_WAL_DIR=str(home / "wal"), INGEST_DEAD_LETTER_PATH=str(home / "dead-letter.jsonl"), **env)


def wait_listening(service: Service, port: int, timeout: float = 60) -> Service:
    """Wait until the process listens and answers GET /time, whatever its /health says (wait_healthy() wants a
    200 from /health, which a process whose storage is down never gives)."""
    deadline = time.monotonic() + timeout
    service.port = port
    while True:
        if re.search(LISTENING, service.output()):
            try:
                if fetch(f"{service.url}/time", timeout=2)[0] == 200:
                    return service
            except OSError:
                pass
        if service.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"ingest did not answer GET /time ({service.proc.poll()}):\n{service.output()}")
        time.sleep(0.05)


def stored_sessions(tmp_path: Path, name: str) -> list[str]:
    """session_id of every row in the process's embedded data directory (read once the process has stopped)."""
    return [s for [s] in read_rows(tmp_path / name / "clickhouse", "analytics", "SELECT session_id FROM events")]


def accepted(service: Service) -> int:
    return int(service.metric("ingest_events_accepted_total"))


class Rig:
    """Two ingest processes (ingest-1, ingest-2) on ports held for the test, and HAProxy in front of them."""

    def __init__(self, tmp_path: Path, stack: ExitStack, **env: str) -> None:
        self.tmp_path, self.env = tmp_path, env
        self.ports = [stack.enter_context(reserved_port()) for _ in range(3)]
        self.services: list[Service] = []
        for i in (1, 2):
            self.services.append(start_ingest(tmp_path, f"ingest-{i}", self.ports[i], **env))
        for service in self.services:
            service.wait_healthy()
        self.lb = LoadBalancer(tmp_path, self.ports[0], f"127.0.0.1:{self.ports[1]}", f"127.0.0.1:{self.ports[2]}")
        stack.callback(self.close)

    def restart(self, i: int) -> Service:
        """Start ingest-i again on its port and its directories (after a kill)."""
        self.services[i - 1] = start_ingest(self.tmp_path, f"ingest-{i}", self.ports[i], **self.env)
        return self.services[i - 1].wait_healthy()

    def stop_all(self) -> None:
        """SIGTERM every process (each flushes its buffer) and fail unless each exits cleanly."""
        codes = [service.stop() for service in self.services]
        assert codes == [0, 0], f"exit codes {codes}:\n" + "\n".join(s.output() for s in self.services)

    def close(self) -> None:
        self.lb.stop()
        for service in self.services:
            if service.proc.poll() is None:
                service.kill()


@pytest.fixture
def rig(tmp_path) -> Iterator[Rig]:
    """A rig of the test's own, to stop or kill."""
    require_tool("haproxy")
    with ExitStack() as stack:
        yield Rig(tmp_path, stack)


@pytest.fixture(scope="module")
def shared_rig(tmp_path_factory) -> Iterator[Rig]:
    """One rig for the tests that only send and look (each compares counts before and after)."""
    require_tool("haproxy")
    with ExitStack() as stack:
        yield Rig(tmp_path_factory.mktemp("shared-rig"), stack)


# --- the file ------------------------------------------------------------------------------------------------------

def test_haproxy_accepts_the_file_and_refuses_it_without_the_addresses():
    haproxy = require_tool("haproxy")
    ok = subprocess.run([haproxy, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30,
                        env=haproxy_env(":8080", "ingest:3001", "ingest-2:3001"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Configuration file is valid" in ok.stdout + ok.stderr
    unset = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    refused = subprocess.run([haproxy, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30,
                             env=unset)
    assert refused.returncode != 0, "without LB_BIND/LB_SERVER_* haproxy must refuse, not bind a default"


def test_the_variables_the_file_reads_are_the_clusters_and_documented():
    lines = [line for line in CONFIG.read_text().splitlines() if not line.lstrip().startswith("#")]
    read = set(re.findall(r'"\$\{([A-Za-z_][A-Za-z0-9_]*)\}"', "\n".join(lines)))
    # docker-compose.cluster.yml sets exactly these for its haproxy container.
    assert read == {"LB_BIND", "LB_SERVER_1", "LB_SERVER_2"}
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", (ROOT / "docs" / "configuration.md").read_text(), re.M))
    assert read <= rows, f"missing from docs/configuration.md: {sorted(read - rows)}"


# --- routing -------------------------------------------------------------------------------------------------------

def test_a_repeated_key_reaches_the_process_that_answered_it_and_is_stored_once(rig, tmp_path):
    sent: list[str] = []
    # Keys as clients make them (the Python client's header, the tracker's ?idempotency_key=), one batch each.
    keyed = [(f"lb-header-{i:02d}", "header") for i in range(12)] + [(f"lb-param-{i:02d}", "param") for i in range(6)]
    for key, how in keyed:
        sessions, body = batch(key)
        sent += sessions
        url, headers = f"{rig.lb.url}/events", {"Idempotency-Key": key}
        if how == "param":
            url, headers = f"{rig.lb.url}/events?idempotency_key={key}", {}
        status, first_headers, first = send(url, body, headers)
        assert status == 202 and "Idempotent-Replayed" not in first_headers, (key, status, first)
        for _ in range(3):
            status, again_headers, again = send(url, body, headers)
            # Another process would not know the key: it would store the batch again, without this header.
            assert (status, again_headers.get("Idempotent-Replayed"), again) == (202, "true", first), key
    per_process = [int(s.metric("ingest_idempotency_keys")) for s in rig.services]
    assert sum(per_process) == len(keyed)
    assert all(per_process), f"every key hashed to one process: {per_process}"
    assert [int(s.metric("ingest_idempotent_replays_total")) for s in rig.services] == [3 * n for n in per_process]

    rig.stop_all()
    stored = stored_sessions(tmp_path, "ingest-1") + stored_sessions(tmp_path, "ingest-2")
    assert sorted(stored) == sorted(sent), "each keyed batch must be stored exactly once across the processes"


def test_requests_without_a_key_are_spread_over_both_processes(shared_rig):
    rig = shared_rig
    before = [accepted(s) for s in rig.services]
    for i in range(10):
        assert send(f"{rig.lb.url}/events", batch(f"unkeyed-{i}")[1])[0] == 202
    taken = [accepted(s) - b for s, b in zip(rig.services, before, strict=True)]
    assert sum(taken) == 20 and min(taken) >= 4, f"events per process: {taken}"


def test_only_the_public_api_goes_through(shared_rig):
    rig = shared_rig
    direct = rig.services[0].url
    for path, methods in OPENAPI["paths"].items():
        if path in NOT_FORWARDED:
            assert fetch(f"{direct}{path}")[0] == 200, path  # loopback: the process itself answers
            status, body = fetch(f"{rig.lb.url}{path}")
            assert status == 403 and json.loads(body)["error"] == "not_through_the_load_balancer", (path, body)
        elif "get" in methods:
            assert fetch(f"{rig.lb.url}{path}")[0] == fetch(f"{direct}{path}")[0] == 200, path
        else:
            assert send(f"{rig.lb.url}{path}", batch(f"api-{path}")[1])[0] == 202, path
    # The list is exact: a spelling that the process would still route to /panels is refused too.
    assert fetch(f"{direct}/p%61nels")[0] == 200
    assert fetch(f"{rig.lb.url}/p%61nels")[0] == 404


def test_the_proxy_logs_no_write_key(shared_rig):
    """A beacon carries its write key in the URL (`?key=`); the proxy's log line names the path only."""
    rig = shared_rig
    assert send(f"{rig.lb.url}/events?key=wk-in-the-url&idempotency_key=k-1", batch("beacon")[1])[0] == 202
    deadline = time.monotonic() + 5
    while '"/events"' not in rig.lb.output():
        assert time.monotonic() < deadline, f"haproxy logged no request:\n{rig.lb.output()}"
        time.sleep(0.05)
    assert "wk-in-the-url" not in rig.lb.output()


# --- never twice ---------------------------------------------------------------------------------------------------

class Recorder(ThreadingHTTPServer):
    """A stand-in process that answers health checks, records every POST body it reads and then either answers
    202 or, like a process killed mid-request, closes the connection without an answer."""

    daemon_threads = True

    def __init__(self, answers: bool) -> None:
        self.answers, self.bodies = answers, []
        super().__init__(("127.0.0.1", 0), _RecorderHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _RecorderHandler(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        if not self.server.answers:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(202)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def test_a_request_a_process_may_have_received_is_never_sent_again(tmp_path):
    require_tool("haproxy")
    drops, answers = Recorder(answers=False), Recorder(answers=True)
    with reserved_port() as port:
        lb = LoadBalancer(tmp_path, port, f"127.0.0.1:{drops.server_port}", f"127.0.0.1:{answers.server_port}")
        try:
            statuses = [send(f"{lb.url}/events", f'["request {i}"]'.encode())[0] for i in range(8)]
        finally:
            lb.stop()
            drops.shutdown()
            answers.shutdown()
    received = drops.bodies + answers.bodies
    assert len(drops.bodies) >= 1 and len(received) == len(set(received)) == 8, \
        f"a request reached a process twice: {sorted(received)}"
    # The client, not the proxy, decides whether to resend (with its key, to the same process).
    assert sorted(statuses) == sorted([502] * len(drops.bodies) + [202] * len(answers.bodies))


# --- failures ------------------------------------------------------------------------------------------------------

class KeyedLoad:
    """Client threads posting uniquely tagged batches with a key each through the load balancer, one request at a
    time and without resending (a resend after a kill is a first try at the other process: that is the client's
    choice, and not what is measured here). Remembers what was acknowledged, and when each answer came."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url = url
        self.sent: set[str] = set()
        self.acked: set[str] = set()
        self.answers: list[tuple[float, int]] = []  # (monotonic time of the answer, status; 0: no answer)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def _run(self, client: int) -> None:
        seq = 0
        while not self._stop.is_set():
            sessions, body = batch(f"load-{client}-{seq}", 5)
            seq += 1
            with self._lock:
                self.sent.update(sessions)
            try:
                status = send(self.url, body, {"Idempotency-Key": f"load-{client}-{seq}"}, timeout=5)[0]
            except OSError:
                status = 0
            with self._lock:
                self.answers.append((time.monotonic(), status))
                if status == 202:
                    self.acked.update(sessions)

    def since(self, start: float) -> list[tuple[float, int]]:
        with self._lock:
            return [a for a in self.answers if a[0] >= start]

    def __enter__(self) -> "KeyedLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def test_a_killed_process_takes_no_acknowledged_event_with_it_and_traffic_moves(tmp_path):
    require_tool("haproxy")
    with ExitStack() as stack:
        # Nothing is inserted before the kill: every event ingest-1 acknowledged is only in its write-ahead log.
        rig = Rig(tmp_path, stack, INGEST_FLUSH_INTERVAL_SECONDS="60", INGEST_FLUSH_EVENTS="100000")
        first, second = rig.services
        with KeyedLoad(f"{rig.lb.url}/events") as load:
            deadline = time.monotonic() + 10
            while accepted(first) < 50 or accepted(second) < 50:
                assert time.monotonic() < deadline, "the load did not reach both processes"
                time.sleep(0.05)
            first.kill()
            killed_at = time.monotonic()
            # HAProxy's health check takes it out (two failed checks)...
            marked_down = rig.lb.wait_states({("ingest", "ingest-1"): "DOWN"}, timeout=3)
            time.sleep(max(0.0, 2.0 - (time.monotonic() - killed_at)))
            after = load.since(killed_at)
            # ... and before that, a request for it goes to the other process (the connection was refused, so
            # the request was never sent): only what was in flight at the kill went unanswered.
            failed = [status for _, status in after if status != 202]
            assert len(failed) <= 2, f"{len(failed)} of {len(after)} requests failed after the kill: {failed[:10]}"
            assert len(after) > 20 and after[-1][1] == 202
            before_restart = accepted(second)

            restarted = rig.restart(1)
            rig.lb.wait_states({("ingest", "ingest-1"): "UP"}, timeout=5)
            back = time.monotonic()
            while accepted(restarted) == 0:
                assert time.monotonic() - back < 5, "traffic did not come back to the restarted process"
                time.sleep(0.05)
        assert accepted(second) > before_restart
        taken_after_restart = accepted(restarted)
        rig.stop_all()
    stored_first, stored_second = stored_sessions(tmp_path, "ingest-1"), stored_sessions(tmp_path, "ingest-2")
    stored = stored_first + stored_second
    print(f"\nsent={len(load.sent)} acknowledged={len(load.acked)} stored={len(stored)} "
          f"(ingest-1 {len(stored_first)}, ingest-2 {len(stored_second)}); marked down {marked_down:.2f} s after "
          f"the kill, {len(failed)} unanswered")
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert not load.acked - set(stored), f"{len(load.acked - set(stored))} acknowledged events lost"
    assert set(stored) <= load.sent
    # What ingest-1 acknowledged before the kill (50 events at least, none inserted yet) came back from its log.
    assert len(stored_first) >= 50 + taken_after_restart


def test_a_process_that_cannot_deliver_gets_no_traffic(tmp_path):
    """ingest-1's ClickHouse is unreachable (its /health answers 503; it would still take events into its log):
    while ingest-2 is healthy, every request goes there, those with ingest-1's keys too."""
    require_tool("haproxy")
    with ExitStack() as stack:
        dead, port_1, port_2, lb_port = (stack.enter_context(reserved_port()) for _ in range(4))
        first = start_ingest(tmp_path, "ingest-1", port_1, clickhouse_url=f"http://127.0.0.1:{dead}")
        stack.callback(first.kill)  # a stop would spend 20 s trying to deliver anything it took
        second = start_ingest(tmp_path, "ingest-2", port_2)
        stack.callback(second.stop)
        wait_listening(first, port_1)
        second.wait_healthy()
        assert fetch(f"{first.url}/health")[0] == 503
        lb = LoadBalancer(tmp_path, lb_port, f"127.0.0.1:{port_1}", f"127.0.0.1:{port_2}")
        stack.callback(lb.stop)
        lb.wait_states({("ingest", "ingest-1"): "DOWN", ("ingest", "ingest-2"): "UP"})
        for i in range(12):
            status, _, body = send(f"{lb.url}/events", batch(f"k{i}")[1], {"Idempotency-Key": f"lb-health-{i:02d}"})
            assert status == 202, body
        assert (accepted(first), accepted(second)) == (0, 24)


def test_with_clickhouse_down_behind_every_process_events_are_still_taken(tmp_path):
    """No process is healthy, but each still logs what it accepts and delivers it later: the proxy sends to every
    process that answers at all (keys still to their own process) instead of refusing everyone."""
    require_tool("haproxy")
    with ExitStack() as stack:
        dead, port_1, port_2, lb_port = (stack.enter_context(reserved_port()) for _ in range(4))
        services = []
        for name, port in (("ingest-1", port_1), ("ingest-2", port_2)):
            service = start_ingest(tmp_path, name, port, clickhouse_url=f"http://127.0.0.1:{dead}")
            # Killed at the end: a stop would spend 20 s trying to deliver to the storage that is not there.
            stack.callback(service.kill)
            services.append((service, port))
        for service, port in services:
            wait_listening(service, port)
        lb = LoadBalancer(tmp_path, lb_port, f"127.0.0.1:{port_1}", f"127.0.0.1:{port_2}")
        stack.callback(lb.stop)
        lb.wait_states({("ingest", "ingest-1"): "DOWN", ("ingest", "ingest-2"): "DOWN",
                        ("ingest_alive", "ingest-1"): "UP", ("ingest_alive", "ingest-2"): "UP"})
        for i in range(8):
            _, body = batch(f"down-{i}")
            headers = {"Idempotency-Key": f"lb-down-{i:02d}"}
            first = send(f"{lb.url}/events", body, headers)
            again = send(f"{lb.url}/events", body, headers)
            assert (first[0], again[0], again[1].get("Idempotent-Replayed")) == (202, 202, "true"), (first, again)
        taken = [accepted(s) for s, _ in services]
        assert sum(taken) == 16 and all(taken), f"events per process: {taken}"
