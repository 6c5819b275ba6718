"""The real app on a real 127.0.0.1 port, run in a background thread: for clients that cannot share the test's loop."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Iterator

from aiohttp import web


async def _start(runner: web.AppRunner, sites: int) -> list[int]:
    await runner.setup()
    for _ in range(sites):
        await web.TCPSite(runner, "127.0.0.1", 0).start()  # port 0: the OS picks a free one
    return [address[1] for address in runner.addresses]


@contextmanager
def serving_on(app: web.Application, sites: int) -> Iterator[list[str]]:
    """Serve app on `sites` ports (each a different origin) until the block ends, its shutdown included."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="live-server", daemon=True)
    thread.start()
    runner = web.AppRunner(app, access_log=None)
    try:
        ports = asyncio.run_coroutine_threadsafe(_start(runner, sites), loop).result(60)
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextmanager
def serving(app: web.Application) -> Iterator[str]:
    """Serve app on one port until the block ends (its shutdown flush included); yields the base URL."""
    with serving_on(app, 1) as [url]:
        yield url
