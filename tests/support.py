"""Small helpers for building events and reading the table in tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable


def iso(dt: datetime) -> str:
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


def count(ch, where: str = "1") -> int:
    return ch.command(f"SELECT count() FROM events WHERE {where}")


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until predicate() (sync or async) is truthy, returning it; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


def require_tool(name: str) -> str:
    """Path of a system tool a test drives; skip without it locally, but fail in CI (where .ci/run installs it)."""
    import os
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: see .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
