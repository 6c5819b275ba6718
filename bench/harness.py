"""Helpers the benchmark scripts share: the machine description, free ports, a valid body, and a service subprocess."""

from __future__ import annotations

import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/x.py` from a checkout, installed or not

from ingest.demo import MAX_BATCH, Traffic, rfc3339  # noqa: E402


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return [("cores", str(os.cpu_count())), ("cpu", cpu), ("python", platform.python_version()),
            ("chdb", f"{ver('chdb')} (engine {ver('chdb-core')})"), ("aiohttp", ver("aiohttp")),
            ("clickhouse-connect", ver("clickhouse-connect")),
            # Other work on the machine skews figures: say how busy it was.
            ("load average 1/5 min", "%.2f / %.2f" % os.getloadavg()[:2])]


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    """A two-column table, numbers right-aligned."""
    print(f"\n{title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:,.1f}" if value >= 100 else f"{value:,.3f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        print(f"  {key:<{width}}  {value}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_body(n: int = MAX_BATCH, seed: int = 1) -> bytes:
    """A valid request body of n realistic events stamped now (valid for the next hour)."""
    return orjson.dumps(Traffic(random.Random(seed)).events(n, rfc3339(time.time())))


def http(url: str, data: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET, or a JSON POST when data is given; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) in exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Service:
    """`python -m ingest serve` as a subprocess on its own embedded data dir and port; always stopped on exit."""

    def __init__(self, data_dir: str, port: int, extra_env: dict[str, str] | None = None,
                 open_files: int | None = None) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CLICKHOUSE_URL": f"chdb://{data_dir}", "CLICKHOUSE_DATABASE": "analytics",
               "INGEST_HOST": "127.0.0.1", "INGEST_PORT": str(port), "INGEST_LOG_LEVEL": "WARNING",
               **(extra_env or {})}
        self.log_path = Path(data_dir).with_suffix(".log")
        self._log = open(self.log_path, "wb")
        def limit_files() -> None:  # as a container's `ulimit -n` would (soft and hard)
            if open_files is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.proc = subprocess.Popen([sys.executable, "-m", "ingest", "serve"], cwd=REPO, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=limit_files)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if http(self.url + "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("service not healthy in time")

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM (the service flushes its buffer), wait for exit; returns seconds it took. Kills if it hangs."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return time.monotonic() - started

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def count_rows(data_dir: str, database: str = "analytics") -> int:
    """Rows in the events table, read by a fresh process (the embedded path opens in one process at a time)."""
    code = ("import sys, clickhouse_connect as c; "
            "print(c.get_client(dsn='chdb://' + sys.argv[1], database=sys.argv[2]).command('SELECT count() FROM events'))")
    out = subprocess.run([sys.executable, "-c", code, data_dir, database], capture_output=True, text=True,
                         timeout=120, check=True)
    return int(out.stdout.strip())
