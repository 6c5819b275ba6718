"""The real app on a real 127.0.0.1 port, run in a background thread: for clients that cannot share the test's loop.
And a slow link to put between such a client and the service."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
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


class SlowLink:
    """A TCP relay on 127.0.0.1 that passes client bytes on at `bytes_per_second` (answers go back at full speed):
    a slow but steady uplink, such as a phone's, between a real client and the service."""

    def __init__(self, target_port: int, bytes_per_second: int) -> None:
        self.target_port, self.rate = target_port, bytes_per_second
        self.uploads: list[tuple[int, float]] = []  # (bytes, seconds) of each connection's upload so far
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client, upstream) -> None:
        index, sent, started = len(self.uploads), 0, time.monotonic()
        self.uploads.append((0, 0.0))
        try:
            while chunk := client.recv(1024):
                for i in range(0, len(chunk), 256):  # 256-byte steps, each at its time on the slow link
                    piece = chunk[i:i + 256]
                    time.sleep(max(0.0, started + (sent + len(piece)) / self.rate - time.monotonic()))
                    upstream.sendall(piece)
                    sent += len(piece)
                    self.uploads[index] = (sent, time.monotonic() - started)
        except OSError:
            pass

    @staticmethod
    def _down(upstream, client) -> None:
        try:
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


class LostAnswers:
    """A TCP relay on 127.0.0.1 that passes requests to the service but, for the first `lose` requests that start
    with `lose_for`, drops the service's answer and cuts the connection: the request was taken, and the client never
    hears it. Requests on a kept-alive connection are told apart by their first bytes (HTTP/1.1, no pipelining)."""

    def __init__(self, target_port: int, lose: int, lose_for: bytes = b"POST /events") -> None:
        self.target_port, self.lose, self.lose_for = target_port, lose, lose_for
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            losing = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, losing), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, losing), daemon=True).start()

    def _requests(self, client, upstream, losing: threading.Event) -> None:
        try:
            while chunk := client.recv(65536):
                with self._lock:
                    if chunk.startswith(self.lose_for) and self.lose > 0:
                        self.lose -= 1
                        losing.set()  # before the request goes on: its answer must not get through
                upstream.sendall(chunk)
        except OSError:
            pass

    @staticmethod
    def _answers(upstream, client, losing: threading.Event) -> None:
        try:
            while chunk := upstream.recv(65536):
                if losing.is_set():
                    break  # the service answered: the request was taken, and the answer goes nowhere
                client.sendall(chunk)
        except OSError:
            pass
        for sock in (client, upstream):  # shutdown, not just close: the other thread is blocked reading it
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._listener.close()
