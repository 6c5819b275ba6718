"""A Python client for the ingest service: `track()` from any thread; background threads batch, gzip and deliver.

    from ingest_client import Client

    client = Client("http://127.0.0.1:3001", write_key="...")
    client.track("feature_used", session_id="s-1", user_id="u-42", properties={"feature": "export"})
    client.flush()   # optional: close() runs at interpreter exit and delivers what is left

Standard library only (urllib): it needs neither aiohttp nor the service's other dependencies. Delivery is exactly
once: each batch goes with an Idempotency-Key of its own, and a 503/429/409 (after Retry-After), a 5xx or a network
error resends the same bytes with the same key, with backoff (the service stores a batch it had already taken only
once), until it lands, `max_attempts` is reached or `close()` gives up; a batch the service refuses whole (other
4xx) is dropped and logged, as are the events it refuses one by one. While the service is down the queue is
bounded: beyond `max_queue` waiting events the oldest are dropped and counted (`stats.dropped`). docs/api.md
"Send events".
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import email.utils
import gzip
import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any, Mapping

log = logging.getLogger(__name__)

# The closed list of event names: written into _contract.py from the service's event schema when this distribution
# is built (hatch_build.py), so the client reads no file and needs no schema beside it.
from ._contract import EVENT_NAMES  # noqa: E402

MAX_BATCH = 500  # the service's limit per request
MAX_RETRY_AFTER = 300.0  # a Retry-After beyond this is read as this


@dataclasses.dataclass
class Stats:
    """What the client did so far, in events unless named requests."""

    tracked: int = 0          # events accepted by track()
    accepted: int = 0         # events the service accepted (202)
    rejected: int = 0         # events the service refused one by one (invalid), logged
    refused: int = 0          # events in requests the service refused whole (a 4xx such as 401), logged
    dropped: int = 0          # events dropped, oldest first, because max_queue events were waiting
    failed: int = 0           # events given up on: max_attempts reached, or not delivered when close() gave up
    retried: int = 0          # event resends (after a 503/429/5xx or a network error)
    requests: int = 0         # POSTs tried, resends included
    retried_requests: int = 0
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)  # answers by HTTP status
    last_error: str | None = None  # the last network error or retryable answer
    last_refusal: tuple[int, str, str] | None = None  # (status, error, message) of the last whole-request refusal


class Client:
    """Batches events and delivers them to `url` (the service's base URL) from background threads."""

    def __init__(self, url: str, write_key: str | None = None, *, batch_size: int = MAX_BATCH,
                 flush_interval: float = 2.0, max_queue: int = 10_000, threads: int = 1, timeout: float = 10.0,
                 max_backoff: float = 30.0, max_attempts: int | None = None, exit_timeout: float = 10.0) -> None:
        if not 0 < batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}")
        if max_queue < batch_size or threads < 1 or flush_interval <= 0 or timeout <= 0 or max_backoff <= 0:
            raise ValueError("max_queue must be at least batch_size; threads, flush_interval, timeout and "
                             "max_backoff must be positive")
        self.url = url.rstrip("/") + "/events"
        self.batch_size, self.flush_interval, self.max_queue = batch_size, flush_interval, max_queue
        self.timeout, self.max_backoff, self.max_attempts = timeout, max_backoff, max_attempts
        self.exit_timeout = exit_timeout
        self._headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                         "User-Agent": "ingest-python-client"}
        if write_key:
            self._headers["Authorization"] = f"Bearer {write_key}"
        self._lock = threading.Condition()
        self._queue: collections.deque[tuple[float, float | None, str]] = collections.deque()
        self._in_flight = 0
        self._flushing = 0       # flush() callers waiting: send partial batches at once
        self._closing = False    # close() called: send what is left, then stop
        self._give_up = threading.Event()  # close() timed out: stop retrying
        self._stats = Stats()
        self._offset = 0.0       # the service's clock minus ours, seconds (from Server-Time)
        self._warned: set[str] = set()
        self._threads = [threading.Thread(target=self._send_loop, name=f"ingest-client-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()
        atexit.register(self._at_exit)

    # --- the caller's side ---------------------------------------------------------------------------------

    def track(self, event_name: str, *, session_id: str, user_id: str | None = None, device_type: str = "other",
              country_code: str | None = None, properties: Mapping[str, Any] | None = None,
              timestamp: datetime | str | None = None) -> bool:
        """Queue one event; False (and a log line) once the client is closed.

        The timestamp defaults to now, by this machine's clock corrected with the service's (Server-Time).
        Without country_code the service fills it in (a trusted proxy header, or ZZ). Raises ValueError or
        TypeError for what can never be sent: an unknown event name, properties that are not a JSON object.
        """
        if event_name not in EVENT_NAMES:
            raise ValueError(f"event_name {event_name!r} is not one the service accepts: {', '.join(EVENT_NAMES)}")
        if properties is not None and not isinstance(properties, Mapping):
            raise TypeError(f"properties must be a mapping, got {type(properties).__name__}")
        event: dict[str, Any] = {"event_name": event_name, "session_id": session_id, "user_id": user_id,
                                 "device_type": device_type}
        if country_code is not None:
            event["country_code"] = country_code
        event["properties"] = dict(properties or {})
        when: float | None = None
        if timestamp is None:
            when = time.time()
        else:
            event = {"timestamp": _rfc3339(timestamp), **event}
        # Written now: later changes to the caller's dicts do not leak in, and what JSON cannot hold (NaN, objects)
        # fails here, not as a whole batch refused by the service.
        text = json.dumps(event, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            if self._closing:
                self._warn_once("closed", "track() after close(): event not sent")
                return False
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self._stats.dropped += 1
                self._warn_once("dropped", f"{self.max_queue:,} events are waiting (is the service down?): "
                                           "dropping the oldest; stats.dropped counts them")
            self._queue.append((time.monotonic(), when, text))
            self._stats.tracked += 1
            if len(self._queue) >= self.batch_size or len(self._queue) == 1:
                self._lock.notify_all()
        return True

    @property
    def pending(self) -> int:
        """Events waiting or being sent."""
        with self._lock:
            return len(self._queue) + self._in_flight

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return dataclasses.replace(self._stats, statuses=dict(self._stats.statuses))

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is queued now and wait until nothing is pending; False if timeout seconds passed first."""
        with self._lock:
            self._flushing += 1
            self._lock.notify_all()
            try:
                return self._lock.wait_for(lambda: not self._queue and not self._in_flight, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what is pending (retrying for up to timeout seconds, None: as long as it takes), then stop.

        True if nothing was left: every event was delivered, refused by the service, or given up after
        max_attempts. Otherwise what was left counts as failed.
        Runs by itself at interpreter exit (with exit_timeout) if not called.
        """
        atexit.unregister(self._at_exit)
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            drained = self._lock.wait_for(lambda: not self._queue and not self._in_flight, timeout)
            if not drained:
                self._give_up.set()
                self._stats.failed += len(self._queue)
                self._queue.clear()
        for thread in self._threads:
            thread.join(self.timeout + 5)  # a request under way ends within its timeout
        with self._lock:
            if self._in_flight:  # still unanswered: counted as failed, whatever the service made of it
                self._stats.failed += self._in_flight
                self._in_flight = 0
            failed = self._stats.failed
        if not drained:
            log.warning("ingest client closed with events undelivered (%d failed in all, %d dropped): %s", failed,
                        self._stats.dropped, self._stats.last_error or "the service did not take them in time")
        return drained

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close(self.exit_timeout)

    def _at_exit(self) -> None:
        self.close(self.exit_timeout)

    # --- the background side -------------------------------------------------------------------------------

    def _due(self) -> bool:
        if not self._queue:
            return False
        return (len(self._queue) >= self.batch_size or self._flushing > 0 or self._closing
                or time.monotonic() - self._queue[0][0] >= self.flush_interval)

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not self._due():
                    if self._closing and not self._queue:
                        return
                    wait = self._queue[0][0] + self.flush_interval - time.monotonic() if self._queue else None
                    self._lock.wait(wait)
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                self._in_flight += len(batch)
            try:
                self._deliver(batch)
            except Exception:  # a bug here must not kill the thread and leave the queue stuck
                log.exception("ingest client: delivering %d events failed", len(batch))
                with self._lock:
                    self._stats.failed += len(batch)
            finally:
                with self._lock:
                    self._in_flight = max(0, self._in_flight - len(batch))
                    self._lock.notify_all()

    def _body(self, batch) -> bytes:
        parts = []
        for _, when, text in batch:
            if when is not None:  # stamped now, in the service's clock as far as we know it
                text = '{"timestamp":"' + _rfc3339(when + self._offset) + '",' + text[1:]
            parts.append(text)
        return gzip.compress(("[" + ",".join(parts) + "]").encode(), compresslevel=6)

    def _deliver(self, batch) -> None:
        # One body and one key for every try: a retry is the same request, so the service stores it at most once
        # (a body stamped again with a newer clock offset would be another request under the same key).
        body, key = self._body(batch), uuid.uuid4().hex
        attempt = 0
        while True:
            attempt += 1
            sent_at = time.time()
            status, headers, answer, error = self._post(body, key)
            with self._lock:
                self._stats.requests += 1
                if attempt > 1:
                    self._stats.retried += len(batch)
                    self._stats.retried_requests += 1
                if status is not None:
                    self._stats.statuses[status] = self._stats.statuses.get(status, 0) + 1
            if headers is not None:
                self._sync(headers.get("Server-Time"), sent_at)
            if status is not None and status < 500 and status not in (409, 429):
                if status == 413 and len(batch) > 1:  # too large for the service: in halves, each on its own
                    half = len(batch) // 2
                    self._deliver(batch[:half])
                    self._deliver(batch[half:])
                    return
                self._answered(status, answer, batch)
                return
            # 503/429/409/5xx or no answer: the same request again, after Retry-After or a backoff.
            reason = error or f"{status} {_text(answer, 'error')}".strip()
            with self._lock:
                self._stats.last_error = reason
            if self.max_attempts is not None and attempt >= self.max_attempts:
                log.warning("ingest client: gave up on %d events after %d attempts (%s)", len(batch), attempt, reason)
                with self._lock:
                    self._stats.failed += len(batch)
                return
            delay = _retry_after(headers.get("Retry-After") if headers is not None else None)
            if delay is None:
                delay = min(self.max_backoff, 0.5 * 2 ** min(attempt - 1, 16)) * random.uniform(0.5, 1.0)
            if status is None:
                self._warn_once("unreachable", f"cannot reach {self.url} ({reason}); retrying")
            if self._give_up.wait(delay):
                with self._lock:
                    self._stats.failed += len(batch)
                return

    def _answered(self, status: int, answer: Any, batch) -> None:
        """A final answer: accepted (maybe in part), or refused; the refusals are logged once per kind."""
        with self._lock:
            if 200 <= status < 300 and not (isinstance(answer, dict) and "accepted" in answer):
                self._stats.accepted += len(batch)  # not this service's answer, but a success
                return
            if isinstance(answer, dict) and "accepted" in answer and status in (202, 400):
                rejected = answer.get("rejected") or []
                self._stats.accepted += int(answer["accepted"])
                self._stats.rejected += len(rejected)
                self._warned_rejections(rejected, batch)
                return
            self._stats.refused += len(batch)
            self._stats.last_refusal = (status, _text(answer, "error"), _text(answer, "message"))
        self._warn_once(f"refused {status}", f"the service refused {len(batch)} event(s) with {status} "
                                              f"{_text(answer, 'error')}: {_text(answer, 'message')}")

    def _warned_rejections(self, rejected: list, batch) -> None:
        for item in rejected:
            errors = "; ".join(f"{e.get('path') or '/'}: {e.get('message')}" for e in item.get("errors", []))
            index = item.get("index")
            name = json.loads(batch[index][2]).get("event_name") if isinstance(index, int) and index < len(batch) \
                else "an"
            self._warn_once(f"rejected {name} {errors}", f"the service refused a {name} event: {errors}")

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned or len(self._warned) > 1000:
            return
        self._warned.add(key)
        log.warning("ingest client: %s", message)

    def _sync(self, server_time: str | None, sent_at: float) -> None:
        try:
            server = int(server_time) / 1000 if server_time else None
        except ValueError:
            return
        if server:
            self._offset = server - (sent_at + time.time()) / 2

    def _post(self, body: bytes, key: str):
        """(status, headers, answer JSON or None, network error or None)."""
        request = urllib.request.Request(self.url, data=body, headers={**self._headers, "Idempotency-Key": key},
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers, _json(response.read()), None
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    raw = exc.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
                return exc.code, exc.headers, _json(raw), None
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, timeouts, resets
            return None, None, None, str(getattr(exc, "reason", None) or exc) or type(exc).__name__


def _rfc3339(value: datetime | str | float) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware (e.g. datetime.now(timezone.utc))")
        value = value.timestamp()
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER)) if seconds == seconds else None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _text(answer: Any, key: str) -> str:
    return str(answer.get(key) or "") if isinstance(answer, dict) else ""
