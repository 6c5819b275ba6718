"""Ports a test holds itself: one nothing answers on (until a service is started on it), and a busy one.

A service the test starts and needs only once takes INGEST_PORT=0 instead (tests/harness/service.py); these are for
tests that need a port before, after or without a service: a client's target across a restart, a dead address.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port held by this process: connections to it are refused, nobody else can bind it, and a service
    started with INGEST_PORT set to it can listen on it (again and again) while the block lasts.

    The socket is bound with SO_REUSEADDR and never listens; Linux lets another SO_REUSEADDR socket (the service's)
    bind and listen on the same address then, and refuses every other bind, ephemeral ports included.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port something already listens on, for the while the block lasts."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]
