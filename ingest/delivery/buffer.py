"""The in-memory event buffer: bounded, oldest first, handing out one batch at a time."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..contract.events import Row


class BufferFull(Exception):
    """Accepting these events would exceed the buffer's cap; the client should retry later."""


@dataclass
class Batch:
    """Rows handed to storage together, with the write-ahead-log range they came from (if any).

    Its token names it in every insert's deduplication token (and so in the rows stored): a repeat of the same
    insert is a no-op on the server, and after a crash the batch's rows can be looked for.
    """

    rows: list[Row]
    first_lsn: int | None = None
    last_lsn: int | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0
    # ClickHouse refused every row tried and stored none: the next attempt takes the rows waiting behind it too.
    held: bool = False
    # The engine may have restarted since an insert of this batch began (the service crashed, or the server
    # restarted): its deduplication record cannot be trusted, so storage is checked for the rows before any is sent.
    verify: bool = False
    # time.time() when the first insert of it began: a server whose uptime is shorter restarted since.
    started_at: float | None = None


class Buffer:
    """Events waiting for storage. A failed batch stays in flight, and is offered again, until stored."""

    def __init__(self, max_events: int, flush_events: int, flush_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_events = max_events
        self.flush_events = flush_events
        self.flush_interval = flush_interval
        self._clock = clock
        self._waiting: list[Row] = []
        self._first_lsn: int | None = None
        self._last_lsn: int | None = None
        self._oldest_at: float | None = None
        self._reserved = 0
        self.in_flight: Batch | None = None

    def __len__(self) -> int:
        return len(self._waiting) + (len(self.in_flight.rows) if self.in_flight else 0)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return len(self) + self._reserved >= self.max_events

    def reserve(self, n: int) -> None:
        """Hold room for n rows that are still being written to the log; raises BufferFull."""
        if len(self) + self._reserved + n > self.max_events:
            raise BufferFull(f"buffer holds {len(self) + self._reserved} of {self.max_events} events")
        self._reserved += n

    def release(self, n: int) -> None:
        """Give back a reservation whose rows will not come (the log write failed)."""
        self._reserved -= n

    def add(self, rows: Sequence[Row], lsn: int | None = None, *, reserved: bool = False,
            bounded: bool = True) -> None:
        """Queue rows, all or none: raises BufferFull unless their room was reserved (or, for replay, unbounded)."""
        if bounded and not reserved:
            self.reserve(len(rows))
            reserved = True
        if reserved:
            self._reserved -= len(rows)
        if rows and not self._waiting:
            self._oldest_at = self._clock()
        self._waiting.extend(rows)
        if lsn is not None:
            if self._first_lsn is None:
                self._first_lsn = lsn
            self._last_lsn = lsn

    def restore(self, batch: Batch) -> None:
        """Put back a batch that must go first, unchanged (an insert interrupted by a crash)."""
        assert self.in_flight is None
        self.in_flight = batch

    def seconds_until_due(self) -> float | None:
        """0 when a batch should go now, the wait otherwise, None when nothing is waiting."""
        if self.in_flight is not None or len(self._waiting) >= self.flush_events:
            return 0.0
        if not self._waiting:
            return None
        assert self._oldest_at is not None
        return max(0.0, self._oldest_at + self.flush_interval - self._clock())

    def take(self) -> Batch | None:
        """The batch to insert next: the unfinished one, else everything waiting (batches grow under load)."""
        if self.in_flight is None and self._waiting:
            self.in_flight = Batch(self._waiting, self._first_lsn, self._last_lsn)
            self._waiting = []
            self._first_lsn = self._last_lsn = None
            self._oldest_at = None
        return self.in_flight

    def absorb_waiting(self) -> Batch:
        """Fold the rows waiting behind the batch in flight into it, as a new batch (a new token: none of the old
        one was stored). Their log range follows on from its own, so the batch still covers one range."""
        held = self.in_flight
        assert held is not None
        if not self._waiting:
            return held
        first = held.first_lsn if held.first_lsn is not None else self._first_lsn
        last = self._last_lsn if self._last_lsn is not None else held.last_lsn
        self.in_flight = Batch(held.rows + self._waiting, first, last)
        self._waiting = []
        self._first_lsn = self._last_lsn = None
        self._oldest_at = None
        return self.in_flight

    def done(self, batch: Batch) -> None:
        """Storage has the batch: forget it."""
        if self.in_flight is batch:
            self.in_flight = None
