"""The embedded engine (chdb, the `embedded` extra): whether it is installed, and why a data directory did not open."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
from pathlib import Path

from ..errors import StartupError, first_line, path_problem


def require_engine() -> None:
    """Say in one line how to install the embedded engine when it is missing (it is an extra, imported lazily)."""
    if importlib.util.find_spec("chdb") is None:
        raise StartupError("CLICKHOUSE_URL=chdb://... runs ClickHouse inside this process, which needs the embedded "
                           "engine: pip install 'ingest[embedded]' (or point CLICKHOUSE_URL at a server, http://...)")


def embedded_failure(path: Path, exc: BaseException) -> str:
    """Why the embedded engine at path did not open, and what to do, in one line."""
    if isinstance(exc, OSError) and not (path.is_dir() and os.access(path, os.W_OK)):
        return f"CLICKHOUSE_URL: cannot use {path} as the embedded ClickHouse data directory: {path_problem(path, exc)}"
    holder = data_holder(path)
    if holder is not None:
        return held_by(path, holder)
    return f"cannot open the embedded ClickHouse in {path}: {first_line(exc)}"


def held_by(path: Path, holder: str) -> str:
    """What to do when another process's embedded engine holds the data directory, in one line."""
    return (f"the embedded ClickHouse data in {path} is in use by another process (pid {holder}): the embedded engine "
            "serves one process per data directory; stop that one first, point CLICKHOUSE_URL at another directory, "
            "or run a ClickHouse server for several processes")


def require_free(path: Path) -> None:
    """Raise StartupError when another process's embedded engine holds path.

    Asked before anything else is made: a second service would otherwise create its log and dead-letter file, then
    meet the engine's lock (which chdb reports by printing `Code: 76 ... Cannot lock file` to stderr itself).
    """
    holder = data_holder(path)
    if holder is not None:
        raise StartupError(held_by(path, holder))


def data_holder(path: Path) -> str | None:
    """The pid of the process whose embedded engine holds path (ClickHouse flocks its `status` file), else None."""
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        match = re.search(rb"PID: (\d+)", os.read(fd, 4096))
        holder = match.group(1).decode() if match else "?"
        return None if holder == str(os.getpid()) else holder  # this process's own engine: it may use it
    finally:
        os.close(fd)


