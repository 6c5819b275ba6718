"""The OpenAPI document describes the API the service really serves; schemathesis holds the service to it."""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
import schemathesis
import schemathesis.checks
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings

from ingest.api.app import create_app
from ingest.contract.events import SCHEMA

from .harness.engine import count
from .harness.events import iso
from .live import serving

KEY = "openapi-test-key"
# Generated events are schema-valid but mostly outside the accepted time window (a rule the schema cannot
# express), so "valid data must get a 2xx" would be a false alarm. Schemathesis's own negative check does not
# count 413 (our documented answer to over 500 events) as a refusal; the test checks refusals itself.
EXCLUDED = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.negative_data_rejection]
EXAMPLES = {"POST /events": 150}  # per generation mode; operations without inputs have one case to try


def _fresh_timestamps(case):
    """Move generated events into the accepted time window, so schema-valid data also reaches storage."""
    if isinstance(case.body, list):
        for i, item in enumerate(case.body):
            if isinstance(item, dict) and "timestamp" in item:
                item["timestamp"] = iso(datetime.now(timezone.utc) - timedelta(seconds=i))
    return case


@pytest.fixture
def live_url(settings, ch):
    with serving(create_app(dataclasses.replace(settings, write_keys=(KEY,), max_body_bytes=65_536))) as url:
        yield url


def test_openapi_document_embeds_the_event_schema_and_lists_every_route(live_url, settings):
    doc = requests.get(f"{live_url}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    # The event schema, its definitions beside it as components (references rewritten to match).
    schemas = json.loads(json.dumps(doc["components"]["schemas"]).replace('"#/components/schemas/Event.',
                                                                          '"#/definitions/'))
    assert schemas["Event"] == {k: v for k, v in SCHEMA.items() if k not in ("$schema", "$id", "definitions")}
    assert {name: schemas[f"Event.{name}"] for name in SCHEMA["definitions"]} == SCHEMA["definitions"]
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(r.method, r.resource.canonical) for r in create_app(settings).router.routes() if r.method != "HEAD"}
    assert documented == served


# The two generation modes are two tests (generating the cases is most of their time): run side by side with -n 2.
@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_schemathesis_finds_no_server_error_or_contract_breach(live_url, ch, mode):
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    cases: collections.Counter[str] = collections.Counter()
    accepted = 0
    statuses: collections.Counter[int] = collections.Counter()
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        has_inputs = operation.body or any(True for _ in operation.iter_parameters())
        if mode == schemathesis.GenerationMode.NEGATIVE and not has_inputs:
            continue  # nothing to make invalid
        strategy = operation.as_strategy(generation_mode=mode)
        if mode == schemathesis.GenerationMode.POSITIVE:
            strategy = strategy.map(_fresh_timestamps)

        @given(case=strategy)
        @hyp_settings(max_examples=EXAMPLES.get(name, 5), deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
        def run(name, case):
            nonlocal accepted
            cases[name] += 1
            response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                                              excluded_checks=EXCLUDED, timeout=30)
            statuses[response.status_code] += 1
            if case.meta and case.meta.generation.mode == schemathesis.GenerationMode.NEGATIVE \
                    and name == "POST /events":
                # Refused whole, or (events are judged one by one) with the invalid ones listed.
                assert 400 <= response.status_code < 500 or response.json()["rejected"], response.text[:300]
            if response.status_code == 202:
                accepted += response.json()["accepted"]

        run(name)  # this operation's name, passed in rather than read from the enclosing loop
    print(f"\nschemathesis: {sum(cases.values())} cases in {time.monotonic() - started:.1f} s, {dict(cases)}, "
          f"statuses {dict(sorted(statuses.items()))}")
    assert cases["POST /events"] >= 100
    assert not [s for s in statuses if s >= 500]
    if mode == schemathesis.GenerationMode.POSITIVE:
        assert set(cases) >= {"POST /events", "GET /health", "GET /metrics"}
        assert accepted > 0  # odd but valid events (any unicode, any numbers) went all the way to storage
    # What was acknowledged is stored, and nothing else.
    deadline = time.monotonic() + 10
    while count(ch) != accepted and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count(ch) == accepted
