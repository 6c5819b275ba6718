"""Demo traffic: realistic product events (sessions, the signup funnel with email verification, Zipf features,
errors) POSTed at a steady rate; optionally an error spike or a verification incident, to watch on the dashboard."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from bisect import bisect
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from .contract.events import MAX_EVENTS_PER_REQUEST as MAX_BATCH

if TYPE_CHECKING:
    from ingest_client import Stats

# Feature names in popularity order: rank k is used with weight 1/k**ZIPF_EXPONENT.
FEATURES = (
    "dashboard", "search", "export", "share", "filters", "comments", "notifications", "invite_team",
    "csv_import", "api_keys", "dark_mode", "templates", "calendar", "reports", "integrations_slack",
    "tags", "bulk_edit", "audit_log", "webhooks", "sso", "custom_fields", "automation", "pdf_export",
    "two_factor", "billing_portal",
)
ZIPF_EXPONENT = 1.1
_FEATURE_CUM = list(accumulate(1 / k ** ZIPF_EXPONENT for k in range(1, len(FEATURES) + 1)))

_DEVICES = (("desktop", 55), ("mobile", 35), ("tablet", 7), ("other", 3))
_COUNTRIES = (("US", 28), ("DE", 10), ("GB", 8), ("IN", 8), ("FR", 6), ("BR", 5), ("CA", 4), ("JP", 4),
              ("NL", 3), ("ES", 3), ("IT", 3), ("AU", 3), ("PL", 2), ("SE", 2), ("MX", 2), ("KR", 2),
              ("CH", 1), ("AT", 1), ("NG", 1), ("ZA", 1), ("ZZ", 1))
_DEVICE_CUM = list(accumulate(w for _, w in _DEVICES))
_COUNTRY_CUM = list(accumulate(w for _, w in _COUNTRIES))
_PATHS = ("/", "/pricing", "/features", "/blog", "/docs", "/about", "/changelog")
_ERRORS = (("TypeError", "undefined is not a function"), ("NetworkError", "request timed out"),
           ("HTTP500", "internal server error"), ("ChunkLoadError", "loading chunk failed"))

# Funnel drop-off for anonymous visitors: the chance to go on to the next step.
P_CLICK = 0.45        # page_view -> button_click (the signup call to action)
P_START = 0.55        # button_click -> signup_started
P_VERIFY = 0.8        # signup_started -> email_verified (the link in the verification email was followed)
P_COMPLETE = 0.75     # email_verified -> signup_completed
# The verification rate of the incident's domain while it lasts: most of its verification emails go to spam.
INCIDENT_VERIFY = 0.1
# The domains of the addresses visitors sign up with (the founding scene's breakdown: properties.email_domain).
_EMAIL_DOMAINS = (("gmail.com", 45), ("outlook.com", 12), ("yahoo.com", 8), ("icloud.com", 6), ("hotmail.com", 5),
                  ("proton.me", 3), ("gmx.de", 3), ("web.de", 2), ("acme.io", 2), ("example.org", 2),
                  ("fastmail.com", 1), ("hey.com", 1), ("aol.com", 1), ("mail.ru", 1), ("yandex.ru", 1))
_EMAIL_DOMAIN_CUM = list(accumulate(w for _, w in _EMAIL_DOMAINS))
ANONYMOUS_SHARE = 0.6  # sessions that start without a user_id
BASE_ERROR_RATE = 0.005
SPIKE_ERROR_RATE = 0.08


def _pick(rng: random.Random, table, cum) -> str:
    return table[bisect(cum, rng.random() * cum[-1])][0]


def feature(rng: random.Random) -> str:
    """A feature name, Zipf-distributed over FEATURES (a few features get most of the use)."""
    return FEATURES[bisect(_FEATURE_CUM, rng.random() * _FEATURE_CUM[-1])]


@dataclass
class Session:
    """One visit: its fixed attributes and the events it will still send, in order."""

    session_id: str
    user_id: str | None
    device_type: str
    country_code: str
    steps: list[tuple[str, dict[str, Any], str | None]]  # (event_name, properties, user_id from then on)


def plan_session(rng: random.Random, failing_domain: str | None = None) -> Session:
    """A visit's whole script: anonymous visitors walk the signup funnel with drop-off, known users use features.

    While `failing_domain` is set (a verification incident), sign-ups with an address there rarely get verified.
    """
    session_id = f"s-{rng.getrandbits(64):016x}"
    anonymous = rng.random() < ANONYMOUS_SHARE
    user_id = None if anonymous else f"u-{rng.randrange(1, 20000)}"
    steps: list[tuple[str, dict[str, Any], str | None]] = []
    for _ in range(1 + min(int(rng.expovariate(0.7)), 6)):  # a landing page and a few more views
        steps.append(("page_view", {"path": rng.choice(_PATHS)}, user_id))
    if anonymous:
        if rng.random() < P_CLICK:
            steps.append(("button_click", {"button": "signup_cta"}, None))
            if rng.random() < P_START:
                domain = _pick(rng, _EMAIL_DOMAINS, _EMAIL_DOMAIN_CUM)
                steps.append(("signup_started", {"plan": rng.choice(("free", "free", "pro", "team")),
                                                 "email_domain": domain}, None))
                verify = INCIDENT_VERIFY if domain == failing_domain else P_VERIFY
                if rng.random() < verify:
                    steps.append(("email_verified", {"email_domain": domain}, None))
                    if rng.random() < P_COMPLETE:
                        # The visitor has an account from here on: later events carry the new user_id.
                        user_id = f"u-{rng.randrange(20000, 10**9)}"
                        steps.append(("signup_completed", {"method": rng.choice(("email", "google", "github"))},
                                      user_id))
                        for _ in range(rng.randrange(0, 3)):
                            steps.append(("feature_used", {"feature": feature(rng)}, user_id))
    else:
        for _ in range(1 + min(int(rng.expovariate(0.35)), 15)):
            if rng.random() < 0.25:
                steps.append(("button_click", {"button": rng.choice(("save", "new_item", "settings"))}, user_id))
            steps.append(("feature_used", {"feature": feature(rng), "duration_ms": rng.randrange(50, 30000)},
                          user_id))
    return Session(session_id, None if anonymous else user_id, _pick(rng, _DEVICES, _DEVICE_CUM),
                   _pick(rng, _COUNTRIES, _COUNTRY_CUM), steps)


@dataclass(frozen=True)
class ErrorSpike:
    """From `start` seconds into the run, for `duration` seconds, errors occur at `rate` instead of the base rate."""

    start: float
    duration: float
    rate: float = SPIKE_ERROR_RATE

    @classmethod
    def parse(cls, text: str) -> "ErrorSpike":
        """START:DURATION[:RATE], e.g. 30:60 or 30:60:0.2 (argparse shows the message of a bad one)."""
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            start, duration = float(parts[0]), float(parts[1])
            rate = float(parts[2]) if len(parts) == 3 else SPIKE_ERROR_RATE
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected START:DURATION[:RATE] in seconds, e.g. 30:60 "
                                             "or 30:60:0.2") from None
        if start < 0 or duration <= 0 or not 0 <= rate <= 1:
            raise argparse.ArgumentTypeError(f"{text!r}: START >= 0, DURATION > 0 and 0 <= RATE <= 1")
        return cls(start, duration, rate)


@dataclass
class VerificationIncident:
    """From `start` seconds into the run, for `duration` seconds, sign-ups with an address at `domain` mostly stop
    at email verification (its emails land in spam); then they recover. The founding scene (docs/dashboards.md)."""

    start: float
    duration: float
    domain: str = "gmail.com"

    @classmethod
    def parse(cls, text: str) -> "VerificationIncident":
        """START:DURATION[:DOMAIN], e.g. 300:600 or 300:600:outlook.com."""
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            start, duration = float(parts[0]), float(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected START:DURATION[:DOMAIN] in seconds, e.g. 300:600 "
                                             "or 300:600:outlook.com") from None
        domain = parts[2] if len(parts) == 3 else cls.domain
        if start < 0 or duration <= 0 or not domain:
            raise argparse.ArgumentTypeError(f"{text!r}: START >= 0, DURATION > 0 and a DOMAIN")
        return cls(start, duration, domain)

    def failing_domain(self, elapsed: float) -> str | None:
        """The domain whose verification fails at this point of the run, if the incident is on."""
        return self.domain if self.start <= elapsed < self.start + self.duration else None


def error_rate_at(elapsed: float, spike: ErrorSpike | None, base: float = BASE_ERROR_RATE) -> float:
    """The share of error_occurred events at this point of the run."""
    if spike is not None and spike.start <= elapsed < spike.start + spike.duration:
        return spike.rate
    return base


def rfc3339(ts: float) -> str:
    """Unix time as RFC 3339 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Traffic:
    """An endless stream of events from many concurrent sessions, interleaved as real traffic is."""

    def __init__(self, rng: random.Random, concurrent_sessions: int = 200) -> None:
        self.rng = rng
        self._sessions = [plan_session(rng) for _ in range(concurrent_sessions)]
        self._cursor = [0] * concurrent_sessions

    def events(self, n: int, timestamp: str, error_rate: float = BASE_ERROR_RATE,
               failing_domain: str | None = None) -> list[dict[str, Any]]:
        """The next n events, all stamped `timestamp`; each is an error with probability error_rate. Visits that
        begin now plan their sign-up with `failing_domain`'s verification failing (see VerificationIncident)."""
        rng, sessions, cursor = self.rng, self._sessions, self._cursor
        out = []
        for _ in range(n):
            slot = rng.randrange(len(sessions))
            s = sessions[slot]
            if rng.random() < error_rate:
                # Errors happen anywhere in a visit and do not move it along.
                kind, message = rng.choice(_ERRORS)
                name, props, user_id = "error_occurred", {"error": kind, "message": message}, s.user_id
            else:
                name, props, user_id = s.steps[cursor[slot]]
                s.user_id = user_id
                cursor[slot] += 1
                if cursor[slot] == len(s.steps):  # visit over: a new one takes its place
                    sessions[slot], cursor[slot] = plan_session(rng, failing_domain), 0
            out.append({"event_name": name, "timestamp": timestamp, "session_id": s.session_id,
                        "user_id": user_id, "device_type": s.device_type, "country_code": s.country_code,
                        "properties": props})
        return out


