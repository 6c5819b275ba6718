"""Request bodies the benchmarks send: realistic events from the demo generator, stamped now."""

from __future__ import annotations

import random
import time

import _path  # noqa: F401 - the repository root on sys.path, for `ingest`
import orjson

from ingest.demo import MAX_BATCH, Traffic, rfc3339


def demo_body(n: int = MAX_BATCH, seed: int = 1) -> bytes:
    """A valid request body of n realistic events stamped now (valid for the next hour)."""
    return orjson.dumps(Traffic(random.Random(seed)).events(n, rfc3339(time.time())))
