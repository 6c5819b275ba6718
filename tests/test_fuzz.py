"""Property-based fuzzing of POST /events over real HTTP: any body, any headers, never a 5xx; good events still land."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from ingest.api.app import create_app

from .harness.engine import count
from .harness.events import event
from .live import serving

# Bounded so the whole module stays within a few seconds on 2 shared cores; FUZZ_EXAMPLES=2000 for a long hunt.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = hyp_settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=30)
content_types = st.sampled_from(["application/json", "text/plain;charset=UTF-8", "application/json; charset=utf-8",
                                 "text/plain; charset=latin-1", "application/xml", "", "application/x-ndjson"])
encodings = st.sampled_from([None, None, None, "gzip", "deflate", "br", "identity", "zstd", "x-bogus"])
# Anything a header value can carry (requests refuses leading whitespace, and HTTP strips it anyway).
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip)


class Tally:
    """What the service said it accepted, to compare with what the table holds once the fuzzing is over."""

    def __init__(self) -> None:
        self.accepted = 0
        self.requests = 0
        self.statuses: dict[int, int] = {}


@pytest.fixture
def live(settings, ch):
    """The real app on a real port, shared by every example of one test."""
    tally = Tally()
    with serving(create_app(dataclasses.replace(settings, max_body_bytes=65_536))) as url:
        with requests.Session() as session:
            yield url, session, tally
        health = session.get(f"{url}/health", timeout=10)
        assert health.status_code == 200, health.text
    # The app has stopped (its shutdown flush is done): exactly what it acknowledged is stored, nothing else.
    assert count(ch) == tally.accepted, (count(ch), tally.accepted, tally.statuses)
    print(f"\n{tally.requests} fuzz requests, statuses {dict(sorted(tally.statuses.items()))}")


def _post(live, body: bytes, headers: dict[str, str]) -> dict:
    url, session, tally = live
    try:
        resp = session.post(f"{url}/events", data=body, headers=headers, timeout=2)
    except requests.Timeout:
        raise AssertionError(f"no answer to {headers} {body[:200]!r}") from None
    tally.requests += 1
    tally.statuses[resp.status_code] = tally.statuses.get(resp.status_code, 0) + 1
    sent = f"{headers} {body[:200]!r}"
    assert 200 <= resp.status_code < 500, (resp.status_code, resp.text[:500], sent)
    assert resp.headers["Content-Type"].startswith("application/json"), (resp.status_code, resp.text[:200], sent)
    answer = resp.json()
    assert isinstance(answer, dict)
    if resp.status_code == 202:
        tally.accepted += answer["accepted"]
    else:
        assert answer["error"] and answer["message"]
    return answer


def _encode(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "br":
        import brotli
        return brotli.compress(body)
    if encoding == "deflate":
        import zlib
        return zlib.compress(body)
    return body


@FUZZ
@given(body=st.binary(max_size=3000), content_type=content_types, encoding=encodings)
def test_arbitrary_bytes_get_a_json_answer_never_a_5xx(live, body, content_type, encoding):
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    _post(live, body, headers)


@FUZZ
@given(content_type=st.builds("{}{}".format, st.sampled_from(["application/json", "text/plain", ""]), header_text),
       encoding=st.none() | header_text)
def test_arbitrary_content_type_and_encoding_headers_get_a_json_answer(live, content_type, encoding):
    headers = {"Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    _post(live, orjson.dumps([event()]), headers)


@FUZZ
@given(value=json_values, encoding=encodings)
def test_arbitrary_json_gets_a_json_answer_never_a_5xx(live, value, encoding):
    headers = {"Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    body = _encode(json.dumps(value).encode(), encoding if encoding in ("gzip", "br", "deflate") else None)
    _post(live, body, headers)


FIELDS = ["event_name", "timestamp", "session_id", "user_id", "device_type", "country_code", "properties"]


@st.composite
def mutated_event(draw) -> dict:
    """A valid event with one to three fields replaced by arbitrary JSON, removed, or joined by an unknown one."""
    e = event(draw(st.sampled_from(["page_view", "feature_used", "error_occurred"])),
              session_id=draw(st.from_regex(r"\A[!-~]{1,20}\Z")))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS + ["extra"]))
        action = draw(st.sampled_from(["replace", "delete", "property"]))
        if action == "delete":
            e.pop(field, None)
        elif action == "property":
            props = dict(e.get("properties") or {}) if isinstance(e.get("properties"), dict) else {}
            props[draw(st.text(max_size=70))] = draw(json_values)
            e["properties"] = props
        else:
            e[field] = draw(json_values)
    return e


@FUZZ
@given(bad=st.lists(mutated_event(), min_size=1, max_size=6), good=st.integers(1, 4), data=st.data())
def test_valid_events_beside_mutated_ones_are_accepted_and_indexed(live, bad, good, data):
    batch = bad + [event(session_id=f"good-{i}") for i in range(good)]
    order = data.draw(st.permutations(range(len(batch))))
    batch = [batch[i] for i in order]
    good_positions = {position for position, i in enumerate(order) if i >= len(bad)}
    # The stdlib encoder, because it writes what orjson refuses to: integers past 64 bits.
    answer = _post(live, json.dumps(batch).encode(), {"Content-Type": "application/json"})
    rejected = [r["index"] for r in answer["rejected"]]
    assert answer["accepted"] + len(rejected) == len(batch)
    assert rejected == sorted(set(rejected)) and all(r["errors"] for r in answer["rejected"])
    assert not good_positions & set(rejected)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips_in_a_valid_body_never_cause_a_5xx(live, flips):
    body = bytearray(orjson.dumps([event(session_id=f"flip-{i}") for i in range(3)]))
    for position, value in flips:
        body[position % len(body)] = value
    _post(live, bytes(body), {"Content-Type": "application/json"})
