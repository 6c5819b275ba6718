"""POST /events through real HTTP into the real embedded engine: what is stored, what is refused, and why."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from ingest.contract.events import country_from_header
from ingest.contract.validation import EventValidator

from .harness.engine import break_storage, count, repair_storage
from .harness.events import event
from .harness.polling import eventually
from .harness.refusals import PER_EVENT_ERRORS


async def test_posted_events_land_with_exact_column_values(make_client, ch):
    client = await make_client()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    sent = [
        event("page_view", timestamp=(now - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%S.250+02:00"),
              session_id="s-A", user_id=None, device_type="mobile", country_code="US",
              properties={"path": "/pricing", "ms": 12.5, "new": True, "ref": None}),
        event("feature_used", at=now - timedelta(minutes=1), session_id="s-B", user_id="u-42",
              properties={"feature": "export", "rows": 3}),
        event("error_occurred", at=now - timedelta(seconds=1), session_id="s-B"),
    ]
    resp = await client.post("/events", json=sent)
    assert resp.status == 202, await resp.text()
    assert await resp.json() == {"accepted": 3, "rejected": []}

    await eventually(lambda: count(ch) == 3)
    rows = ch.query(
        "SELECT event_name, toString(timestamp), session_id, user_id, device_type, toString(country_code),"
        " properties,"
        " toString(date), toTypeName(timestamp) FROM events ORDER BY timestamp").result_rows

    first_utc = now - timedelta(minutes=3) - timedelta(hours=2) + timedelta(milliseconds=250)
    assert rows[0][:6] == ("page_view", first_utc.strftime("%Y-%m-%d %H:%M:%S.250"), "s-A", None, "mobile", "US")
    assert json.loads(rows[0][6]) == {"path": "/pricing", "ms": 12.5, "new": True, "ref": None}
    assert rows[0][7] == first_utc.strftime("%Y-%m-%d")
    assert rows[0][8] == "DateTime64(3, 'UTC')"
    assert rows[1][0] == "feature_used" and rows[1][3] == "u-42"
    assert json.loads(rows[1][6]) == {"feature": "export", "rows": 3}
    assert rows[2][0] == "error_occurred" and json.loads(rows[2][6]) == {}


async def test_mixed_batch_stores_exactly_the_valid_events(make_client, ch):
    client = await make_client()
    batch = [event(session_id=f"ok-{i}") for i in range(5)]
    batch.insert(1, event(event_name="nope"))
    batch.insert(4, event(country_code="germany"))
    resp = await client.post("/events", json=batch)
    assert resp.status == 202
    body = await resp.json()
    assert body["accepted"] == 5
    assert [r["index"] for r in body["rejected"]] == [1, 4]
    assert body["rejected"][0]["errors"][0]["path"] == "/event_name"
    assert body["rejected"][1]["errors"][0]["path"] == "/country_code"
    assert body["rejected"] == EventValidator().judge(batch)[1]  # the validator's verdict, as it is
    await eventually(lambda: count(ch) == 5)
    stored = {r[0] for r in ch.query("SELECT session_id FROM events").result_rows}
    assert stored == {f"ok-{i}" for i in range(5)}


@pytest.mark.parametrize(("bad", "path", "message"), PER_EVENT_ERRORS)
def test_each_invalid_event_is_refused_with_path_and_message(bad, path, message):
    """The verdict POST /events answers with for a bad event beside a good one: the handler sends the validator's
    `rejected` as it is and stores its rows (over HTTP, into storage: test_mixed_batch_stores_exactly_the_valid_events).
    """
    rows, rejected = EventValidator().judge(orjson.loads(orjson.dumps([event(session_id="good"), bad])))
    assert [row[2] for row in rows] == ["good"]  # the session id: only the good event becomes a row
    [refused] = rejected
    assert refused["index"] == 1
    assert any(e["path"] == path and message in e["message"] for e in refused["errors"]), refused


async def test_nested_properties_are_stored_as_json_the_dashboards_can_read(make_client, ch):
    # The column is JSON text: nested objects and arrays land whole, and the feature rule still reads its key.
    client = await make_client()
    cart = {"items": [{"sku": "A-1", "qty": 2, "tags": ["new", None]}, {"sku": "B-2", "qty": 1}], "total": 30.5}
    deepest = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}  # five levels of objects: the most allowed
    resp = await client.post("/events", json=[
        event(session_id="cart", properties={"cart": cart, "coupon": None}),
        event("feature_used", session_id="feature", properties={"feature": "export", "options": {"format": "csv"}}),
        event(session_id="deep", properties=deepest),
        event(session_id="largest", properties={f"k{i}": "x" * 1024 for i in range(32)})])
    assert resp.status == 202 and await resp.json() == {"accepted": 4, "rejected": []}
    await eventually(lambda: count(ch) == 4)
    stored = dict(ch.query("SELECT session_id, properties FROM events").result_rows)
    assert json.loads(stored["cart"]) == {"cart": cart, "coupon": None}
    assert json.loads(stored["deep"]) == deepest
    assert ch.command("SELECT JSONExtractInt(properties, 'cart', 'items', 1, 'qty') FROM events "
                      "WHERE session_id = 'cart'") == 2
    assert ch.command("SELECT JSONExtractString(properties, 'feature') FROM events WHERE session_id = 'feature'") \
        == "export"


def _no_country(**fields):
    e = event(**fields)
    del e["country_code"]
    return e


async def test_without_a_country_header_setting_events_without_a_country_are_stored_as_zz(make_client, ch):
    # Off by default: a header the client itself can send is not trusted.
    client = await make_client()
    batch = [_no_country(session_id="none"), event(session_id="own", country_code="DE")]
    resp = await client.post("/events", json=batch, headers={"CF-IPCountry": "FR"})
    assert resp.status == 202 and await resp.json() == {"accepted": 2, "rejected": []}
    await eventually(lambda: count(ch) == 2)
    assert dict(ch.query("SELECT session_id, toString(country_code) FROM events").result_rows) == {
        "none": "ZZ", "own": "DE"}


@pytest.mark.parametrize(("header", "stored"), [
    ("FR", "FR"), ("fr", "FR"), (" US ", "US"), ("XX", "ZZ"), ("T1", "ZZ"), ("", "ZZ"), ("FRA", "ZZ"), (None, "ZZ"),
])
def test_a_proxy_headers_value_becomes_the_country_of_events_without_one(header, stored):
    """What the configured header's value gives events without a country_code (the handler passes it, read by name,
    to the validator: over HTTP into storage in the test below)."""
    batch = [_no_country(session_id="none"), event(session_id="own", country_code="DE")]
    rows, rejected = EventValidator().judge(batch, country=country_from_header(header))
    assert rejected == []
    # The event's own country wins: a backend sending on a visitor's behalf may know it.
    assert {row[2]: row[5] for row in rows} == {"none": stored, "own": "DE"}


async def test_a_configured_proxy_header_gives_events_without_a_country_theirs(make_client, ch):
    client = await make_client(country_header="CF-IPCountry")
    batch = [_no_country(session_id="none"), event(session_id="own", country_code="DE")]
    # Header names are case-insensitive; the value is normalized (test above).
    resp = await client.post("/events", json=batch, headers={"cf-ipcountry": " fr "})
    assert resp.status == 202 and (await resp.json())["accepted"] == 2
    await eventually(lambda: count(ch) == 2)
    assert dict(ch.query("SELECT session_id, toString(country_code) FROM events").result_rows) == {
        "none": "FR", "own": "DE"}


async def test_a_request_whose_events_are_all_invalid_is_a_400_that_lists_them(make_client):
    client = await make_client()
    resp = await client.post("/events", json=[event(device_type="fridge"), event(country_code="X")])
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "no_valid_events" and body["accepted"] == 0
    assert [r["index"] for r in body["rejected"]] == [0, 1]


def _gzip_bomb() -> bytes:
    return gzip.compress(b"[" + b" " * 50_000_000 + b"]")  # ~50 KB that would inflate to 50 MB


WHOLE_REQUEST_ERRORS = [
    pytest.param(b"[{", {}, 400, "malformed_json", id="malformed-json"),
    pytest.param(b"", {}, 400, "empty_body", id="empty-body"),
    pytest.param(b'{"event_name": "page_view"}', {}, 400, "not_an_array", id="object-not-array"),
    pytest.param(b"[]", {}, 400, "empty_array", id="empty-array"),
    pytest.param(b'"\xff"', {}, 400, "malformed_json", id="invalid-utf8"),
    pytest.param(orjson.dumps([{}] * 501), {}, 413, "too_many_events", id="501-events"),
    pytest.param(b"[" + b" " * 70_000 + b"]", {}, 413, "body_too_large", id="body-over-limit"),
    pytest.param(_gzip_bomb(), {"Content-Encoding": "gzip"}, 413, "body_too_large", id="gzip-bomb"),
    pytest.param(b"not gzip", {"Content-Encoding": "gzip"}, 400, "bad_gzip", id="not-gzip"),
    pytest.param(orjson.dumps([event()]), {"Content-Encoding": "compress"}, 415, "unsupported_encoding",
                 id="lzw-compress"),
    pytest.param(orjson.dumps([event()]), {"Content-Type": "application/x-www-form-urlencoded"}, 415,
                 "unsupported_media_type", id="form-content-type"),
    pytest.param(orjson.dumps([event()]), {"Content-Type": "application/json; charset=latin-1"}, 415,
                 "unsupported_charset", id="latin1-charset"),
]


@pytest.mark.parametrize(("body", "headers", "status", "code"), WHOLE_REQUEST_ERRORS)
async def test_whole_request_errors_are_4xx_json_and_store_nothing(make_client, ch, body, headers, status, code):
    client = await make_client(max_body_bytes=65_536)
    headers = {"Content-Type": "application/json", **headers}
    resp = await client.post("/events", data=body, headers=headers)
    assert resp.status == status
    assert resp.content_type == "application/json"
    payload = await resp.json()
    assert payload["error"] == code and payload["message"]
    # A valid request right after proves the service is fine and the bad one stored nothing.
    ok = await client.post("/events", json=[event(session_id="after")])
    assert ok.status == 202
    await eventually(lambda: count(ch) == 1)
    assert ch.command("SELECT any(session_id) FROM events") == "after"


async def test_sendbeacon_text_plain_and_gzip_bodies_are_accepted(make_client, ch):
    client = await make_client()
    beacon = await client.post("/events", data=orjson.dumps([event(session_id="beacon")]),
                               headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert beacon.status == 202
    zipped = await client.post("/events", data=gzip.compress(orjson.dumps([event(session_id="gz")] * 3)),
                               headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert zipped.status == 202 and (await zipped.json())["accepted"] == 3
    await eventually(lambda: count(ch) == 4)
    assert count(ch, "session_id = 'gz'") == 3


async def test_schema_endpoint_serves_the_validating_document(make_client):
    client = await make_client()
    resp = await client.get("/schema")
    assert resp.status == 200
    doc = json.loads(await resp.read())
    assert doc["properties"]["event_name"]["enum"] == [
        "page_view", "button_click", "signup_started", "email_verified", "signup_completed", "feature_used",
        "error_occurred"]
    assert set(doc["required"]) == {"event_name", "timestamp", "session_id", "device_type"}  # country: optional


async def test_unknown_routes_and_methods_answer_json(make_client):
    client = await make_client()
    missing = await client.get("/nope")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"
    wrong = await client.get("/events")
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"]


async def test_a_body_over_the_limit_is_told_its_size_and_the_limit(make_client):
    client = await make_client(max_body_bytes=65_536)
    resp = await client.post("/events", data=b"[" + b" " * 70_000 + b"]", headers={"Content-Type": "application/json"})
    assert resp.status == 413
    message = (await resp.json())["message"]
    assert "70,002 bytes" in message and "65,536" in message and "INGEST_MAX_BODY_BYTES" in message


async def test_every_answer_carries_the_service_clock_in_milliseconds(make_client, ch, settings):
    # Clients correct their clocks with it: accepted, refused in part or whole, refused for size, and full (503).
    client = await make_client(max_body_bytes=65_536, buffer_max_events=2, flush_events=2,
                               flush_interval_seconds=0.05, retry_max_seconds=0.1)
    await client.get("/health")  # the table exists
    answers = []
    for body in (orjson.dumps([event()]), orjson.dumps([event(), event(device_type="fridge")]),
                 orjson.dumps([event(device_type="fridge")]), b"[{", b"[" + b" " * 70_000 + b"]"):
        before = time.time_ns() // 1_000_000
        resp = await client.post("/events", data=body, headers={"Content-Type": "application/json"})
        answers.append((resp.status, before, int(resp.headers["Server-Time"]), time.time_ns() // 1_000_000))
    await eventually(lambda: count(ch) == 2)

    async def buffer_empty():  # the insert has returned (its rows are visible in events a little before)
        return (await (await client.get("/health")).json())["buffer"]["events"] == 0

    await eventually(buffer_empty)
    break_storage(ch)  # storage fails: the buffer fills and the service answers 503
    for _ in range(3):
        before = time.time_ns() // 1_000_000
        resp = await client.post("/events", json=[event()])
        answers.append((resp.status, before, int(resp.headers["Server-Time"]), time.time_ns() // 1_000_000))
    assert [a[0] for a in answers] == [202, 202, 400, 400, 413, 202, 202, 503]
    assert all(before <= server <= after for _, before, server, after in answers), answers
    clock = await client.get("/time")
    body = await clock.json()
    assert clock.status == 200 and clock.headers["Cache-Control"] == "no-store"  # a cached clock would be wrong
    server_ms = int(clock.headers["Server-Time"])
    assert abs(datetime.fromisoformat(body["now"]).timestamp() * 1000 - server_ms) < 1000
    # Storage comes back, so the shutdown flush stores the buffered events instead of retrying until it gives up.
    repair_storage(settings)
    await eventually(buffer_empty)


async def test_each_missing_field_is_named_once_at_its_own_pointer(make_client, ch):
    # Issue 23: [{"event_name": "page_view"}] answered /timestamp three times, [{}] /event_name four times, and a
    # feature_used event without properties pointed at "/" (the `then` keyword's required list was paired with the
    # top level's).
    client = await make_client()
    resp = await client.post("/events", json=[{"event_name": "page_view"}, {}, {"event_name": "feature_used"},
                                              {"event_name": "feature_used", "properties": {}}])
    assert resp.status == 400, await resp.text()  # nothing valid: nothing stored
    body = await resp.json()
    assert body["accepted"] == 0
    named = [[(e["path"], e["message"]) for e in r["errors"]] for r in body["rejected"]]
    rest = [("/timestamp", "is required"), ("/session_id", "is required"), ("/device_type", "is required")]
    assert named == [
        rest,
        [("/event_name", "is required"), *rest],
        [*rest, ("/properties", "is required")],
        [*rest, ("/properties/feature", "is required")],
    ], named


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_body_broken_in_its_encoding_is_answered_with_that_encodings_code(make_client, ch, encoding):
    # Issue 23: broken br and deflate bodies were answered bad_gzip. bad_gzip stays gzip's (documented first).
    import brotli

    whole = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[encoding](
        orjson.dumps([event()] * 5))
    client = await make_client()
    for broken in (b"not " + encoding.encode() + b" at all", whole[:len(whole) // 2]):  # garbage, truncated
        resp = await client.post("/events", data=broken, headers={"Content-Type": "application/json",
                                                                  "Content-Encoding": encoding})
        assert resp.status == 400, await resp.text()
        answer = await resp.json()
        assert answer["error"] == f"bad_{encoding}", answer
        assert answer["message"].startswith(f"body could not be decoded as {encoding} (its Content-Encoding): "), answer
    ok = await client.post("/events", data=whole, headers={"Content-Type": "application/json",
                                                           "Content-Encoding": encoding})
    assert ok.status == 202, await ok.text()
    await eventually(lambda: count(ch) == 5)
