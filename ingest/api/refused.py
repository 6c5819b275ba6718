"""Refused requests (4xx) in the log: each cause once, then at most one line a minute with how many more came."""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("ingest.refused")

# A cause is (route, status, error code): a bounded set (routes and codes are ours). Bounded anyway, for safety.
MAX_CAUSES = 1024


class RefusedRequests:
    """Logs refused requests at INFO: the first of each cause at once, then one summary line per cause and interval.

    A flood of bad requests (a broken client, a scanner) costs a line a minute per cause, not a line per request, and
    a client's mistake is still seen where its operator looks. What is logged: method, path (never the query string,
    which may hold a write key), status, error code, the answer's message (never the body) and the client's address.
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self._clock = interval, clock
        self._causes: dict[tuple[str, int, str], list] = {}  # cause -> [window start, refusals since it]

    def note(self, method: str, path: str, route: str, status: int, code: str, message: str, remote: str) -> None:
        """Count one refused request, logging it if its cause is new or its interval has passed."""
        cause = (route, status, code)
        now = self._clock()
        window = self._causes.get(cause)
        if window is not None and now - window[0] < self.interval:
            window[1] += 1  # a flood's common case: counted, nothing formatted
            return
        where = f"{method[:16]} {path[:100]!r}: {status} {code[:40]} ({message[:300]}) from {remote}"
        if window is None:
            if len(self._causes) >= MAX_CAUSES:
                self._causes.clear()
            log.info("refused %s; more of this kind are counted, one line a minute at most", where)
        else:
            log.info("refused %d more like this in the last %.0f s, the latest %s", window[1] + 1, now - window[0],
                     where)
        self._causes[cause] = [now, 0]
