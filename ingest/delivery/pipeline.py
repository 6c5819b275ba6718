"""The delivery loop: accepted rows go to the log and the buffer, then in batches to storage, with retries."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from ..contract.events import Row
from ..metrics import Metrics
from ..storage.failures import FAILURE_HINTS, NEEDS_OPERATOR, error_code
from ..storage.rollups import repair
from ..storage.sink import Sink, failure_kind, is_content_error
from .buffer import Batch, Buffer, BufferFull
from .deadletter import DeadLetterFile
from .idempotency import IdempotencyKeys
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
                 dead_letters: DeadLetterFile | None = None, keys: IdempotencyKeys | None = None,
                 retry_max_seconds: float = 30.0, shutdown_timeout: float = 20.0) -> None:
        self.buffer = buffer
        self.sink = sink
        self.metrics = metrics
        self.wal = wal
        self.keys = keys
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
        """Load what the log holds but storage does not, the interrupted insert first; returns the row count.
        The idempotency keys come back too (from their files and the log) before the log deletes anything."""
        if self.wal is None:
            if self.keys is not None:
                self.keys.load([])
            return 0
        recovery = self.wal.recover()
        if self.keys is not None:
            self.keys.load(recovery.keys)
        self.wal.prune()
        records = recovery.records
        if recovery.in_flight and recovery.in_flight[1] > recovery.stored_lsn:
            first, last = recovery.in_flight
            rows = [row for lsn, rs in records if first <= lsn <= last for row in rs]
            # Its insert was cut off: the engine died with it, so storage is asked what arrived before any is sent.
            self.buffer.restore(Batch(rows, first, last, verify=True))  # flush_once gives it its log token
            records = [r for r in records if r[0] > last]
        for lsn, rows in records:
            self.buffer.add(rows, lsn, bounded=False)  # already acknowledged: never refuse them now
        return len(self.buffer)

    async def accept(self, rows: Sequence[Row], key: list | None = None) -> None:
        """Take rows (all or none), with the request's idempotency-key record if it has one: on disk first if there
        is a log. Raises BufferFull or WalError."""
        self.buffer.reserve(len(rows))
        if self.wal is None:
            self._durable(rows, None, key)
            return
        try:
            await self.wal.append(rows, lambda lsn: self._durable(rows, lsn, key),
                                  lambda: self.buffer.release(len(rows)), key)
        except WalError as exc:
            self.state.wal_error = str(exc)
            raise
        self.state.wal_error = None

    def _durable(self, rows: Sequence[Row], lsn: int | None, key: list | None) -> None:
        # The key first: once the rows are in the buffer an insert may store them and the log delete their record,
        # which must not happen before the key file has the key.
        if key is not None and self.keys is not None:
            self.keys.remember(key)
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
        if batch.attempts == 1:
            batch.started_at = time.time()
            if self.wal is not None and batch.first_lsn is not None and batch.last_lsn is not None:
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
        if kind == "internal_error":
            log.error("insert of %d events failed on a bug in the service (%s); they are kept and retried",
                      len(batch.rows), FAILURE_HINTS[kind], exc_info=exc)
            return
        # Kinds a retry cannot fix get an ERROR: the service keeps retrying, but only an operator can end it.
        level = logging.ERROR if kind in NEEDS_OPERATOR else logging.WARNING
        log.log(level, "insert of %d events failed (%s: %s); retrying until it succeeds. ClickHouse said: %s",
                len(batch.rows), kind, FAILURE_HINTS[kind], self.state.last_error)

    def _deliver(self, batch: Batch) -> int:
        """Insert a batch (worker thread); returns how many rows were refused for their content.

        Each insert's deduplication token is the batch's token and the rows it carries ("<batch>[3:7]"); the engine
        stores it with every row (events.insert_token). A retry sends the same tokens, so a repeat is dropped. After
        a restart of the engine that is not enough (its record of a token may stand for a part that never reached
        the disk): then _verify looks for the rows instead.
        """
        if self.wal is not None and batch.first_lsn is not None and batch.last_lsn is not None:
            self.wal.begin(batch.first_lsn, batch.last_lsn)
        if not batch.verify and batch.attempts > 1 and self.sink.restarted_since(batch.started_at):
            batch.verify = True
        search = _Search(tries=math.ceil(math.log2(len(batch.rows))) + 4)
        units = month_units(batch.rows)
        nothing_in = False
        try:
            if batch.verify:
                refused = self._verify(batch, units, search)
            else:
                refused = [r for lo, hi in units for r in self._split(batch.rows, lo, hi, batch.token, "", search)]
        except _NothingGoesIn:
            nothing_in, refused = True, []
        if nothing_in or (refused and not search.stored and not search.present):
            # Not one row went in: more likely a broken table than bad rows, so the batch is held, nothing
            # dead-lettered (see flush_once).
            raise RowsRefused(f"none of {len(batch.rows)} rows went in: {search.first_error}") from search.first_error
        if refused:
            if self.dead_letters is None:
                raise RuntimeError(f"{len(refused)} rows refused and no dead-letter file: {refused[0][1]}")
            self.dead_letters.write(refused)
            log.error("%d rows refused by ClickHouse went to %s: %s", len(refused), self.dead_letters.path,
                      refused[0][1])
        if self.wal is not None and batch.last_lsn is not None:
            self.wal.stored(batch.last_lsn)
        return len(refused)

    def _verify(self, batch: Batch, units: list[tuple[int, int]], search: _Search) -> list[tuple[Row, str]]:
        """Deliver a batch whose earlier insert an engine restart cut off: send only the rows storage lacks, under
        new tokens, and make the rollups agree with what storage has (rollups.repair)."""
        rows = batch.rows
        stored = self.sink.stored_inserts(batch.token, rows)
        covered = []
        for token, count in stored.items():
            lo, hi = token_range(token)
            if count != hi - lo:  # an insert is one part, in full or not at all; so this is not ours to mend
                log.error("insert %s is in storage with %d of its %d rows", token, count, hi - lo)
            covered.append((lo, hi))
        # A fresh suffix: the engine may hold a record of the old tokens without their rows.
        fresh = "~" + uuid.uuid4().hex[:8]
        refused = []
        for lo, hi in units:
            for gap_lo, gap_hi in gaps(lo, hi, covered):
                refused += self._split(rows, gap_lo, gap_hi, batch.token, fresh, search)
        first_ms, last_ms = min(r[1] for r in rows), max(r[1] for r in rows)
        for token in stored:
            for target, outcome in repair(self.sink.command, self.sink.rows, token, first_ms, last_ms).items():
                self.metrics.rollup_repairs.labels(outcome).inc()
                if outcome == "unsure":
                    log.error("rollup %s does not agree with the events table around insert %s; nothing changed: "
                              "run `python -m ingest rebuild-rollups` (docs/operations.md)", target, token)
        found = sum(stored.values())
        search.present += found
        self.metrics.events_rechecked.labels("stored").inc(found)
        self.metrics.events_rechecked.labels("missing").inc(len(rows) - found)
        log.info("after a restart of the engine: %d of the %d events of an interrupted insert were stored, the rest "
                 "sent again", found, len(rows))
        return refused

    def _split(self, rows: list[Row], lo: int, hi: int, batch: str, suffix: str,
               search: _Search) -> list[tuple[Row, str]]:
        """Insert rows[lo:hi]; if ClickHouse refuses their content, bisect to store the good ones and return the bad.

        Rows are dead-lettered only when others of the same batch went in: that proves the table takes data and
        these rows are bad. If none goes in within a few tries (or at all), _NothingGoesIn ends the search and
        nothing is stored, so the batch can be held and retried whole (see flush_once).
        """
        try:
            self.sink.insert(rows[lo:hi], f"{batch}[{lo}:{hi}]{suffix}")
            search.stored += hi - lo
            return []
        except Exception as exc:
            if not is_content_error(exc):
                raise
            if search.stored == 0:
                search.first_error = search.first_error or exc
                search.tries -= 1
                if search.tries < 0:
                    raise _NothingGoesIn from exc
            if hi - lo == 1:
                return [(rows[lo], f"{type(exc).__name__}: {exc}")]
        # Each half's token names its rows, so a retried or replayed split deduplicates too. The newer half goes
        # first: after a held batch, the rows that arrived since are the likeliest to go in.
        mid = (lo + hi) // 2
        newer = self._split(rows, mid, hi, batch, suffix, search)
        return self._split(rows, lo, mid, batch, suffix, search) + newer

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
    """State of one delivery's bisection: failed tries left before anything is stored, rows stored (now, or found
    stored by an earlier insert), the first refusal."""

    tries: int
    stored: int = 0
    present: int = 0
    first_error: Exception | None = None


def month_units(rows: list[Row]) -> list[tuple[int, int]]:
    """The batch as ranges of rows that each fall in one month, the events table's partition.

    An insert writes one part per partition, each committed on its own: one insert per month makes every insert
    all or nothing. A batch that spans months (rare: the turn of a month, late events) is sorted by month in place,
    stably, so a restart that rebuilds it from the log gets the same ranges.
    """
    first, last = _month(min(r[1] for r in rows)), _month(max(r[1] for r in rows))
    if first == last:
        return [(0, len(rows))]
    rows.sort(key=lambda r: _month(r[1]))
    units, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or _month(rows[i][1]) != _month(rows[start][1]):
            units.append((start, i))
            start = i
    return units


def _month(ms: int) -> tuple[int, int]:
    day = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return day.year, day.month


_RANGE = re.compile(r"\[(\d+):(\d+)\](?:~\w+)?$")


def token_range(token: str) -> tuple[int, int]:
    """The rows of its batch an insert token names: "<batch>[3:7]" or "<batch>[3:7]~<fresh>" -> (3, 7)."""
    match = _RANGE.search(token)
    if match is None:
        raise ValueError(f"not an insert token: {token!r}")
    return int(match.group(1)), int(match.group(2))


def gaps(lo: int, hi: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [lo, hi) that no range in covered holds."""
    found, at = [], lo
    for c_lo, c_hi in sorted(covered):
        if c_hi <= at or c_lo >= hi:
            continue
        if c_lo > at:
            found.append((at, c_lo))
        at = max(at, c_hi)
    if at < hi:
        found.append((at, hi))
    return found
