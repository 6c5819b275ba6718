"""A real Prometheus scrapes a real ingest service, and every PromQL expression of the pipeline dashboard parses and
returns data through Prometheus's HTTP API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from ingest.api.app import create_app

from .harness.events import event
from .harness.logs import wait_for_line
from .harness.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "prometheus" / "prometheus.yml"
pytestmark = pytest.mark.slow


def _expressions() -> list[str]:
    dashboard = json.loads((ROOT / "grafana" / "dashboards" / "ingest-pipeline.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:  # 400 = the expression does not parse: show Prometheus's reason
        return json.load(exc)


def test_promtool_accepts_the_repo_scrape_config():
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "config", str(CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_every_pipeline_dashboard_expression_returns_data_from_a_real_scrape(settings, tmp_path):
    prometheus = require_tool("prometheus")
    runner = web.AppRunner(create_app(dataclasses.replace(settings, flush_interval_seconds=0.2)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # port 0: the system picks a free one
    [(_, app_port)] = runner.addresses

    # The repo's config with the target pointed at this test's service and a 1 s scrape.
    config = yaml.safe_load(CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{app_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         "--web.listen-address=127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    pending = {expr: "not queried yet" for expr in _expressions()}
    try:
        deadline = time.monotonic() + 30
        # Prometheus logs the address it really listens on (with port 0, the one the system picked).
        listening = await asyncio.to_thread(wait_for_line, tmp_path / "prometheus.log",
                                            r'msg="Listening on" address=\S+:(\d+)\s', proc, 0, 30)
        base = f"http://127.0.0.1:{listening[1]}"
        async with aiohttp.ClientSession() as http:
            while pending and time.monotonic() < deadline:
                # Keep traffic flowing (valid and invalid events) so rates and flush histograms move.
                batch = [event(session_id=f"s{i}") for i in range(20)] + [event(country_code="nope")]
                async with http.post(f"http://127.0.0.1:{app_port}/events", json=batch) as resp:
                    assert resp.status == 202
                await asyncio.sleep(0.5)
                # Blocking HTTP goes to a thread: this event loop also answers Prometheus's scrapes.
                if not await asyncio.to_thread(_is_up, base):
                    continue
                for expr in list(pending):
                    body = await asyncio.to_thread(_query, base, expr)
                    if body.get("status") == "error" and body.get("errorType") == "bad_data":
                        pytest.fail(f"Prometheus cannot parse {expr!r}: {body.get('error')}")
                    if body.get("status") == "success" and body["data"]["result"]:
                        del pending[expr]
                    else:
                        pending[expr] = body
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        await runner.cleanup()
    assert not pending, f"no data within 30 s: {pending}\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}"


def _is_up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False
