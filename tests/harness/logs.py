"""Child processes' log files: wait for the line that says what a process picked (its port), or show why not."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


def log_text(log: Path, start: int = 0) -> str:
    """The log from byte offset `start` on (a file several processes appended to holds more than one's)."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, start: int = 0, timeout: float = 60) -> re.Match:
    """The first match of `pattern` in the log (from offset `start`); fails with the log if the process exits first.

    A pattern should match only a whole line's worth (end on a character after the value it captures): the log is
    read while the process writes it.
    """
    regex = re.compile(pattern)
    name = " ".join(map(str, proc.args)) if isinstance(proc.args, (list, tuple)) else str(proc.args)
    deadline = time.monotonic() + timeout
    while True:
        exited = proc.poll() is not None  # before reading: a line written just before the exit is still seen
        text = log_text(log, start)
        found = regex.search(text)
        if found:
            return found
        if exited:
            raise AssertionError(f"{name} exited ({proc.returncode}) without logging {pattern!r}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not log {pattern!r} within {timeout} s:\n{text}")
        time.sleep(0.05)
