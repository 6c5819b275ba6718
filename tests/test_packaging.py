"""What each distribution installs: the Python client alone, the service without the embedded engine (the image), and
the service at its declared floors. Each in a fresh virtualenv, from this checkout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ingest.api.server import check_internals
from ingest.contract.events import EVENT_NAMES

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
# What a fresh virtualenv holds before anything is installed into it.
BARE = {"pip", "setuptools"}


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


def _pip(python: Path, *args: str, cwd: Path = ROOT) -> None:
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def _distributions(python: Path) -> set[str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return {d["name"].lower() for d in json.loads(out)}


def _run(python: Path, code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, **kwargs)


def test_aiohttp_still_has_the_internals_the_service_leans_on():
    """ingest/api/server.py uses names aiohttp does not document; an aiohttp release without them fails here, by
    name, before a connection limit silently stops working."""
    assert check_internals() == []


@pytest.mark.slow
def test_the_python_client_installs_alone_with_the_contracts_event_names(tmp_path):
    python = _venv(tmp_path / "client")
    _pip(python, str(CLIENT))
    assert _distributions(python) - BARE == {"ingest-client"}
    names = _run(python, "import ingest_client; print(list(ingest_client.EVENT_NAMES))", cwd=tmp_path)
    assert json.loads(names.stdout.replace("'", '"')) == list(EVENT_NAMES), names.stderr
    # Its sdist builds away from the repository: the contract travels in it.
    _pip(python, "hatchling>=1.21")
    built = subprocess.run([str(python), "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path / "dist")],
                           cwd=CLIENT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (sdist,) = (tmp_path / "dist").glob("ingest_client-*.tar.gz")
    again = _venv(tmp_path / "from-sdist")
    _pip(again, str(sdist), cwd=tmp_path)
    names = _run(again, "import ingest_client; print(len(ingest_client.EVENT_NAMES))", cwd=tmp_path)
    assert names.stdout.strip() == str(len(EVENT_NAMES)), names.stderr


@pytest.mark.slow
def test_the_server_install_leaves_the_embedded_engine_out_and_says_how_to_add_it(tmp_path):
    """What the image installs (`pip install .`): no chdb and none of what it pulls in; asked for the embedded engine
    anyway, the service says in one line which extra to install."""
    python = _venv(tmp_path / "server")
    _pip(python, str(ROOT))
    installed = _distributions(python)
    assert "ingest" in installed and not installed & {"chdb", "chdb-core", "pyarrow", "pandas", "numpy"}
    result = subprocess.run([str(python), "-m", "ingest", "serve"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "INGEST_PORT": "0",
                                              "CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}",
                                              "INGEST_WAL_DIR": str(tmp_path / "wal"),
                                              "INGEST_DEAD_LETTER_PATH": str(tmp_path / "dead.jsonl")})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "ingest: CLICKHOUSE_URL=chdb://... runs ClickHouse inside this process, which needs the embedded engine: "
        "pip install 'ingest[embedded]' (or point CLICKHOUSE_URL at a server, http://...)"]


@pytest.mark.floors
def test_the_declared_floors_install_and_serve(tmp_path):
    """Every direct dependency at the lowest release pyproject.toml allows (uv's lowest-direct resolution), the
    embedded engine included: the service starts, stores events, answers a repeated key, and aiohttp at its floor has
    the internals it needs."""
    python = _venv(tmp_path / "floors")
    _pip(python, "uv")
    resolved = subprocess.run([str(python.parent / "uv"), "pip", "install", "-q", "--python", str(python),
                               "--resolution", "lowest-direct", str(CLIENT), f"{ROOT}[embedded]"], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    internals = _run(python, "from ingest.api.server import check_internals; print(check_internals())", cwd=tmp_path)
    assert internals.stdout.strip() == "[]", internals.stderr
    env = {"PATH": "/usr/bin:/bin", "INGEST_PORT": "0", "CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}",
           "INGEST_WAL_DIR": str(tmp_path / "wal"), "INGEST_DEAD_LETTER_PATH": str(tmp_path / "dead.jsonl")}
    log = tmp_path / "serve.log"
    service = subprocess.Popen([str(python), "-m", "ingest", "serve"], cwd=tmp_path, env=env,
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "listening on http://" not in log.read_text():
            assert service.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        base = re.search(r"listening on (http://[^:]+:\d+)", log.read_text()).group(1)
        body = json.dumps([{"event_name": "page_view", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "session_id": "floor", "user_id": None, "device_type": "desktop", "properties": {}}])
        answers = []
        for _ in range(2):
            request = urllib.request.Request(f"{base}/events", data=body.encode(), headers={
                "Content-Type": "application/json", "Idempotency-Key": "floors-1"})
            with urllib.request.urlopen(request, timeout=10) as response:
                answers.append((response.status, response.headers.get("Idempotent-Replayed")))
        assert answers == [(202, None), (202, "true")]
    finally:
        service.terminate()
        assert service.wait(timeout=60) == 0, log.read_text()
    counted = subprocess.run([str(python), "-c", "import clickhouse_connect, sys; print(clickhouse_connect.get_client("
                              "dsn=sys.argv[1], database='analytics').command('SELECT count() FROM events'))",
                              f"chdb://{tmp_path / 'ch'}"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert counted.stdout.strip() == "1", counted.stderr
