"""The service and its commands as users run them: real processes, real ports, their exit codes and output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .events import event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m ingest ARGS` to its end with these environment variables added."""
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class Service:
    """`python -m ingest serve` in its own process, on a free loopback port."""

    def __init__(self, cwd: Path, **env: str) -> None:
        self.port = int(env.get("INGEST_PORT") or free_port())
        self.env = {**os.environ, "INGEST_HOST": "127.0.0.1", "INGEST_PORT": str(self.port), **env}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "ingest", "serve"], env=self.env, cwd=cwd,
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 60) -> "Service":
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except urllib.error.HTTPError:
                return self  # answering: up, if not healthy
            except OSError:
                assert self.proc.poll() is None, f"serve exited ({self.proc.returncode}):\n{self.output()}"
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def post_events(self, n: int, tag: str) -> int:
        """POST n events with session ids tag-0..; returns how many the service accepted."""
        return self.post([event(session_id=f"{tag}-{i}") for i in range(n)])

    def post(self, events: list[dict]) -> int:
        """POST these events; returns how many the service accepted."""
        req = urllib.request.Request(f"{self.url}/events", data=json.dumps(events).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["accepted"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

