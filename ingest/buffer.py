"""The in-memory event buffer: bounded, oldest first, handing out one batch at a time."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .schema import Row


class BufferFull(Exception):
    """Accepting these events would exceed the buffer's cap; the client should retry later."""


@dataclass
class Batch:
    """Rows handed to storage together; the token makes a repeated insert of it a no-op on the server."""

    rows: list[Row]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0


class Buffer:
    """Events waiting for storage. A failed batch stays in flight, and is offered again, until stored."""

    def __init__(self, max_events: int, flush_events: int, flush_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_events = max_events
        self.flush_events = flush_events
        self.flush_interval = flush_interval
        self._clock = clock
        self._waiting: list[Row] = []
        self._oldest_at: float | None = None
        self.in_flight: Batch | None = None

    def __len__(self) -> int:
        return len(self._waiting) + (len(self.in_flight.rows) if self.in_flight else 0)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def add(self, rows: Sequence[Row]) -> None:
        """Queue rows, all or none: raises BufferFull if they do not fit."""
        if len(self) + len(rows) > self.max_events:
            raise BufferFull(f"buffer holds {len(self)} of {self.max_events} events")
        if rows and not self._waiting:
            self._oldest_at = self._clock()
        self._waiting.extend(rows)

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
            self.in_flight = Batch(self._waiting)
            self._waiting = []
            self._oldest_at = None
        return self.in_flight

    def done(self, batch: Batch) -> None:
        """Storage has the batch: forget it."""
        if self.in_flight is batch:
            self.in_flight = None
