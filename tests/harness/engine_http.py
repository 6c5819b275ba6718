"""The embedded engine behind ClickHouse's HTTP interface: what a server's clients (the service, `schema apply`) talk
to where no ClickHouse server can run.

It serves the part of the interface clickhouse-connect uses: a statement in the `query` parameter and/or the body,
`database` as a parameter, the user and password as Basic authentication (checked against the users it is given),
the answer in the format the statement names (TabSeparated otherwise), an error as ClickHouse words it
(`Code: N. DB::Exception: ...`, status 500, `X-ClickHouse-Exception-Code`). Optionally over TLS. Every statement is
recorded with the user who sent it.

What it cannot do: the embedded engine (clickhouse-local) has no writable access storage, so `CREATE USER`, `CREATE
ROLE`, `CREATE SETTINGS PROFILE`, `GRANT`, `REVOKE` and the like fail there ("there is no writeable access storage in
user directories", measured on chdb 4.4). Those are put through the engine's own parser (`formatQuery`): a
statement it cannot parse is answered with its error, one it parses is recorded and answered as done, without
effect. tests/server_users.py gives the recorded users and roles to the engine another way. Settings sent as URL
parameters are not applied; every statement runs as the engine's one user.

Run as a process (`python -m tests.harness.engine_http DATA CONFIG RECORD ADDRESS_FILE USER:PASSWORD`) it serves
until SIGTERM, writing `host:port` to ADDRESS_FILE once it listens.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

ACCESS_STATEMENT = re.compile(r"^\s*(?:(?:CREATE|ALTER|DROP)\s+(?:USER|ROLE|SETTINGS\s+PROFILE|PROFILE|QUOTA"
                              r"|ROW\s+POLICY)|GRANT|REVOKE|SET\s+DEFAULT\s+ROLE)\b", re.I)
_CODE = re.compile(r"Code: (\d+)")


class EngineHTTP:
    """A threaded HTTP(S) server on 127.0.0.1 whose statements run on one chdb connection, one at a time."""

    def __init__(self, connection: Any, users: dict[str, str], *, tls: ssl.SSLContext | None = None,
                 record: Callable[[dict[str, Any]], None] = lambda entry: None) -> None:
        self.connection = connection
        self.users = users
        self.record = record
        self._lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                engine.handle(self)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> "EngineHTTP":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "EngineHTTP":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(request.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length).decode() if length else ""
        if url.path == "/ping":
            return self._answer(request, 200, b"Ok.\n")
        user, password = self._credentials(request)
        if self.users.get(user) != password:
            return self._error(request, 516, f"{user}: Authentication failed: password is incorrect, or there is no "
                                             "user with such name. (AUTHENTICATION_FAILED)")
        sql = (params.get("query", "") + ("\n" if params.get("query") and body else "") + body).strip()
        entry: dict[str, Any] = {"user": user, "database": params.get("database"), "sql": sql}
        try:
            with self._lock:
                if ACCESS_STATEMENT.match(sql):
                    # The parser's verdict only: see the module docstring.
                    self.connection.query(f"SELECT formatQuery({_literal(sql)})", "TabSeparated")
                    entry["executed"] = False
                    out = b""
                else:
                    if params.get("database"):
                        self.connection.query(f"USE `{params['database']}`")
                    out = self.connection.query(sql, "TabSeparated").bytes()
                    entry["executed"] = True
        except Exception as exc:  # noqa: BLE001 - answered as the server answers it
            entry["error"] = str(exc)
            self.record(entry)
            code = _CODE.search(str(exc))
            return self._error(request, int(code[1]) if code else 1000, str(exc).split("DB::Exception: ", 1)[-1])
        self.record(entry)
        self._answer(request, 200, out)

    @staticmethod
    def _credentials(request: BaseHTTPRequestHandler) -> tuple[str, str]:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user, password
        return request.headers.get("X-ClickHouse-User", "default"), request.headers.get("X-ClickHouse-Key", "")

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, body: bytes,
                headers: dict[str, str] | None = None) -> None:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _error(self, request: BaseHTTPRequestHandler, code: int, message: str) -> None:
        text = f"Code: {code}. DB::Exception: {message.strip()} (version 26.9.2.1 (embedded))\n"
        self._answer(request, 403 if code == 516 else 500, text.encode(), {"X-ClickHouse-Exception-Code": str(code)})


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main(data: str, config: str, record_path: str, address_file: str, credentials: str) -> None:
    import chdb

    user, _, password = credentials.partition(":")
    connection = chdb.connect(f"{data}?config-file={config}")
    lock = threading.Lock()

    def record(entry: dict[str, Any]) -> None:
        with lock, open(record_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    server = EngineHTTP(connection, {user: password}, record=record).start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    Path(address_file).write_text(server.address)
    stopped.wait()
    server.stop()
    connection.close()


if __name__ == "__main__":
    main(*sys.argv[1:6])
