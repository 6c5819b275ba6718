"""Idempotency keys (IETF httpapi draft "The Idempotency-Key HTTP Header Field"): a POST /events repeated with the key
of an answered one gets the first answer again and stores nothing, within a bounded window, also across restarts.

A key is remembered with a fingerprint of the request body and the answer. Its record travels in the same
write-ahead-log record as the request's events (one write, one fsync: both on disk before the 202, or neither); it is
also appended to hourly key files beside the log, which are synced before the log deletes a segment, so a key outlives
its events' segment for the whole window. Keys are scoped by the write key that sent them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Callable

import orjson

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
_HOUR = 3600


class KeyInUse(Exception):
    """A request with this key is still being answered: the client should wait and try again."""


class KeyReused(Exception):
    """This key was answered for another request body."""


# A remembered key: (fingerprint, status, answer body, unix time answered).
Remembered = tuple[bytes, int, bytes, float]
# What the log and the key files hold for one key: [key id hex, fingerprint hex, status, body, time].
KeyRecord = list


def key_problem(key: str) -> str | None:
    """Why a client's key cannot be used (None if it can): 1..255 printable ASCII characters."""
    if not 0 < len(key) <= MAX_KEY_LENGTH:
        return f"must be 1 to {MAX_KEY_LENGTH} characters, got {len(key)}"
    if not all(" " <= c <= "~" for c in key):
        return "must be printable ASCII"
    return None


def key_id(scope: str, key: str) -> bytes:
    """The key as held: a digest of who sent it (the write key, or '') and the key, so senders never collide."""
    return hashlib.blake2b(f"{scope}\0{key}".encode(), digest_size=16).digest()


def fingerprint(body: bytes) -> bytes:
    """A digest of the decoded request body: the same key must come with the same body."""
    return hashlib.blake2b(body, digest_size=16).digest()


class IdempotencyKeys:
    """Keys answered within `window` seconds, at most `capacity` of them (the oldest go first), in memory; on disk
    in `directory` when given (the write-ahead log's), so they survive a restart."""

    def __init__(self, window: float, capacity: int, directory: str | Path | None = None,
                 clock: Callable[[], float] = time.time, on_evict: Callable[[], None] = lambda: None) -> None:
        self.window, self.capacity = window, capacity
        self._on_evict = on_evict
        self.directory = Path(directory) if directory is not None else None
        self._clock = clock
        self._known: OrderedDict[bytes, Remembered] = OrderedDict()  # oldest first
        self._answering: set[bytes] = set()
        self._common: dict[bytes, bytes] = {}
        self._lock = threading.Lock()  # the key files: appended on the event loop, synced by the flush thread
        self._file: BinaryIO | None = None
        self._file_hour: int | None = None
        self._dirty: list[BinaryIO] = []  # open files written since their last sync

    def __len__(self) -> int:
        return len(self._known)

    def oldest_age(self) -> float:
        """Seconds since the oldest key held was answered (0 if none): how far back a repeat is still recognised,
        which is less than the window when the capacity is reached first."""
        self._expire()
        return self._clock() - next(iter(self._known.values()))[3] if self._known else 0.0

    # -- answering (event loop) ---------------------------------------------------------------------------------
    def begin(self, ident: bytes, print_: bytes) -> Remembered | None:
        """The first answer to this key, if it was answered; else None, and the key is held until remember() or
        release(). Raises KeyInUse while another request holds it, KeyReused if it was answered for another body."""
        self._expire()
        if ident in self._answering:
            raise KeyInUse()
        known = self._known.get(ident)
        if known is not None:
            if known[0] != print_:
                raise KeyReused()
            return known
        self._answering.add(ident)
        return None

    def release(self, ident: bytes) -> None:
        """The request holding this key was not accepted (nothing stored): a retry is a first try."""
        self._answering.discard(ident)

    def record(self, ident: bytes, print_: bytes, status: int, body: bytes) -> KeyRecord:
        """What the log stores with the request's events."""
        return [ident.hex(), print_.hex(), status, body.decode(), self._clock()]

    def remember(self, record: KeyRecord) -> None:
        """The request's events are on disk with this record: answer its key from now on, and note it in the key
        file (synced before the log may delete the record's segment)."""
        self._add(record)
        self._answering.discard(bytes.fromhex(record[0]))
        if self.directory is not None:
            with self._lock:
                self._append(record)

    # -- disk ---------------------------------------------------------------------------------------------------
    def load(self, from_log: list[KeyRecord]) -> int:
        """At start: the key files, then the records still in the log (newer than the files may hold); returns how
        many keys are held. Key files whose hour is past the window are deleted."""
        records: list[KeyRecord] = []
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            horizon = self._clock() - self.window
            for path in sorted(self.directory.glob("keys-*.jsonl")):
                hour = int(path.stem.removeprefix("keys-"))
                if (hour + 1) * _HOUR < horizon:
                    path.unlink()
                    continue
                for line in path.read_bytes().splitlines():
                    try:
                        records.append(orjson.loads(line))
                    except orjson.JSONDecodeError:  # a torn last line: its log record still holds it
                        continue
            # The log's records go to the key files too, before the log may delete the segments that hold them.
            from_log = [r for r in from_log if r[4] >= horizon]
            with self._lock:
                for record in from_log:
                    self._append(record)
            self.sync()
        for record in sorted(records + from_log, key=lambda r: r[4]):
            self._add(record)
        self._expire()
        return len(self._known)

    def sync(self) -> None:
        """Make every key file written so far durable (before the log deletes a segment whose keys they hold)."""
        with self._lock:
            dirty, self._dirty = self._dirty, []
            for f in dirty:
                f.flush()
                os.fsync(f.fileno())
                if f is not self._file:
                    f.close()

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _append(self, record: KeyRecord) -> None:
        hour = int(record[4]) // _HOUR
        if hour != self._file_hour:
            assert self.directory is not None
            if self._file is not None and self._file not in self._dirty:
                self._file.close()
            self._file = open(self.directory / f"keys-{hour}.jsonl", "ab")
            self._file_hour = hour
            self._delete_expired_files()
        file = self._file
        assert file is not None
        file.write(orjson.dumps(record) + b"\n")
        if file not in self._dirty:
            self._dirty.append(file)

    def _delete_expired_files(self) -> None:
        assert self.directory is not None
        horizon = self._clock() - self.window
        for path in self.directory.glob("keys-*.jsonl"):
            if (int(path.stem.removeprefix("keys-")) + 1) * _HOUR < horizon:
                path.unlink(missing_ok=True)

    # -- memory -------------------------------------------------------------------------------------------------
    def _add(self, record: KeyRecord) -> None:
        ident, body = bytes.fromhex(record[0]), record[3].encode()
        if b'"rejected":[]' in body:  # most answers: one copy each (at most 500 differ, by the accepted count)
            body = self._common.setdefault(body, body)
        self._known[ident] = (bytes.fromhex(record[1]), int(record[2]), body, float(record[4]))
        self._known.move_to_end(ident)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)
            self._on_evict()  # forgotten before its window ended, to stay within capacity

    def _expire(self) -> None:
        horizon = self._clock() - self.window
        while self._known:
            ident, remembered = next(iter(self._known.items()))
            if remembered[3] >= horizon:
                break
            del self._known[ident]
