"""Events as clients send them: a valid one with any field overridden, and timestamps in the API's format."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any


def iso(dt: datetime) -> str:
    """An aware datetime as the API's timestamps are written: RFC 3339, UTC as Z."""
    return dt.isoformat().replace("+00:00", "Z")


def event(name: str = "page_view", *, at: datetime | None = None, **fields: Any) -> dict[str, Any]:
    """A valid event; keyword arguments override fields (None values are kept as JSON null)."""
    at = at or datetime.now(timezone.utc) - timedelta(seconds=5)
    body = {
        "event_name": name,
        "timestamp": iso(at),
        "session_id": "sess-1",
        "user_id": "user-1",
        "device_type": "desktop",
        "country_code": "DE",
        "properties": {"feature": "export"} if name == "feature_used" else {},
    }
    body.update(fields)
    return body
