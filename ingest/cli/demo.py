"""`python -m ingest demo`: realistic demo traffic sent to a running service (ingest.demo), its options from argv."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys

from .. import demo as traffic
from ..demo import (
    BASE_ERROR_RATE,
    INCIDENT_VERIFY,
    MAX_BATCH,
    P_VERIFY,
    SPIKE_ERROR_RATE,
    ErrorSpike,
    Report,
    VerificationIncident,
)


def _number(kind, low: float, high: float | None = None):
    """An argparse type: a number of `kind` in [low, high], with a message that says so."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or value < low or (high is not None and value > high):
            bounds = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text!r}: must be a{'n integer' if kind is int else ' number'} "
                                             f"{bounds}")
        return value
    return parse


def _base_url(text: str) -> str:
    """An argparse type: the service's base URL (scheme and host; not the /events endpoint)."""
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r}: give the service's base URL with its scheme, e.g. "
                                         "http://127.0.0.1:3001")
    if parts.path.rstrip("/").endswith("/events"):
        raise argparse.ArgumentTypeError(f"{text!r}: give the service's base URL without /events, e.g. "
                                         f"{parts.scheme}://{parts.netloc}")
    return text.rstrip("/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", type=_base_url, default="http://127.0.0.1:3001",
                        help="the ingest service's base URL")
    parser.add_argument("--rate", type=_number(float, 0.001), default=200.0, help="events per second")
    parser.add_argument("--duration", type=_number(float, 0.001), default=None,
                        help="seconds to run (none: until Ctrl-C)")
    parser.add_argument("--error-spike", type=ErrorSpike.parse, default=None, metavar="START:DURATION[:RATE]",
                        help=f"errors at RATE (default {SPIKE_ERROR_RATE}) instead of {BASE_ERROR_RATE} from "
                             "second START for DURATION seconds, e.g. 30:60")
    parser.add_argument("--verification-incident", type=VerificationIncident.parse, default=None,
                        metavar="START:DURATION[:DOMAIN]",
                        help="from second START for DURATION seconds, most sign-ups with an address at DOMAIN "
                             f"(default gmail.com) stop at email verification ({INCIDENT_VERIFY:.0%}% verified "
                             f"instead of {P_VERIFY:.0%}%), then recover: the founding scene, e.g. 300:600")
    parser.add_argument("--batch", type=_number(int, 1, MAX_BATCH), default=MAX_BATCH,
                        help=f"most events per request (1..{MAX_BATCH})")
    parser.add_argument("--concurrency", type=_number(int, 1, 1000), default=16, help="most requests in flight")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable event stream")


def _reachable(url: str) -> str | None:
    """None if a service answers GET /health at url (whatever its health), else why not."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code == 503 else f"GET {url}/health answered {exc.code}: is this an ingest service?"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"no ingest service answers at {url} ({reason}): start one with `python -m ingest serve`, or " \
               "pass --url"


def run(args: argparse.Namespace) -> int:
    """Run until the duration ends or Ctrl-C, print the report; 0 if every event was delivered."""
    if importlib.util.find_spec("ingest_client") is None:
        print("ingest demo: the demo sends through the Python client, which is not installed: "
              "pip install ./clients/python", file=sys.stderr)
        return 1
    problem = _reachable(args.url)
    if problem:
        print(f"ingest demo: {problem}", file=sys.stderr)
        return 1
    tty = sys.stderr.isatty()
    shown = {"at": 0.0}

    def progress(report: Report, elapsed: float) -> None:
        # On a terminal one line that updates; in a log, a line every 10 s.
        if tty:
            print("\r" + report.progress(elapsed), end="", file=sys.stderr, flush=True)
        elif elapsed - shown["at"] >= 10:
            shown["at"] = elapsed
            print(report.progress(elapsed), file=sys.stderr, flush=True)

    async def go() -> Report:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await traffic.run(args.url, args.rate, args.duration, args.error_spike, args.seed, args.batch,
                                 args.concurrency, stop=stop, progress=progress,
                                 incident=args.verification_incident)

    report = asyncio.run(go())
    if tty:
        print(file=sys.stderr)
    print(report.table())
    if report.fatal:
        print(f"ingest demo: stopped early: {report.fatal}", file=sys.stderr)
        return 1
    return 0 if report.failed == 0 else 1
