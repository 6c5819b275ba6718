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
    import asyncio
    from contextlib import suppress

    from aiohttp import web

    from .app import CONNECTIONS, LISTEN_BACKLOG, TrackedSite, create_app, quiet_accept_failures
    from .connections import connection_limit, open_files_limit

    log = logging.getLogger("ingest")
    app = create_app(settings)
    tune_gc()

    async def run() -> None:
        # What web.run_app does, with a site that tracks connections (limit, header deadline, eviction).
        # SIGINT and SIGTERM become a graceful shutdown that runs the cleanup contexts (the buffer's flush).
        # keepalive_timeout closes an idle connection; aiohttp's timer also ends a request head still unfinished
        # by then, and INGEST_HEADER_TIMEOUT_SECONDS (Connections) ends it sooner.
        runner = web.AppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=5,
                               keepalive_timeout=settings.keepalive_timeout_seconds)
        await runner.setup()  # opens storage: the files it holds count against the limit computed next
        try:
            connections = app[CONNECTIONS]
            connections.limit = connection_limit(settings.max_connections, LISTEN_BACKLOG)
            quiet_accept_failures(asyncio.get_running_loop(), connections)
            site = TrackedSite(runner, settings.host, settings.port, connections, backlog=LISTEN_BACKLOG)
            await site.start()
            log.info("listening on %s: at most %d connections (open-files limit %s)", site.name, connections.limit,
                     open_files_limit() or "unlimited")
            while True:
                await asyncio.sleep(3600)
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main_task = loop.create_task(run())
    try:
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main_task.done():
            main_task.cancel()
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(main_task)
        leftover = asyncio.all_tasks(loop)  # e.g. handlers of connections still lingering
        for task in leftover:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the ingest service (settings from the environment)")
    panels = commands.add_parser("panels", help="print the product dashboard's panels, run on the configured ClickHouse")
    panels.add_argument("--range", choices=["1h", "6h", "24h"], default="1h", help="time range ending now")
    panels.add_argument("--watch", action="store_true", help="refresh every 5 s, like the dashboard")
    panels.add_argument("--dashboard", help="dashboard JSON to read (default: grafana/dashboards/product-analytics.json)")
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

        return panels_command.main(settings, args.range, args.watch, args.dashboard, sys.stdout)
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
