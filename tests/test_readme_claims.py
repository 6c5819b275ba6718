"""What the README says a new user will see, held to the code: the demo's size, the command that turns on write keys
and CORS (run as written, against a real service), the volumes `docker compose down -v` deletes."""

from __future__ import annotations

import json
import random
import re
import shlex
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ingest.demo import ErrorSpike, Traffic, error_rate_at

from .harness.events import event
from .harness.service import Service

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_demo_sends_as_many_events_and_visits_as_the_readme_says():
    stated = re.search(r"\(([\d,]+) events in (\d+) minutes: about ([\d,]+) visits", README)
    command = re.search(r"ingest demo --rate (\d+) --duration (\d+) --error-spike (\d+):(\d+)", README)
    assert stated and command, "the Quickstart no longer states the demo's size next to its command"
    events, minutes, visits = (int(g.replace(",", "")) for g in stated.groups())
    rate, duration, spike_start, spike_seconds = map(int, command.groups())
    assert events == rate * duration and minutes * 60 == duration  # the demo sends rate x duration events
    spike = ErrorSpike(spike_start, spike_seconds)
    for seed in (1, 2):
        traffic, sessions = Traffic(random.Random(seed)), set()
        for second in range(duration):  # the demo's stream, a second at a time, the spike included
            sessions.update(e["session_id"] for e in traffic.events(rate, "t", error_rate_at(second, spike)))
        assert abs(len(sessions) - visits) <= 0.05 * visits, (len(sessions), visits)


def _post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"{url}/events", data=json.dumps([event()]).encode(),
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


@pytest.mark.slow
def test_the_readme_command_turns_on_write_keys_and_cors(tmp_path):
    [line] = [line for block in re.findall(r"```sh\n(.+?)\n```", README, re.S) for line in block.splitlines()
              if "INGEST_WRITE_KEYS=" in line]
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if re.fullmatch(r"[A-Z_]+=\S*", w))
    assert words[len(env):] == [".venv/bin/python", "-m", "ingest", "serve"], words
    key, origin = env["INGEST_WRITE_KEYS"], env["INGEST_CORS_ORIGINS"]
    with Service(tmp_path, **env, CLICKHOUSE_URL=f"chdb://{tmp_path / 'data'}",
                 INGEST_WAL_DIR=str(tmp_path / "wal")).wait_healthy() as service:
        assert _post(service.url, {})[0] == 401
        assert _post(service.url, {"Authorization": f"Bearer {key}"})[0] == 202
        status, headers = _post(service.url, {"Authorization": f"Bearer {key}", "Origin": origin})
        assert status == 202 and headers.get("Access-Control-Allow-Origin") == origin, headers
        assert _post(service.url, {"Authorization": f"Bearer {key}", "Origin": "https://elsewhere.example"})[0] == 403


def test_the_readme_names_every_volume_compose_creates():
    sentence = re.search(r"Data lives in named volumes: (.+?)\. `docker compose down` keeps them", README, re.S)
    assert sentence, "the README no longer lists the stack's volumes"
    named = set(re.findall(r"`([a-z-]+)`", sentence.group(1)))
    assert named == set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"])