@dataclass
class Report:
    """What the run sent and what the service made of it (counts of events unless named requests)."""

    sent: int = 0            # distinct events generated and POSTed (a resend is not counted again)
    accepted: int = 0
    rejected: int = 0        # refused by validation, or in a request refused whole (4xx)
    retried: int = 0         # event resends after 503 or a connection error
    failed: int = 0          # events given up on (retries exhausted, or unanswered at the end)
    requests: int = 0
    retried_requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors_sent: int = 0
    elapsed: float = 0.0
    fatal: str | None = None  # why the run stopped early: every further request would fail the same way

    def progress(self, elapsed: float) -> str:
        rate = self.sent / elapsed if elapsed else 0.0
        return (f"{elapsed:6.0f} s  sent {self.sent:,}  accepted {self.accepted:,}  rejected {self.rejected:,}  "
                f"{rate:,.0f} events/s")

    def table(self) -> str:
        rate = self.sent / self.elapsed if self.elapsed else 0.0
        rows = [("sent", self.sent), ("accepted", self.accepted), ("rejected", self.rejected),
                ("retried (resends)", self.retried), ("failed (given up)", self.failed),
                ("error_occurred sent", self.errors_sent), ("requests", self.requests),
                ("requests retried", self.retried_requests)]
        lines = [f"{name:<22}{value:>12,}" for name, value in rows]
        lines.append(f"{'elapsed s':<22}{self.elapsed:>12.1f}")
        lines.append(f"{'events/s sent':<22}{rate:>12,.0f}")
        lines.append("HTTP statuses         " + ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items())))
        return "\n".join(lines)


