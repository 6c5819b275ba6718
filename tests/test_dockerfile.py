"""ingest/Dockerfile and .dockerignore, read statically (no Docker engine here); the healthcheck
command and the install step are run for real."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest
from aiohttp import web

from .harness.service import Service
from .stack import ROOT

DOCKERFILE = ROOT / "ingest" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def arguments(keyword: str) -> list[str]:
    return [rest for k, rest in instructions() if k == keyword]


def test_base_is_a_slim_pinned_python_that_meets_requires_python():
    (base,) = arguments("FROM")
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim-[a-z]+", base)
    assert m, base
    minimum = re.search(r'requires-python\s*=\s*">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert (int(m[1]), int(m[2])) >= (int(minimum[1]), int(minimum[2]))


def test_installs_the_package_the_way_the_readme_does():
    """A regular install of the service, as the README's run command does, but without the embedded engine: the image
    writes to a ClickHouse server."""
    runs = " && ".join(arguments("RUN"))
    assert re.search(r"\bpip install \.(\s|$)", runs), "pip install . (a regular install, no extras)"
    assert " -e " not in runs and "--editable" not in runs
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"pip install -q \./clients/python '\.\[embedded\]'", readme), \
        "the README's run command installs the service with the embedded engine, not editable"


def test_runs_as_a_non_root_user():
    users = arguments("USER")
    assert users and users[-1] not in ("root", "0", "0:0")
    # The user is created before it is used.
    assert re.search(rf"useradd\b.*\b{re.escape(users[-1])}\b", " ".join(arguments("RUN")))
    # Nothing after the last USER switches back.
    last_user = max(i for i, (k, _) in enumerate(instructions()) if k == "USER")
    assert all(k != "RUN" or "su " not in rest for k, rest in instructions()[last_user:])


@pytest.mark.slow
def test_the_images_command_starts_a_healthy_service(tmp_path):
    """The CMD, run as the image runs it (exec form; `python` is the image's, here the test's), with storage of its
    own, answers /health and stops cleanly on SIGTERM (docker stop)."""
    (cmd,) = arguments("CMD")
    program, *args = json.loads(cmd)
    assert program == "python", cmd
    service = Service(tmp_path, command=[sys.executable, *args], CLICKHOUSE_URL=f"chdb://{tmp_path / 'data'}",
                      INGEST_WAL_DIR=str(tmp_path / "wal")).wait_healthy()
    assert service.stop() == 0


def healthcheck_command() -> list[str]:
    (healthcheck,) = arguments("HEALTHCHECK")
    return json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())


def test_healthcheck_asks_health_with_only_what_the_image_has():
    command = healthcheck_command()
    assert command[0] == "python" and "/health" in " ".join(command)
    assert not {"curl", "wget"} & set(re.findall(r"\w+", " ".join(command)))


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
async def test_healthcheck_command_follows_the_health_status(aiohttp_server, status, healthy):
    """Run the image's healthcheck command against a server answering /health like the service."""
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if healthy else "failing"}, status=status)

    app = web.Application()
    app.router.add_get("/health", health)
    server = await aiohttp_server(app)
    process = await asyncio.create_subprocess_exec(
        *[sys.executable if arg == "python" else arg for arg in healthcheck_command()],
        env={**os.environ, "INGEST_PORT": str(server.port)})
    assert (await asyncio.wait_for(process.wait(), 30) == 0) is healthy


def copied_sources() -> list[str]:
    sources = []
    for rest in arguments("COPY"):
        parts = shlex.split(rest)
        sources += [p for p in parts[:-1] if not p.startswith("--")]
    return sources


def dockerignored(path: str) -> bool:
    """.dockerignore semantics for the patterns it uses (last match wins; `!` re-includes)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.split("/")[-1], pattern) and line.startswith("**/")
               for p in prefixes):
            ignored = not negate
    return ignored


def test_the_build_context_keeps_secrets_and_local_state_out_but_not_what_the_image_copies():
    for path in [".env", ".env.production", ".venv/bin/python", "data/clickhouse/x", "backups/ch.tar.gz", ".git/config",
                 "ingest/__pycache__/app.cpython-313.pyc"]:
        assert dockerignored(path), path
    for source in copied_sources():
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), source
        for file in (ROOT / source).rglob("*") if (ROOT / source).is_dir() else []:
            rel = file.relative_to(ROOT).as_posix()
            if file.is_file() and "__pycache__" not in rel and rel != "ingest/Dockerfile":
                assert not dockerignored(rel), rel


@pytest.mark.slow
def test_the_copied_files_build_a_wheel_that_carries_the_ddl(tmp_path):
    """Exactly what the image copies is enough for `pip install .` (built here as a wheel)."""
    context = tmp_path / "context"
    for source in copied_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "Dockerfile"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, context / source)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "out"),
                             str(context)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "out").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"ingest/__main__.py", "ingest/contract/event.schema.json", "ingest/tracker.js"} <= set(names)
    assert [n for n in names if n.startswith("ingest/ddl/")] == [
        f"ingest/ddl/{p.name}" for p in sorted((ROOT / "clickhouse" / "init" / "sql").glob("*.sql"))]
    assert "ingest/Dockerfile" not in names
