"""`python -m ingest` as users run it: the service in its own process on the port it picked (INGEST_PORT=0, read
from its log), commands run to their end, and plain HTTP to them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .events import event
from .logs import log_text, wait_for_line
from .metrics import metric

# What serve logs once its socket accepts connections (ingest/api/server.py), with the port the system gave it.
LISTENING = r"listening on http://(?P<host>\S+):(?P<port>\d+): "


def command(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m ingest ARGS` to its end with these environment variables added."""
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(output: str, *words: str) -> str:
    """The output holds our one `ingest: ...` line (with these words), and no traceback."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("ingest: ")]
    assert len(lines) == 1, output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def fetch(url: str, data: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a JSON POST when data is given; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Service:
    """`python -m ingest serve` in its own process, on the loopback port the system picks unless INGEST_PORT is set.

    Its output goes to `log` (default: a new file in cwd); the port is known once wait_healthy() has read it there.
    `open_files` (soft, hard) limits its open files as a container's `ulimit -n` would; `command` starts it otherwise
    than `python -m ingest serve` (as the image's CMD does, say).
    """

    def __init__(self, cwd: Path, *, log: Path | None = None, open_files: tuple[int, int] | None = None,
                 command: list[str] | None = None, **env: str) -> None:
        # INFO: the line that names the port is an INFO line, whatever the caller's environment says.
        self.env = {**os.environ, "INGEST_HOST": "127.0.0.1", "INGEST_PORT": "0", "INGEST_LOG_LEVEL": "INFO", **env}
        self.log = log or Path(cwd) / f"serve-{time.monotonic_ns()}.log"
        # Several services may append to one log: this one's output starts here.
        self._start = self.log.stat().st_size if self.log.exists() else 0
        self.port: int | None = None

        def limit_files() -> None:
            if open_files is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

        with open(self.log, "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(command or [sys.executable, "-m", "ingest", "serve"], env=self.env, cwd=cwd,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=limit_files if open_files is not None else None)

    @property
    def url(self) -> str:
        """The service's base URL (loopback, the port it logged)."""
        if self.port is None:
            raise AssertionError("the service's port is known once wait_healthy() has read it from the log")
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """What this service has written to its log so far."""
        return log_text(self.log, self._start)

    def wait_healthy(self, timeout: float = 60) -> "Service":
        """Wait until the service logs the port it listens on and answers /health with 200; fail with its log."""
        deadline = time.monotonic() + timeout
        self.port = int(wait_for_line(self.log, LISTENING, self.proc, self._start, timeout)["port"])
        while True:
            try:
                if fetch(f"{self.url}/health", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited ({self.proc.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer /health with 200 within {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 60) -> int:
        """Its exit code, once it has exited by itself (a refused start, a kill from outside)."""
        return self.proc.wait(timeout=timeout)

    def get(self, path: str) -> tuple[int, Any]:
        """(status, body) of a GET: the body parsed as JSON, else as text."""
        status, body = fetch(f"{self.url}{path}")
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the service's /metrics now (NaN if it has no such sample)."""
        return metric(fetch(f"{self.url}/metrics")[1].decode(), name, **labels)

    def post_events(self, n: int, tag: str) -> int:
        """POST n events with session ids tag-0..; returns how many the service accepted."""
        return self.post([event(session_id=f"{tag}-{i}") for i in range(n)])

    def post(self, events: list[dict]) -> int:
        """POST these events; returns how many the service accepted (with a 202, or this fails with the answer)."""
        status, body = fetch(f"{self.url}/events", json.dumps(events).encode())
        if status != 202:
            raise AssertionError(f"POST /events answered {status}: {body[:2000]!r}")
        return json.loads(body)["accepted"]

    def kill(self) -> None:
        """SIGKILL, as a crash: no flush, no cleanup."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the service flushes its buffer) and its exit code; killed (-9) if it has not exited by timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
