"""aiohttp's internals, in one place: the site that tracks connections, the serve loop, and what a handler asks of
a connection. Everything here leans on names aiohttp does not document (`BaseSite._runner/_server/_backlog`,
`RequestHandler.connected/force_close`); check_internals() says at once, by name, if an aiohttp release changes them
(tests/test_aiohttp_internals.py runs it against the installed aiohttp)."""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import suppress

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..config import Settings
from .connections import ACCEPT_FAILED, LISTEN_BACKLOG, Connections, connection_limit, open_files_limit

log = logging.getLogger("ingest")
# How long open requests get to finish at shutdown, before the buffer's flush (docker-compose.yml's stop grace period
# covers both).
HTTP_SHUTDOWN_SECONDS = 5.0


def check_internals() -> list[str]:
    """What this module needs of aiohttp and the installed release lacks (empty when all is there)."""

    async def site_attributes() -> list[str]:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        try:
            with socket.socket() as sock:
                site = web.SockSite(runner, sock, backlog=LISTEN_BACKLOG)
                return [f"aiohttp.web.BaseSite.{name}" for name in ("_runner", "_server", "_backlog")
                        if not hasattr(site, name)]
        finally:
            await runner.cleanup()

    missing = asyncio.run(site_attributes())
    if not hasattr(web.AppRunner, "server"):
        missing.append("aiohttp.web.AppRunner.server")
    for name in ("connected", "force_close"):
        if not hasattr(RequestHandler, name):
            missing.append(f"aiohttp.web_protocol.RequestHandler.{name}")
    return missing


def client_gone(request: web.Request) -> bool:
    """Whether the client closed the request's connection."""
    return not request.protocol.connected


def close_after_answer(request: web.Request) -> None:
    """Close the connection once the answer is written, without aiohttp's lingering read of an unread body."""
    request.protocol.force_close()


class TrackedSite(web.BaseSite):
    """A TCP site whose connections go through the app's Connections: a limit, header deadlines, eviction."""
    def __init__(self, runner: web.AppRunner, host: str, port: int, connections: Connections, backlog: int,
                 sock=None) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._connections, self._sock = host, port, connections, sock

    @property
    def name(self) -> str:
        """The URL it listens on, with the port the socket really has (INGEST_PORT=0 lets the system pick one)."""
        port = self._sock.getsockname()[1] if self._sock is not None else self._port
        return f"http://{self._host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None, "the runner is set up before its sites start"
        factory = self._connections.protocol_factory(server)
        if self._sock is not None:  # bound before start-up, so a busy port failed first
            self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(factory, self._host, self._port, backlog=self._backlog)


def quiet_accept_failures(loop: asyncio.AbstractEventLoop, connections: Connections) -> None:
    """Route asyncio's "out of files" accept errors (one a second while they last) to Connections, which logs once."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") == ACCEPT_FAILED and connections.accept_failed(context.get("exception")):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def serve(app: web.Application, connections: Connections, settings: Settings, sock: socket.socket) -> None:
    """Run app on the bound socket until SIGINT/SIGTERM; shutdown runs the cleanup contexts (the buffer's flush).

    What web.run_app does, with a site that tracks connections (limit, header deadline, eviction). keepalive_timeout
    closes an idle connection; aiohttp's timer also ends a request head still unfinished by then, and
    INGEST_HEADER_TIMEOUT_SECONDS (Connections) ends it sooner.
    """

    async def run() -> None:
        runner = web.AppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_SECONDS,
                               keepalive_timeout=settings.keepalive_timeout_seconds)
        await runner.setup()  # opens storage: the files it holds count against the limit computed next
        try:
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
