"""One process acting as one ClickHouse user on the embedded engine: `python -m tests.role_process REQUEST RESPONSE`.

Run by tests/server_users.py (which builds the config that makes chdb's `default` act as the role). The request is a
pickle {"data", "config", "database", "steps"}; each step is one of
- ("command", database | None, sql): a statement through clickhouse-connect, as the services send them;
- ("query", database | None, sql, settings | None): a query, with per-query settings as a client sends them;
- ("multiquery", database, text): a whole file in one call, as `clickhouse client --multiquery` sends it;
- ("ingest", events, token): the events as the service takes them: validated by ingest.contract.validation, inserted by
  ingest.storage.sink.Sink (with the settings it sends) into the events table;
- ("stored_inserts", batch, events): which inserts of a batch storage holds (Sink.stored_inserts, after a crash);
- ("repair", token, first_ms, last_ms): the rollups made to hold what that insert stored
  (ingest.storage.rollups.repair);
- ("ping",): the service's storage health check (Sink.ping);
- ("rename_own_definer", user): every view of the database whose definer is this process's own user gets `user`
  as its definer instead (tests/server_users.py says why).
The response is a pickle of one Outcome per step; a failing step does not stop the others.
"""

from __future__ import annotations

import pickle
import re
import sys
from typing import Any

import chdb
import clickhouse_connect

from ingest.contract.validation import EventValidator
from ingest.storage.rollups import repair
from ingest.storage.sink import Sink

from .server_users import Outcome, definer


def _code(exc: BaseException) -> int | None:
    match = re.search(r"Code: (\d+)", str(exc))
    return int(match.group(1)) if match else getattr(exc, "code", None)


def main(request_path: str, response_path: str) -> None:
    with open(request_path, "rb") as f:
        request = pickle.load(f)
    data, options, database = request["data"], {"config-file": request["config"]}, request["database"]
    clients: dict[str | None, Any] = {}

    def client(db: str | None):
        if db not in clients:
            clients[db] = clickhouse_connect.get_client(dsn=f"chdb://{data}", database=db, chdb_options=options)
        return clients[db]

    sink = Sink(f"chdb://{data}", database, create_schema=False, chdb_options=options)
    outcomes = []
    for step in request["steps"]:
        kind = step[0]
        try:
            if kind == "command":
                client(step[1]).command(step[2])
                outcome = Outcome(True)
            elif kind == "query":
                result = client(step[1]).query(step[2], settings=step[3])
                outcome = Outcome(True, list(result.column_names), [tuple(r) for r in result.result_rows])
            elif kind == "multiquery":
                connection = chdb.connect(f"{data}?config-file={request['config']}")
                connection.query(f"USE `{step[1]}`")
                connection.query(step[2])
                outcome = Outcome(True)
            elif kind == "ingest":
                rows, rejected = EventValidator().judge(step[1])
                if rejected:
                    raise ValueError(f"the service would refuse these events: {rejected[:3]}")
                sink.insert(rows, step[2])
                outcome = Outcome(True, rows=[(len(rows),)])
            elif kind == "stored_inserts":
                rows, _ = EventValidator().judge(step[2])
                outcome = Outcome(True, rows=sorted(sink.stored_inserts(step[1], rows).items()))
            elif kind == "repair":
                outcome = Outcome(True, rows=sorted(repair(sink.command, sink.rows, *step[1:]).items()))
            elif kind == "ping":
                outcome = Outcome(True, rows=[(sink.ping(),)])
            elif kind == "rename_own_definer":
                me = client(None).command("SELECT currentUser()")
                views = client(None).query(
                    "SELECT name, create_table_query FROM system.tables WHERE database = %(d)s "
                    "AND engine IN ('MaterializedView', 'View')", parameters={"d": database}).result_rows
                renamed = []
                for name, create in views:
                    if definer(create) == (me, "DEFINER"):
                        client(None).command(f"ALTER TABLE `{database}`.`{name}` MODIFY DEFINER = `{step[1]}`")
                        renamed.append((name,))
                outcome = Outcome(True, ["view"], renamed)
            else:
                raise ValueError(f"unknown step {kind!r}")
        except Exception as exc:  # noqa: BLE001 - the test reads what ClickHouse answered
            outcome = Outcome(False, error=str(exc).strip()[:2000], code=_code(exc))
        outcomes.append(outcome)
    with open(response_path, "wb") as f:
        pickle.dump(outcomes, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
