"""Slow clients: stalled uploads against the service held to a container's usual open-files limit.

`--connections` clients (`--rate` a second) each send a POST /events head and then trickle its body, a byte a second,
for `--seconds`; meanwhile one normal client posts a one-event body every 0.25 s. The service runs as
`python -m ingest serve` with its default settings (deadlines included) unless told otherwise, limited to
`--open-files` open files. Prints when
the service closed the stalled connections and what the normal client saw. Issue 15 measured main this way: 1,000
stalled uploads all still open after 60 s, and with 1,100 every normal POST failed for the whole 60 s.

    .venv/bin/python bench/slow_clients.py [--connections 1100] [--rate 500] [--open-files 1024] [--seconds 60]
                                           [--env INGEST_BODY_TIMEOUT_SECONDS=30 ...]
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from _path import ROOT  # first: puts the repository root on sys.path, for tests.harness
from bodies import demo_body
from machine import machine
from report import print_table

from tests.harness.metrics import metric
from tests.harness.service import Service, fetch

HEAD = (b"POST /events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n[")


def stalled_uploads(port: int, count: int, rate: float, seconds: float) -> tuple[dict, int]:
    """Open `count` uploads, `rate` a second, and trickle them for `seconds`; per connection, seconds from its head to
    its closing. (All at once would overflow the listen queue, and the kernel would drop some before the service
    sees them.)"""
    sel = selectors.DefaultSelector()
    head_sent: dict[socket.socket, float] = {}
    closed: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytes] = {}
    opened, started = 0, time.monotonic()
    end = started + seconds
    next_byte = started + 1
    while time.monotonic() < end:
        while opened < count and opened < (time.monotonic() - started) * rate:
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sel.register(sock, selectors.EVENT_WRITE)
            opened += 1
        for key, _ in sel.select(0.01):
            sock = key.fileobj
            if sock not in head_sent:
                head_sent[sock] = time.monotonic()
                try:
                    sock.send(HEAD)
                except OSError:
                    pass
                sel.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError as exc:  # a reset: by the service closing with unread bytes, or by the kernel (below)
                data = b""
                answers.setdefault(sock, f"reset ({exc.strerror})".encode())
            if data:
                answers[sock] = answers.get(sock, b"") + data
            else:
                closed[sock] = time.monotonic() - head_sent[sock]
                sel.unregister(sock)
                sock.close()
        if time.monotonic() >= next_byte:
            next_byte += 1
            for sock in list(head_sent):
                if sock not in closed:
                    try:
                        sock.send(b" ")
                    except OSError:
                        pass
    still_open = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    answered = Counter(answers.get(s, b"").split(b"\r\n", 1)[0].decode() or "closed without an answer" for s in closed)
    return {"connected": len(head_sent), "closed": closed, "answered": answered}, still_open


def normal_client(url: str, stop: threading.Event, seen: list) -> None:
    body = demo_body(1)
    while not stop.is_set():
        started = time.monotonic()
        try:
            status = fetch(f"{url}/events", body, timeout=5)[0]
        except OSError as exc:
            status = type(exc).__name__
        seen.append((status, time.monotonic() - started))
        stop.wait(0.25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--open-files", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=500, help="stalled connections opened per second")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    parser.add_argument("--show-log", action="store_true", help="print the service's log")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 256)), hard))
    print_table("machine", machine())
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(item.split("=", 1) for item in args.env)
        # cwd: `python -m ingest` from this checkout. Its state (data, log, WAL) stays in the temporary directory.
        with Service(ROOT, log=Path(tmp) / "service.log", open_files=(args.open_files, args.open_files),
                     **{"CLICKHOUSE_URL": f"chdb://{tmp}/data", "CLICKHOUSE_DATABASE": "analytics",
                        "INGEST_WAL_DIR": f"{tmp}/wal", "INGEST_DEAD_LETTER_PATH": f"{tmp}/dead-letter.jsonl",
                        **env}) as svc:
            svc.wait_healthy()
            stop, seen = threading.Event(), []
            client = threading.Thread(target=normal_client, args=(svc.url, stop, seen), daemon=True)
            client.start()
            result, still_open = stalled_uploads(svc.port, args.connections, args.rate, args.seconds)
            stop.set()
            client.join(10)
            text = fetch(f"{svc.url}/metrics")[1].decode()
        log = svc.output()
        if args.show_log:
            print(log)
    closes = sorted(result["closed"].values())
    ok = [t for status, t in seen if status == 202]
    print_table(f"{args.connections} stalled uploads ({args.rate:g}/s), {args.seconds:g} s, service limited to "
                f"{args.open_files} files "
                f"({' '.join(args.env) or 'default settings'})", [
        ("connection limit (ingest_connections_limit)", int(metric(text, "ingest_connections_limit"))),
        ("stalled connections that got through connect", result["connected"]),
        # Closed by the service, or reset by the kernel: a burst of connects overflows the listen queue (128), and
        # connections the kernel could not queue are reset without the service ever seeing them.
        ("closed", len(closes)),
        ("still open at the end", still_open),
        ("answers they got", ", ".join(f"{k}: {v}" for k, v in result["answered"].most_common())),
        ("seconds from head to close: min", closes[0] if closes else float("nan")),
        ("seconds from head to close: median", statistics.median(closes) if closes else float("nan")),
        ("seconds from head to close: max", closes[-1] if closes else float("nan")),
        ("refused: body_timeout", int(metric(text, "ingest_slow_clients_refused_total", reason="body_timeout"))),
        ("refused: evicted", int(metric(text, "ingest_slow_clients_refused_total", reason="evicted"))),
        ("refused: header_timeout", int(metric(text, "ingest_slow_clients_refused_total", reason="header_timeout"))),
        ("new connections refused (every open one busy)", int(metric(text, "ingest_connections_refused_total"))),
        ("normal client: requests", len(seen)),
        ("normal client: 202", len(ok)),
        ("normal client: failed", len(seen) - len(ok)),
        ("normal client: failures by kind", ", ".join(f"{k}: {v}" for k, v in Counter(
            str(status) for status, _ in seen if status != 202).most_common()) or "-"),
        ("normal client: median seconds (202s)", statistics.median(ok) if ok else float("nan")),
        ("normal client: max seconds (202s)", max(ok) if ok else float("nan")),
        ("service log: 'connection limit reached' lines", log.count("connection limit reached")),
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
