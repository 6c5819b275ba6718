"""ClickHouse storage: one long-lived clickhouse-connect client, embedded (chdb://) or a server (http[s]://)."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import clickhouse_connect
import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DataError, OperationalError

from ..contract.events import COLUMNS, Row
from ..errors import StartupError
from .chatter import client_call
from .ddl import quote
from .embedded import embedded_failure, require_engine, require_free
from .failures import CONTENT_ERROR_CODES, OPERATOR_ERROR_KINDS, certificate_problem, error_code, in_view

log = logging.getLogger(__name__)
TABLE = "events"


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
    if certificate_problem(exc):
        return "certificate"
    if isinstance(exc, (OperationalError, OSError, TimeoutError)):
        return "unreachable"
    if isinstance(exc, ClickHouseError):
        return "other"
    # Neither ClickHouse nor the network: a programming error here, not an outage (logged with its traceback).
    return "internal_error"


# Rows go to ClickHouse as one JSON document of columns, encoded by orjson (C) and parsed by the engine (C++):
# ~0.12 µs of the interpreter lock per row, where clickhouse-connect's Native encoder, written in Python, held it
# for ~1.4 µs and competed with the event loop that answers requests. The column names are explicit; the types are
# the table's (no DESCRIBE, nothing inferred).
INSERT_FORMAT = "JSONCompactColumns"
INSERT_SETTINGS = {
    # A retried batch (same token) must be dropped by the rollups the views feed, not only by events; the rollup
    # tables carry a deduplication window for it.
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    # On a cluster events is a Distributed table: answer only once the rows are on their shards (the token travels
    # with them), not when they are queued on the node that took the insert. A plain table ignores it.
    "distributed_foreground_insert": 1,
}


def encode_columns(rows: list[Row]) -> bytes:
    """The rows as the JSONCompactColumns document [[event_name...], [timestamp...], ...].

    Timestamps travel as seconds with three decimals: the engine reads an integer into DateTime64(3) as seconds,
    and repr of ms / 1000 is exactly those digits (a double's shortest round-trip form of a 13-digit decimal).
    """
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
    columns[1] = [ms / 1000 for ms in columns[1]]
    return orjson.dumps(columns)


def server_options(url: str, ca_file: str = "") -> dict[str, Any]:
    """clickhouse-connect's connection options for a storage URL.

    The URL's scheme decides plain HTTP or TLS: clickhouse-connect (1.12.0) reads only the host, port and
    credentials of a DSN and takes TLS from the port alone (443 or 8443), so an https:// URL on another port would
    otherwise be spoken to in the clear. `ca_file`: the CA that signed an https server's certificate.
    """
    options: dict[str, Any] = {"dsn": url}
    scheme = url.partition("://")[0]
    if scheme in ("http", "https"):
        options["interface"] = scheme
    if ca_file:
        options["ca_cert"] = ca_file
    return options


class Sink:
    """Writes batches of rows into the events table and answers whether storage is reachable.

    Calls block (the embedded engine has no async client): run them in a worker thread. A lock keeps
    the one client to one call at a time.
    """

    def __init__(self, url: str, database: str, *, create_schema: bool | None = None,
                 chdb_options: Mapping[str, str] | None = None, ca_file: str = "") -> None:
        self.url = url
        self.database = database
        self.ca_file = ca_file
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
        # The last reason storage was found unreachable (kind, code), logged once: /health asks every few seconds.
        self._ping_cause: tuple[str, int | None] | None = None

    @contextmanager
    def _calling(self, lock: threading.Lock) -> Iterator[None]:
        """Hold lock for one call of the client, its libraries' retry chatter kept out of the log (see chatter)."""
        with lock, client_call():
            yield

    def _client_for(self, database: str | None) -> Client:
        kwargs: dict[str, Any] = {**server_options(self.url, self.ca_file), "database": database}
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
        """Create the database and run the init DDL for one server; idempotent (IF NOT EXISTS everywhere)."""
        from .targets import Target, apply

        apply(self._client_for, Target("server"), self.database, report=lambda line: log.debug("applied %s", line))

    def check_free(self) -> None:
        """Raise StartupError when another process holds the embedded data directory (a server is never held)."""
        if self.embedded:
            require_free(Path(self.url.removeprefix("chdb://")))

    def open(self) -> None:
        """Connect now if possible; a server that is down is retried on the next call.

        The embedded engine must open now: StartupError says why it cannot, in one line.
        """
        if self.embedded:
            require_engine()
        with self._calling(self._lock):
            try:
                self._connect()
            except Exception as exc:  # noqa: BLE001 - reported, and retried by the flusher
                if self.embedded:
                    raise StartupError(embedded_failure(Path(self.url.removeprefix("chdb://")), exc)) from exc
                self._ping_cause = (failure_kind(exc), error_code(exc))  # said here: /health's pings need not repeat it
                log.warning("ClickHouse not reachable yet: %s", certificate_problem(exc) or exc)

    def insert(self, rows: list[Row], token: str) -> None:
        """Insert rows column-wise; the token lets the server drop a repeat of this same batch."""
        block = encode_columns(rows)
        with self._calling(self._lock):
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
        with self._calling(self._lock):
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
        with self._calling(self._lock):
            try:
                uptime = int(str(self._connect().command("SELECT uptime()")))
            except Exception:  # noqa: BLE001 - the insert that follows meets the same failure and reports it
                return False
        # A second of margin for the whole-second uptime: a restart takes longer than that.
        return uptime + 1 < time.time() - started_at

    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        """Run a statement on the inserting client (one call at a time with the inserts)."""
        with self._calling(self._lock):
            self._connect().command(sql, settings=dict(settings or {}))

    def rows(self, sql: str) -> list[tuple]:
        """A query's rows, on the inserting client (what the ingest user may read; see query() for dashboards)."""
        with self._calling(self._lock):
            return [tuple(row) for row in self._connect().query(sql).result_rows]

    def ping(self, wait: float = 1.0) -> bool:
        """True if ClickHouse answers a trivial query.

        While a long insert holds the client, its last outcome stands in: /health must answer within a
        healthcheck's timeout, not queue behind the insert.
        """
        if not self._lock.acquire(timeout=wait):
            return self._reachable
        try:
            with client_call():
                self._connect().command("SELECT 1")
            self._reachable = True
            if self._ping_cause is not None:
                log.info("ClickHouse answers again")
                self._ping_cause = None
        except Exception as exc:  # noqa: BLE001 - the answer is False, the reason goes to the log
            # Once per cause, as inserts are: a healthcheck pings every 10 s, and the same line each time says nothing
            # new. A new cause, or the recovery, is said again.
            cause = (failure_kind(exc), error_code(exc))
            log.log(logging.WARNING if cause != self._ping_cause else logging.DEBUG, "ClickHouse ping failed: %s",
                    certificate_problem(exc) or exc)
            self._ping_cause = cause
            if not self.embedded:
                self._drop_client()
            self._reachable = False
        finally:
            self._lock.release()
        return self._reachable

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run a read-only query (readonly=1: a bug cannot write) on a client of its own, so a slow dashboard query
        does not hold up inserts."""
        with self._calling(self._read_lock):
            if self._reader is None:
                self._reader = self._client_for(self.database)
            result = self._reader.query(sql, settings={"readonly": 1})
            return list(result.column_names), [tuple(row) for row in result.result_rows]

    def _drop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def close(self) -> None:
        with self._calling(self._lock):
            self._drop_client()
        with self._calling(self._read_lock):
            if self._reader is not None:
                self._reader.close()
                self._reader = None
