"""The browser tracker, served by the service at /tracker.js, in a real headless Chromium on a page of another
origin."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
import re
import time
from pathlib import Path

import pytest
import requests
from aiohttp import web

from ingest.api.app import create_app

from .cdp import Chromium
from .harness.engine import break_storage, count, repair_storage
from .harness.events import event
from .harness.polling import eventually
from .harness.tools import require_tool
from .live import LostAnswers, serving, serving_on

ROOT = Path(__file__).resolve().parent.parent
KEY = "tracker-write-key-5c2e"
DESKTOP = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 "
           "Safari/537.36")
PHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
         "Version/17.5 Mobile/15E148 Safari/604.1")
FLUSH_MS = 3000  # the tracker's flush interval

# The shop's page, on its own origin. Before the tracker, test instrumentation: the clock can be shifted (a device
# whose clock is off), and events handed to sendBeacon are marked, so the test sees which way they travelled.
PAGE = """<!doctype html><html><head><title>Shop</title><script>
(function () {
  var shift = @SHIFT@;
  if (shift) {
    var RealDate = Date;
    class ShiftedDate extends RealDate {
      constructor(...args) { if (args.length) super(...args); else super(RealDate.now() + shift); }
      static now() { return RealDate.now() + shift; }
    }
    window.Date = ShiftedDate;
  }
  var beacon = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = function (url, body) {
    var events = JSON.parse(body).map(function (e) {
      return Object.assign({}, e, {properties: Object.assign({}, e.properties, {via: "beacon"})});
    });
    return beacon(url, JSON.stringify(events));
  };
  window.loadedAt = performance.now();
})();
</script>
<script>@STUB@</script>
<script src="@INGEST@/tracker.js" data-key="@KEY@" @API@ defer></script>
</head><body><h1>Shop</h1></body></html>"""


# docs/api.md's stub: calls made before the (deferred) tracker has run wait in window.ingest.q.
STUB = next(line for line in (ROOT / "docs" / "api.md").read_text().splitlines()
            if line.startswith("<script>window.ingest")).removeprefix("<script>").removesuffix("</script>")


class Site:
    """The shop's pages (any path under /shop/), on one or more origins; ?shift=ms shifts the page's clock."""

    def __init__(self) -> None:
        self.ingest = ""
        self.app = web.Application()
        self.app.router.add_get("/shop/{tail:.*}", self.page)

    async def page(self, request: web.Request) -> web.Response:
        stub = (STUB + ';ingest.track("signup_started", {plan: "early"});') if "early" in request.query else ""
        html = (PAGE.replace("@SHIFT@", str(int(request.query.get("shift", "0")))).replace("@STUB@", stub)
                .replace("@INGEST@", self.ingest).replace("@KEY@", KEY)
                .replace("@API@", f'data-api="{request.query["api"]}"' if "api" in request.query else ""))
        return web.Response(text=html, content_type="text/html")


def _rows(ch, where: str = "1") -> list[dict]:
    result = ch.query("SELECT event_name, toUnixTimestamp64Milli(timestamp), session_id, user_id, device_type, "
                      f"toString(country_code), properties FROM events WHERE {where} ORDER BY timestamp")
    names = ("event_name", "ms", "session_id", "user_id", "device_type", "country_code", "properties")
    return [{**dict(zip(names, row, strict=True)), "properties": json.loads(row[6])} for row in result.result_rows]


def _answered(ingest: str, status: int) -> int:
    metrics = requests.get(f"{ingest}/metrics", timeout=10).text
    found = re.search(rf'ingest_http_requests_total{{route="/events",status="{status}"}} ([0-9.e+]+)', metrics)
    return int(float(found.group(1))) if found else 0


@pytest.fixture
def shop(settings, tmp_path):
    """shop(**settings overrides): the shop's origin, the ingest service allowing it, and a browser."""
    site = Site()

    @contextlib.asynccontextmanager
    async def start(**overrides):
        require_tool("chromium")
        with serving_on(site.app, 1) as [origin]:
            with serving(create_app(dataclasses.replace(settings, cors_origins=(origin,), **overrides))) as ingest:
                site.ingest = ingest
                async with Chromium(tmp_path / "profile") as browser:
                    yield origin, ingest, browser

    return start


