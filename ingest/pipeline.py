"""The delivery loop: accepted rows go to the log and the buffer, then in batches to storage, with retries."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence

from .buffer import Batch, Buffer, BufferFull
from .deadletter import DeadLetterFile
from .metrics import Metrics
from .schema import Row
from .sink import FAILURE_HINTS, NEEDS_OPERATOR, Sink, error_code, failure_kind, is_content_error
from .wal import WalError, WriteAheadLog

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "BufferFull", "RowsRefused", "WalError"]


class RowsRefused(Exception):
    """ClickHouse refused every row tried for its content: more likely a broken table or view than bad rows.

    The batch is held and retried (with the rows that arrived since), never dead-lettered on this evidence alone.
    """


@dataclass
class FlushState:
    """What /health reports about delivery."""

    last_success_at: float | None = None  # unix time
    last_success_rows: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None  # one of sink.FAILURE_KINDS
    last_error_at: float | None = None
    consecutive_failures: int = 0
    wal_error: str | None = None


class Pipeline:
    """Accepts validated rows (durably, if it has a log) and delivers them to the sink, one insert at a time."""

    def __init__(self, buffer: Buffer, sink: Sink, metrics: Metrics, *, wal: WriteAheadLog | None = None,
                 dead_letters: DeadLetterFile | None = None, retry_max_seconds: float = 30.0,
                 shutdown_timeout: float = 20.0) -> None:
        self.buffer = buffer
        self.sink = sink
        self.metrics = metrics
        self.wal = wal
        self.dead_letters = dead_letters
        self.state = FlushState()
        self.retry_max_seconds = retry_max_seconds
        self.shutdown_timeout = shutdown_timeout
        self._wake = asyncio.Event()  # set by accept() and stop()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._cause: tuple[str, int | None] | None = None  # the failure last logged: each cause is logged once
        metrics.buffer_capacity.set(buffer.max_events)
        metrics.buffer_events.set_function(lambda: len(buffer))  # read at scrape time, never stale

    # -- accepting -----------------------------------------------------------------------------
    def recover(self) -> int:
        """Load what the log holds but storage does not, the interrupted insert first; returns the row count."""
        if self.wal is None:
            return 0
        recovery = self.wal.recover()
        records = recovery.records
        if recovery.in_flight and recovery.in_flight[1] > recovery.stored_lsn:
            first, last = recovery.in_flight
            rows = [row for lsn, rs in records if first <= lsn <= last for row in rs]
            self.buffer.restore(Batch(rows, first, last))  # flush_once gives it its log token
            records = [r for r in records if r[0] > last]
        for lsn, rows in records:
            self.buffer.add(rows, lsn, bounded=False)  # already acknowledged: never refuse them now
        return len(self.buffer)

    async def accept(self, rows: Sequence[Row]) -> None:
        """Take rows (all or none): on disk first if there is a log. Raises BufferFull or WalError."""
        self.buffer.reserve(len(rows))
        if self.wal is None:
            self._durable(rows, None)
            return
        try:
            await self.wal.append(rows, lambda lsn: self._durable(rows, lsn),
                                  lambda: self.buffer.release(len(rows)))
        except WalError as exc:
            self.state.wal_error = str(exc)
            raise
        self.state.wal_error = None

    def _durable(self, rows: Sequence[Row], lsn: int | None) -> None:
        self.buffer.add(rows, lsn, reserved=True)
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
        stored = await self.drain(self.shutdown_timeout)
        if stored:
            log.info("stopped: buffer flushed")
        elif self.wal is not None:
            log.warning("stopped with %d events undelivered; they stay in the log for the next start",
                        len(self.buffer))

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
        if batch.held:
            # Every row of it was refused: try it again together with what arrived since, which tells bad rows
            # (the newer ones go in, so the held ones are dead-lettered) from a table that takes nothing.
            batch = self.buffer.absorb_waiting()
        batch.attempts += 1
        if batch.attempts == 1 and self.wal is not None and batch.first_lsn is not None:
            batch.token = self.wal.token(batch.first_lsn, batch.last_lsn)
        started = time.perf_counter()
        try:
            refused = await asyncio.to_thread(self._deliver, batch)
        except Exception as exc:  # noqa: BLE001 - any failure means: keep the batch, report, retry
            batch.held = isinstance(exc, RowsRefused)
            self._failed(exc, batch, time.perf_counter() - started)
            return False
        self.buffer.done(batch)
        now = time.time()
        stored = len(batch.rows) - refused
        self.metrics.flush_duration.observe(time.perf_counter() - started)
        self.metrics.flush_rows.observe(stored)
        self.metrics.events_stored.inc(stored)
        self.metrics.events_dead_lettered.inc(refused)
        self.metrics.last_flush_success.set(now)
        self.metrics.storage_up.set(1)
        if self._cause is not None:
            log.info("inserts succeed again, after %d failed attempt(s)", self.state.consecutive_failures)
            self._cause = None
        self.state.last_success_at = now
        self.state.last_success_rows = stored
        self.state.last_error = None
        self.state.last_error_kind = None
        self.state.consecutive_failures = 0
        return True

    def _failed(self, exc: Exception, batch: Batch, seconds: float) -> None:
        """Count and report a failed insert: logged once per cause (kind and code), not once per retry."""
        kind = "rows_refused" if isinstance(exc, RowsRefused) else failure_kind(exc)
        code = error_code(exc.__cause__ if isinstance(exc, RowsRefused) and exc.__cause__ else exc)
        self.metrics.flush_duration.observe(seconds)
        self.metrics.flush_failures.labels(kind).inc()
        self.metrics.storage_up.set(0)
        self.state.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.state.last_error_kind = kind
        self.state.last_error_at = time.time()
        self.state.consecutive_failures += 1
        if (kind, code) == self._cause:
            log.debug("insert of %d events failed again (attempt %d): %s", len(batch.rows), batch.attempts,
                      self.state.last_error)
            return
        self._cause = (kind, code)
        # Kinds a retry cannot fix get an ERROR: the service keeps retrying, but only an operator can end it.
        level = logging.ERROR if kind in NEEDS_OPERATOR else logging.WARNING
        log.log(level, "insert of %d events failed (%s: %s); retrying until it succeeds. ClickHouse said: %s",
                len(batch.rows), kind, FAILURE_HINTS[kind], self.state.last_error)

    def _deliver(self, batch: Batch) -> int:
        """Insert a batch (worker thread); returns how many rows were refused for their content."""
        if self.wal is not None and batch.first_lsn is not None:
            self.wal.begin(batch.first_lsn, batch.last_lsn)
        refused = self._insert_or_split(batch.rows, batch.token)
        if refused:
            if self.dead_letters is None:
                raise RuntimeError(f"{len(refused)} rows refused and no dead-letter file: {refused[0][1]}")
            self.dead_letters.write(refused)
            log.error("%d rows refused by ClickHouse went to %s: %s", len(refused), self.dead_letters.path,
                      refused[0][1])
        if self.wal is not None and batch.last_lsn is not None:
            self.wal.stored(batch.last_lsn)
        return len(refused)

    def _insert_or_split(self, rows: list[Row], token: str) -> list[tuple[Row, str]]:
        """Insert rows; if ClickHouse refuses their content, bisect to store the good ones and return the bad.

        Rows are dead-lettered only when others of the same batch went in: that proves the table takes data and
        these rows are bad. If none goes in within a few tries (or at all), RowsRefused is raised instead and
        nothing is stored, so the batch can be held and retried whole (see flush_once).
        """
        search = _Search(tries=math.ceil(math.log2(len(rows))) + 4)
        try:
            refused = self._split(rows, token, search)
        except _NothingGoesIn:
            refused = rows
        if refused and search.stored == 0:
            raise RowsRefused(f"none of {len(rows)} rows went in: {search.first_error}") from search.first_error
        return refused

    def _split(self, rows: list[Row], token: str, search: _Search) -> list[tuple[Row, str]]:
        try:
            self.sink.insert(rows, token)
            search.stored += len(rows)
            return []
        except Exception as exc:
            if not is_content_error(exc):
                raise
            if search.stored == 0:
                search.first_error = search.first_error or exc
                search.tries -= 1
                if search.tries < 0:
                    raise _NothingGoesIn from exc
            if len(rows) == 1:
                return [(rows[0], f"{type(exc).__name__}: {exc}")]
        # Halves get tokens derived from the parent's, so a retried or replayed split deduplicates too. The newer
        # half goes first: after a held batch, the rows that arrived since are the likeliest to go in.
        mid = len(rows) // 2
        newer = self._split(rows[mid:], token + "/b", search)
        return self._split(rows[:mid], token + "/a", search) + newer

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


class _NothingGoesIn(Exception):
    """A bisection used up its tries without storing a row."""


@dataclass
class _Search:
    """State of one bisection: failed tries left before anything is stored, rows stored, the first refusal."""

    tries: int
    stored: int = 0
    first_error: Exception | None = None
