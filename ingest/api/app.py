"""The HTTP edge: aiohttp routes for /events, /health, /metrics and /schema. Everything else knows no HTTP."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import orjson
from aiohttp import web

from ..config import Settings
from ..contract.events import MAX_EVENTS_PER_REQUEST, SCHEMA_TEXT, country_from_header
from ..contract.validation import EventValidator
from ..delivery.buffer import Buffer, BufferFull
from ..delivery.deadletter import DeadLetterFile
from ..delivery.idempotency import IdempotencyKeys, KeyInUse, KeyReused, fingerprint, key_id, key_problem
from ..delivery.pipeline import Pipeline, WalError
from ..delivery.wal import WriteAheadLog
from ..grafana.alerting import evaluate_all
from ..grafana.dashboard import RANGES, load_dashboard, query_range, results_to_json, run_panels, variables_for
from ..grafana.variables import VariableError, chosen_values, describe
from ..metrics import CONTENT_TYPE_LATEST, Metrics
from ..shipped import shipped_file
from ..storage.failures import FAILURE_HINTS
from ..storage.sink import Sink
from . import access
from .connections import LISTEN_BACKLOG, Connections
from .decoding import ENCODINGS, BodyDecoder, DecodeError, TooLarge
from .openapi import OPENAPI_TEXT
from .refused import RefusedRequests
from .server import client_gone, close_after_answer

log = logging.getLogger(__name__)

_ACCEPTED_TYPES = ("application/json", "text/plain")  # text/plain: what navigator.sendBeacon sends

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
PIPELINE = web.AppKey("pipeline", Pipeline)
VALIDATOR = web.AppKey("validator", EventValidator)
DASHBOARD = web.AppKey("dashboard", dict)
CONNECTIONS = web.AppKey("connections", Connections)
REFUSED = web.AppKey("refused", RefusedRequests)
# A request marked so is answered and its connection closed at once, without aiohttp's lingering read of the rest
# of its body (up to 10 s, holding the socket): for a client too slow to send it.
_CLOSE_NOW = "ingest.close_now"


class RequestError(Exception):
    """A whole-request problem: nothing from the request is stored."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": code, "message": message}, status, headers)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request body, decoded (gzip, deflate, br); stops reading as soon as it exceeds the limit or the body
    deadline passes."""
    if request.content_type not in _ACCEPTED_TYPES:
        raise RequestError(415, "unsupported_media_type",
                           f"Content-Type must be application/json or text/plain, got {request.content_type!r}")
    if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise RequestError(415, "unsupported_charset", f"charset must be utf-8, got {request.charset!r}")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise RequestError(415, "unsupported_encoding",
                           f"Content-Encoding must be gzip, deflate, br or absent, got {encoding[:100]!r}")
    too_large = RequestError(413, "body_too_large", f"request body exceeds the limit of {limit:,} bytes "
                             "(INGEST_MAX_BODY_BYTES, after decoding): send fewer events per request")
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, "body_too_large", f"request body is {request.content_length:,} bytes; the limit is "
                           f"{limit:,} (INGEST_MAX_BODY_BYTES): send fewer events per request")
    # The decoder stops as soon as the decoded size passes the limit: a compression bomb is cut off, never
    # inflated whole. The raw size is capped too, or empty compressed blocks could stream in forever.
    decoder = BodyDecoder(encoding, limit)
    chunks, raw = [], 0
    # One deadline for the whole body, counted from its headers: a total, not a gap between chunks, so a client
    # trickling a byte now and then holds its connection no longer than one that sends nothing.
    timeout = request.app[SETTINGS].body_timeout_seconds
    connections, evicted = request.app[CONNECTIONS], False
    try:
        async with asyncio.timeout(timeout) as deadline:
            def expire() -> None:  # the connection limit is reached and this one has been slow the longest
                nonlocal evicted
                if not deadline.expired():
                    evicted = True
                    deadline.reschedule(asyncio.get_running_loop().time())

            connections.receiving(request.transport, expire)
            async for chunk in request.content.iter_chunked(65536):
                raw += len(chunk)
                if raw > limit:
                    raise too_large
                chunks.append(decoder.feed(chunk))
        decoder.finish()
    except TimeoutError:
        request[_CLOSE_NOW] = True
        if evicted:  # counted as evicted where it was chosen
            raise RequestError(408, "body_timeout", "the connection limit was reached and this request's body was "
                               "still arriving; nothing stored, send it again") from None
        request.app[METRICS].slow_clients_refused.labels("body_timeout").inc()
        raise RequestError(408, "body_timeout", f"the request body did not arrive within {timeout:g} s of its "
                           "headers; nothing stored") from None
    except TooLarge:
        raise too_large from None
    except DecodeError as exc:
        # A code per encoding: bad_gzip (documented first, kept for clients that look for it), bad_deflate, bad_br.
        raise RequestError(400, f"bad_{encoding}", f"body could not be decoded as {encoding} (its "
                           f"Content-Encoding): {exc}") from None
    except (ConnectionError, RuntimeError) as exc:
        # The client went away mid-body (ConnectionResetError), or its connection was closed before this handler
        # began (aiohttp then says RuntimeError "Connection closed."; the connection limit does that to a request
        # whose headers had just arrived). Nobody will read an answer: no error log, no traceback.
        if isinstance(exc, RuntimeError) and not client_gone(request):
            raise
        request[_CLOSE_NOW] = True
        raise RequestError(408, "body_incomplete", "the connection closed before the request body arrived; "
                           "nothing stored") from None
    finally:
        connections.busy(request.transport)
    return b"".join(chunks)


def _parse_events(body: bytes) -> list[Any]:
    if not body.strip():
        raise RequestError(400, "empty_body", "body is empty; send a JSON array of events")
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(events, list):
        raise RequestError(400, "not_an_array", "body must be a JSON array of events")
    if not events:
        raise RequestError(400, "empty_array", "the array holds no events; send 1 to 500")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise RequestError(413, "too_many_events",
                           f"{len(events)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}")
    return events


IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_PARAM = "idempotency_key"  # for navigator.sendBeacon, which cannot set headers


def _idempotency_key(request: web.Request) -> str | None:
    """The request's idempotency key: the Idempotency-Key header, else ?idempotency_key= (a beacon's way)."""
    header, param = request.headers.get(IDEMPOTENCY_HEADER), request.query.get(IDEMPOTENCY_PARAM)
    if header is not None and param is not None and header != param:
        raise RequestError(400, "bad_idempotency_key", f"the {IDEMPOTENCY_HEADER} header and ?{IDEMPOTENCY_PARAM}= "
                           "differ: send the key once")
    key = header if header is not None else param
    if key is not None and (problem := key_problem(key)):
        raise RequestError(400, "bad_idempotency_key", f"{IDEMPOTENCY_HEADER} {problem}")
    return key


def _retry_after(app: web.Application) -> dict[str, str]:
    """When a refused client should come back: about one flush interval."""
    return {"Retry-After": str(max(1, math.ceil(app[SETTINGS].flush_interval_seconds)))}


async def post_events(request: web.Request) -> web.Response:
    """Validate each event on its own, buffer the valid ones, and say which were refused and why."""
    app = request.app
    started = time.perf_counter()
    try:
        key = _idempotency_key(request)
        body = await _read_body(request, app[SETTINGS].max_body_bytes)
        events = _parse_events(body)
    except RequestError as exc:
        return access.refuse(exc.status, exc.code, exc.message, request)
    metrics, keys = app[METRICS], app[PIPELINE].keys
    held: HeldKey | None = None
    if key is not None and keys is not None:
        held = HeldKey(keys, key_id(access.presented_key(request.headers, request.query) or "", key), fingerprint(body))
        try:
            first = keys.begin(held.ident, held.fingerprint)
        except KeyInUse:
            return access.refuse(409, "idempotency_key_in_use", "a request with this Idempotency-Key is still being "
                                 "answered; nothing stored, retry later", request, {"Retry-After": "1"})
        except KeyReused:
            return access.refuse(422, "idempotency_key_reused", "this Idempotency-Key was answered for a different "
                                 "request body; nothing stored: use a new key for new events", request)
        if first is not None:
            metrics.idempotent_replays.inc()
            return web.Response(body=first[2], status=first[1], content_type="application/json",
                                headers={"Idempotent-Replayed": "true"})
    try:
        return await _accept(request, events, held, started)
    finally:
        if held is not None:
            held.keys.release(held.ident)  # a no-op once the key is remembered with the events


@dataclass(frozen=True)
class HeldKey:
    """The idempotency key a request holds while it is answered: its digest and its body's fingerprint."""

    keys: IdempotencyKeys
    ident: bytes
    fingerprint: bytes


