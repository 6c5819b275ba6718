"""Judging events against the contract: a compiled (Rust) validator for the common valid case, jsonschema for a report
of what is wrong, in words, with a JSON Pointer to the field."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import jsonschema
import jsonschema_rs
import orjson

from .events import (
    MAX_AGE,
    MAX_FUTURE,
    MAX_PROPERTIES_BYTES,
    MAX_PROPERTIES_NESTING,
    SCHEMA,
    UNKNOWN_COUNTRY,
    FieldError,
    Row,
    parse_timestamp,
)


class EventValidator:
    """Judges events one by one: a compiled (Rust) validator for the common valid case, jsonschema for the report.

    Both read the same schema document; tests check they agree on every case in the suite.
    """

    def __init__(self, schema: dict[str, Any] = SCHEMA) -> None:
        self._fast = jsonschema_rs.validator_for(schema)
        # One call for a whole request: when every event is valid (the usual case) that is all it costs.
        # The definitions stay at the root, where the event schema's "#/definitions/..." references point.
        self._fast_all = jsonschema_rs.validator_for(
            {"$schema": schema["$schema"], "type": "array", "definitions": schema.get("definitions", {}),
             "items": {k: v for k, v in schema.items() if k not in ("$schema", "$id", "definitions")}})
        self._detailed = jsonschema.Draft7Validator(schema)

    def errors(self, event: Any) -> list[FieldError]:
        """Every schema error of one event, each with its JSON Pointer path; [] when valid."""
        found = []
        # jsonschema reports each missing property as its own `required` error, in the order of the keyword's list:
        # the n-th error of one `required` keyword (an object may meet several: the top level's, and `then`'s for
        # feature_used) is about the n-th property that keyword finds missing.
        missing: dict[tuple, list[str]] = {}
        for err in sorted(self._detailed.iter_errors(event), key=lambda e: list(map(str, e.absolute_path))):
            path = list(err.absolute_path)
            if err.validator == "required":  # point at the missing field, not at the object that lacks it
                names = missing.setdefault((tuple(path), tuple(err.schema_path)), _missing(err))
                path.append(names.pop(0) if names else "")
            found.append(FieldError(_pointer(path), _message(err)))
        return found

    def is_valid(self, event: Any) -> bool:
        """Schema check only (no timestamp window), via the compiled validator."""
        return self._fast.is_valid(event)

    def to_row(self, event: Any, now: float | None = None, country: str = UNKNOWN_COUNTRY) -> Row | list[FieldError]:
        """The table row for a valid event, or the list of what is wrong with it."""
        if not self._fast.is_valid(event):
            return self._report(event)
        return self._row(event, *_window(now), country)

    def judge(self, events: list[Any], now: float | None = None,
              country: str = UNKNOWN_COUNTRY) -> tuple[list[Row], list[dict[str, Any]]]:
        """Rows of the valid events, and for each invalid one its index and errors.

        country is what events without a country_code get (see country_from_header).
        """
        window = (*_window(now), country)
        rows: list[Row] = []
        rejected: list[dict[str, Any]] = []
        all_match = self._fast_all.is_valid(events)
        for index, event in enumerate(events):
            if all_match or self._fast.is_valid(event):
                result = self._row(event, *window)
            else:
                result = self._report(event)
            if type(result) is Row:
                rows.append(result)
            else:
                rejected.append({"index": index, "errors": [e.as_dict() for e in result]})
        return rows, rejected

    def _report(self, event: Any) -> list[FieldError]:
        # jsonschema writes repr(instance) into its messages, and a value nested near orjson's depth
        # limit (1024) overflows the stack there; no valid event nests deeper than properties -> scalar.
        deep = _too_deep(event)
        if deep is not None:
            return [FieldError(deep, f"nested deeper than {MAX_DEPTH} levels")]
        # The two validators read one document; if they ever disagree, fail closed and say so.
        return self.errors(event) or [FieldError("", "event does not match the schema")]

    @staticmethod
    def _row(event: dict[str, Any], oldest_ms: int, newest_ms: int, country: str) -> Row | list[FieldError]:
        text = event["timestamp"]
        try:
            # The schema's pattern already holds, so the C parser only has to agree on the instant;
            # what it cannot read (leap seconds, nanoseconds) goes to the full RFC 3339 parser.
            ts = datetime.fromisoformat(text)
        except ValueError:
            try:
                ts = parse_timestamp(text)
            except ValueError as exc:
                return [FieldError("/timestamp", f"invalid date-time {text!r}: {exc}")]
        ms = (ts - _EPOCH) // _MILLISECOND
        if ms < oldest_ms:
            return [FieldError("/timestamp", f"older than {MAX_AGE.days} days (the retention period)")]
        if ms > newest_ms:
            return [FieldError("/timestamp", "more than 1 hour in the future; check the client clock")]
        props = event.get("properties")
        text = orjson.dumps(props) if props else b"{}"
        if len(text) > MAX_PROPERTIES_BYTES:
            return [FieldError("/properties", f"too large: {len(text):,} bytes as JSON, at most "
                                              f"{MAX_PROPERTIES_BYTES:,}")]
        return (event["event_name"], ms, event["session_id"], event.get("user_id"), event["device_type"],
                event.get("country_code", country), text.decode())


MAX_DEPTH = 16  # far above any valid event (7), far below what jsonschema's recursion can report on


def _too_deep(event: Any) -> str | None:
    """JSON Pointer of the first container nested deeper than MAX_DEPTH in an event, else None.

    Iterative, so the check itself cannot overflow; it runs only for events already found invalid.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(event, ())]
    while stack:
        value, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            return _pointer(path)
        if type(value) is dict:
            stack.extend((v, (*path, k)) for k, v in value.items() if type(v) in (dict, list))
        elif type(value) is list:
            stack.extend((v, (*path, i)) for i, v in enumerate(value) if type(v) in (dict, list))
    return None


