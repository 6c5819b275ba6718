"""The dashboard rollups (clickhouse/init/sql/002_rollups.sql): rebuilt from the raw events table on demand.

A materialized view only sees rows inserted after it exists, so a deployment that had events before the rollups
were created shows gaps until they are rebuilt. The rebuild runs each view's own SELECT (read back from
system.tables, so the aggregation is written once, in the DDL) over the whole events table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class Rollup:
    """A materialized view of the events table and the table it writes to."""

    view: str
    target: str
    select: str


def rollups(client: Client) -> list[Rollup]:
    """Every materialized view in the client's database that writes to a table of that database, by name."""
    rows = client.query(
        "SELECT name, as_select, create_table_query FROM system.tables "
        "WHERE database = currentDatabase() AND engine = 'MaterializedView' ORDER BY name").result_rows
    found = []
    for name, select, create in rows:
        match = re.search(r"^CREATE MATERIALIZED VIEW \S+ TO (\S+)", create)
        if match is None:
            raise ValueError(f"materialized view {name} has no TO table: the rollups always name their target")
        found.append(Rollup(name, match.group(1), select))
    return found


def rebuild(client: Client) -> dict[str, int]:
    """Empty each rollup table and refill it from all of `events`; rows per table name. Run with inserts stopped.

    Rows inserted while this runs can reach a rollup twice (through its view and through the rebuild's SELECT):
    stop the ingest service first (docs/operations.md, "Upgrading").
    """
    counts = {}
    for rollup in rollups(client):
        client.command(f"TRUNCATE TABLE {rollup.target}")
        # insert_deduplicate=0: equal blocks of one INSERT ... SELECT are data here, not a retry to drop.
        client.command(f"INSERT INTO {rollup.target} {rollup.select}", settings={"insert_deduplicate": 0})
        counts[rollup.target.split(".")[-1].strip("`")] = int(client.command(f"SELECT count() FROM {rollup.target}"))
    return counts


def rebuild_command(settings) -> dict[str, int]:
    """`python -m ingest rebuild-rollups`: connect as configured (the embedded engine gets its schema, so the
    views exist) and rebuild; StartupError says in one line why it could not start."""
    import clickhouse_connect

    from .errors import StartupError
    from .sink import Sink, reason

    embedded = settings.clickhouse_url.startswith("chdb://")
    try:
        if embedded:
            Sink(settings.clickhouse_url, settings.clickhouse_database).open()  # creates the schema, or says why not
        client = clickhouse_connect.get_client(dsn=settings.clickhouse_url, database=settings.clickhouse_database)
    except StartupError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        raise StartupError(f"cannot reach ClickHouse at {settings.redacted_url}: {reason(exc)}") from None
    try:
        return rebuild(client)
    finally:
        client.close()
