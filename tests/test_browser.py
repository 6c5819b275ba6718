"""A real browser (headless Chromium) on another origin sends events with fetch and sendBeacon; a disallowed origin
cannot."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import subprocess
import time

import requests
from aiohttp import web

from ingest.api.app import create_app

from .harness.engine import count
from .harness.tools import require_tool
from .live import SlowLink, serving, serving_on

KEY = "browser-write-key-7d1e"

# The page sends one event with fetch (JSON + Authorization: the browser asks with a preflight first) and one
# with sendBeacon (text/plain, key in the query string: a beacon cannot set headers), then writes what it saw.
PAGE = """<!doctype html><html><body><pre id="result">pending</pre><script>
const cfg = JSON.parse(new URLSearchParams(location.search).get("cfg"));
const tag = location.port;
function ev(session) {
  return {event_name: "page_view", timestamp: new Date(Date.now() - 1000).toISOString(),
          session_id: session + "-" + tag, user_id: null, device_type: "desktop", country_code: "ZZ",
          properties: {path: location.pathname}};
}
async function main() {
  const out = {};
  try {
    const r = await fetch(cfg.ingest + "/events", {method: "POST", body: JSON.stringify([ev("fetch")]),
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + cfg.key}});
    out.fetch = r.status;
    out.fetch_body = await r.json();
  } catch (e) {
    out.fetch = "blocked: " + e.name;
  }
  out.beacon_queued = navigator.sendBeacon(cfg.ingest + "/events?key=" + encodeURIComponent(cfg.key),
                                           JSON.stringify([ev("beacon")]));
  document.getElementById("result").textContent = JSON.stringify(out);
}
main();
</script></body></html>"""


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


def _chromium(url: str, profile) -> dict:
    """Load url in headless Chromium and return what the page wrote into #result."""
    chromium = require_tool("chromium")
    # --virtual-time-budget lets the page's promises and requests finish before the DOM is dumped.
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
           "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert found, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    text = found.group(1).replace("&quot;", '"').replace("&amp;", "&")
    assert text != "pending", done.stderr[-2000:]
    return json.loads(text)


def _requests_answered(ingest: str, status: int) -> float:
    metrics = requests.get(f"{ingest}/metrics", timeout=10).text
    found = re.search(rf'ingest_http_requests_total{{route="/events",status="{status}"}} ([0-9.e+]+)', metrics)
    return float(found.group(1)) if found else 0.0


def _wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_a_browser_page_on_an_allowed_origin_sends_with_fetch_and_beacon_and_others_are_refused(
        settings, ch, tmp_path):
    require_tool("chromium")
    page_app = web.Application()
    page_app.router.add_get("/page.html", _page)
    with serving_on(page_app, 2) as [allowed, disallowed]:
        ingest_settings = dataclasses.replace(settings, write_keys=(KEY,), cors_origins=(allowed,))
        with serving(create_app(ingest_settings)) as ingest:
            cfg = json.dumps({"ingest": ingest, "key": KEY})
            good = _chromium(f"{allowed}/page.html?cfg={requests.utils.quote(cfg)}", tmp_path / "profile-a")
            assert good["fetch"] == 202 and good["fetch_body"] == {"accepted": 1, "rejected": []}, good
            assert good["beacon_queued"] is True

            bad = _chromium(f"{disallowed}/page.html?cfg={requests.utils.quote(cfg)}", tmp_path / "profile-b")
            # The preflight was refused, so the browser never sent the POST and told the page nothing more.
            assert bad["fetch"].startswith("blocked"), bad
            # The beacon is a simple request: it reaches the server, which refuses it by its Origin.
            _wait_for(lambda: _requests_answered(ingest, 403) >= 2)  # the preflight and the beacon

            allowed_port, disallowed_port = allowed.rsplit(":", 1)[1], disallowed.rsplit(":", 1)[1]
            _wait_for(lambda: count(ch) == 2)
            stored = {r[0] for r in ch.query("SELECT session_id FROM events").result_rows}
            assert stored == {f"fetch-{allowed_port}", f"beacon-{allowed_port}"}
            assert count(ch, f"session_id LIKE '%-{disallowed_port}'") == 0


# The page sends `cfg.n` events in one navigator.sendBeacon (text/plain, as browsers send it), then keeps itself
# alive with a slow fetch of its own origin while the beacon crawls through the slow link.
BEACON_PAGE = """<!doctype html><html><body><pre id="result">pending</pre><script>
const cfg = JSON.parse(new URLSearchParams(location.search).get("cfg"));
async function main() {
  const events = [];
  for (let i = 0; i < cfg.n; i++) {
    events.push({event_name: "page_view", timestamp: new Date(Date.now() - 1000).toISOString(),
                 session_id: "slow-beacon-" + i, user_id: null, device_type: "mobile", country_code: "ZZ",
                 properties: {pad: "x".repeat(cfg.pad)}});
  }
  const body = JSON.stringify(events);
  const queued = navigator.sendBeacon(cfg.ingest + "/events", body);
  await fetch("/wait?seconds=" + cfg.wait);
  document.getElementById("result").textContent = JSON.stringify({queued: queued, bytes: body.length});
}
main();
</script></body></html>"""


async def _beacon_page(request: web.Request) -> web.Response:
    return web.Response(text=BEACON_PAGE, content_type="text/html")


async def _wait(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query["seconds"]))
    return web.Response(text="ok")


def test_a_beacon_on_a_slow_uplink_arrives_whole_within_the_body_deadline(settings, ch, tmp_path):
    # 40 KB through a 16 KB/s uplink take 2.5 s; the body deadline is 4 s: slow, steady, and accepted.
    require_tool("chromium")
    page_app = web.Application()
    page_app.router.add_get("/page.html", _beacon_page)
    page_app.router.add_get("/wait", _wait)
    with serving_on(page_app, 1) as [page], serving(create_app(
            dataclasses.replace(settings, body_timeout_seconds=4.0))) as ingest:
        link = SlowLink(int(ingest.rsplit(":", 1)[1]), bytes_per_second=16_000)
        try:
            cfg = json.dumps({"ingest": f"http://127.0.0.1:{link.port}", "n": 40, "pad": 900, "wait": 6})
            seen = _chromium(f"{page}/page.html?cfg={requests.utils.quote(cfg)}", tmp_path / "profile")
            assert seen["queued"] is True and 38_000 < seen["bytes"] < 64 * 1024, seen
            _wait_for(lambda: count(ch) == 40)
            assert _requests_answered(ingest, 202) == 1 and _requests_answered(ingest, 408) == 0
            [(sent, seconds)] = [u for u in link.uploads if u[0] > seen["bytes"]]
            assert 2.0 < seconds < 4.0, seconds  # it really was slow, and it was not cut off
        finally:
            link.close()