def _window(now: float | None) -> tuple[int, int]:
    """The accepted timestamp range in epoch milliseconds, around now."""
    now_ms = int((time.time() if now is None else now) * 1000)
    return now_ms - MAX_AGE // _MILLISECOND, now_ms + MAX_FUTURE // _MILLISECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


def _pointer(path) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


# What each pattern of the schema asks for, in words and with an example (a regular expression helps nobody).
_PATTERN_WORDS = {
    SCHEMA["properties"]["timestamp"]["pattern"]:
        "must be an RFC 3339 date-time with a time zone, e.g. 2026-11-28T09:30:00Z or 2026-11-28T10:30:00+01:00",
    SCHEMA["properties"]["session_id"]["pattern"]:
        "must be 1 to 128 printable ASCII characters without spaces, e.g. s-7f3a9c",
    SCHEMA["properties"]["country_code"]["pattern"]:
        "must be a two-letter upper-case country code (ISO 3166-1 alpha-2), e.g. DE; ZZ if unknown",
}
_NAME_WORDS = ("must start with a letter or _ and contain only letters, digits, _ . and - (at most 64 characters), "
               "e.g. plan_name")


def _missing(err: jsonschema.ValidationError) -> list[str]:
    """The properties a `required` error's object lacks, in the schema's order."""
    instance: Any = err.instance
    required: Any = err.validator_value
    present = instance if isinstance(instance, dict) else {}
    return [name for name in required if name not in present]


def _message(err: jsonschema.ValidationError) -> str:
    """What is wrong, in words (with an example where it helps), without echoing a huge value back."""
    instance: Any = err.instance  # typed as possibly unset by the stubs; always set on a reported error
    value: Any = err.validator_value
    schema: Any = err.schema
    if err.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = set(schema.get("properties", {}))
        extra = sorted(k for k in instance if k not in allowed)
        known = ", ".join(sorted(allowed))
        return f"unknown field(s): {', '.join(map(repr, extra))[:300]}; an event has only {known}"
    if "propertyNames" in err.schema_path:
        return f"property name {str(instance)[:80]!r} {_NAME_WORDS}"
    if err.validator == "required":
        return "is required"
    if err.validator == "enum":
        return f"must be one of {', '.join(map(str, value))}, got {str(instance)[:80]!r}"
    if err.validator == "pattern":
        return _PATTERN_WORDS.get(value, f"has the wrong format (expected {value})")
    if err.validator == "not" and list(err.absolute_path) == ["country_code"]:
        return "XX is not a country (proxies send it for 'no data'): send ZZ for unknown, or leave country_code out"
    if err.validator == "type" and isinstance(instance, (dict, list)) and "object" not in value \
            and err.absolute_path and err.absolute_path[0] == "properties":
        return (f"nested too deep: objects and arrays nest at most {MAX_PROPERTIES_NESTING} levels inside "
                "properties; below that only strings, numbers, booleans and null")
    if err.validator == "type":
        expected = value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"must be {expected}, got {_json_type(instance)}"
    if err.validator == "maxLength":
        return f"too long: {len(instance):,} characters, at most {value}"
    if err.validator == "minLength":
        return "must not be empty" if value == 1 else f"shorter than {value} characters"
    if err.validator == "maxProperties":
        return f"too many properties: {len(instance)}, at most {value}"
    return err.message[:300]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )
