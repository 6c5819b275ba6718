"""Closed-loop saturation: how many events/s `python -m ingest serve` takes from wrk, and are they all stored.

Starts the service as a subprocess (embedded engine on a temp dir, a port it picks), POSTs one valid
500-event body (from the demo generator) as fast as wrk's connections allow, then reads /metrics,
stops the service with SIGTERM (it flushes), and counts the rows from a fresh process, since the
embedded path opens in one process at a time. Prints events/s, latency percentiles, the service's
CPU use, and stored vs acknowledged: the service's own count of 202 answers × 500 (read from
/metrics just before the stop). wrk's tally of 202s (a Lua response hook) is printed too; it misses
the answers still in flight when wrk's clock ran out (up to one per connection).

    python bench/ingest_throughput.py [-t 2] [-c 32] [-d 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _path import ROOT  # first: puts the repository root on sys.path, for tests.harness
from bodies import demo_body
from machine import cpu_seconds, machine
from report import print_table

from tests.harness.engine import count_rows
from tests.harness.metrics import metric
from tests.harness.service import Service, fetch

EVENTS_PER_REQUEST = 500

# Each wrk thread has its own Lua state: tally statuses per thread, sum them in done().
LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("%(body)s", "rb")); wrk.body = f:read("*a"); f:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) n202 = 0; n503 = 0; nother = 0 end
function response(status, headers, body)
  if status == 202 then n202 = n202 + 1 elseif status == 503 then n503 = n503 + 1 else nother = nother + 1 end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("n202"); b = b + t:get("n503"); c = c + t:get("nother") end
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %%d, "duration_us": %%d, "n202": %%d, "n503": %%d, "nother": %%d, '
    .. '"socket_errors": %%d, "p50": %%d, "p90": %%d, "p99": %%d, "p999": %%d, "max": %%d, "mean": %%f}\n',
    summary.requests, summary.duration, a, b, c, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-t", "--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("-c", "--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("-d", "--duration", type=int, default=30, help="seconds of load (1..600)")
    args = parser.parse_args()
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be 1..600 seconds")
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2

    host = machine()  # before the load, so the load average tells what else was running
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        body_path, lua_path = work / "body.json", work / "post.lua"
        body_path.write_bytes(demo_body(EVENTS_PER_REQUEST))
        lua_path.write_text(LUA % {"body": body_path})
        data_dir = work / "chdb"
        # cwd: `python -m ingest` from this checkout. Its state (data, log, WAL) stays in the work directory.
        with Service(ROOT, log=work / "service.log", CLICKHOUSE_URL=f"chdb://{data_dir}",
                     CLICKHOUSE_DATABASE="analytics", INGEST_WAL_DIR=str(work / "wal"),
                     INGEST_DEAD_LETTER_PATH=str(work / "dead-letter.jsonl")) as service:
            service.wait_healthy()
            status, answer = fetch(service.url + "/events", body_path.read_bytes())
            if status != 202 or json.loads(answer)["accepted"] != EVENTS_PER_REQUEST:
                print(f"the body was not accepted whole: {status} {answer[:300]!r}", file=sys.stderr)
                return 1
            cpu_before, wall_before = cpu_seconds(service.proc.pid), time.monotonic()
            out = subprocess.run([wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
                                  "--latency", "-s", str(lua_path), service.url + "/events"],
                                 capture_output=True, text=True, timeout=args.duration + 60)
            service_cores = (cpu_seconds(service.proc.pid) - cpu_before) / (time.monotonic() - wall_before)
            # wrk stops its clock with requests still queued in the service: let them finish, so the
            # acknowledged count is final before it is compared with the stored rows.
            metrics, previous = "", None
            while True:
                metrics = fetch(service.url + "/metrics")[1].decode()
                answered = metric(metrics, "ingest_http_requests_total", route="/events", status="202")
                if answered == previous:
                    break
                previous = answered
                time.sleep(1.0)
            accepted_metric = int(metric(metrics, "ingest_events_accepted_total"))
            acknowledged = int(metric(metrics, "ingest_http_requests_total", route="/events", status="202"))
            acknowledged *= EVENTS_PER_REQUEST
            stored_before_stop = int(metric(metrics, "ingest_events_stored_total"))
            stopping = time.monotonic()
            service.stop()
            stop_seconds = time.monotonic() - stopping
        line = next((printed for printed in out.stdout.splitlines() if printed.startswith("BENCH ")), None)
        if line is None:
            print(out.stdout, out.stderr, file=sys.stderr)
            return 1
        r = json.loads(line[len("BENCH "):])
        stored = count_rows(data_dir, "analytics")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    seconds = r["duration_us"] / 1e6
    ms = lambda us: us / 1000  # noqa: E731
    print_table("machine", host)
    body_bytes = body_path.stat().st_size if body_path.exists() else len(demo_body())
    print_table(f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
                f"{EVENTS_PER_REQUEST} events per POST ({body_bytes} bytes)", [
        ("requests/s", r["requests"] / seconds),
        ("events/s acknowledged (202)", r["n202"] * EVENTS_PER_REQUEST / seconds),
        ("latency p50 ms", ms(r["p50"])), ("latency p90 ms", ms(r["p90"])), ("latency p99 ms", ms(r["p99"])),
        ("latency p99.9 ms", ms(r["p999"])), ("latency max ms", ms(r["max"])),
        ("answers 202 / 503 / other", f"{r['n202']:,} / {r['n503']:,} / {r['nother']:,}"),
        ("socket errors", r["socket_errors"]),
        ("service CPU (cores busy)", service_cores),
    ])
    print_table("delivery", [
        ("events acknowledged (service's 202s x 500)", acknowledged),
        ("ingest_events_accepted_total", accepted_metric),
        ("202s wrk saw x 500 (+ check request)", (r["n202"] + 1) * EVENTS_PER_REQUEST),
        ("stored when load stopped", stored_before_stop),
        ("seconds to stop (final flush)", stop_seconds),
        ("rows in table after stop", stored),
        ("stored == acknowledged", "yes" if stored == acknowledged else f"NO (diff {stored - acknowledged:+,})"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
