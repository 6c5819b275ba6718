"""`python -m ingest serve`: the service, until SIGINT/SIGTERM (then it flushes its buffer)."""

from __future__ import annotations

import errno
import gc
import socket

from ..config import Settings
from ..errors import StartupError


def run(settings: Settings) -> None:
    """Bind the port first (a busy one is said before anything opens), then serve; StartupError says why not."""
    from ..api.app import CONNECTIONS, create_app
    from ..api.server import serve

    sock = listen(settings)
    app = create_app(settings)
    tune_gc()
    serve(app, app[CONNECTIONS], settings, sock)


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
