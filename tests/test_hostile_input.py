"""Hostile bodies get a clear JSON 4xx (never a 5xx or a crash), and the good events beside them are still stored."""

from __future__ import annotations

import gzip
import json

import brotli
import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from ingest.api.app import RequestError, _parse_events, _read_body
from ingest.contract.validation import EventValidator

from .harness.engine import count
from .harness.events import event
from .harness.polling import eventually


def _with(raw_field: bytes, base: dict | None = None) -> bytes:
    """One event as JSON text with raw_field (`"name": value` bytes) appended, so tests can write what orjson won't."""
    return orjson.dumps(base or event())[:-1] + b"," + raw_field + b"}"


async def _post(client, body: bytes, **headers: str):
    return await client.post("/events", data=body, headers={"Content-Type": "application/json", **headers})


async def test_ten_thousand_nested_arrays_are_a_400_not_a_crash(make_client):
    client = await make_client()
    resp = await _post(client, b"[" * 10_000 + b"]" * 10_000)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "malformed_json" and "depth" in body["message"]


def _judge(body: bytes):
    """(rows, rejected) as POST /events decides them for this body: one parse, then the validator. Over HTTP the
    handler answers with exactly these (tests/test_events_api.py), so the rules are tested here as units."""
    return EventValidator().judge(_parse_events(body))


def _malformed(body: bytes) -> str:
    """The whole-request refusal's code for this body (a RequestError, answered 4xx with it over HTTP)."""
    with pytest.raises(RequestError) as refused:
        _parse_events(body)
    assert refused.value.status == 400
    return refused.value.code


@pytest.mark.parametrize("field", ["properties", "session_id", "user_id", "colour"])
def test_a_value_nested_1000_deep_rejects_only_its_event(field):
    # Within orjson's depth limit, so it parses; the report must not recurse into it.
    nested = b'{"a":' * 1000 + b"1" + b"}" * 1000
    good = orjson.dumps(event(session_id="good"))
    rows, rejected = _judge(b"[" + good + b"," + _with(f'"{field}":'.encode() + nested) + b"]")
    assert [row[2] for row in rows] == ["good"]
    [rejected] = rejected
    assert rejected["index"] == 1 and "nested deeper than" in rejected["errors"][0]["message"]
    assert rejected["errors"][0]["path"].startswith(f"/{field}/a/a")


def test_an_event_that_is_itself_nested_arrays_is_rejected_alone():
    rows, rejected = _judge(b"[" + orjson.dumps(event()) + b"," + b"[" * 1000 + b"]" * 1000 + b"]")
    assert len(rows) == 1 and [r["index"] for r in rejected] == [1]


async def test_integers_beyond_64_bits_are_stored_as_floats_in_properties(make_client, ch):
    # orjson reads integers past 64 bits as floats; a property may hold any number, so this is a valid event.
    client = await make_client()
    resp = await _post(client, b"[" + _with(b'"properties": {"big": 123456789012345678901234567890}') + b"]")
    assert resp.status == 202 and (await resp.json())["accepted"] == 1
    await eventually(lambda: count(ch) == 1)
    assert json.loads(ch.command("SELECT properties FROM events")) == {"big": 1.2345678901234568e29}


@pytest.mark.parametrize("raw", [b'"session_id": 18446744073709551616', b'"user_id": -99999999999999999999999'])
def test_huge_integers_where_strings_belong_are_per_event_rejections(raw):
    rows, rejected = _judge(b"[" + _with(raw) + b"]")  # no row: POST /events answers 400 no_valid_events
    assert rows == [] and "must be string" in rejected[0]["errors"][0]["message"]


def test_a_number_beyond_double_range_is_malformed_json():
    assert _malformed(b"[" + _with(b'"properties": {"x": 1e400}') + b"]") == "malformed_json"


@pytest.mark.parametrize("body", [
    pytest.param(b"[" + _with(b'"properties": {"path": "/caf\xe9"}') + b"]", id="latin1-byte-in-string"),
    pytest.param(b"[" + _with(b'"properties": {"path": "\xed\xa0\x80"}') + b"]", id="utf8-encoded-surrogate"),
    pytest.param(b"[" + _with(b'"properties": {"path": "\\ud800"}') + b"]", id="lone-surrogate-escape"),
    pytest.param(b"\xef\xbb\xbf[" + orjson.dumps(event()) + b"]", id="byte-order-mark"),
])
def test_text_that_is_not_utf8_is_a_400(body):
    assert _malformed(body) == "malformed_json"


