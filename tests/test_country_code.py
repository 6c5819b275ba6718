"""`country_code: "XX"` (issue 23): the code proxies send for "no data" is never a country. The proxy-header path
stores it as ZZ; an event that says XX itself is refused, pointing at /country_code, so it is never stored nor offered
as a filter value. Real app, real engine, real HTTP."""

from __future__ import annotations

from pathlib import Path

import jsonschema

from .harness.engine import count
from .harness.events import event
from .harness.polling import eventually

ROOT = Path(__file__).resolve().parent.parent


async def test_an_event_saying_xx_is_refused_at_its_field_and_the_others_are_stored(make_client, ch):
    client = await make_client()
    resp = await client.post("/events", json=[event(session_id="xx", country_code="XX"),
                                              event(session_id="de", country_code="DE"),
                                              event(session_id="zz", country_code="ZZ")])
    assert resp.status == 202
    body = await resp.json()
    assert body["accepted"] == 2
    [rejected] = body["rejected"]
    assert rejected["index"] == 0
    [error] = rejected["errors"]
    assert error["path"] == "/country_code" and "XX is not a country" in error["message"] and "ZZ" in error["message"]
    await eventually(lambda: count(ch) == 2)
    assert sorted(ch.query("SELECT DISTINCT toString(country_code) FROM events").result_rows) == [("DE",), ("ZZ",)]


async def test_a_request_of_only_xx_events_is_a_400_that_names_the_field(make_client, ch):
    client = await make_client()
    resp = await client.post("/events", json=[event(country_code="XX")])
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "no_valid_events"
    assert body["rejected"][0]["errors"][0]["path"] == "/country_code"


async def test_the_published_schema_refuses_xx_and_keeps_zz(make_client):
    client = await make_client()
    schema = await (await client.get("/schema")).json(content_type=None)
    validator = jsonschema.Draft7Validator(schema)
    assert not validator.is_valid(event(country_code="XX"))
    assert validator.is_valid(event(country_code="ZZ")) and validator.is_valid(event(country_code="DE"))
    assert "XX" in schema["properties"]["country_code"]["description"]


def test_the_api_docs_say_xx_is_refused():
    api = (ROOT / "docs" / "api.md").read_text()
    assert "`XX` is refused" in api and "an event that says `XX` itself is refused" in api
