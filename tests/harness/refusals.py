"""Invalid events, each with the JSON path and message the service refuses it with: one per rule of the contract."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from .events import event


def _without(field):
    e = event()
    del e[field]
    return e


PER_EVENT_ERRORS = [
    pytest.param(event(event_name="signup"), "/event_name", "must be one of", id="unknown-event-name"),
    pytest.param(event(event_name=7), "/event_name", "must be string", id="event-name-not-string"),
    pytest.param(_without("event_name"), "/event_name", "is required", id="missing-event-name"),
    pytest.param(_without("timestamp"), "/timestamp", "is required", id="missing-timestamp"),
    pytest.param(event(timestamp="2026-11-27T10:00:00"), "/timestamp", "RFC 3339 date-time with a time zone, e.g.",
                 id="timestamp-without-offset"),
    pytest.param(event(timestamp="yesterday"), "/timestamp", "RFC 3339 date-time", id="timestamp-garbage"),
    pytest.param(event(timestamp="2026-02-30T10:00:00Z"), "/timestamp", "invalid date-time", id="impossible-date"),
    pytest.param(event(timestamp=1732700000), "/timestamp", "must be string", id="timestamp-number"),
    pytest.param(event(at=datetime.now(timezone.utc) - timedelta(days=91)), "/timestamp", "older than 90 days",
                 id="older-than-ttl"),
    pytest.param(event(at=datetime.now(timezone.utc) + timedelta(hours=2)), "/timestamp", "in the future",
                 id="far-future"),
    pytest.param(event(session_id=""), "/session_id", "1 to 128 printable ASCII characters", id="empty-session"),
    pytest.param(event(session_id="a" * 129), "/session_id", "1 to 128 printable", id="session-too-long"),
    pytest.param(event(session_id="has space"), "/session_id", "without spaces", id="session-with-space"),
    pytest.param(event(user_id=""), "/user_id", "1 to 128 printable", id="empty-user-id"),
    pytest.param(event(user_id=12), "/user_id", "must be string or null", id="user-id-number"),
    pytest.param(event(device_type="phone"), "/device_type",
                 "must be one of desktop, mobile, tablet, other, got 'phone'", id="unknown-device"),
    pytest.param(event(country_code="de"), "/country_code", "two-letter upper-case country code",
                 id="country-lowercase"),
    pytest.param(event(country_code="DEU"), "/country_code", "e.g. DE", id="country-alpha3"),
    pytest.param(event(properties=[1]), "/properties", "must be object", id="properties-array"),
    pytest.param(event(properties={"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}), "/properties/a/b/c/d/e/f",
                 "nested too deep: objects and arrays nest at most 5 levels", id="nested-six-levels"),
    pytest.param(event(properties={"a": [[[[[[1]]]]]]}), "/properties/a/0/0/0/0/0", "nest at most 5 levels",
                 id="arrays-six-levels"),
    pytest.param(event(properties={"cart": {"items": [{"sku": "x" * 1025}]}}), "/properties/cart/items/0/sku",
                 "too long: 1,025 characters, at most 1024", id="nested-string-too-long"),
    pytest.param(event(properties={"cart": {"bad key": 1}}), "/properties/cart", "property name 'bad key' must start",
                 id="nested-bad-key"),
    pytest.param(event(properties={"cart": {f"k{i}": i for i in range(33)}}), "/properties/cart",
                 "too many properties: 33, at most 32", id="nested-too-many-keys"),
    pytest.param(event(properties={f"k{i}": ["x" * 1000] * 3 for i in range(32)}), "/properties",
                 "too large: 96,535 bytes as JSON, at most 65,536", id="properties-over-64-kib"),
    pytest.param(event(properties={"a": "x" * 1025}), "/properties/a", "too long: 1,025 characters, at most 1024",
                 id="property-too-long"),
    pytest.param(event(properties={f"k{i}": i for i in range(33)}), "/properties",
                 "too many properties: 33, at most 32", id="too-many-properties"),
    pytest.param(event(properties={"bad key": 1}), "/properties", "property name 'bad key' must start with a letter",
                 id="bad-property-name"),
    pytest.param(event("feature_used", properties={}), "/properties/feature", "is required",
                 id="feature-used-without-feature"),
    pytest.param(event("feature_used", properties={"feature": ""}), "/properties/feature", "must not be empty",
                 id="feature-empty"),
    pytest.param(event(colour="red"), "", "unknown field(s): 'colour'", id="unknown-field"),
    pytest.param("page_view", "", "must be object, got string", id="event-not-object"),
]
