"""Who gets in: write keys guard POST /events only; CORS lets listed origins in and keeps the others out."""

from __future__ import annotations

import logging

import orjson
import pytest

from ingest.api.access import Origins, WriteKeys, presented_key
from ingest.config import ConfigError, Settings

from .harness.engine import count
from .harness.events import event
from .harness.polling import eventually

KEY = "wk_live_3f9c2a7e51b04d8e"


def test_write_keys_accept_exactly_the_configured_keys():
    keys = WriteKeys([KEY, "second-key"])
    assert keys.required and keys.accepts(KEY) and keys.accepts("second-key")
    for wrong in (None, "", KEY[:-1], KEY + "x", KEY.upper(), "second-key "):
        assert not keys.accepts(wrong), wrong
    assert not WriteKeys([]).required


@pytest.mark.parametrize(("headers", "query", "expected"), [
    ({"Authorization": f"Bearer {KEY}"}, {}, KEY),
    ({"Authorization": f"bearer   {KEY} "}, {}, KEY),
    ({}, {"key": KEY}, KEY),
    ({"Authorization": f"Bearer {KEY}"}, {"key": "other"}, KEY),
    ({"Authorization": "Basic dXNlcjpwdw=="}, {}, None),
    ({"Authorization": "Bearer "}, {}, None),
    ({}, {}, None),
])
def test_the_key_comes_from_the_bearer_header_else_the_query(headers, query, expected):
    assert presented_key(headers, query) == expected


def test_origins_match_exactly_or_any_with_star():
    listed = Origins(["https://Shop.example.com", "http://localhost:8080"])
    assert listed.allows("https://shop.example.com") and listed.allows("http://localhost:8080")
    assert not listed.allows("https://shop.example.com.evil.test") and not listed.allows("http://localhost:8081")
    assert listed.headers("https://evil.test") == {} and listed.headers(None) == {}
    assert listed.headers("http://localhost:8080")["Access-Control-Allow-Origin"] == "http://localhost:8080"
    assert Origins(["*"]).headers("https://any.test")["Access-Control-Allow-Origin"] == "*"
    assert not Origins([]).enabled


def test_settings_read_comma_separated_lists_and_hide_keys_from_repr():
    s = Settings.from_env({"INGEST_WRITE_KEYS": f" {KEY}, other ,", "INGEST_CORS_ORIGINS": "https://a.test,*"})
    assert s.write_keys == (KEY, "other") and s.cors_origins == ("https://a.test", "*")
    assert KEY not in repr(s)
    assert Settings.from_env({}).write_keys == () and Settings.from_env({}).cors_origins == ()


@pytest.mark.parametrize(("env", "message"), [
    ({"INGEST_WRITE_KEYS": "has space"}, "INGEST_WRITE_KEYS"),
    ({"INGEST_CORS_ORIGINS": "https://a.test/"}, "INGEST_CORS_ORIGINS"),
    ({"INGEST_CORS_ORIGINS": "shop.example.com"}, "INGEST_CORS_ORIGINS"),
])
def test_bad_access_settings_are_refused_by_name(env, message):
    with pytest.raises(ConfigError, match=message) as raised:
        Settings.from_env(env)
    assert "has space" not in str(raised.value)  # a key is never echoed, even a malformed one


async def test_without_keys_events_need_no_authorization(make_client, ch):
    client = await make_client()
    assert (await client.post("/events", json=[event()])).status == 202
    await eventually(lambda: count(ch) == 1)


@pytest.mark.parametrize(("headers", "path", "error"), [
    ({}, "/events", None),
    ({"Authorization": "Bearer wrong-key"}, "/events", "invalid_token"),
    ({"Authorization": f"Basic {KEY}"}, "/events", None),
    ({}, "/events?key=wrong-key", "invalid_token"),
])
async def test_missing_or_wrong_keys_get_401_json_and_store_nothing(make_client, ch, headers, path, error):
    client = await make_client(write_keys=(KEY,))
    resp = await client.post(path, json=[event(session_id="refused")], headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert ('error="invalid_token"' in resp.headers["WWW-Authenticate"]) == (error is not None)
    body = await resp.json()
    assert body["error"] == "unauthorized" and KEY not in body["message"]
    ok = await client.post("/events", json=[event(session_id="allowed")], headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status == 202
    await eventually(lambda: count(ch) == 1)
    assert count(ch, "session_id = 'refused'") == 0


async def test_the_key_may_come_in_the_query_string_for_sendbeacon(make_client, ch):
    client = await make_client(write_keys=("other", KEY))
    resp = await client.post(f"/events?key={KEY}", data=b'[' + orjson.dumps(event()) + b']',
                             headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert resp.status == 202
    await eventually(lambda: count(ch) == 1)


async def test_health_metrics_and_schema_stay_open_and_never_show_keys(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    client = await make_client(write_keys=(KEY,))
    await client.post("/events", json=[event()], headers={"Authorization": f"Bearer {KEY}"})
    await client.post("/events", json=[event()], headers={"Authorization": f"Bearer {KEY}-typo"})
    await client.post(f"/events?key={KEY}", json=[event()])
    for path in ("/health", "/metrics", "/schema"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert KEY not in await resp.text()
    assert KEY not in caplog.text
    assert "/events?key=***" in caplog.text  # the access log was on, and masked the key


ALLOWED = "http://localhost:8080"


async def test_preflight_from_an_allowed_origin_allows_post_with_json_and_authorization(make_client):
    client = await make_client(cors_origins=(ALLOWED,), write_keys=(KEY,))
    resp = await client.options("/events", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "content-type,authorization"})
    assert resp.status == 204
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == ALLOWED and h["Vary"] == "Origin"
    assert h["Access-Control-Allow-Methods"] == "POST"
    assert {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")} == {
        "content-type", "authorization", "content-encoding"}
    assert int(h["Access-Control-Max-Age"]) > 0


async def test_preflight_from_another_origin_is_403_without_cors_headers(make_client):
    client = await make_client(cors_origins=(ALLOWED,))
    resp = await client.options("/events", headers={"Origin": "https://evil.test",
                                                    "Access-Control-Request-Method": "POST"})
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    assert (await resp.json())["error"] == "origin_not_allowed"


async def test_posts_from_allowed_origins_get_cors_headers_even_when_refused(make_client, ch):
    client = await make_client(cors_origins=(ALLOWED, "https://shop.test"), write_keys=(KEY,))
    ok = await client.post("/events", json=[event()], headers={"Origin": ALLOWED, "Authorization": f"Bearer {KEY}"})
    assert ok.status == 202 and ok.headers["Access-Control-Allow-Origin"] == ALLOWED
    # The page reads Retry-After to back off and Server-Time to correct its clock.
    assert {h.strip() for h in ok.headers["Access-Control-Expose-Headers"].split(",")} == {"Retry-After", "Server-Time"}
    # The page must be able to read why it was refused.
    denied = await client.post("/events", json=[event()], headers={"Origin": "https://shop.test"})
    assert denied.status == 401 and denied.headers["Access-Control-Allow-Origin"] == "https://shop.test"
    await eventually(lambda: count(ch) == 1)


async def test_a_post_from_a_disallowed_origin_is_403_and_stores_nothing(make_client, ch):
    client = await make_client(cors_origins=(ALLOWED,))
    # text/plain is a simple request: a browser sends it without asking first, so the server must refuse it.
    resp = await client.post("/events", data=orjson.dumps([event(session_id="evil")]),
                             headers={"Origin": "https://evil.test", "Content-Type": "text/plain"})
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    assert resp.headers["Vary"] == "Origin"
    assert (await resp.json())["error"] == "origin_not_allowed"
    server_side = await client.post("/events", json=[event(session_id="no-origin")])  # curl, backends
    assert server_side.status == 202 and "Access-Control-Allow-Origin" not in server_side.headers
    await eventually(lambda: count(ch) == 1)
    assert count(ch, "session_id = 'evil'") == 0


async def test_star_allows_any_origin(make_client):
    client = await make_client(cors_origins=("*",))
    resp = await client.post("/events", json=[event()], headers={"Origin": "https://anywhere.test"})
    assert resp.status == 202 and resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_without_an_origin_list_there_are_no_cors_headers_and_no_origin_checks(make_client):
    client = await make_client()
    resp = await client.post("/events", json=[event()], headers={"Origin": "https://anywhere.test"})
    assert resp.status == 202 and "Access-Control-Allow-Origin" not in resp.headers
    pre = await client.options("/events", headers={"Origin": "https://anywhere.test",
                                                   "Access-Control-Request-Method": "POST"})
    assert pre.status == 204 and "Access-Control-Allow-Origin" not in pre.headers
