"""The events table as tests read it: through the test's own client, or from a fresh process for a data directory
a service held (the embedded engine opens a path in one process at a time)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import clickhouse_connect

from ingest.storage.sink import Sink


def count(ch, where: str = "1") -> int:
    """Rows of events the test's own client sees, where the SQL condition holds."""
    return ch.command(f"SELECT count() FROM events WHERE {where}")


def break_storage(ch) -> None:
    """A real insert failure: the table disappears (UNKNOWN_TABLE) until the schema is applied again."""
    ch.command("DROP TABLE events SYNC")


def repair_storage(settings) -> None:
    """Apply the schema again, as the service's storage comes back after break_storage()."""
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()


def read_rows(data_dir: Path, database: str, sql: str, timeout: float = 120) -> list[list]:
    """The rows a query returns on an embedded data directory, read from a fresh process (one process per
    directory); values as JSON carries them, str() of those it has no type for (such as datetimes)."""
    code = ("import clickhouse_connect, json, sys; "
            "client = clickhouse_connect.get_client(dsn=sys.argv[1], database=sys.argv[2]); "
            "print(json.dumps(client.query(sys.argv[3]).result_rows, default=str))")
    out = subprocess.run([sys.executable, "-c", code, f"chdb://{data_dir}", database, sql],
                         capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(out.stdout)


def count_rows(data_dir: Path, database: str, where: str = "1") -> int:
    """Rows of events in an embedded data directory, read from a fresh process."""
    [[rows]] = read_rows(data_dir, database, f"SELECT count() FROM events WHERE {where}")
    return rows


@contextmanager
def read_only_database(chdb_path: str, load: Callable[[Any], Any]) -> Iterator[tuple[Any, Any]]:
    """A database of its own with the schema, filled once by load(client), for the tests of a module that only read
    it: yields a read-only client on it (an insert or a DROP through it fails) and what load returned. Dropped at the
    end, after checking that it still holds the rows loaded."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    Sink(f"chdb://{chdb_path}", database).apply_schema()
    writer = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=database)
    reader = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=database, settings={"readonly": 2})
    try:
        loaded = load(writer)
        rows = writer.command("SELECT count() FROM events")
        yield reader, loaded
        assert writer.command("SELECT count() FROM events") == rows, "a reader changed the shared database"
    finally:
        writer.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
        reader.close()
        writer.close()
