"""Command line: `serve` runs the service, `panels` prints the dashboard, `demo` sends demo traffic, `schema` shows
or applies the schema and users for a server, a cluster or ClickHouse Cloud, `rebuild-rollups` refills the dashboard
rollups from the events table (after an upgrade). One module per command."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap

from ..config import ConfigError, Settings, environment_help, unknown_env_names
from ..errors import StartupError
from ..storage.chatter import ClientChatter


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after an option's help, unless the help already says its default or there is none
    to show (None, an off flag, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == [] or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    from . import demo, panels, schema

    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    # The environment's column, kept as it is written, wrapped as argparse wraps the rest: to the terminal's width
    # less 2.
    width = shutil.get_terminal_size().columns - 2
    commands.add_parser("serve", help="run the ingest service (settings from the environment)",
                        description=textwrap.fill("Run the ingest service until SIGINT/SIGTERM (then it flushes its "
                                                  "buffer). Every setting is an environment variable:", width),
                        epilog=environment_help(width), formatter_class=argparse.RawDescriptionHelpFormatter)
    panels_parser = commands.add_parser(
        "panels", help="print the product dashboard's panels, run on the configured ClickHouse",
        description="The product dashboard in a terminal: Grafana's panel SQL, run on CLICKHOUSE_URL / "
                    "CLICKHOUSE_DATABASE (on the embedded engine through the running service, "
                    "INGEST_HOST:INGEST_PORT, if it holds the data).", formatter_class=_Defaults)
    panels.add_arguments(panels_parser)
    # Demo traffic takes its options from argv, not the environment.
    demo.add_arguments(commands.add_parser("demo", help="send realistic demo traffic to a running service",
                                           description=demo.traffic.__doc__, formatter_class=_Defaults))
    commands.add_parser("rebuild-rollups", help="empty the dashboard rollups and refill them from the events table "
                                                "(run with the service stopped)",
                        description="Empty every rollup the init DDL defines and refill it from the events table with "
                                    "its view's own SELECT (after an upgrade that adds a rollup). Stop the service "
                                    "first: an insert meanwhile would reach a rollup twice.")
    schema.add_arguments(commands.add_parser(
        "schema", help="the schema and the users for one server, a cluster or ClickHouse Cloud: show or apply",
        description=schema.__doc__))
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in unknown_env_names():
        logging.getLogger("ingest").warning("%s", warning)
    for handler in logging.getLogger().handlers:
        # urllib3's and clickhouse-connect's lines about our client's retries: the service says each failure once.
        handler.addFilter(ClientChatter())
        if args.command != "serve":
            # A command's answer is its output; libraries' retry chatter (urllib3, the client) is not. A filter on
            # the handler, because a library may set its own logger's level when it is imported.
            handler.addFilter(lambda record: record.name.startswith("ingest") or record.levelno >= logging.ERROR)
    try:
        if args.command == "serve":
            from . import serve

            serve.run(settings)
        elif args.command == "panels":
            return panels.run(args, settings, panels_parser)
        elif args.command == "schema":
            return schema.run(args, settings)
        elif args.command == "rebuild-rollups":
            from . import rollups

            rollups.run(settings)
    except StartupError as exc:
        name = "" if args.command == "serve" else f" {args.command}"
        print(f"ingest{name}: {exc}", file=sys.stderr)
        return 1
    return 0
