"""Shared fixtures: one embedded ClickHouse path per test process, one database per test."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Callable

import clickhouse_connect
import pytest

from ingest.api.app import create_app
from ingest.config import Settings


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
