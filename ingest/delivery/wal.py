"""The write-ahead log: accepted events on local disk, fsynced before the 202, replayed after a crash.

Each accepted request is one record with a log sequence number (LSN). Records are appended to
segment files; concurrent requests share one write + fsync (group commit). A small progress file
says which LSNs ClickHouse already has and which range is being inserted, so a restart replays
exactly what is missing, and re-sends an insert that may have landed with the same deduplication
token (the server then drops the repeat).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import orjson

from ..contract.events import Row
from ..errors import StartupError, path_problem

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIQ")  # payload length, crc32 of payload, lsn
_SUFFIX = ".wal"


class WalError(OSError):
    """The log could not be written: acceptance must stop until the disk recovers."""


class WalInUse(StartupError):
    """Another process holds the log directory: two services must never share one log."""


class WalOwnerMismatch(StartupError):
    """The log holds undelivered events for another storage or database than this process writes to."""


@dataclass
class Recovery:
    """What a restart must deliver: records after the stored LSN, the unfinished insert range first."""

    stored_lsn: int
    in_flight: tuple[int, int] | None
    records: list[tuple[int, list[Row]]] = field(default_factory=list)
    # The idempotency-key records of every request still in the log, stored or not (see ingest.idempotency).
    keys: list[list] = field(default_factory=list)


def encode(lsn: int, rows: Sequence[Row], key: list | None = None) -> bytes:
    """One record: the request's rows, with its idempotency-key record if it had a key."""
    payload = orjson.dumps(rows if key is None else {"rows": rows, "key": key})
    return _HEADER.pack(len(payload), zlib.crc32(payload), lsn) + payload


