"""Dead letters: rows ClickHouse refused for their content, kept on disk with the reason, never retried."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import orjson

from ..contract.events import COLUMNS, Row
from ..errors import StartupError, path_problem


class DeadLetterFile:
    """Appends refused rows as JSON lines: {"at", "reason", "event"} with the event's columns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def check_writable(self) -> None:
        """Raise StartupError now if refused rows could not be written here later."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab"):
                pass
        except OSError as exc:
            raise StartupError(f"INGEST_DEAD_LETTER_PATH {self.path}: {path_problem(self.path, exc)}") from None

    def write(self, refused: Sequence[tuple[Row, str]]) -> None:
        """Persist refused rows (fsynced: they are no longer anywhere else once the log moves on)."""
        if not refused:
            return
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        lines = []
        for row, reason in refused:
            fields = dict(zip(COLUMNS, row, strict=True))
            fields["timestamp"] = datetime.fromtimestamp(row[1] / 1000, timezone.utc).isoformat(
                timespec="milliseconds")
            lines.append(orjson.dumps({"at": at, "reason": reason[:1000], "event": fields}) + b"\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """Every dead letter so far (for operators and tests)."""
        if not self.path.exists():
            return []
        return [orjson.loads(line) for line in self.path.read_bytes().splitlines() if line.strip()]
