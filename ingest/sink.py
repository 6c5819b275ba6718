"""ClickHouse storage: one long-lived clickhouse-connect client, embedded (chdb://) or a server (http[s]://)."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping

import clickhouse_connect
import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DataError, OperationalError

from .errors import StartupError, first_line, path_problem
from .schema import COLUMNS, Row

log = logging.getLogger(__name__)
TABLE = "events"

# Codes ClickHouse answers when the rows themselves are unacceptable (parse errors, type mismatch,
# out-of-range values, violated constraints): the same rows would fail again however often they are
# retried. Everything else (network, missing table, memory, too many parts...) is worth retrying.
CONTENT_ERROR_CODES = frozenset({6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 469})


# Codes no retry can fix: the user, its grants or the schema are wrong, and an operator must act. The service still
# retries them (so the fix needs no restart) but says so loudly, once per cause.
OPERATOR_ERROR_KINDS = {
    497: "access_denied",       # ACCESS_DENIED: a grant is missing (or a view runs as a user without one)
    516: "authentication",      # AUTHENTICATION_FAILED
    192: "authentication",      # UNKNOWN_USER
    193: "authentication",      # WRONG_PASSWORD
    194: "authentication",      # REQUIRED_PASSWORD
    81: "unknown_database",     # UNKNOWN_DATABASE
    60: "unknown_table",        # UNKNOWN_TABLE
    16: "unknown_column",       # NO_SUCH_COLUMN_IN_TABLE: the table is older than the service
}
# What each kind of failure means and what to do, for the log and /health.
FAILURE_HINTS = {
    "access_denied": "the ClickHouse user may not do this insert: check its grants, and that the rollup views run "
                     "as their definer (docs/operations.md: Grants on a server)",
    "authentication": "ClickHouse refuses the user or password in CLICKHOUSE_URL",
    "unknown_database": "the database does not exist: check CLICKHOUSE_DATABASE and that the init ran",
    "unknown_table": "a table is missing: the init (clickhouse/init) has not run or failed",
    "unknown_column": "the events table lacks a column the service writes: apply clickhouse/init/sql",
    "rows_refused": "ClickHouse refuses every row tried for its content: the batch is held and retried, not "
                    "dead-lettered, until rows go in; if the events table changed, fix it",
    "view_failed": "a materialized view fails on insert: the batch is in the events table but not in the rollups "
                   "the dashboard reads; fix or drop the view, then the same batch is retried and stored once",
    "unreachable": "ClickHouse does not answer; inserts are retried",
    "server": "ClickHouse failed the insert; it is retried",
    "other": "the insert failed; it is retried",
}
FAILURE_KINDS = tuple(FAILURE_HINTS)
# Failures that last until someone changes ClickHouse: logged as errors (the others are usually transient).
NEEDS_OPERATOR = frozenset({*OPERATOR_ERROR_KINDS.values(), "rows_refused", "view_failed"})


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code an exception carries (attribute or message), if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = re.search(r"Code: (\d+)", str(exc))
    return int(match.group(1)) if match else None


def in_view(exc: BaseException) -> bool:
    """True if the insert failed in a materialized view, after the events table had taken the block."""
    return "while pushing to view" in str(exc)


def is_content_error(exc: BaseException) -> bool:
    """True if ClickHouse (or the client, while encoding) refused the data itself, not the connection.

    Not when a view failed: events already holds that block, so only a retry with the same token (which events
    drops and the views take) stores it exactly once; a split into parts with new tokens would store it again.
    """
    return isinstance(exc, DataError) or (error_code(exc) in CONTENT_ERROR_CODES and not in_view(exc))


def failure_kind(exc: BaseException) -> str:
    """Which of FAILURE_KINDS a failed insert is (content refusals are judged by the pipeline, not here)."""
    code = error_code(exc)
    if code in OPERATOR_ERROR_KINDS:
        return OPERATOR_ERROR_KINDS[code]
    if in_view(exc):
        return "view_failed"
    if code is not None:
        return "server"
    if isinstance(exc, (OperationalError, OSError, TimeoutError)):
        return "unreachable"
    return "other"


# Rows go to ClickHouse as one JSON document of columns, encoded by orjson (C) and parsed by the engine (C++):
# ~0.12 µs of the interpreter lock per row, where clickhouse-connect's Native encoder, written in Python, held it
# for ~1.4 µs and competed with the event loop that answers requests. The column names are explicit; the types are
# the table's (no DESCRIBE, nothing inferred).
INSERT_FORMAT = "JSONCompactColumns"
INSERT_SETTINGS = {
    # A retried batch (same token) must be dropped by the rollups the views feed, not only by events; the rollup
    # tables carry a deduplication window for it.
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


def encode_columns(rows: list[Row]) -> bytes:
    """The rows as the JSONCompactColumns document [[event_name...], [timestamp...], ...].

    Timestamps travel as seconds with three decimals: the engine reads an integer into DateTime64(3) as seconds,
    and repr of ms / 1000 is exactly those digits (a double's shortest round-trip form of a 13-digit decimal).
    """
    columns = list(zip(*rows))
    columns[1] = [ms / 1000 for ms in columns[1]]
    return orjson.dumps(columns)


def reason(exc: BaseException) -> str:
    """The gist of a client error for a one-line message: the OS's words if it has them, else its first line."""
    text = str(exc).strip()
    errno_text = re.search(r"\[Errno -?\d+\] ([^\"')\]]+)", text)
    if errno_text:
        return errno_text.group(1).strip()
    code = re.search(r"Code: \d+\. DB::Exception: (.*?)(?: \(version [^)]*\))?$", text.splitlines()[0] if text else "")
    return code.group(1)[:300] if code else first_line(exc)


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def embedded_failure(path: Path, exc: BaseException) -> str:
    """Why the embedded engine at path did not open, and what to do, in one line."""
    if isinstance(exc, OSError) and not (path.is_dir() and os.access(path, os.W_OK)):
        return f"CLICKHOUSE_URL: cannot use {path} as the embedded ClickHouse data directory: {path_problem(path, exc)}"
    holder = data_holder(path)
    if holder is not None:
        return (f"the embedded ClickHouse data in {path} is in use by another process (pid {holder}): one process "
                "can open it at a time; stop that one first, or point CLICKHOUSE_URL at another directory")
    return f"cannot open the embedded ClickHouse in {path}: {first_line(exc)}"


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


def ddl_files() -> list[tuple[str, str]]:
    """The numbered init DDL (name, text): from the installed package, or from the source checkout."""
    packaged = resources.files(__package__).joinpath("ddl")
    if packaged.is_dir():
        files = [(p.name, p.read_text()) for p in packaged.iterdir() if p.name.endswith(".sql")]
    else:
        repo_dir = Path(__file__).resolve().parent.parent / "clickhouse" / "init" / "sql"
        files = [(p.name, p.read_text()) for p in repo_dir.glob("*.sql")]
    if not files:
        raise FileNotFoundError("no init DDL found (clickhouse/init/sql/*.sql)")
    return sorted(files)


def statements(sql: str) -> Iterator[str]:
    """Split a DDL file into statements (our DDL keeps ';' out of strings and comments)."""
    without_comments = re.sub(r"--[^\n]*", "", sql)
    for part in without_comments.split(";"):
        if part.strip():
            yield part.strip()


class Sink:
    """Writes batches of rows into the events table and answers whether storage is reachable.

    Calls block (the embedded engine has no async client): run them in a worker thread. A lock keeps
    the one client to one call at a time.
    """

    def __init__(self, url: str, database: str, *, create_schema: bool | None = None,
                 chdb_options: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.database = database
        self.embedded = url.startswith("chdb://")
        # The embedded engine is ours to set up; on a server the init script creates the schema (and the
        # ingest user may not run DDL). Tests that play a server on the embedded engine say False.
        self.create_schema = self.embedded if create_schema is None else create_schema
        # Options for the embedded engine (e.g. a server-style config-file with the stack's users).
        self.chdb_options = dict(chdb_options or {})
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._reader: Client | None = None
        self._read_lock = threading.Lock()
        self._reachable = False

    def _client_for(self, database: str | None) -> Client:
        kwargs: dict[str, Any] = {"dsn": self.url, "database": database}
        if self.chdb_options:
            kwargs["chdb_options"] = self.chdb_options
        return clickhouse_connect.get_client(**kwargs)

    def _connect(self) -> Client:
        if self._client is None:
            if self.embedded:
                Path(self.url.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
            if self.create_schema:
                self.apply_schema()
            self._client = self._client_for(self.database)
        return self._client

    def apply_schema(self) -> None:
        """Create the database and run the init DDL; idempotent (IF NOT EXISTS everywhere)."""
        admin = self._client_for(None)
        try:
            admin.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        finally:
            admin.close()
        ddl = self._client_for(self.database)
        try:
            for name, text in ddl_files():
                for statement in statements(text):
                    log.debug("applying %s", name)
                    ddl.command(statement)
        finally:
            ddl.close()

    def open(self) -> None:
        """Connect now if possible; a server that is down is retried on the next call.

        The embedded engine must open now: StartupError says why it cannot, in one line.
        """
        with self._lock:
            try:
                self._connect()
            except Exception as exc:  # noqa: BLE001 - reported, and retried by the flusher
                if self.embedded:
                    raise StartupError(embedded_failure(Path(self.url.removeprefix("chdb://")), exc)) from exc
                log.warning("ClickHouse not reachable yet: %s", exc)

    def insert(self, rows: list[Row], token: str) -> None:
        """Insert rows column-wise; the token lets the server drop a repeat of this same batch."""
        block = encode_columns(rows)
        with self._lock:
            client = self._connect()
            try:
                client.raw_insert(TABLE, COLUMNS, insert_block=block, fmt=INSERT_FORMAT,
                                  settings={**INSERT_SETTINGS, "insert_deduplication_token": token})
                self._reachable = True
            except Exception:
                # A failed call may leave the HTTP session in doubt; start clean next time.
                if not self.embedded:
                    self._drop_client()
                raise

    def stored_inserts(self, batch: str, rows: list[Row]) -> dict[str, int]:
        """Which inserts of a batch storage holds, and their rows: {insert token: rows}.

        Reads only the batch's event names and time range (the table's sort key), so it costs milliseconds on a
        table of any size. On a server the ingest user may read exactly the columns this needs.
        """
        names = ", ".join(quote(n) for n in sorted({r[0] for r in rows}))
        first, last = min(r[1] for r in rows), max(r[1] for r in rows)
        with self._lock:
            result = self._connect().query(
                f"SELECT insert_token, count() FROM {TABLE} WHERE event_name IN ({names}) "
                f"AND timestamp >= fromUnixTimestamp64Milli({first}, 'UTC') "
                f"AND timestamp <= fromUnixTimestamp64Milli({last}, 'UTC') "
                f"AND startsWith(insert_token, {quote(batch + '[')}) GROUP BY insert_token")
        return {token: int(count) for token, count in result.result_rows}

    def restarted_since(self, started_at: float | None) -> bool:
        """Whether the engine restarted after time.time() was started_at (a server's uptime is shorter than that).

        The embedded engine lives and dies with this process, so within it, never. A server down for a restart may
        be unreachable: then it says nothing yet (False), and the next attempt asks again.
        """
        if self.embedded or started_at is None:
            return False
        with self._lock:
            try:
                uptime = int(self._connect().command("SELECT uptime()"))
            except Exception:  # noqa: BLE001 - the insert that follows meets the same failure and reports it
                return False
        # A second of margin for the whole-second uptime: a restart takes longer than that.
        return uptime + 1 < time.time() - started_at

    def repair_rollups(self, token: str, first_ms: int, last_ms: int) -> dict[str, str]:
        """Make the rollups hold, once, the rows the insert `token` stored (rollups.repair); rollup -> outcome."""
        from .rollups import repair

        with self._lock:
            client = self._connect()
            return repair(client.command, lambda sql: client.query(sql).result_rows, token, first_ms, last_ms)

    def ping(self, wait: float = 1.0) -> bool:
        """True if ClickHouse answers a trivial query.

        While a long insert holds the client, its last outcome stands in: /health must answer within a
        healthcheck's timeout, not queue behind the insert.
        """
        if not self._lock.acquire(timeout=wait):
            return self._reachable
        try:
            self._connect().command("SELECT 1")
            self._reachable = True
        except Exception as exc:  # noqa: BLE001 - the answer is False, the reason goes to the log
            log.warning("ClickHouse ping failed: %s", exc)
            if not self.embedded:
                self._drop_client()
            self._reachable = False
        finally:
            self._lock.release()
        return self._reachable

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run a read-only query (readonly=1: a bug cannot write) on a client of its own, so a slow dashboard query
        does not hold up inserts."""
        with self._read_lock:
            if self._reader is None:
                self._reader = self._client_for(self.database)
            result = self._reader.query(sql, settings={"readonly": 1})
            return list(result.column_names), result.result_rows

    def _drop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def close(self) -> None:
        with self._lock:
            self._drop_client()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
