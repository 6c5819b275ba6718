"""The events table as tests read it: through the test's own client, or from a fresh process for a data directory
a service held (the embedded engine opens a path in one process at a time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def count(ch, where: str = "1") -> int:
    return ch.command(f"SELECT count() FROM events WHERE {where}")


def count_rows(data_dir: Path, database: str, where: str = "1") -> int:
    """Rows of events in an embedded data directory, read from a fresh process (one process per directory)."""
    code = ("import clickhouse_connect, sys; "
            "print(clickhouse_connect.get_client(dsn=sys.argv[1], database=sys.argv[2])"
            ".command('SELECT count() FROM events WHERE ' + sys.argv[3]))")
    out = subprocess.run([sys.executable, "-c", code, f"chdb://{data_dir}", database, where],
                         capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip())