def test_the_tracker_is_a_small_static_script_cacheable_by_its_etag(settings, ch):
    with serving(create_app(settings)) as ingest:
        first = requests.get(f"{ingest}/tracker.js", timeout=10)
        assert first.status_code == 200 and first.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert len(first.content) < 16_000 and "window.ingest" in first.text  # readable as served, no build step
        etag = first.headers["ETag"]
        assert re.fullmatch(r'"[0-9a-f]{32}(-gzip)?"', etag) and "max-age=" in first.headers["Cache-Control"]
        for current in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            again = requests.get(f"{ingest}/tracker.js", headers={"If-None-Match": current}, timeout=10)
            assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag, current
        stale = requests.get(f"{ingest}/tracker.js", headers={"If-None-Match": '"0123"'}, timeout=10)
        assert stale.status_code == 200 and stale.content == first.content


def test_the_tracker_goes_compressed_to_clients_that_accept_gzip(settings, ch):
    with serving(create_app(settings)) as ingest:
        plain = requests.get(f"{ingest}/tracker.js", headers={"Accept-Encoding": "identity"}, timeout=10)
        packed = requests.get(f"{ingest}/tracker.js", headers={"Accept-Encoding": "gzip, deflate, br"}, timeout=10,
                              stream=True)
        wire = packed.raw.read(decode_content=False)
        assert "Content-Encoding" not in plain.headers and plain.headers["Vary"] == "Accept-Encoding"
        assert packed.headers["Content-Encoding"] == "gzip" and packed.headers["Vary"] == "Accept-Encoding"
        assert gzip.decompress(wire) == plain.content and len(wire) < 6_000 < len(plain.content)
        assert packed.headers["ETag"] != plain.headers["ETag"]  # another representation, another tag
        for tag in (plain.headers["ETag"], packed.headers["ETag"]):
            again = requests.get(f"{ingest}/tracker.js", headers={"If-None-Match": tag}, timeout=10)
            assert again.status_code == 304, tag
        refused = requests.get(f"{ingest}/tracker.js", headers={"Accept-Encoding": "gzip;q=0"}, timeout=10)
        assert "Content-Encoding" not in refused.headers and refused.content == plain.content


