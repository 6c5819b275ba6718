"""Memory while storage is down: the service's RSS grows to the buffer cap, then stays flat behind 503s.

Runs the service in this process (as `python -m ingest serve` does: same app, GC tuned) on a temp
embedded engine, takes the events table away (inserts then fail for real: UNKNOWN_TABLE), and posts
500-event bodies from this process as fast as the service answers until it has refused with 503 for
`--hold` seconds. RSS is sampled from /proc/self/status throughout. Then the table comes back and the
benchmark waits until the buffer has drained by itself (no restart), and compares stored with accepted.

    .venv/bin/python bench/outage_memory.py [--cap 200000] [--hold 20]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _path  # noqa: F401 - first: puts the repository root on sys.path, for ingest
from bodies import demo_body
from machine import machine
from report import print_table


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(args: argparse.Namespace) -> int:
    import aiohttp
    import clickhouse_connect
    from aiohttp import web

    from ingest.api.app import PIPELINE, create_app
    from ingest.cli.serve import tune_gc
    from ingest.config import Settings
    from ingest.storage.sink import Sink

    host = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    settings = Settings(host="127.0.0.1", port=0, clickhouse_url=f"chdb://{work / 'chdb'}",
                        wal_dir=str(work / "wal"), dead_letter_path=str(work / "dead-letter.jsonl"),
                        buffer_max_events=args.cap, retry_max_seconds=1.0, log_level="ERROR")
    app = create_app(settings)
    tune_gc()
    runner = web.AppRunner(app, access_log=None)
    body = demo_body(500)
    samples: list[float] = []
    accepted = refused = 0
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()  # port 0: the system picks a free one
        [(_, port)] = runner.addresses
        url = f"http://127.0.0.1:{port}/events"
        ch = clickhouse_connect.get_client(dsn=settings.clickhouse_url, database=settings.clickhouse_database)
        baseline = rss_mib()
        ch.command("DROP TABLE events SYNC")  # storage is "down" from here on
        first_503_at = None
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            while True:
                async with session.post(url, data=body, headers=headers) as resp:
                    if resp.status == 202:
                        accepted += (await resp.json())["accepted"]
                    elif resp.status == 503:
                        refused += 1
                        first_503_at = first_503_at or time.monotonic()
                    else:
                        print(f"unexpected answer {resp.status}: {await resp.text()}", file=sys.stderr)
                        return 1
                samples.append(rss_mib())
                if first_503_at and time.monotonic() - first_503_at > args.hold:
                    break
                if time.monotonic() - started > args.hold + 300:
                    print("never reached the cap", file=sys.stderr)
                    return 1
            at_cap = samples[-1]
            peak = max(samples)
            pipeline = app[PIPELINE]
            outage_health = (await (await session.get(f"http://127.0.0.1:{port}/health")).json())["problems"]
            # Storage comes back: the service must drain by itself, oldest first.
            await asyncio.to_thread(Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema)
            back = time.monotonic()
            while len(pipeline.buffer):
                await asyncio.sleep(0.1)
                if time.monotonic() - back > 300:
                    print("the buffer did not drain", file=sys.stderr)
                    return 1
            drained_s = time.monotonic() - back
        stored = ch.command("SELECT count() FROM events")
        await runner.cleanup()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_table("machine", host)
    print_table(f"storage down: buffer cap {args.cap:,} events, 500-event bodies, 503s held for {args.hold} s", [
        ("RSS before the outage MiB", baseline),
        ("RSS at the cap MiB", at_cap),
        ("RSS peak while refusing MiB", peak),
        ("RSS growth per buffered event bytes", (at_cap - baseline) * 1024 * 1024 / max(accepted, 1)),
        ("events accepted before the cap", accepted),
        ("requests refused with 503", refused),
        ("/health problems during the outage", "; ".join(outage_health)),
    ])
    print_table("storage back", [
        ("seconds to drain the buffer", drained_s),
        ("rows stored", stored),
        ("stored == accepted", "yes" if stored == accepted else f"NO ({stored - accepted:+,})"),
    ])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap", type=int, default=200_000, help="INGEST_BUFFER_MAX_EVENTS for the run")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds to keep posting after the first 503")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
