"""`python -m ingest rebuild-rollups`: empty the dashboard rollups and refill them from the events table."""

from __future__ import annotations

from ..config import Settings
from ..errors import StartupError


def run(settings: Settings) -> None:
    """Connect as configured (the embedded engine gets its schema, so the views exist), rebuild, print the rows of
    each rollup; StartupError says in one line why it could not start."""
    import clickhouse_connect

    from ..storage.failures import reason
    from ..storage.rollups import rebuild
    from ..storage.sink import Sink, server_options

    try:
        if settings.clickhouse_url.startswith("chdb://"):
            Sink(settings.clickhouse_url, settings.clickhouse_database).open()  # creates the schema, or says why not
        client = clickhouse_connect.get_client(**server_options(settings.clickhouse_url, settings.clickhouse_ca_file),
                                               database=settings.clickhouse_database)
    except StartupError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        raise StartupError(f"cannot reach ClickHouse at {settings.redacted_url}: {reason(exc)}") from None
    try:
        for table, rows in rebuild(client).items():
            print(f"{table}: {rows} rows")
    finally:
        client.close()
