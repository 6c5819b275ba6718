"""Open-loop POST latency at a fixed rate, and freshness: how long until an acknowledged event is visible to a query.

Design. Freshness needs a query on the service's own embedded engine, and only the service's
process may open that path. So the service runs in THIS process (ingest.api.app.create_app on an
aiohttp AppRunner, the same code `python -m ingest serve` runs), and the load comes from a child
process (this script with --client), which keeps the load generator's CPU out of the service's
event loop. The child sends a fixed schedule of POSTs (default 100/s x 500 events = 50,000
events/s) whatever the answers, and measures each latency from the request's SCHEDULED send time,
so a stalled service shows up as latency instead of hiding it (no coordinated omission).
Meanwhile this process sends a sentinel event with a unique session_id every --sentinel-every
seconds and polls the table (clickhouse-connect on the same chdb path, from a worker thread)
until the row is visible: freshness = visible - sent. It includes the buffer's wait
(INGEST_FLUSH_EVENTS / INGEST_FLUSH_INTERVAL_SECONDS, defaults 1000 events / 2 s) and the insert.
The sentinel's POST and polls share the service's process, a small extra load on it.

    python bench/ingest_latency.py [--rps 100] [--events 500] [--duration 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _path import ROOT  # first: puts the repository root on sys.path, for ingest
from bodies import demo_body
from machine import machine
from report import print_table

from ingest.demo import rfc3339


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# -- the load client (child process) ----------------------------------------------------------------
async def open_loop(url: str, rps: float, duration: float, warmup: float, body: bytes) -> dict:
    """POST body at a fixed rate for warmup + duration seconds; latencies (ms) after the warmup."""
    import aiohttp

    latencies: list[float] = []
    accepted_latencies: list[float] = []  # 202s only: a quick 503 is not a served request
    statuses: dict[str, int] = {}
    late_starts = 0
    total = int(rps * (warmup + duration))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(scheduled: float) -> None:
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    status = str(resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
            if scheduled - t0 >= warmup:
                latencies.append((time.perf_counter() - scheduled) * 1000)
                if status == "202":
                    accepted_latencies.append(latencies[-1])
                statuses[status] = statuses.get(status, 0) + 1

        t0 = time.perf_counter()
        tasks = []
        for i in range(total):
            scheduled = t0 + i / rps
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late_starts += 1  # the client itself fell behind; latency still counts from `scheduled`
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return {"latencies_ms": latencies, "accepted_latencies_ms": accepted_latencies, "statuses": statuses,
            "late_starts": late_starts, "elapsed": elapsed}


def client_main(args: argparse.Namespace) -> int:
    result = asyncio.run(open_loop(args.client, args.rps, args.duration, args.warmup,
                                   Path(args.body).read_bytes()))
    # A file, not stdout: thousands of latencies overflow a pipe nobody reads until this process exits.
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the service and the freshness probe (this process) ---------------------------------------------
async def service_main(args: argparse.Namespace) -> int:
    import clickhouse_connect
    from aiohttp import web

    from ingest.api.app import METRICS, create_app
    from ingest.cli.serve import tune_gc
    from ingest.config import Settings

    host = machine()  # before the load, so the load average tells what else was running
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    settings = Settings(host="127.0.0.1", port=0, clickhouse_url=f"chdb://{work / 'chdb'}",
                        wal_dir=str(work / "wal"), dead_letter_path=str(work / "dead-letter.jsonl"),
                        log_level="WARNING")
    app = create_app(settings)
    tune_gc()  # as `python -m ingest serve` does
    runner = web.AppRunner(app, access_log=None)
    client_proc = None
    try:
        await runner.setup()  # opens storage and applies the schema
        await web.TCPSite(runner, "127.0.0.1", 0).start()  # port 0: the system picks a free one
        [(_, port)] = runner.addresses
        ch = clickhouse_connect.get_client(dsn=settings.clickhouse_url, database=settings.clickhouse_database)
        body_path = work / "body.json"
        body_path.write_bytes(demo_body(args.events))
        client_proc = subprocess.Popen(
            [sys.executable, __file__, "--client", f"http://127.0.0.1:{port}/events", "--rps", str(args.rps),
             "--duration", str(args.duration), "--warmup", str(args.warmup), "--body", str(body_path),
             "--out", str(work / "load.json")],
            cwd=ROOT)
        freshness = await probe_freshness(ch, f"http://127.0.0.1:{port}/events", args, client_proc)
        if await asyncio.to_thread(client_proc.wait, timeout=args.warmup + args.duration + 120):
            raise RuntimeError(f"load client failed with {client_proc.returncode}")
        load = json.loads((work / "load.json").read_text())
        metrics = app[METRICS]
        accepted = int(metrics.events_accepted._value.get())
        await runner.cleanup()  # stops intake and flushes the buffer
        stored = ch.command("SELECT count() FROM events")
        ch.close()
    finally:
        if client_proc is not None and client_proc.poll() is None:
            client_proc.kill()
            client_proc.wait()
        await runner.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    lat = load["latencies_ms"]
    print_table("machine", host)
    offered = args.rps * args.events
    print_table(f"open loop: {args.rps:g} POST/s x {args.events} events = {offered:,.0f} events/s offered, "
                f"{args.duration:g} s measured after {args.warmup:g} s warm-up", [
        ("requests measured", len(lat)),
        ("answers", ", ".join(f"{k}: {v:,}" for k, v in sorted(load["statuses"].items()))),
        ("latency p50 ms", percentile(lat, 50)), ("latency p95 ms", percentile(lat, 95)),
        ("latency p99 ms", percentile(lat, 99)), ("latency max ms", max(lat)),
        *([("202 only: p50 / p99 / max ms", " / ".join(f"{percentile(ok, p):,.1f}" for p in (50, 99, 100)))]
          if (ok := load["accepted_latencies_ms"]) and len(ok) < len(lat) else []),
        ("client late starts", load["late_starts"]),
    ])
    rows = [("sentinels", len(freshness["sent_to_visible"])),
            ("unseen after 30 s", freshness["unseen"])]
    if freshness["sent_to_visible"]:
        f, g = freshness["sent_to_visible"], freshness["ack_to_visible"]
        rows += [("sent -> visible p50 ms", percentile(f, 50)), ("sent -> visible p95 ms", percentile(f, 95)),
                 ("sent -> visible max ms", max(f)), ("202 -> visible p50 ms", percentile(g, 50)),
                 ("202 -> visible max ms", max(g))]
    print_table(f"freshness (flush at {settings.flush_events} events or {settings.flush_interval_seconds:g} s)", rows)
    print_table("delivery", [("events accepted", accepted), ("rows stored after shutdown", stored),
                             ("stored == accepted", "yes" if stored == accepted else f"NO ({stored - accepted:+,})")])
    return 0


def exact_stamp(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC without float rounding, so the probe can look the row up by it."""
    return rfc3339(ms // 1000).removesuffix(".000Z") + f".{ms % 1000:03d}Z"


async def probe_freshness(ch, url: str, args: argparse.Namespace, client_proc) -> dict:
    """Every --sentinel-every s while the load runs: POST one unique event, poll until a query sees it."""
    import aiohttp

    sent_to_visible, ack_to_visible, unseen = [], [], 0
    await asyncio.sleep(args.warmup)
    async with aiohttp.ClientSession() as session:
        while client_proc.poll() is None:
            sid, ms = f"sentinel-{uuid.uuid4().hex}", time.time_ns() // 1_000_000
            event = [{"event_name": "page_view", "timestamp": exact_stamp(ms), "session_id": sid, "user_id": None,
                      "device_type": "other", "country_code": "ZZ", "properties": {}}]
            sent = time.perf_counter()
            async with session.post(url, json=event) as resp:
                if resp.status != 202:
                    await asyncio.sleep(args.sentinel_every)
                    continue
            acked = time.perf_counter()
            deadline = acked + 30
            # A point lookup on the sort key (event_name, timestamp) reads one granule: the probe must not
            # load the engine it measures.
            sql = ("SELECT count() FROM events WHERE event_name = 'page_view' "
                   "AND timestamp = fromUnixTimestamp64Milli({ms:Int64}, 'UTC') AND session_id = {sid:String}")
            params = {"sid": sid, "ms": ms}
            while time.perf_counter() < deadline:
                if (await asyncio.to_thread(ch.query, sql, parameters=params)).result_rows[0][0]:
                    now = time.perf_counter()
                    sent_to_visible.append((now - sent) * 1000)
                    ack_to_visible.append((now - acked) * 1000)
                    break
                await asyncio.sleep(0.02)
            else:
                unseen += 1
            await asyncio.sleep(max(0.0, args.sentinel_every - (time.perf_counter() - sent)))
    return {"sent_to_visible": sent_to_visible, "ack_to_visible": ack_to_visible, "unseen": unseen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rps", type=float, default=100.0, help="POSTs per second, on a fixed schedule")
    parser.add_argument("--events", type=int, default=500, help="events per POST (1..500)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured (1..300)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds sent but not measured")
    parser.add_argument("--sentinel-every", type=float, default=1.0, help="seconds between freshness probes")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # internal: run as the load child
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)
    if not (1 <= args.events <= 500 and 1 <= args.duration <= 300 and 0 < args.rps <= 2000
            and 0 <= args.warmup <= 60):
        parser.error("need 1 <= --events <= 500, 1 <= --duration <= 300, 0 < --rps <= 2000, 0 <= --warmup <= 60")
    return asyncio.run(service_main(args))


if __name__ == "__main__":
    sys.exit(main())
