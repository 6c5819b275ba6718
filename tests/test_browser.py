"""A real browser (headless Chromium) on another origin sends events with fetch and sendBeacon; a disallowed origin cannot."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time

import requests
from aiohttp import web

from ingest.app import create_app

from .live import serving, serving_on
from .support import count, require_tool

KEY = "browser-write-key-7d1e"

# The page sends one event with fetch (JSON + Authorization: the browser asks with a preflight first) and one
# with sendBeacon (text/plain, key in the query string: a beacon cannot set headers), then writes what it saw.
PAGE = """<!doctype html><html><body><pre id="result">pending</pre><script>
const cfg = JSON.parse(new URLSearchParams(location.search).get("cfg"));
const tag = location.port;
function ev(session) {
  return {event_name: "page_view", timestamp: new Date(Date.now() - 1000).toISOString(), session_id: session + "-" + tag,
          user_id: null, device_type: "desktop", country_code: "ZZ", properties: {path: location.pathname}};
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