async def test_nul_is_refused_in_ids_and_round_trips_in_properties(make_client, ch):
    client = await make_client()
    resp = await _post(client, b"[" + _with(b'"properties": {"note": "a\\u0000b"}', event(session_id="nul-prop"))
                       + b"," + orjson.dumps(event(session_id="x\u0000y")) + b"]")
    assert resp.status == 202
    body = await resp.json()
    assert body["accepted"] == 1 and body["rejected"][0]["errors"][0]["path"] == "/session_id"
    await eventually(lambda: count(ch) == 1)
    [(stored,)] = ch.query("SELECT properties FROM events").result_rows
    assert stored == '{"note":"a\\u0000b"}' and json.loads(stored) == {"note": "a\u0000b"}


async def test_duplicate_keys_the_last_value_is_judged_and_stored(make_client, ch):
    # Decision: last wins, as in JSON.parse. What is validated is exactly what is stored (one parse), and the
    # stored properties text is re-serialized, so no later reader can see the other value.
    client = await make_client()
    resp = await _post(client, b"[" + _with(b'"session_id": "second", "properties": {"k": 1, "k": 2}',
                                            event(session_id="first")) + b"]")
    assert resp.status == 202
    await eventually(lambda: count(ch) == 1)
    assert ch.query("SELECT session_id, properties FROM events").result_rows == [("second", '{"k":2}')]


def test_a_duplicate_key_whose_last_value_is_invalid_rejects_the_event():
    rows, rejected = _judge(b"[" + _with(b'"country_code": "germany"', event(country_code="DE")) + b"]")
    assert rows == [] and rejected[0]["errors"][0]["path"] == "/country_code"


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", "text/html",
    "application/octet-stream", "application/json-patch+json", "",
])
async def test_wrong_content_types_are_415_json(content_type):
    # Refused from the headers, before the body is read; over HTTP (a 415 JSON answer): test_events_api.py.
    with pytest.raises(RequestError) as refused:
        await _read_body(make_mocked_request("POST", "/events", headers={"Content-Type": content_type}), 65_536)
    assert (refused.value.status, refused.value.code) == (415, "unsupported_media_type")


async def test_brotli_bodies_are_accepted(make_client, ch):
    client = await make_client()
    body = brotli.compress(orjson.dumps([event(session_id="br")] * 2))
    resp = await _post(client, body, **{"Content-Encoding": "br"})
    assert resp.status == 202 and (await resp.json())["accepted"] == 2
    await eventually(lambda: count(ch, "session_id = 'br'") == 2)


def _corrupt(data: bytes) -> bytes:
    return data[:12] + b"\xff" * 8 + data[20:]  # garbage where the deflate stream begins


@pytest.mark.parametrize(("encoding", "body", "status", "code"), [
    pytest.param("br", brotli.compress(b"[" + b" " * 50_000_000 + b"]"), 413, "body_too_large", id="brotli-bomb"),
    pytest.param("br", b"not brotli at all", 400, "bad_br", id="corrupt-brotli"),
    pytest.param("gzip", gzip.compress(orjson.dumps([event()]))[:-9], 400, "bad_gzip", id="truncated-gzip"),
    # Empty stored blocks decode to nothing: only the cap on raw bytes stops such a stream.
    pytest.param("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\x00\x00\x00\xff\xff" * 20_000, 413,
                 "body_too_large", id="endless-empty-blocks"),
    pytest.param("gzip", _corrupt(gzip.compress(orjson.dumps([event()] * 5))), 400, "bad_gzip", id="corrupt-gzip"),
    pytest.param("zstd", b"(\xb5/\xfd", 415, "unsupported_encoding", id="zstd"),
    pytest.param("gzip, gzip", gzip.compress(gzip.compress(b"[]")), 415, "unsupported_encoding", id="stacked"),
])
async def test_encodings_we_cannot_or_will_not_decode_are_json_4xx(make_client, ch, encoding, body, status, code):
    client = await make_client(max_body_bytes=65_536)
    resp = await _post(client, body, **{"Content-Encoding": encoding})
    assert resp.status == status
    assert resp.content_type == "application/json" and (await resp.json())["error"] == code
    ok = await client.post("/events", json=[event()])
    assert ok.status == 202
    await eventually(lambda: count(ch) == 1)