async def test_page_views_track_identify_spa_navigation_and_tab_close_arrive_in_one_session(ch, shop):
    async with shop(write_keys=(KEY,)) as (origin, ingest, browser):
        tab = await browser.open(f"{origin}/shop/home?ref=ad&early", user_agent=DESKTOP)
        # The page view and an event tracked through the stub before the tracker ran, sent without waiting.
        await eventually(lambda: count(ch) == 2, timeout=15)

        # Events made by the page's code; an unknown name and a bad id are refused in the console, not thrown.
        assert await tab.run("""ingest.track("button_click", {button: "signup_cta",
                                   cart: {items: [{sku: "A-1", qty: 2}], total: 30.5}})""") is True
        assert await tab.run('ingest.track("purchase", {total: 3})') is False
        assert await tab.run('ingest.identify("has space")') is False
        assert await tab.run('ingest.track("feature_used", {})') is True  # refused by the service: no feature
        assert await tab.run('ingest.track("feature_used", {})') is True  # ... and logged once
        await eventually(lambda: count(ch) == 3, timeout=15)

        # Sign-in, a client-side navigation and one more event, done right after a flush so that only the
        # tab close can send them: the tracker flushes every 3 s from when it started (about loadedAt).
        await tab.run(f"""new Promise(function (done) {{
            var phase = (performance.now() - window.loadedAt) % {FLUSH_MS};
            setTimeout(done, (phase < 400 ? 400 - phase : {FLUSH_MS} - phase + 400));
        }})""")
        await tab.run("""ingest.identify("u-42"); history.pushState({}, "", "/shop/pricing");
                         ingest.track("feature_used", {feature: "export", options: {format: "csv"}})""")
        await tab.close()
        await eventually(lambda: count(ch) == 5, timeout=15)

        warnings = tab.console()
        assert tab.exceptions() == []
    await asyncio.sleep(0.5)
    rows = _rows(ch)
    assert count(ch) == 5, rows  # nothing twice
    assert len({r["session_id"] for r in rows}) == 1 and re.fullmatch(r"s-[0-9a-f]{24}", rows[0]["session_id"])
    assert {(r["device_type"], r["country_code"]) for r in rows} == {("desktop", "ZZ")}
    # The last two share a millisecond: told apart by content, not by order.
    [home, pricing] = sorted((r for r in rows if r["event_name"] == "page_view"), key=lambda r: r["ms"])
    [click] = [r for r in rows if r["event_name"] == "button_click"]
    [early] = [r for r in rows if r["event_name"] == "signup_started"]
    assert early["properties"] == {"plan": "early"} and early["ms"] >= home["ms"]
    [feature] = [r for r in rows if r["event_name"] == "feature_used"]
    assert home["event_name"] == "page_view" and home["user_id"] is None
    assert home["properties"] == {"path": "/shop/home", "title": "Shop"}
    assert click["event_name"] == "button_click" and click["user_id"] is None
    assert click["properties"] == {"button": "signup_cta", "cart": {"items": [{"sku": "A-1", "qty": 2}], "total": 30.5}}
    assert pricing["event_name"] == "page_view" and pricing["user_id"] == "u-42"
    assert pricing["properties"] == {"path": "/shop/pricing", "title": "Shop",
                                     "referrer": f"{origin}/shop/home?ref=ad&early", "via": "beacon"}
    assert feature["event_name"] == "feature_used" and feature["user_id"] == "u-42"
    assert feature["properties"] == {"feature": "export", "options": {"format": "csv"}, "via": "beacon"}
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < r["ms"] <= now_ms for r in rows)

    assert len([w for w in warnings if "purchase" in w and "not sent" in w]) == 1
    assert len([w for w in warnings if "identify" in w and "ignored" in w]) == 1
    refused = [w for w in warnings if "refused a feature_used event" in w]
    assert len(refused) == 1 and "/properties/feature: is required" in refused[0], warnings


@pytest.mark.parametrize("shift_minutes", [65, -60])
async def test_a_device_clock_an_hour_off_still_stores_events_at_the_right_time(ch, shop, shift_minutes):
    # Ahead, the events would be refused as more than an hour in the future; behind, stored an hour early.
    async with shop(write_keys=(KEY,)) as (origin, ingest, browser):
        tab = await browser.open(f"{origin}/shop/home?shift={shift_minutes * 60_000}", user_agent=PHONE)
        assert await tab.run("Math.round((Date.now() - performance.timeOrigin - performance.now()) / 60000)") \
            == shift_minutes  # the page's clock is off
        sent_at = time.time() * 1000
        assert await tab.run('ingest.track("signup_started", {plan: "pro"})') is True
        await eventually(lambda: count(ch) == 2, timeout=15)
        assert tab.exceptions() == []
    rows = _rows(ch)
    assert [r["event_name"] for r in rows] == ["page_view", "signup_started"]
    assert {r["device_type"] for r in rows} == {"mobile"}
    assert abs(rows[1]["ms"] - sent_at) < 5_000, (rows[1]["ms"] - sent_at) / 60_000  # within seconds of the truth
    assert rows[0]["ms"] <= rows[1]["ms"]


