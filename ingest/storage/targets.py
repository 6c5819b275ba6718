"""The schema and the access rules, written once and rendered for where they run: one ClickHouse server (or the
embedded engine), a cluster of shards and replicas, or ClickHouse Cloud.

The DDL is the numbered files of clickhouse/init/sql, written for one server. For a cluster every statement runs
`ON CLUSTER`; each table becomes a local table on a Replicated engine (its Keeper path named by the `{shard}` and
`{replica}` macros) with a Distributed table over it under the table's own name, so every query the dashboards and
the service run is unchanged; the materialized views read and write the local tables, so each shard rolls up its
own rows; `events` is sharded by session (a session's events, its funnel and its active-session count live on one
shard), the rollups at random (their reads merge states across shards; only a repair writes to them). On ClickHouse
Cloud the engines are managed (every MergeTree is replicated storage), so the DDL runs as written, without the
settings that only a local disk needs.

The users `ingest` and `grafana` get their rights through roles, created by SQL (ClickHouse Cloud takes no users.xml):
`ingest_writer` may insert into the database and read exactly what its check after a crash reads;
`grafana_reader` may read the database, with a settings profile that keeps it read-only but for the settings the
Grafana plugin sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .ddl import ddl_files, quote, statements

KINDS = ("server", "cluster", "cloud")
LOCAL = "_local"
# Where a cluster's replicas of a table meet in Keeper: the macros come from each server's config (config.d).
REPLICA_PATH = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
# Sharding keys of the Distributed tables: a session lives on one shard; rollups are read across all shards.
SHARDING = {"events": "cityHash64(session_id)"}
DEFAULT_SHARDING = "rand()"
# Settings for a local disk that managed storage neither needs nor may take.
_LOCAL_DISK_SETTINGS = ("non_replicated_deduplication_window", "fsync_after_insert", "fsync_part_directory")


@dataclass(frozen=True)
class Target:
    """Where the schema goes: "server" (one ClickHouse, or the embedded engine), "cluster" (named in the servers'
    remote_servers) or "cloud"."""

    kind: str = "server"
    cluster: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a target is one of {', '.join(KINDS)}, not {self.kind!r}")
        if (self.kind == "cluster") != bool(self.cluster):
            raise ValueError("a cluster target names its cluster, and only a cluster target does")
        if self.cluster and not re.fullmatch(r"[A-Za-z_][\w-]*", self.cluster):
            raise ValueError(f"cluster name {self.cluster!r}: letters, digits, _ and -")

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER `{self.cluster}`" if self.kind == "cluster" else ""


def identifier(name: str) -> str:
    return f"`{name}`"


def database_statements(target: Target, database: str) -> list[str]:
    return [f"CREATE DATABASE IF NOT EXISTS {identifier(database)}{target.on_cluster}"]


def schema_statements(target: Target, database: str) -> list[str]:
    """Every statement of the init DDL, in order, for the target (run with `database` as the current database)."""
    rendered = []
    for _, text in ddl_files():
        for statement in statements(text):
            rendered += _render(statement, target, database)
    return rendered


def _render(sql: str, target: Target, database: str) -> list[str]:
    if target.kind == "server":
        return [sql]
    if target.kind == "cloud":
        return _cloud(sql)
    return _cluster(sql, target, database)


def _cloud(sql: str) -> list[str]:
    if re.match(r"ALTER TABLE \w+ MODIFY SETTING", sql):
        # Only local-disk settings are modified by the DDL; managed storage keeps its own.
        settings = re.findall(r"(\w+)\s*=", sql.split("MODIFY SETTING", 1)[1])
        if all(s in _LOCAL_DISK_SETTINGS for s in settings):
            return []
    return [_without_local_disk_settings(sql)]


def _without_local_disk_settings(sql: str) -> str:
    match = re.search(r"\nSETTINGS ([^\n]*)$", sql)
    if not match:
        return sql
    kept = [s for s in (part.strip() for part in match.group(1).split(",")) if s.split("=")[0].strip()
            not in _LOCAL_DISK_SETTINGS]
    return sql[:match.start()] + (f"\nSETTINGS {', '.join(kept)}" if kept else "")


def _cluster(sql: str, target: Target, database: str) -> list[str]:
    on = target.on_cluster
    table = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)(\s*\()", sql)
    if table:
        name = table.group(1)
        body = sql[table.end(1):]
        engine = re.search(r"\bENGINE\s*=\s*(\w*MergeTree)\b(\(\))?", body)
        if engine is None:
            raise ValueError(f"table {name}: a MergeTree-family engine is what a cluster replicates")
        replicated = f"ENGINE = Replicated{engine.group(1)}({REPLICA_PATH})"
        body = body[:engine.start()] + replicated + body[engine.end():]
        local = f"CREATE TABLE IF NOT EXISTS {name}{LOCAL}{on}" + _without_local_disk_settings(body)
        key = SHARDING.get(name, DEFAULT_SHARDING)
        spread = (f"CREATE TABLE IF NOT EXISTS {name}{on} AS {name}{LOCAL}\n"
                  f"ENGINE = Distributed({identifier(target.cluster)}, {identifier(database)}, {name}{LOCAL}, {key})")
        return [local, spread]
    view = re.match(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+)", sql)
    if view:
        rest = sql[view.end():]
        if len(re.findall(r"\bFROM events\b", rest)) != 1:
            raise ValueError(f"materialized view {view.group(1)} must read FROM events exactly once")
        rest = re.sub(r"\bFROM events\b", f"FROM events{LOCAL}", rest)
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view.group(1)}{on} TO {view.group(2)}{LOCAL}{rest}"]
    plain_view = re.match(r"CREATE VIEW IF NOT EXISTS (\w+)", sql)
    if plain_view:  # reads the Distributed tables: all shards
        return [f"CREATE VIEW IF NOT EXISTS {plain_view.group(1)}{on}" + sql[plain_view.end():]]
    add_column = re.match(r"ALTER TABLE (\w+) (ADD COLUMN .*)$", sql, re.S)
    if add_column:  # the local table and the Distributed one over it have the same columns
        name, change = add_column.groups()
        return [f"ALTER TABLE {name}{LOCAL}{on} {change}", f"ALTER TABLE {name}{on} {change}"]
    setting = re.match(r"ALTER TABLE (\w+) (MODIFY SETTING .*)$", sql, re.S)
    if setting:  # storage settings live on the local tables
        return [f"ALTER TABLE {setting.group(1)}{LOCAL}{on} {setting.group(2)}"]
    security = re.match(r"ALTER TABLE (\w+) (MODIFY SQL SECURITY .*)$", sql, re.S)
    if security:  # a view's definer
        return [f"ALTER TABLE {security.group(1)}{on} {security.group(2)}"]
    raise ValueError(f"no cluster rendering for: {sql.splitlines()[0][:100]}")


def apply(connect: Callable[[str | None], Any], target: Target, database: str,
          passwords: dict[str, str] | None = None, report: Callable[[str], None] = lambda line: None) -> int:
    """Create the database, run the schema and, given the users' passwords, the access statements, each once, in
    order (all idempotent); `connect(database or None)` gives a clickhouse-connect client. Says each statement's
    first line to `report`; returns how many ran."""
    done = 0
    for database_name, group in ((None, database_statements(target, database)),
                                 (database, schema_statements(target, database)),
                                 (database, access_statements(target, database, passwords) if passwords else [])):
        if not group:
            continue
        client = connect(database_name)
        try:
            for statement in group:
                client.command(statement)
                report(statement.splitlines()[0])
                done += 1
        finally:
            client.close()
    return done


# --- access ---------------------------------------------------------------------------------------------------------

INGEST_ROLE = "ingest_writer"
GRAFANA_ROLE = "grafana_reader"
GRAFANA_PROFILE = "grafana_readonly"
# The columns of events the ingest user reads after a crash: which insert stored a row, and the counting rollups'
# keys (ingest.storage.sink.Sink.stored_inserts, ingest.storage.rollups.repair). Never the events' content.
INGEST_READS_COLUMNS = ("insert_token", "event_name", "timestamp", "device_type", "country_code")
INGEST_READS_TABLES = ("inserted_events", "events_per_minute", "events_per_minute_by_segment", "segments_per_day")
# What the Grafana plugin sends (clickhouse-go): the query deadline it sets (65 s at most, with queryTimeout 60),
# a row limit, and over HTTP compression and format. readonly=1 forbids every other setting.
GRAFANA_PROFILE_SETTINGS = ("readonly = 1", "max_execution_time = 65 MIN 1 MAX 65 CHANGEABLE_IN_READONLY",
                            "limit CHANGEABLE_IN_READONLY", "enable_http_compression CHANGEABLE_IN_READONLY",
                            "default_format CHANGEABLE_IN_READONLY")


def role_grants(target: Target, database: str) -> dict[str, list[str]]:
    """Each role's grants as GRANT statements without their grantee (append `TO <role>`): exactly what each
    service needs."""
    db = identifier(database)
    local = LOCAL if target.kind == "cluster" else ""
    # On a cluster a Distributed table reads its local tables as the same user: both need the grant.
    tables = [name for table in INGEST_READS_TABLES for name in (table, *([table + local] if local and
                                                                           table != "inserted_events" else []))]
    ingest = [f"GRANT INSERT ON {db}.*",
              *(f"GRANT SELECT({', '.join(INGEST_READS_COLUMNS)}) ON {db}.{table}"
                for table in ("events", *(["events" + local] if local else []))),
              *(f"GRANT SELECT ON {db}.{table}" for table in tables)]
    grafana = [f"GRANT SELECT ON {db}.*", "GRANT SELECT ON system.databases", "GRANT SELECT ON system.tables",
               "GRANT SELECT ON system.columns"]
    return {INGEST_ROLE: ingest, GRAFANA_ROLE: grafana}


def access_statements(target: Target, database: str, passwords: dict[str, str]) -> list[str]:
    """Roles, their exact grants (revoked first, so a rerun leaves nothing else), the Grafana profile and the users
    `ingest` and `grafana` with their passwords: idempotent."""
    on = target.on_cluster
    found = [f"CREATE SETTINGS PROFILE IF NOT EXISTS {GRAFANA_PROFILE}{on}",
             f"ALTER SETTINGS PROFILE {GRAFANA_PROFILE}{on} SETTINGS {', '.join(GRAFANA_PROFILE_SETTINGS)}"]
    for role, grants in role_grants(target, database).items():
        found += [f"CREATE ROLE IF NOT EXISTS {role}{on}", f"REVOKE{on} ALL ON *.* FROM {role}"]
        found += [grant.replace("GRANT ", f"GRANT{on} ", 1) + f" TO {role}" for grant in grants]
    for user, role in (("ingest", INGEST_ROLE), ("grafana", GRAFANA_ROLE)):
        profile = f" SETTINGS PROFILE {GRAFANA_PROFILE}" if user == "grafana" else ""
        found += [f"CREATE USER IF NOT EXISTS {user}{on} IDENTIFIED WITH sha256_password BY {quote(passwords[user])}",
                  f"ALTER USER {user}{on} IDENTIFIED WITH sha256_password BY {quote(passwords[user])}{profile}",
                  f"GRANT{on} {role} TO {user}",
                  f"ALTER USER {user}{on} DEFAULT ROLE {role}"]
    return found
