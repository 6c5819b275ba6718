"""Shared fixtures: one embedded ClickHouse path per test process, one database per test."""

from __future__ import annotations

import dataclasses
import socket
import threading
import uuid
from typing import Any, Callable

import clickhouse_connect
import pytest

from ingest.api.app import create_app
from ingest.config import Settings


@pytest.fixture(scope="session", autouse=True)
def default_port_taken():
    """Something listens on the service's default address (127.0.0.1:3001) while the tests run, as the Quickstart's
    service in another terminal would: a test that needs the default port free fails on every run, not only on some
    machines. It answers by closing the connection, so a client sent there by mistake fails at once."""
    try:
        # Each test process of a parallel run (pytest -n) holds a listener of its own (SO_REUSEPORT): with only the
        # first one holding it, the port came free when that process finished before the others.
        listener = socket.create_server(("127.0.0.1", 3001), reuse_port=True)
    except OSError:  # taken already, by a process that shares it with no one (the Quickstart's service)
        yield
        return

    def refuse() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed at the end of the session
                return
            connection.close()

    threading.Thread(target=refuse, name="default-port-taken", daemon=True).start()
    try:
        yield
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory) -> str:
    # chdb opens one data path per process, so every test in this process shares it.
    return str(tmp_path_factory.mktemp("chdb"))


@pytest.fixture
def settings(chdb_path, tmp_path) -> Settings:
    return Settings(
        wal_dir=str(tmp_path / "wal"),
        dead_letter_path=str(tmp_path / "dead-letter.jsonl"),
        clickhouse_url=f"chdb://{chdb_path}",
        clickhouse_database=f"t_{uuid.uuid4().hex[:12]}",
        flush_interval_seconds=0.2,
        flush_events=1000,
        retry_max_seconds=0.2,
    )


@pytest.fixture
def ch(chdb_path, settings):
    """A plain client on the test's database, to look at what landed."""
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    client.command(f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse_database}`")
    client.close()
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=settings.clickhouse_database)
    yield client
    client.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}` SYNC")
    client.close()


@pytest.fixture
def make_client(ch, aiohttp_client, settings) -> Callable:
    """Start the real app (real engine, real HTTP) with settings overrides.

    Depends on `ch` so the database outlives the apps: their shutdown flush still has a table.
    """

    async def make(**overrides: Any):
        return await aiohttp_client(create_app(dataclasses.replace(settings, **overrides)))

    return make


OPT_IN = ("floors", "soak")  # run only when -m names them


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leaves out the `floors` and `soak` tests unless -m names them (`-m "not slow"` runs neither), and marks `unit`
    every test that starts no service or tool (not `slow`, `floors` or `soak`; a short `python -m ingest --help` is
    fine) and opens no engine (no chdb_path, so no `ch`, `settings` or `make_client`): the inner loop, -m unit."""
    named = config.getoption("markexpr") or ""
    left_out = [item for item in items if any(item.get_closest_marker(m) and m not in named for m in OPT_IN)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        dropped = set(left_out)
        items[:] = [item for item in items if item not in dropped]
    # The tests that start processes first: with -n 2 the short ones then fill in behind them, and no worker is left
    # with a long test at the end while the other waits (a stable sort: the order within each kind stays).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("slow", "floors", "soak")) \
                and "chdb_path" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.unit)
