"""What the ClickHouse client's libraries log while our client works, kept out of the service's log.

urllib3 warns at every retry of a connection and clickhouse-connect at every failed request ("Unexpected Http Driver
Exception"): beside the service's own line, said once per cause, that is two more lines per retry while ClickHouse is
down. Only records made in a thread while it runs one of our client's calls are held back, so the same libraries used
elsewhere in the process (or by a user's code) log as they always do.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Iterator

_state = threading.local()


@contextmanager
def client_call() -> Iterator[None]:
    """Mark the current thread as running one of our ClickHouse client's calls (nestable)."""
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


class ClientChatter(logging.Filter):
    """A handler filter that drops other libraries' records below ERROR made during our client's calls.

    With the service's log at DEBUG they pass: then every retry is wanted.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or not getattr(_state, "depth", 0) or record.name.startswith("ingest"):
            return True
        return logging.getLogger("ingest").isEnabledFor(logging.DEBUG)