async def test_a_503_from_the_service_is_retried_after_retry_after(settings, ch, shop):
    async with shop(buffer_max_events=5, flush_events=5, flush_interval_seconds=0.2,
                    retry_max_seconds=0.2) as (origin, ingest, browser):
        requests.get(f"{ingest}/health", timeout=10)  # the table exists
        break_storage(ch)  # inserts fail, so the buffer fills: the service answers 503 + Retry-After: 1
        assert requests.post(f"{ingest}/events", json=[event(session_id=f"fill-{i}") for i in range(5)],
                             timeout=10).status_code == 202
        full_answer = requests.post(f"{ingest}/events", json=[event()], timeout=10)
        assert full_answer.status_code == 503 and full_answer.headers["Retry-After"] == "1"
        tab = await browser.open(f"{origin}/shop/home")
        await eventually(lambda: _answered(ingest, 503) >= 3, timeout=15)  # the page view, refused and resent
        started = time.monotonic()
        await asyncio.sleep(3)
        refusals = _answered(ingest, 503) - 3
        assert 1 <= refusals <= 5, refusals  # about one a second, as Retry-After says: no hammering
        repair_storage(settings)
        await eventually(lambda: count(ch, "session_id LIKE 's-%'") == 1, timeout=15)
        assert time.monotonic() - started < 10
        assert tab.exceptions() == []
    rows = _rows(ch, "session_id LIKE 's-%'")
    assert [(r["event_name"], r["device_type"]) for r in rows] == [("page_view", "other")]  # headless: not a person
    assert count(ch) == 6


async def test_a_batch_whose_answer_was_lost_is_resent_with_its_key_and_stored_once(settings, ch, shop):
    """The service took the page view but the browser never got the answer (a cut connection): the tracker resends
    the same body with the same idempotency key, and the service answers again instead of storing it twice."""
    async with shop() as (origin, ingest, browser):
        relay = LostAnswers(int(ingest.rsplit(":", 1)[1]), lose=2)
        try:
            tab = await browser.open(f"{origin}/shop/home?api=http://127.0.0.1:{relay.port}/")
            await eventually(lambda: _answered(ingest, 202) >= 3, timeout=20)  # taken, then two resends
            assert tab.exceptions() == []
            assert any("will retry" in line for line in tab.console())  # the tracker's own resend, not the browser's
        finally:
            relay.close()
        metrics = requests.get(f"{ingest}/metrics", timeout=10).text
        assert "ingest_idempotent_replays_total 2.0" in metrics
    assert [r["event_name"] for r in _rows(ch)] == ["page_view"]


async def test_a_session_renews_after_30_idle_minutes_and_reset_forgets_the_user(ch, shop):
    async with shop() as (origin, ingest, browser):
        tab = await browser.open(f"{origin}/shop/home", user_agent=DESKTOP)
        await eventually(lambda: count(ch) == 1, timeout=15)
        await tab.run('ingest.identify("u-7"); ingest.track("button_click", {button: "a"})')
        # The last event was 31 minutes ago (as the tracker keeps it): the next one opens a new session.
        await tab.run('sessionStorage.setItem("ingest.last", String(Date.now() - 31 * 60 * 1000));'
                      'ingest.track("button_click", {button: "b"})')
        await tab.run('ingest.reset(); ingest.track("button_click", {button: "c"}); ingest.flush()')
        await eventually(lambda: count(ch) == 4, timeout=15)
        assert tab.exceptions() == []
    rows = {r["properties"].get("button", "view"): r for r in _rows(ch)}
    assert rows["view"]["session_id"] == rows["a"]["session_id"] and rows["a"]["user_id"] == "u-7"
    assert rows["b"]["session_id"] != rows["a"]["session_id"] and rows["b"]["user_id"] == "u-7"  # still signed in
    assert rows["c"]["session_id"] not in (rows["a"]["session_id"], rows["b"]["session_id"])
    assert rows["c"]["user_id"] is None