async def _accept(request: web.Request, events: list[Any], held: HeldKey | None, started: float) -> web.Response:
    """Validate and buffer the events; with a key, its answer is logged with them (so a repeat gets it)."""
    app = request.app
    validator, metrics, settings, pipeline = app[VALIDATOR], app[METRICS], app[SETTINGS], app[PIPELINE]
    # Events without a country get it from a trusted proxy's header when one is configured, never from the client.
    country = country_from_header(request.headers.get(settings.country_header) if settings.country_header else None)
    rows, rejected = validator.judge(events, country=country)
    if not rows:
        metrics.events_rejected.inc(len(rejected))
        return _json({"error": "no_valid_events", "message": "every event was rejected; nothing stored",
                      "accepted": 0, "rejected": rejected}, 400)
    answer = orjson.dumps({"accepted": len(rows), "rejected": rejected})
    record = None if held is None else held.keys.record(held.ident, held.fingerprint, 202, answer)
    try:
        await pipeline.accept(rows, record)
    except BufferFull as exc:
        return _error(503, "buffer_full", f"storage is behind ({exc}); nothing stored, retry later",
                      _retry_after(app))
    except WalError:
        return _error(503, "log_unavailable", "events could not be written to the local log; nothing stored, "
                      "retry later", _retry_after(app))
    metrics.events_accepted.inc(len(rows))
    metrics.events_rejected.inc(len(rejected))
    metrics.request_duration.observe(time.perf_counter() - started)
    return web.Response(body=answer, status=202, content_type="application/json")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


