"""Command line: `serve` runs the service, `panels` prints the dashboard, `demo` sends demo traffic,
`rebuild-rollups` refills the dashboard rollups from the events table (after an upgrade)."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import socket
import sys

from .config import ConfigError, Settings
from .errors import StartupError


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path of a service process."""
    # The buffer holds up to INGEST_BUFFER_MAX_EVENTS row tuples, which can form no cycles, yet the
    # cyclic collector rescans them on each collection: ~25% of the per-event CPU under load (profiled).
    # Freeze what start-up made and collect rarely; reference counting still frees everything else.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def listen(settings: Settings) -> socket.socket:
    """The service's listening socket, bound before anything else starts (so a busy port fails first)."""
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"INGEST_HOST {settings.host!r}: not an address this machine has ({exc.strerror})") \
            from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        hint = " (another service? set INGEST_PORT)" if exc.errno == errno.EADDRINUSE else ""
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}{hint}") from None
    return sock


def serve(settings: Settings) -> None:
    """Run the HTTP service until SIGINT/SIGTERM; shutdown flushes the buffer before exit."""
    import asyncio
    from contextlib import suppress

    from aiohttp import web

    from .app import CONNECTIONS, LISTEN_BACKLOG, TrackedSite, create_app, quiet_accept_failures
    from .connections import connection_limit, open_files_limit

    log = logging.getLogger("ingest")
    sock = listen(settings)  # before anything is opened: a busy port is said first, in one line
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
            site = TrackedSite(runner, settings.host, settings.port, connections, backlog=LISTEN_BACKLOG, sock=sock)
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
    from .config import environment_help

    defaults = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the ingest service (settings from the environment)",
                        description="Run the ingest service until SIGINT/SIGTERM (then it flushes its buffer). "
                                    "Every setting is an environment variable:",
                        epilog=environment_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    panels = commands.add_parser("panels", help="print the product dashboard's panels, run on the configured ClickHouse",
                                 description="The product dashboard in a terminal: Grafana's panel SQL, run on "
                                             "CLICKHOUSE_URL / CLICKHOUSE_DATABASE (on the embedded engine through "
                                             "the running service, INGEST_HOST:INGEST_PORT, if it holds the data).",
                                 formatter_class=defaults)
    panels.add_argument("--range", choices=["1h", "6h", "24h"], default="1h", help="time range ending now")
    panels.add_argument("--watch", action="store_true", help="refresh every 5 s, like the dashboard")
    panels.add_argument("--dashboard", help="dashboard JSON to read (default: the product dashboard, "
                                            "grafana/dashboards/product-analytics.json)")
    panels.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="select a value of the dashboard's template variable NAME instead of its saved one; "
                             "repeat for several values of a multi-value variable ($__all for All)")
    panels.add_argument("--device", metavar="TYPE[,TYPE...]",
                        help="show these device types only: the same as --var device_type=TYPE for each "
                             "(default: the dashboard's saved selection, All)")
    panels.add_argument("--country", metavar="CODE[,CODE...]",
                        help="show these countries only (ISO codes, e.g. DE,FR): the same as --var "
                             "country_code=CODE for each (default: the dashboard's saved selection, All)")
    from . import demo  # demo traffic takes its options from argv, not the environment
    demo.add_arguments(commands.add_parser("demo", help="send realistic demo traffic to a running service",
                                           description=demo.__doc__, formatter_class=defaults))
    commands.add_parser("rebuild-rollups", help="empty the dashboard rollups and refill them from the events table "
                                                "(run with the service stopped)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run_from_args(args)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "serve":
        # A command's answer is its output; libraries' retry chatter (urllib3, the client) is not.
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("ingest").setLevel(settings.log_level.upper())
        import clickhouse_connect.driver.httputil  # noqa: F401 - it sets urllib3's level on import; set it after

        logging.getLogger("urllib3").setLevel(logging.ERROR)
    if args.command == "serve":
        try:
            serve(settings)
        except StartupError as exc:
            print(f"ingest: {exc}", file=sys.stderr)
            return 1
    elif args.command == "panels":
        from . import panels as panels_command

        from .variables import VariableError, chosen_values

        try:
            chosen = chosen_values(args.var)
        except VariableError as exc:
            parser.error(f"--var: {exc}")
        for flag, name, given in (("--device", "device_type", args.device), ("--country", "country_code", args.country)):
            if given is None:
                continue
            if name in chosen:
                parser.error(f"{flag} and --var {name}=... both choose {name}: use one of them")
            values = [v.strip() for v in given.split(",")]
            if not all(values):
                parser.error(f"{flag} takes values separated by commas, e.g. {flag} a,b; not {given!r}")
            chosen[name] = values
        try:
            return panels_command.main(settings, args.range, args.watch, args.dashboard, sys.stdout, chosen)
        except (panels_command.PanelsError, panels_command.DashboardError, StartupError) as exc:
            print(f"ingest panels: {exc}", file=sys.stderr)
            return 1
    elif args.command == "rebuild-rollups":
        from .rollups import rebuild_command

        try:
            for table, rows in rebuild_command(settings).items():
                print(f"{table}: {rows} rows")
        except StartupError as exc:
            print(f"ingest rebuild-rollups: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
