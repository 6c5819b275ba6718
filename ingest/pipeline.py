"""The delivery loop: moves batches from the buffer into storage, retrying with backoff, and keeps its state."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Sequence

from .buffer import Buffer, BufferFull
from .metrics import Metrics
from .schema import Row
from .sink import Sink

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "BufferFull"]


@dataclass
class FlushState:
    """What /health reports about delivery."""

    last_success_at: float | None = None  # unix time
    last_success_rows: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0


class Pipeline:
    """Accepts validated rows into the buffer and delivers them to the sink, one insert in flight at a time."""

    def __init__(self, buffer: Buffer, sink: Sink, metrics: Metrics, retry_max_seconds: float = 30.0,
                 shutdown_timeout: float = 20.0) -> None:
        self.buffer = buffer
        self.sink = sink
        self.metrics = metrics
        self.state = FlushState()
        self.retry_max_seconds = retry_max_seconds
        self.shutdown_timeout = shutdown_timeout
        self._wake = asyncio.Event()  # set by accept() and stop()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task | None = None
        metrics.buffer_capacity.set(buffer.max_events)

    # -- accepting -----------------------------------------------------------------------------
    def accept(self, rows: Sequence[Row]) -> None:
        """Buffer rows (all or none); raises BufferFull when they do not fit."""
        self.buffer.add(rows)
        self.metrics.buffer_events.set(len(self.buffer))
        self._wake.set()

    # -- delivering ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-flusher")

    async def stop(self) -> None:
        """Stop the loop between inserts (never mid-insert), then deliver what is left."""
        self._stop_requested.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.drain(self.shutdown_timeout)

    async def drain(self, timeout: float) -> bool:
        """Flush until the buffer is empty or the timeout passes; True if everything was stored."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while len(self.buffer):
            if await self.flush_once():
                continue
            if time.monotonic() + delay > deadline:
                log.error("shutdown: %d events could not be stored: %s", len(self.buffer), self.state.last_error)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return True

    async def flush_once(self) -> bool:
        """Insert the next batch; False if the insert failed (the batch stays for a retry)."""
        batch = self.buffer.take()
        if batch is None:
            return True
        batch.attempts += 1
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.sink.insert, batch.rows, batch.token)
        except Exception as exc:  # noqa: BLE001 - any failure means: keep the batch, report, retry
            self.metrics.flush_duration.observe(time.perf_counter() - started)
            self.metrics.flush_failures.inc()
            self.metrics.storage_up.set(0)
            self.state.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.state.last_error_at = time.time()
            self.state.consecutive_failures += 1
            log.warning("insert of %d events failed (attempt %d): %s", len(batch.rows), batch.attempts,
                        self.state.last_error)
            return False
        self.buffer.done(batch)
        now = time.time()
        self.metrics.flush_duration.observe(time.perf_counter() - started)
        self.metrics.flush_rows.observe(len(batch.rows))
        self.metrics.events_stored.inc(len(batch.rows))
        self.metrics.last_flush_success.set(now)
        self.metrics.storage_up.set(1)
        self.metrics.buffer_events.set(len(self.buffer))
        self.state.last_success_at = now
        self.state.last_success_rows = len(batch.rows)
        self.state.last_error = None
        self.state.consecutive_failures = 0
        return True

    def _retry_delay(self) -> float:
        return min(self.retry_max_seconds, 0.25 * 2 ** min(self.state.consecutive_failures - 1, 16))

    async def _run(self) -> None:
        while not self._stop_requested.is_set():
            if self.state.consecutive_failures and self.buffer.in_flight is not None:
                # Back off after a failure; new rows do not cut the wait short, only stop() does.
                await self._wait(self._stop_requested, self._retry_delay())
            else:
                self._wake.clear()
                wait = self.buffer.seconds_until_due()
                if wait != 0.0:
                    await self._wait(self._wake, wait)
                    continue  # woken by new rows, the timer, or stop(): look again
            if not self._stop_requested.is_set():
                await self.flush_once()

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