async def get_health(request: web.Request) -> web.Response:
    """Buffer, delivery and storage state; 503 when the pipeline cannot deliver."""
    pipeline, settings = request.app[PIPELINE], request.app[SETTINGS]
    reachable = await asyncio.to_thread(pipeline.sink.ping)
    request.app[METRICS].storage_up.set(1 if reachable else 0)
    state, buffer = pipeline.state, pipeline.buffer
    problems = []
    if not reachable:
        problems.append("storage unreachable")
    if state.consecutive_failures and state.last_error_kind is not None:
        problems.append(f"last {state.consecutive_failures} insert(s) failed ({state.last_error_kind}): "
                        f"{FAILURE_HINTS[state.last_error_kind]}")
    if buffer.full:
        problems.append("buffer full")
    if state.wal_error:
        problems.append(state.wal_error)
    body = {
        "status": "ok" if not problems else "failing",
        "problems": problems,
        "buffer": {"events": len(buffer), "capacity": buffer.max_events,
                   "in_flight": len(buffer.in_flight.rows) if buffer.in_flight else 0},
        "last_flush": {"at": _iso(state.last_success_at), "rows": state.last_success_rows,
                       "error": state.last_error, "error_kind": state.last_error_kind,
                       "error_at": _iso(state.last_error_at),
                       "consecutive_failures": state.consecutive_failures},
        "storage": {"reachable": reachable, "target": settings.redacted_url,
                    "database": settings.clickhouse_database},
    }
    return _json(body, 200 if not problems else 503)


