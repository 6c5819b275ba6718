"""The dashboard's live status, as one rule: live when the newest stored event is under 15 s old and ingest answers
with nothing wrong; delayed at 15-120 s, or when ingest reports trouble (its buffer above 80%, inserts failing); down
beyond 120 s or when ingest does not answer. The Live status panel computes the same rule in Grafana from ClickHouse
and Prometheus (tests/test_founding_scene.py holds its thresholds to these); here it reads ingest's /health.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

FRESH_SECONDS = 15.0
STALE_SECONDS = 120.0
BUFFER_TROUBLE = 0.8


@dataclass
class LiveStatus:
    level: str  # live | delayed | down
    newest_event_age_s: float | None
    reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the top of the terminal frame."""
        age = "no event in 10 minutes" if self.newest_event_age_s is None or self.newest_event_age_s >= 1e6 \
            else f"newest event {max(0.0, self.newest_event_age_s):,.0f} s old"
        return f"Live status: {self.level}  ({age}; {'; '.join(self.reasons) or 'ingest answers, nothing wrong'})"

    def as_json(self) -> dict[str, Any]:
        return {"level": self.level, "newest_event_age_s": self.newest_event_age_s, "reasons": self.reasons}


def live_status(newest_event_age_s: float | None, health: dict[str, Any] | None, unreachable: str = "") -> LiveStatus:
    """The rule above, from the newest event's age and ingest's /health answer (None: ingest did not answer)."""
    age = 1e6 if newest_event_age_s is None else newest_event_age_s
    reasons = []
    if health is None:
        reasons.append(f"ingest does not answer{': ' + unreachable if unreachable else ''}")
    trouble = []
    if health is not None:
        buffer = health.get("buffer") or {}
        capacity = buffer.get("capacity") or 0
        if capacity and buffer.get("events", 0) / capacity > BUFFER_TROUBLE:
            trouble.append(f"buffer {100 * buffer['events'] / capacity:.0f}% full")
        failures = (health.get("last_flush") or {}).get("consecutive_failures") or 0
        if failures:
            trouble.append(f"last {failures} insert(s) failed")
    if health is None or age > STALE_SECONDS:
        level = "down"
    elif age > FRESH_SECONDS or trouble:
        level = "delayed"
    else:
        level = "live"
    if age > FRESH_SECONDS and health is not None:
        reasons.append(f"newest event older than {FRESH_SECONDS:.0f} s" if age <= STALE_SECONDS
                       else f"newest event older than {STALE_SECONDS:.0f} s")
    return LiveStatus(level, newest_event_age_s, reasons + trouble)


def fetch_health(base_url: str, timeout: float = 3.0) -> tuple[dict[str, Any] | None, str]:
    """ingest's /health answer (a 503 answers too: it says what is wrong), or None and why it did not answer."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/health", timeout=timeout) as response:
            return json.load(response), ""
    except urllib.error.HTTPError as exc:
        try:
            return json.load(exc), ""
        except ValueError:
            return None, f"{base_url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))
