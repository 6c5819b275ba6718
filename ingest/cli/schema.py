"""`python -m ingest schema show|apply`: the schema and the users, rendered for one server, a cluster or ClickHouse
Cloud (ingest.storage.targets); `apply` runs them on a server as an admin, idempotently, and says what it did."""

from __future__ import annotations

import argparse
import sys

from ..config import SchemaSecrets, Settings
from ..errors import StartupError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="print the SQL for a target (nothing is run)",
                              description="Print the SQL that `apply` runs, one statement after another.")
    apply = actions.add_parser(
        "apply", help="create or update the database, tables, views, roles and users on a server",
        description="Run the schema and the access rules on the server at --url, as a user that may create "
                    "tables, roles and users (admin): idempotent, so it runs at every deploy. The passwords of the "
                    "users ingest and grafana come from CLICKHOUSE_INGEST_PASSWORD and CLICKHOUSE_GRAFANA_PASSWORD.")
    for sub in (show, apply):
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--cluster", metavar="NAME", default="",
                           help="a cluster of the servers' remote_servers: ON CLUSTER, Replicated local tables, "
                                "Distributed tables under the names the dashboards read")
        where.add_argument("--cloud", action="store_true", help="ClickHouse Cloud: managed engines")
        sub.add_argument("--database", default=None,
                         help="the database (default: CLICKHOUSE_DATABASE, else analytics)")
        sub.add_argument("--no-users", action="store_true", help="the schema only, no roles or users")
    apply.add_argument("--url", default=None,
                       help="the server, as an admin: https://admin:PASSWORD@host:8443 (or http://...:8123); "
                            "default: CLICKHOUSE_ADMIN_URL")
    apply.add_argument("--ca-file", default=None,
                       help="PEM file of the CA that signed the server's certificate (default: CLICKHOUSE_CA_FILE)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..storage.targets import Target, access_statements, apply, database_statements, schema_statements

    target = Target("cluster", args.cluster) if args.cluster else Target("cloud" if args.cloud else "server")
    database = args.database or settings.clickhouse_database
    if args.action == "show":
        found = database_statements(target, database) + schema_statements(target, database)
        if not args.no_users:
            found += access_statements(target, database, {"ingest": "<CLICKHOUSE_INGEST_PASSWORD>",
                                                          "grafana": "<CLICKHOUSE_GRAFANA_PASSWORD>"})
        print(";\n\n".join(found) + ";")
        return 0
    secrets = SchemaSecrets.from_env()
    url = args.url or secrets.admin_url
    if not url:
        raise StartupError("say where: --url https://admin:PASSWORD@host:8443, or CLICKHOUSE_ADMIN_URL")
    passwords = None
    if not args.no_users:
        passwords = {"ingest": secrets.ingest_password, "grafana": secrets.grafana_password}
        missing = [f"CLICKHOUSE_{user.upper()}_PASSWORD" for user, password in passwords.items() if not password]
        if missing:
            raise StartupError(f"set {' and '.join(missing)} (the users' passwords), or pass --no-users")
    import clickhouse_connect

    from ..config import _redact
    from ..storage.failures import reason
    from ..storage.sink import server_options

    ca_file = args.ca_file or settings.clickhouse_ca_file

    def connect(database_name: str | None):
        return clickhouse_connect.get_client(**server_options(url, ca_file), database=database_name)

    where = f"{_redact(url)}" + (f" (cluster {target.cluster})" if target.cluster else
                                      " (ClickHouse Cloud)" if target.kind == "cloud" else "")
    try:
        done = apply(connect, target, database, passwords, report=lambda line: print(f"  {line}"))
    except Exception as exc:  # noqa: BLE001 - one line: the server's words
        raise StartupError(f"schema apply on {where} stopped: {reason(exc)}") from None
    users = "" if args.no_users else "; roles ingest_writer and grafana_reader, users ingest and grafana"
    print(f"schema apply: {done} statements on {where}: database {database}, its tables and views{users}",
          file=sys.stderr)
    return 0
