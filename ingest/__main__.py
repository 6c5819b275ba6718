"""Command line: `serve` runs the service, `panels` prints the dashboard, `demo` sends demo traffic,
`rebuild-rollups` refills the dashboard rollups from the events table (after an upgrade)."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from .config import ConfigError, Settings


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path of a service process."""
    # The buffer holds up to INGEST_BUFFER_MAX_EVENTS row tuples, which can form no cycles, yet the
    # cyclic collector rescans them on each collection: ~25% of the per-event CPU under load (profiled).
    # Freeze what start-up made and collect rarely; reference counting still frees everything else.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def serve(settings: Settings) -> None:
    """Run the HTTP service until SIGINT/SIGTERM; shutdown flushes the buffer before exit."""
    from aiohttp import web

    from .app import create_app

    app = create_app(settings)
    tune_gc()
    # run_app turns SIGINT and SIGTERM into a graceful shutdown that runs the cleanup contexts.
    web.run_app(app, host=settings.host, port=settings.port, access_log=None,
                shutdown_timeout=5, print=lambda msg: logging.getLogger("ingest").info(msg.strip()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the ingest service (settings from the environment)")
    panels = commands.add_parser("panels", help="print the product dashboard's panels, run on the configured ClickHouse")
    panels.add_argument("--range", choices=["1h", "6h", "24h"], default="1h", help="time range ending now")
    panels.add_argument("--watch", action="store_true", help="refresh every 5 s, like the dashboard")
    panels.add_argument("--dashboard", help="dashboard JSON to read (default: grafana/dashboards/product-analytics.json)")
    panels.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="select a value of the dashboard's template variable NAME instead of its saved one; "
                             "repeat for several values of a multi-value variable ($__all for All)")
    from . import demo  # demo traffic takes its options from argv, not the environment
    demo.add_arguments(commands.add_parser("demo", help="send realistic demo traffic to a running service"))
    commands.add_parser("rebuild-rollups", help="empty the dashboard rollups and refill them from the events table "
                                                "(run with the service stopped)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run_from_args(args)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        serve(settings)
    elif args.command == "panels":
        from . import panels as panels_command

        chosen: dict[str, list[str]] = {}
        for item in args.var:
            name, sep, value = item.partition("=")
            if not sep or not name:
                parser.error(f"--var takes NAME=VALUE, not {item!r}")
            chosen.setdefault(name, []).append(value)
        return panels_command.main(settings, args.range, args.watch, args.dashboard, sys.stdout, chosen)
    elif args.command == "rebuild-rollups":
        from .panels import connect
        from .rollups import rebuild

        client = connect(settings)
        try:
            for table, rows in rebuild(client).items():
                print(f"{table}: {rows} rows")
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