def _from_this_machine(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


async def get_panels(request: web.Request) -> web.Response:
    """The product dashboard's panels, run by the service on its embedded engine, for `python -m ingest panels`
    (which cannot open the data directory while the service holds it). Read-only queries, this machine only."""
    if not _from_this_machine(request):
        return _error(403, "local_only", "GET /panels answers only on this machine (the terminal dashboard); "
                                        "Grafana reads ClickHouse itself")
    name = request.query.get("range", "1h")
    if name not in RANGES:
        return _error(400, "bad_range", f"range must be one of {', '.join(RANGES)}, got {name[:20]!r}")
    dashboard = request.app[DASHBOARD]
    qrange = query_range(name)
    sink = request.app[PIPELINE].sink
    try:
        chosen = chosen_values(request.query.getall("var", []))
        # Query variables load their options from ClickHouse, as Grafana does when it opens the dashboard.
        variables = await asyncio.to_thread(variables_for, dashboard, qrange, sink.query, chosen)
    except VariableError as exc:
        return _error(400, "bad_variable", str(exc)[:500])
    results = await asyncio.to_thread(run_panels, dashboard, qrange, sink.query, variables)
    alerts = await asyncio.to_thread(evaluate_all, sink.query, qrange.end)
    return _json({**results_to_json(results, qrange, describe(variables), [a.as_json() for a in alerts]),
                  "storage": request.app[SETTINGS].storage_owner})


async def get_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    connections = request.app[CONNECTIONS]
    metrics.connections_open.set(len(connections))
    metrics.connections_limit.set(connections.limit)
    pipeline = request.app[PIPELINE]
    if pipeline.wal is not None:
        metrics.wal_bytes.set(await asyncio.to_thread(pipeline.wal.disk_bytes))
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


# The browser tracker: one static file, read once; its ETag changes with its content.
TRACKER_JS: bytes = shipped_file("tracker.js", "clients/browser/tracker.js").read_bytes()
TRACKER_ETAG = '"' + hashlib.sha256(TRACKER_JS).hexdigest()[:32] + '"'
# Compressed once at start: ~13 KB of readable source is ~5 KB on the wire. The compressed copy is another
# representation, so it has its own ETag (RFC 9110 8.8.3); either one names the same script.
TRACKER_JS_GZIP: bytes = gzip.compress(TRACKER_JS, compresslevel=9, mtime=0)
TRACKER_ETAG_GZIP = TRACKER_ETAG[:-1] + '-gzip"'
# Browsers and proxies reuse it for an hour, then ask again with If-None-Match (a 304 when unchanged), so a new
# version reaches every page within the hour.
TRACKER_CACHE_CONTROL = "public, max-age=3600"


def _etag_matches(if_none_match: str | None, *etags: str) -> bool:
    """Whether an If-None-Match header names one of etags (weak comparison, as RFC 9110 asks for If-None-Match)."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or any(etag in tags for etag in etags)


async def get_tracker(request: web.Request) -> web.Response:
    """The browser tracker script (GET /tracker.js), cacheable: 304 when the client's copy is current."""
    compressed = _accepts_gzip(request.headers.get("Accept-Encoding", ""))
    etag = TRACKER_ETAG_GZIP if compressed else TRACKER_ETAG
    headers = {"ETag": etag, "Cache-Control": TRACKER_CACHE_CONTROL, "Vary": "Accept-Encoding"}
    if _etag_matches(request.headers.get("If-None-Match"), TRACKER_ETAG, TRACKER_ETAG_GZIP):
        return web.Response(status=304, headers=headers)
    if compressed:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=TRACKER_JS_GZIP if compressed else TRACKER_JS, content_type="text/javascript",
                        charset="utf-8", headers=headers)


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header accepts gzip (named, or *, without q=0)."""
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


async def get_time(request: web.Request) -> web.Response:
    """The service's clock (also in the Server-Time header): what a client reads before it stamps its first events."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return _json({"now": now}, headers={"Cache-Control": "no-store"})


# What GET / answers: a person who opens the service's address learns what it is and where to look.
INDEX = {"service": "ingest",
         "message": "product analytics ingest: POST events to /events; /health says whether it delivers, "
                    "/openapi.json describes every route",
         "links": {"events": "/events", "health": "/health", "openapi": "/openapi.json", "schema": "/schema",
                   "metrics": "/metrics", "tracker": "/tracker.js", "time": "/time"}}


async def get_index(request: web.Request) -> web.Response:
    """What this service is, and its routes (instead of a bare 404 at the root)."""
    return _json(INDEX)


async def get_schema(request: web.Request) -> web.Response:
    return web.Response(body=SCHEMA_TEXT, content_type="application/schema+json")


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_TEXT, content_type="application/json")