def decode(data: bytes) -> tuple[list[tuple[int, list[Row], list | None]], int]:
    """Records (lsn, rows, key record or None) in a segment's bytes, and the offset where valid data ends (a torn
    tail is dropped)."""
    records, offset = [], 0
    while offset + _HEADER.size <= len(data):
        length, crc, lsn = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        payload = data[start:end]
        if end > len(data) or zlib.crc32(payload) != crc:
            break
        content = orjson.loads(payload)
        rows, key = (content["rows"], content["key"]) if isinstance(content, dict) else (content, None)
        records.append((lsn, [tuple(r) for r in rows], key))
        offset = end
    return records, offset


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """Segments of length-prefixed, checksummed records plus a progress file, in one directory."""

    def __init__(self, directory: str | Path, segment_bytes: int = 16 * 1024 * 1024, owner: str = "",
                 before_delete: Callable[[], None] | None = None) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        # Where this log's events go (storage and database): a log is replayed only into what it was written for.
        self.owner = owner
        # Called before stored segments are deleted: what must outlive them (idempotency keys) is made durable.
        self._before_delete = before_delete
        self.wal_id = ""
        self._lock_fd: int | None = None
        self._writing = False  # a write is on the active segment's descriptor (commit thread)
        self.stored_lsn = 0
        self._next_lsn = 1
        self._segments: dict[Path, int] = {}  # closed segment -> its last LSN
        self._active: Path | None = None
        self._active_fd: int | None = None
        self._active_size = 0
        self._pending: list[tuple[Sequence[Row], list | None, Callable[[int], None], Callable[[], None],
                                  asyncio.Future]] = []
        self._committer: asyncio.Task | None = None
        # Guards segment bookkeeping: appends (commit thread) and deletions (flush thread) meet here.
        self._segments_lock = threading.Lock()

    # -- startup ---------------------------------------------------------------------------------
    def recover(self) -> Recovery:
        """Lock the directory, read the progress file and every segment; open a fresh segment for new records.
        Segments already stored are deleted by the next prune() (or stored()).

        Raises WalInUse if another process holds the directory, WalOwnerMismatch if the log holds undelivered
        events for another storage or database than `owner`.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as exc:
            raise StartupError(f"INGEST_WAL_DIR {self.directory}: {path_problem(self.directory, exc)}") from None
        progress = self._read_progress()
        self.wal_id = progress.get("wal_id") or uuid.uuid4().hex
        self.stored_lsn = progress.get("stored_lsn", 0)
        in_flight = progress.get("in_flight")
        recovery = Recovery(self.stored_lsn, tuple(in_flight) if in_flight else None)
        last_lsn = self.stored_lsn
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            data = path.read_bytes()
            records, valid_end = decode(data)
            if valid_end < len(data):
                # A torn write from a crash: never acknowledged (the fsync did not finish), so drop it.
                log.warning("WAL %s: dropping %d bytes of incomplete record", path.name, len(data) - valid_end)
                with open(path, "r+b") as f:
                    f.truncate(valid_end)
            seg_last = records[-1][0] if records else 0
            self._segments[path] = seg_last
            last_lsn = max(last_lsn, seg_last)
            recovery.records.extend((lsn, rows) for lsn, rows, _ in records if lsn > self.stored_lsn)
            recovery.keys.extend(key for _, _, key in records if key is not None)
        self._next_lsn = last_lsn + 1
        written_for = progress.get("owner", self.owner)  # a log from before owners were recorded: trust it
        pending = recovery.records or (recovery.in_flight and recovery.in_flight[1] > self.stored_lsn)
        if pending and self.owner and written_for != self.owner:
            events = sum(len(r) for _, r in recovery.records)
            self.close()
            raise WalOwnerMismatch(
                f"the write-ahead log in {self.directory} holds {events} undelivered events for {written_for}, not "
                f"for {self.owner}: start once with the storage and database it was written for to deliver them, "
                f"or move the directory away to start without them")
        self._write_progress(self.stored_lsn, recovery.in_flight)
        # Stored segments stay until prune(): their idempotency keys must reach the key files first.
        self._open_segment()
        if recovery.records:
            log.info("WAL: replaying %d requests (%d events) not yet in ClickHouse", len(recovery.records),
                     sum(len(r) for _, r in recovery.records))
        return recovery

    # -- appending (event loop) -------------------------------------------------------------------
    async def append(self, rows: Sequence[Row], on_durable: Callable[[int], None],
                     on_failed: Callable[[], None], key: list | None = None) -> int:
        """Log rows (and the request's idempotency-key record); once on disk call on_durable(lsn) (in LSN order)
        and return the LSN.

        The callbacks run even if the caller stopped waiting, so whoever reserved room learns the outcome.
        """
        future = asyncio.get_running_loop().create_future()
        self._pending.append((rows, key, on_durable, on_failed, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await future

    async def _commit_pending(self) -> None:
        # Group commit: everything queued while the previous fsync ran goes out in one write + fsync.
        while self._pending:
            group, self._pending = self._pending, []
            lsns = range(self._next_lsn, self._next_lsn + len(group))
            self._next_lsn += len(group)
            data = b"".join(encode(lsn, rows, key) for lsn, (rows, key, _, _, _) in zip(lsns, group, strict=True))
            try:
                await asyncio.to_thread(self._write, data, lsns[-1])
            except Exception as exc:  # noqa: BLE001 - every waiting request learns it was not accepted
                log.error("write-ahead log write failed: %s", exc)
                error = WalError(f"write-ahead log write failed: {exc}")
                for _, _, _, on_failed, future in group:
                    on_failed()
                    if not future.done():
                        future.set_exception(error)
                continue
            for lsn, (_, _, on_durable, _, future) in zip(lsns, group, strict=True):
                on_durable(lsn)
                if not future.done():
                    future.set_result(lsn)

    def _write(self, data: bytes, last_lsn: int) -> None:
        with self._segments_lock:
            if self._active_fd is None:
                self._open_segment()  # the last one was abandoned after a failed write, or deleted once stored
            self._writing = True
            fd, segment = self._active_fd, self._active
            assert fd is not None and segment is not None
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            with self._segments_lock:
                self._writing = False
                self._abandon_segment()
            raise
        with self._segments_lock:
            self._writing = False
            self._active_size += len(data)
            self._segments[segment] = last_lsn
            if self._active_size >= self.segment_bytes:
                self._open_segment()

    def _abandon_segment(self) -> None:
        """After a failed write: cut the segment back to its last good record and never append to it again.

        Left in place, a torn record would end recovery's reading of the segment early (dropping later,
        acknowledged records), and a written-but-not-synced one would be replayed though it was refused.
        """
        fd, self._active_fd = self._active_fd, None
        assert fd is not None and self._active is not None
        try:
            os.ftruncate(fd, self._active_size)
            os.fsync(fd)
        except OSError as exc:
            log.error("WAL %s: could not cut back a failed write: %s", self._active.name, exc)
        finally:
            os.close(fd)

    def _open_segment(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        self._active = self.directory / f"{self._next_lsn:020d}{_SUFFIX}"
        fd = os.open(self._active, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._active_fd = fd
        self._active_size = os.fstat(fd).st_size
        self._segments.setdefault(self._active, 0)
        _fsync_dir(self.directory)

    # -- delivery progress (worker thread) ---------------------------------------------------------
    def begin(self, first: int, last: int) -> None:
        """Record that LSNs first..last are being inserted (so a restart re-sends exactly that batch)."""
        self._write_progress(self.stored_lsn, (first, last))

    def stored(self, last: int) -> None:
        """ClickHouse has everything up to LSN last: note it and delete segments no longer needed."""
        self.stored_lsn = max(self.stored_lsn, last)
        self._write_progress(self.stored_lsn, None)
        self.prune()

    def token(self, first: int, last: int) -> str:
        """The insert deduplication token of a batch: the same after a restart, unique across logs."""
        return f"{self.wal_id}:{first}-{last}"

    def prune(self) -> None:
        """Delete the segments whose records storage has (after the before_delete hook)."""
        if self._before_delete is not None:
            self._before_delete()
        with self._segments_lock:
            for path, last in list(self._segments.items()):
                if path != self._active and last <= self.stored_lsn:
                    path.unlink(missing_ok=True)
                    del self._segments[path]
            if (self._active is not None and self._active_fd is not None and not self._writing
                    and self._active_size and self._segments.get(self._active, 0) <= self.stored_lsn):
                # Everything in the open segment is stored too: delete it rather than keep up to a whole
                # segment on disk while the service idles; the next write opens a new one.
                os.close(self._active_fd)
                self._active_fd = None
                self._active.unlink(missing_ok=True)
                del self._segments[self._active]
                self._active = None
                self._active_size = 0

    def _read_progress(self) -> dict:
        path = self.directory / "progress.json"
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def _write_progress(self, stored_lsn: int, in_flight: tuple[int, int] | None) -> None:
        path = self.directory / "progress.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"wal_id": self.wal_id, "owner": self.owner, "stored_lsn": stored_lsn,
                                  "in_flight": list(in_flight) if in_flight else None}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a crash leaves the old or the new progress, never half
        _fsync_dir(self.directory)

    def disk_bytes(self) -> int:
        """Size of the segments on disk."""
        with self._segments_lock:
            paths = list(self._segments)
        total = 0
        for path in paths:
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # deleted by the flush thread meanwhile: stored, so not counted
                pass
        return total

    def _lock(self) -> None:
        """Hold the directory for this process's lifetime (released by close() or the process's end)."""
        path = self.directory / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise WalInUse(f"the write-ahead log {self.directory} is in use by another ingest process (pid "
                               f"{holder}): give each service its own INGEST_WAL_DIR") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
