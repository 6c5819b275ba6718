"""The real app on a real 127.0.0.1 port, run in a background thread: for clients that cannot share the test's loop."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Iterator

from aiohttp import web


async def _start(runner: web.AppRunner) -> int:
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # port 0: the OS picks a free one
    await site.start()
    return runner.addresses[0][1]


@contextmanager
def serving(app: web.Application) -> Iterator[str]:
    """Serve app until the block ends (its shutdown flush included); yields the base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="live-server", daemon=True)
    thread.start()
    runner = web.AppRunner(app, access_log=None)
    try:
        port = asyncio.run_coroutine_threadsafe(_start(runner), loop).result(60)
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