# Answers every later request would get too: the run stops at the first, and says why.
_FATAL_STATUSES = {401: " (pass the write key: this demo sends none)", 403: "", 404: " (is --url the service's base "
                   "URL, without /events?)", 405: "", 413: " (try a smaller --batch)", 415: ""}


def _tally(report: Report, stats: Stats, url: str, max_attempts: int) -> None:
    """Copy what the client did into the report, and say why the run must stop if it must."""
    report.accepted, report.retried = stats.accepted, stats.retried
    report.rejected = stats.rejected + stats.refused  # refused one by one, or in a request refused whole (4xx)
    report.failed = stats.failed + stats.dropped
    report.requests, report.retried_requests = stats.requests, stats.retried_requests
    report.statuses = dict(stats.statuses)
    if report.fatal is None and stats.last_refusal is not None and stats.last_refusal[0] in _FATAL_STATUSES:
        status, _, message = stats.last_refusal
        report.fatal = f"the service answered {status} to POST {url}" + (f": {message}" if message else "") \
            + _FATAL_STATUSES[status]
    if report.fatal is None and stats.failed:
        report.fatal = (f"gave up on {stats.failed:,} events after up to {max_attempts} attempts each "
                        f"({stats.last_error or 'no answer'})")


async def run(url: str, rate: float, duration: float | None = None, spike: ErrorSpike | None = None,
              seed: int | None = None, batch_max: int = MAX_BATCH, concurrency: int = 16,
              max_attempts: int = 8, drain_seconds: float = 30.0,
              stop: asyncio.Event | None = None, progress=None,
              incident: VerificationIncident | None = None) -> Report:
    """Send `rate` events/s to `url` (the service's base URL) for `duration` seconds, or until `stop` is set.

    The events go through ingest_client (clients/python): `concurrency` sender threads, batches of up to
    `batch_max`, each resent after a 503/429 (Retry-After) or a network error, up to `max_attempts` times.
    """
    if not 0 < batch_max <= MAX_BATCH:
        raise ValueError(f"batch size must be 1..{MAX_BATCH}")
    traffic = Traffic(random.Random(seed))
    report = Report()
    stop = stop or asyncio.Event()
    # Small batches at low rates keep the dashboard live; at high rates full batches keep requests few.
    tick = min(0.25, max(0.01, batch_max / rate))
    # Events waiting or in flight at most: beyond, the generator waits (a slow service slows it down, and the
    # client's queue, twice as large, never has to drop any).
    window = concurrency * batch_max
    from ingest_client import Client  # the demo is a user of the service like any other: it sends through the client

    client = Client(url, batch_size=batch_max, flush_interval=tick, max_queue=2 * window, threads=concurrency,
                    timeout=30, max_backoff=10, max_attempts=max_attempts, exit_timeout=0)
    events_url = client.url
    try:
        started = time.monotonic()
        while not stop.is_set():
            elapsed = time.monotonic() - started
            finished = duration is not None and elapsed >= duration
            due = int(rate * (min(elapsed, duration) if duration is not None else elapsed)) - report.sent
            stamp, error_rate = rfc3339(time.time()), error_rate_at(elapsed, spike)
            while due > 0 and not stop.is_set() and not report.fatal:
                while client.pending >= window and not stop.is_set():  # back-pressure
                    await asyncio.sleep(0.005)
                    _tally(report, client.stats, events_url, max_attempts)
                failing = incident.failing_domain(elapsed) if incident is not None else None
                batch = traffic.events(min(due, batch_max), stamp, error_rate, failing)
                due -= len(batch)
                report.sent += len(batch)
                report.errors_sent += sum(e["event_name"] == "error_occurred" for e in batch)
                for event in batch:
                    client.track(**event)
            _tally(report, client.stats, events_url, max_attempts)
            if finished or report.fatal:
                break
            if progress is not None:
                progress(report, time.monotonic() - started)
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except asyncio.TimeoutError:
                pass
        report.elapsed = time.monotonic() - started
        # What is still pending gets drain_seconds, then 5 s more, and is given up (counted as failed). After an
        # answer every request would get, nothing more is sent.
        if not report.fatal:
            await asyncio.to_thread(client.flush, drain_seconds)
    finally:
        await asyncio.to_thread(client.close, 0 if report.fatal else 5)
    _tally(report, client.stats, events_url, max_attempts)
    return report
