"""The dashboard rollups (clickhouse/init/sql): their definitions read from the DDL, rebuilt from the raw events table
on demand, and repaired for one insert after a crash.

A materialized view only sees rows inserted after it exists, so a deployment that had events before the rollups
were created shows gaps until they are rebuilt. The rebuild runs each view's own SELECT (as the DDL writes it, so the
aggregation is written once) over the whole events table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Callable

from clickhouse_connect.driver.client import Client

from .ddl import ddl_files, quote, statements

# The parameterised view (005_exactly_once.sql) that returns the rows one insert stored: a repair reads them through
# it, so the ingest user needs no SELECT on the events table itself.
_INSERTED = "inserted_events"
_FROM_EVENTS = re.compile(r"\bFROM events\b")


@dataclass(frozen=True)
class Rollup:
    """A materialized view of the events table and the table it writes to."""

    view: str
    target: str
    select: str
    # SummingMergeTree: its numbers add up, so rows counted twice count twice. Otherwise the table holds only
    # distinct-count states (uniqCombined), which merge as sets: the same rows added again change nothing.
    additive: bool = False
    keys: tuple[str, ...] = ()
    values: tuple[str, ...] = ()

    def select_from(self, source: str) -> str:
        """The view's SELECT reading `source` instead of the events table."""
        return _FROM_EVENTS.sub(f"FROM {source}", self.select, count=1)


@cache
def defined_rollups() -> tuple[Rollup, ...]:
    """Every materialized view the init DDL creates on the events table, with what its target table is."""
    tables: dict[str, tuple[str, str, str]] = {}
    views: list[tuple[str, str, str]] = []
    for _, text in ddl_files():
        for statement in statements(text):
            if table := re.match(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*)\)\s*ENGINE\s*=\s*(\w+)(.*)$",
                                 statement, re.S):
                tables[table.group(1)] = (table.group(2), table.group(3), table.group(4))
            elif view := re.match(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+)\s.*?\bAS\s+(SELECT\b.*)$",
                                  statement, re.S):
                views.append((view.group(1), view.group(2), view.group(3).strip()))
    found = []
    for name, target, select in views:
        if len(_FROM_EVENTS.findall(select)) != 1:
            raise ValueError(f"materialized view {name} must read FROM events exactly once")
        columns_text, engine, rest = tables[target]
        columns = re.findall(r"^\s*(\w+)\s+(\S.*?),?\s*$", columns_text, re.M)
        order = re.search(r"ORDER BY\s*(?:\(([^)]*)\)|(\w+))", rest)
        if order is None:
            raise ValueError(f"rollup table {target} has no ORDER BY: its key columns are the rollup's keys")
        keys = tuple(k.strip() for k in (order.group(1) or order.group(2)).split(","))
        values = tuple(c for c, _ in columns if c not in keys)
        additive = engine == "SummingMergeTree"
        if not additive and not all(t.startswith("AggregateFunction(uniq") for c, t in columns if c in values):
            # repair() adds a block again to any other rollup, which only distinct counts absorb.
            raise ValueError(f"rollup {target} must be a SummingMergeTree or hold only distinct-count states")
        found.append(Rollup(name, target, select, additive, keys, values))
    return tuple(sorted(found, key=lambda r: r.view))


def rebuild(client: Client) -> dict[str, int]:
    """Empty each rollup table and refill it from all of `events`; rows per table name. Run with inserts stopped.

    Rows inserted while this runs can reach a rollup twice (through its view and through the rebuild's SELECT):
    stop the ingest service first (docs/operations.md, "Upgrading").
    """
    counts = {}
    for rollup in defined_rollups():
        client.command(f"TRUNCATE TABLE {rollup.target}")
        # insert_deduplicate=0: equal blocks of one INSERT ... SELECT are data here, not a retry to drop.
        client.command(f"INSERT INTO {rollup.target} {rollup.select}", settings={"insert_deduplicate": 0})
        counts[rollup.target] = int(str(client.command(f"SELECT count() FROM {rollup.target}")))
    return counts


def repair(run: Callable[..., object], query: Callable[[str], list[tuple]], token: str, first_ms: int,
           last_ms: int) -> dict[str, str]:
    """Make every rollup hold the rows that the insert `token` stored in `events`, exactly once; rollup -> outcome.

    After a crash the engine's record of which blocks a rollup already took cannot be trusted (it is written before
    the block's part is in place), so each rollup is judged on what it holds:
    - distinct-count rollups get the insert's rows again: their states merge as sets, so a repeat changes nothing
      ("added");
    - counting rollups are compared, for every key the insert touches, with the events table: equal means the insert
      is in ("present"); short by exactly the insert's own counts means it is not, and they get it ("added");
      anything else ("unsure") is left alone and reported (another writer's insert in flight, or older damage:
      `rebuild-rollups` restores them).
    `first_ms`/`last_ms` bound the insert's timestamps; the events compared are those of the whole UTC days around
    them, which covers every key of a per-minute or per-day rollup.
    """
    source = f"{_INSERTED}(token = {quote(token)})"
    outcomes = {}
    day_ms = 86_400_000
    window = (f"timestamp >= fromUnixTimestamp64Milli({first_ms // day_ms * day_ms}, 'UTC') AND "
              f"timestamp < fromUnixTimestamp64Milli({(last_ms // day_ms + 1) * day_ms}, 'UTC')")
    for rollup in defined_rollups():
        add = f"INSERT INTO {rollup.target} {rollup.select_from(source)}"
        if not rollup.additive:
            run(add, settings={"insert_deduplicate": 0})
            outcomes[rollup.target] = "added"
            continue
        keys, values = ", ".join(rollup.keys), rollup.values
        sums = ", ".join(f"sum({v}) AS {v}" for v in values)
        equal = " AND ".join(f"s.{v} = e.{v}" for v in values)
        short = " AND ".join(f"s.{v} + b.{v} = e.{v}" for v in values)
        verdict = query(
            f"WITH b AS (SELECT {keys}, {sums} FROM ({rollup.select_from(source)}) GROUP BY {keys}), "
            f"s AS (SELECT {keys}, {sums} FROM {rollup.target} WHERE ({keys}) IN (SELECT {keys} FROM b) "
            f"GROUP BY {keys}), "
            f"e AS (SELECT {keys}, {sums} FROM ({rollup.select}) WHERE ({keys}) IN (SELECT {keys} FROM b) "
            f"GROUP BY {keys}) "
            f"SELECT count(), countIf({equal}), countIf({short}) "
            f"FROM b LEFT JOIN s USING ({keys}) LEFT JOIN e USING ({keys}) "
            f"SETTINGS additional_table_filters = {{'events': {quote(window)}}}, join_use_nulls = 0")
        touched, present, missing = verdict[0]
        if touched and present == touched:
            outcomes[rollup.target] = "present"
        elif touched and missing == touched:
            run(add, settings={"insert_deduplicate": 0})
            outcomes[rollup.target] = "added"
        else:
            outcomes[rollup.target] = "unsure"
    return outcomes
