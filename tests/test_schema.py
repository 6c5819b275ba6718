"""The event contract without a server: timestamp parsing, the retention window, validator agreement."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ingest.contract.events import COLUMNS, SCHEMA, Row, parse_timestamp
from ingest.contract.validation import EventValidator

from .harness.events import event
from .harness.refusals import PER_EVENT_ERRORS

NOW = datetime(2026, 6, 15, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-06-15T12:00:00Z", datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)),
    ("2026-06-15t14:30:00.5+02:30", datetime(2026, 6, 15, 12, 0, 0, 500000, tzinfo=timezone.utc)),
    ("2026-06-15 07:00:00.123456789-05:00", datetime(2026, 6, 15, 12, 0, 0, 123456, tzinfo=timezone.utc)),
    ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=timezone.utc)),
])
def test_rfc3339_timestamps_parse_to_the_same_instant_in_utc(text, expected):
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["2026-06-15T12:00:00", "2026-13-01T00:00:00Z", "2026-06-15T25:00:00Z",
                                  "2026-06-15T12:00:00+24:00", "15/06/2026 12:00"])
def test_impossible_timestamps_are_errors(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_a_row_stores_utc_epoch_milliseconds_and_properties_as_json_text():
    row = EventValidator().to_row(
        event("feature_used", timestamp="2026-06-15T13:00:00.0079+01:00", user_id=None,
              properties={"feature": "export", "n": 2}), NOW.timestamp())
    assert isinstance(row, Row)
    utc_ms = int(datetime(2026, 6, 15, 12, 0, 0, 7000, tzinfo=timezone.utc).timestamp() * 1000)
    assert dict(zip(COLUMNS, row, strict=True))["timestamp"] == utc_ms
    assert dict(zip(COLUMNS, row, strict=True))["user_id"] is None
    assert dict(zip(COLUMNS, row, strict=True))["properties"] == '{"feature":"export","n":2}'


def test_missing_properties_are_stored_as_an_empty_object():
    e = event()
    del e["properties"]
    assert dict(zip(COLUMNS, EventValidator().to_row(e), strict=True))["properties"] == "{}"


@pytest.mark.parametrize(("offset", "ok"), [
    (timedelta(days=90) - timedelta(seconds=1), True),
    (timedelta(days=90) + timedelta(seconds=1), False),
    (-timedelta(hours=1), True),
    (-timedelta(hours=1, seconds=1), False),
])
def test_the_accepted_window_is_90_days_back_to_1_hour_ahead(offset, ok):
    result = EventValidator().to_row(event(at=NOW - offset), NOW.timestamp())
    assert isinstance(result, Row) is ok


def _valid_events():
    return [event(name) for name in SCHEMA["properties"]["event_name"]["enum"]] + [
        event(user_id=None), event(properties={"a": None, "b": 1.5, "c": True, "d": "x" * 1024}),
        event(country_code="ZZ", device_type="other", session_id="~" * 128),
        event(properties={"cart": {"items": [{"sku": "a", "qty": 1}, [1, [2, [3]]]], "note": None}}),
        event(properties={"a": [{"b": [{"c": "x" * 1024}]}]})]


@pytest.mark.parametrize("candidate", _valid_events() + [p.values[0] for p in PER_EVENT_ERRORS])
def test_the_compiled_and_the_reporting_validator_agree(candidate):
    validator = EventValidator()
    assert validator.is_valid(candidate) == (validator.errors(candidate) == [])