@web.middleware
async def json_errors_and_counts(request: web.Request, handler) -> web.StreamResponse:
    """Count every answer by route and status, and answer aiohttp's own errors (404, 405...) in JSON too.

    Outermost, so it also tells the connection tracker when a request is being answered and when it is done.
    """
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
    connections = request.app[CONNECTIONS]
    connections.busy(request.transport)  # its headers are in: no longer slow
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except Exception:
        # A bug, not bad input (the fuzz tests hunt for these): log it, and still answer in JSON.
        log.exception("unhandled error answering %s %s", request.method, request.path)
        response = _error(500, "internal_error", "the service failed to answer this request; it is logged")
    request.app[METRICS].requests.labels(route, str(response.status)).inc()
    if 400 <= response.status < 500:
        _note_refused(request, route, response)
    # The service's clock on every answer, so clients can stamp events in its time (docs/api.md "Clock").
    response.headers[access.SERVER_TIME] = str(time.time_ns() // 1_000_000)
    if request.get(_CLOSE_NOW):
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            pass  # the client is gone already
        close_after_answer(request)  # the answer is written; closing flushes it, then frees the socket
    else:
        connections.idle(request.transport)
    return response


def _note_refused(request: web.Request, route: str, response: web.StreamResponse) -> None:
    """Log a refused request (rate-limited per cause), with the error code and message of its JSON answer."""
    code, message = str(response.status), ""
    body = response.body if isinstance(response, web.Response) else None
    if isinstance(body, bytes):
        try:
            answer = orjson.loads(body)
            code, message = str(answer.get("error", code)), str(answer.get("message", ""))
        except (orjson.JSONDecodeError, AttributeError):
            pass
    request.app[REFUSED].note(request.method, request.path, route, response.status, code, message,
                              request.remote or "?")


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open storage, start the flusher; on shutdown stop it and flush what is buffered."""
    settings = app[SETTINGS]
    sink = Sink(settings.clickhouse_url, settings.clickhouse_database, ca_file=settings.clickhouse_ca_file)
    # First: a second process on the same embedded data must be told so before it makes its own log or dead-letter
    # file (they would be left behind) or says that the log it shares is the problem.
    await asyncio.to_thread(sink.check_free)
    dead_letters = DeadLetterFile(settings.dead_letter_path)
    dead_letters.check_writable()  # now, not when the first refused row arrives
    buffer = Buffer(settings.buffer_max_events, settings.flush_events, settings.flush_interval_seconds)
    durable = settings.durability == "wal"
    # Idempotency keys live beside the log (its lock covers them); without a log, in memory only.
    keys = IdempotencyKeys(settings.idempotency_window_seconds, settings.idempotency_max_keys,
                           Path(settings.wal_dir) / "idempotency-keys" if durable else None,
                           on_evict=app[METRICS].idempotency_keys_evicted.inc)
    wal = WriteAheadLog(settings.wal_dir, owner=settings.storage_owner, before_delete=keys.sync) if durable else None
    pipeline = Pipeline(buffer, sink, app[METRICS], wal=wal, dead_letters=dead_letters, keys=keys,
                        retry_max_seconds=settings.retry_max_seconds)
    app[METRICS].idempotency_keys.set_function(lambda: len(keys))
    app[METRICS].idempotency_oldest_key_age.set_function(keys.oldest_age)
    # The log first: it is locked for this process, and says whether it belongs to this storage, before
    # anything is opened or replayed.
    replayed = await asyncio.to_thread(pipeline.recover)
    try:
        await asyncio.to_thread(sink.open)
    except BaseException:
        if wal is not None:
            wal.close()
        raise
    if replayed:
        log.info("recovered %d acknowledged events from the write-ahead log", replayed)
    app[PIPELINE] = pipeline
    pipeline.start()
    log.info("ingest ready: storage %s, database %s; %s; %s", settings.redacted_url, settings.clickhouse_database,
             access.describe_write_keys(settings), access.describe_cors(settings))
    try:
        yield
    finally:
        await pipeline.stop()
        keys.close()
        if wal is not None:
            wal.close()
        await asyncio.to_thread(sink.close)


def create_app(settings: Settings) -> web.Application:
    """The ingest application for these settings, with its own metrics registry."""
    # auto_decompress off: ingest.decoding decodes bodies, so every broken one gets a JSON answer.
    # The access log class applies wherever an access log is on (tests, other runners): it masks ?key=.
    app = web.Application(middlewares=[json_errors_and_counts, *access.middlewares(settings)],
                          handler_args={"auto_decompress": False,
                                        "access_log_class": access.RedactingAccessLogger})
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[VALIDATOR] = EventValidator()
    app[REFUSED] = RefusedRequests()
    metrics = app[METRICS]
    app[CONNECTIONS] = Connections(settings.max_connections, settings.header_timeout_seconds,
                                   refused=lambda reason: metrics.slow_clients_refused.labels(reason).inc(),
                                   turned_away=metrics.connections_refused.inc, burst=LISTEN_BACKLOG)
    app.cleanup_ctx.append(_pipeline_ctx)
    app.router.add_get("/", get_index)
    app.router.add_post("/events", post_events)
    app.router.add_route("OPTIONS", "/events", access.preflight_handler(settings))
    app.router.add_get("/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    if settings.clickhouse_url.startswith("chdb://"):
        # Only the embedded engine needs it: on a server, `panels` reads ClickHouse itself (as the grafana user).
        app[DASHBOARD] = load_dashboard()
        app.router.add_get("/panels", get_panels)
    app.router.add_get("/tracker.js", get_tracker)
    app.router.add_get("/time", get_time)
    app.router.add_get("/schema", get_schema)
    app.router.add_get("/openapi.json", get_openapi)
    return app
