"""Open connections, held to a limit below the open-files limit, so slow clients cannot take the service down.

Every accepted connection is tracked (an asyncio protocol wrapped around the HTTP server's), in one of four states:
idle (between requests), head (a request's first bytes arrived, its headers have not), body (its body is being read)
and busy (being answered). The first three are "slow" states: each has a deadline (keep-alive, header and body
timeouts), and at the limit the connection that has been slow the longest is closed to let the new one in. So a
flood of stalled connections costs the service its oldest stalled connection per new arrival, never its /health
or the clients that send a request and wait for the answer. Knows sockets and timers, not HTTP.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from typing import Callable

log = logging.getLogger(__name__)

IDLE, HEAD, BODY, BUSY = "idle", "head", "body", "busy"
# asyncio's words when accept() fails for want of file descriptors (it then pauses accepting for a second).
ACCEPT_FAILED = "socket.accept() out of system resource"
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# Running out is over once no accept has failed for this long (asyncio retries a failed accept after a second).
ACCEPT_CALM_SECONDS = 5.0


# Connections asyncio accepts at once before any is counted (the listen backlog): they need files beyond the limit.
LISTEN_BACKLOG = 128

class _Tracked(asyncio.Protocol):
    """One connection: forwards every protocol call to the HTTP server's protocol, and tells Connections its state."""

    __slots__ = ("inner", "owner", "transport", "state", "timer", "expire", "made", "answered")

    def __init__(self, inner: asyncio.Protocol, owner: "Connections") -> None:
        self.inner, self.owner = inner, owner
        self.transport: asyncio.Transport | None = None
        self.state = IDLE
        self.timer: asyncio.TimerHandle | None = None
        self.expire: Callable[[], None] | None = None
        self.made = False
        self.answered = False  # it has had a request answered (idle then means keep-alive, not a silent client)

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.owner._admit(self):
            self.made = True
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.state is IDLE:
            self.owner._head_started(self)
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc) -> None:
        self.owner._lost(self)
        if self.made:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class Connections:
    """The service's open connections: a limit, deadlines for slow requests, and who gives way when it is reached.

    `refused(reason)` is called for every slow client refused: "header_timeout", or "evicted" (closed before its
    request was answered, to let a new connection in; a keep-alive connection between requests is closed for room
    uncounted); body timeouts are counted where the body is read.
    `turned_away()` is called for a new connection closed at once because every open one was being answered.
    """

    def __init__(self, limit: int, header_timeout: float, refused: Callable[[str], None],
                 turned_away: Callable[[], None], burst: int = 128) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.burst = burst  # sockets asyncio may accept at once before any is counted here (the listen backlog)
        self._refused, self._turned_away = refused, turned_away
        self._open: dict[asyncio.BaseTransport, _Tracked] = {}
        self._slow: dict[_Tracked, None] = {}  # the evictable connections, longest slow first (dicts keep order)
        self._at_limit = False  # one log line per episode, not one per connection
        self._closed_at_limit = 0
        self._accept_failures = 0
        self._last_accept_failure = 0.0

    def __len__(self) -> int:
        return len(self._open)

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A factory for loop.create_server that tracks each connection of the protocols `make` builds."""
        return lambda: _Tracked(make(), self)

    # --- what the HTTP layer says about a connection (untracked transports, e.g. in-process tests, are ignored) ---

    def busy(self, transport) -> None:
        """A request's headers arrived and it is being answered: not slow, never closed to make room."""
        conn = self._open.get(transport)
        if conn is not None:
            self._set(conn, BUSY)

    def receiving(self, transport, expire: Callable[[], None]) -> None:
        """The request's body is being read; to close it for room, `expire()` is called (it answers and closes)."""
        conn = self._open.get(transport)
        if conn is not None:
            self._set(conn, BODY)
            conn.expire = expire

    def idle(self, transport) -> None:
        """The request was answered; the connection waits for the next one (the keep-alive timeout runs)."""
        conn = self._open.get(transport)
        if conn is not None:
            self._set(conn, IDLE)
            conn.answered = True

    # --- bookkeeping ---

    def _set(self, conn: _Tracked, state: str) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.expire = None
        conn.state = state
        self._slow.pop(conn, None)
        if state is not BUSY:
            self._slow[conn] = None  # at the end: slow the shortest

    def _head_started(self, conn: _Tracked) -> None:
        # The first bytes of a request after an idle spell: its headers must follow within the header timeout.
        # It keeps its place in the eviction order (sending a byte does not make a stalled client any younger).
        conn.state = HEAD
        conn.timer = asyncio.get_running_loop().call_later(self.header_timeout, self._header_timed_out, conn)

    def _header_timed_out(self, conn: _Tracked) -> None:
        conn.timer = None
        if conn.state is HEAD and conn.transport is not None and not conn.transport.is_closing():
            self._refused("header_timeout")
            conn.transport.close()

    def _admit(self, conn: _Tracked) -> bool:
        """Called as a connection is made: make room if the limit is reached, or refuse it if nothing can give way."""
        transport = conn.transport
        assert transport is not None
        if self._accept_failures and time.monotonic() - self._last_accept_failure > ACCEPT_CALM_SECONDS:
            log.info("accepting connections again (%d accept(s) had failed for want of open files); "
                     "connection limit now %d", self._accept_failures, self.limit)
            self._accept_failures = 0
        if len(self._open) >= self.limit:
            if not self._at_limit:
                self._at_limit = True
                log.warning("connection limit reached (%d open): closing the connection slow the longest for each "
                            "new one (counted in ingest_slow_clients_refused_total); logged once until it clears",
                            len(self._open))
            if not self._evict_oldest():
                # Every connection is being answered: the service is saturated, not attacked. Refuse the newcomer.
                self._turned_away()
                transport.close()
                return False
        self._open[transport] = conn
        self._slow[conn] = None
        return True

    def _evict_oldest(self) -> bool:
        while self._slow:
            conn = next(iter(self._slow))
            del self._slow[conn]
            if conn.transport is None or conn.transport.is_closing():
                continue
            self._closed_at_limit += 1
            if conn.state is BODY and conn.expire is not None:
                self._refused("evicted")
                conn.expire()  # answers 408 and closes, as a body timeout does
            else:
                if conn.state is HEAD or not conn.answered:  # still on its first request (maybe silent so far)
                    self._refused("evicted")
                conn.transport.close()  # a keep-alive connection between requests: the client reconnects
            return True
        return False

    def _lost(self, conn: _Tracked) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.expire = None
        self._slow.pop(conn, None)
        if conn.transport is not None and self._open.get(conn.transport) is conn:
            del self._open[conn.transport]
        conn.transport = None
        if self._at_limit and len(self._open) < self.limit * 0.9:
            self._at_limit = False
            log.info("connections below the limit again (%d open); %d closed to make room meanwhile",
                     len(self._open), self._closed_at_limit)
            self._closed_at_limit = 0

    def accept_failed(self, exc: BaseException | None) -> bool:
        """asyncio could not accept a connection for want of files (it retries in a second): make room.

        The limit was too high for the files the process really has (the storage engine opened more than was kept
        for it): lower it below the connections open now, by a burst of accepts (or by half, if fewer are open),
        and close the slowest beyond that, so new connections are let in again one for one. Logged once, not once
        per failed accept, until accepts have worked for ACCEPT_CALM_SECONDS. True if it was that failure (the
        loop's exception handler then stays quiet about it).
        """
        if not isinstance(exc, OSError) or exc.errno not in _OUT_OF_FILES:
            return False
        self._last_accept_failure = time.monotonic()
        before, open_now = self.limit, len(self._open)
        self.limit = max(1, min(self.limit, max(open_now // 2, open_now - self.burst)))
        if not self._accept_failures:
            log.error("cannot accept connections: %s (open-files limit %s, %d connections open); connection limit "
                      "lowered from %d to %d until restart, the slowest connections closed; logged once until "
                      "accepting works again", exc.strerror, open_files_limit(), len(self._open), before, self.limit)
        self._accept_failures += 1
        for _ in range(len(self._open) - self.limit):
            if not self._evict_oldest():
                break
        return True


def open_files_limit() -> int | None:
    """This process's soft limit on open files (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def open_files() -> int:
    """File descriptors this process holds now."""
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path)) - 1  # listing a directory opens one
        except OSError:
            continue
    return 0


def connection_limit(wanted: int, backlog: int) -> int:
    """How many connections may be open at once: `wanted`, or fewer if the open-files limit is lower.

    Raises the soft open-files limit towards the hard one first (as Go's runtime does). The files open now (the
    storage engine, the log), two listen backlogs and a margin for files opened later stay outside the connections'
    share: asyncio accepts up to a backlog of sockets at a time before any is counted, and a connection closed for
    room while its body is read keeps its socket until its handler has answered, by when the next batch may be in.
    """
    reserve = open_files() + 2 * backlog + 128
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    now_soft = open_files_limit()
    if now_soft is None or now_soft >= need:
        return wanted
    limit = max(1, now_soft - reserve)
    log.warning("open-files limit %d leaves room for %d connections, not INGEST_MAX_CONNECTIONS=%d; raise it "
                "(ulimit -n, or compose's ulimits.nofile) to allow more", now_soft, limit, wanted)
    return limit
