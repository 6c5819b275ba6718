"""The event contract: the JSON Schema document, the closed list of event names, the row an event becomes, and the
rules the schema cannot say (the timestamp window, the size of properties, unknown countries). Standard library only:
the buffer, the log, the dead letters, the clients' build and the demo read it without any validator.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any

SCHEMA_TEXT: bytes = resources.files(__package__).joinpath("event.schema.json").read_bytes()
SCHEMA: dict[str, Any] = json.loads(SCHEMA_TEXT)
# The closed list of event names (a new one is added to the schema's enum: docs/api.md).
EVENT_NAMES: tuple[str, ...] = tuple(SCHEMA["properties"]["event_name"]["enum"])

# Events in one POST /events, at most (the API's limit; the clients batch up to it).
MAX_EVENTS_PER_REQUEST = 500

# Rows older than the table's TTL would be deleted at the next merge, and a batch must never span
# more partitions than ClickHouse accepts in one insert (monthly partitions: at most 5 here).
MAX_AGE = timedelta(days=90)
# Client clocks drift; an hour covers that without letting "future" events sit in live panels.
MAX_FUTURE = timedelta(hours=1)
# properties is stored as JSON text; nested values make its size open-ended, so the text is bounded as a whole.
# Flat properties at the schema's limits (32 keys, 1024-character strings) stay well under it in plain text.
MAX_PROPERTIES_BYTES = 65_536
# How deep objects and arrays may nest inside properties: the schema's level1..level5 definitions.
MAX_PROPERTIES_NESTING = 5

# ISO 3166 leaves ZZ to users; it means "unknown" in the table (and XX, which Cloudflare sends, is not kept).
UNKNOWN_COUNTRY = "ZZ"

COLUMNS = ("event_name", "timestamp", "session_id", "user_id", "device_type", "country_code", "properties")
COLUMN_TYPES = ("LowCardinality(String)", "DateTime64(3, 'UTC')", "String", "Nullable(String)",
                "LowCardinality(String)", "LowCardinality(FixedString(2))", "String")


# One validated event: a plain tuple in COLUMNS order (event_name, timestamp as UTC epoch milliseconds,
# session_id, user_id or None, device_type, country_code, properties as JSON text). Plain, not a
# NamedTuple: orjson writes tuples natively, and the write-ahead log encodes every row (profiled).
Row = tuple


@dataclass(frozen=True)
class FieldError:
    """What is wrong with one event, and where (a JSON Pointer into the event)."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 date-time with offset into an aware UTC datetime (ValueError if impossible)."""
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        raise ValueError("not an RFC 3339 date-time with offset")
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = m.groups()
    if second == "60":  # leap second: RFC 3339 allows it, Python does not; keep the instant
        second = "59"
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if zulu:
        tz = timezone.utc
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError("offset out of range")
        delta = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-delta if sign == "-" else delta)
    return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)


def country_from_header(value: str | None) -> str:
    """The country a trusted proxy's header names (CF-IPCountry: DE), or ZZ when it names none.

    Anything but two letters is unknown: absent, empty, Cloudflare's XX (no data) and T1 (Tor).
    """
    value = (value or "").strip().upper()
    if len(value) == 2 and value.isascii() and value.isalpha() and value != "XX":
        return value
    return UNKNOWN_COUNTRY
