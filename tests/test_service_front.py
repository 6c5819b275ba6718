"""What a new user sees first (issue 23): GET / says where to look, the start log says whether write keys and CORS
are on, and refused requests reach the log without a flood filling it. Real app, real engine, real HTTP."""

from __future__ import annotations

import logging

from ingest.api.refused import RefusedRequests

from .harness.events import event


def _lines(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


async def test_the_root_answers_in_json_and_points_to_health_and_the_openapi_document(make_client):
    client = await make_client()
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["service"] == "ingest" and "/health" in body["message"] and "/openapi.json" in body["message"]
    assert body["links"]["health"] == "/health" and body["links"]["openapi"] == "/openapi.json"
    for name in ("health", "openapi", "schema", "time"):  # every link it gives leads somewhere
        assert (await client.get(body["links"][name])).status == 200, name


async def test_the_start_line_says_write_keys_and_cors_are_off_by_default(make_client, caplog):
    caplog.set_level(logging.INFO, logger="ingest")
    await make_client()
    [ready] = [line for line in _lines(caplog, "ingest.api.app") if line.startswith("ingest ready")]
    assert "write keys off (POST /events is open" in ready and "CORS off" in ready


async def test_the_start_line_says_how_many_write_keys_and_which_origins_never_a_key(make_client, caplog):
    caplog.set_level(logging.INFO, logger="ingest")
    await make_client(write_keys=("k-secret-1", "k-secret-2"), cors_origins=("https://shop.example",))
    [ready] = [line for line in _lines(caplog, "ingest.api.app") if line.startswith("ingest ready")]
    assert "write keys on (2 keys)" in ready and "CORS on for https://shop.example" in ready
    assert "k-secret" not in caplog.text


async def test_refused_requests_are_logged_once_per_cause_without_keys_or_bodies(make_client, caplog):
    caplog.set_level(logging.INFO, logger="ingest")
    client = await make_client(write_keys=("the-right-key",))
    for _ in range(20):  # a flood of three kinds of mistakes
        assert (await client.post("/events?key=leaky-key", json=[event()])).status == 401
        resp = await client.post("/events", data=b'{"secret": "body-text"}',
                                 headers={"Authorization": "Bearer the-right-key", "Content-Type": "application/json"})
        assert resp.status == 400
        assert (await client.get("/no-such-page")).status == 404
    lines = _lines(caplog, "ingest.refused")
    assert len(lines) == 3, lines
    unauthorized, not_array, not_found = lines
    assert "POST '/events': 401 unauthorized (the write key is not valid) from 127.0.0.1" in unauthorized
    assert "400 not_an_array" in not_array and "404 not_found" in not_found and "'/no-such-page'" in not_found
    assert not any(secret in caplog.text for secret in ("leaky-key", "the-right-key", "body-text"))


def test_after_the_interval_one_line_says_how_many_more_of_a_cause_came(caplog):
    caplog.set_level(logging.INFO, logger="ingest")
    now = [0.0]
    refused = RefusedRequests(interval=60, clock=lambda: now[0])
    for second in range(0, 130):  # one a second for 130 s
        now[0] = float(second)
        refused.note("GET", "/x", "other", 404, "not_found", "Not Found", "127.0.0.1")
    lines = _lines(caplog, "ingest.refused")
    assert len(lines) == 3, lines  # the first, then one a minute
    assert lines[1].startswith("refused 60 more like this in the last 60 s")
