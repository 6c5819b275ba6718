"""Who gets in: optional write keys for POST /events and a CORS origin allow-list, as aiohttp middlewares."""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable, Mapping

import orjson
from aiohttp import web
from aiohttp.web_log import AccessLogger

from ..config import Settings

EVENTS_PATH = "/events"
# Chromium caps a cached preflight at 2 hours; asking for more buys nothing.
PREFLIGHT_MAX_AGE_SECONDS = 7200
ALLOW_HEADERS = "Content-Type, Authorization, Content-Encoding"
# Every answer carries the service's clock (Unix milliseconds): clients correct their event timestamps with it.
SERVER_TIME = "Server-Time"


class WriteKeys:
    """The accepted write keys; an empty set means POST /events is open (the embedded quickstart's default)."""

    def __init__(self, keys: Iterable[str]) -> None:
        # Compare fixed-length digests so neither a key's length nor which key matched shows in the timing.
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str | None) -> bool:
        """True if presented is one of the keys; constant time in the presented value."""
        if presented is None:
            return False
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = False
        for known in self._digests:  # no early exit: every key is compared every time
            found |= hmac.compare_digest(known, digest)
        return found


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The write key a request carries: `Authorization: Bearer <key>`, else `?key=` (sendBeacon cannot set headers)."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return query.get("key")


class Origins:
    """The CORS allow-list: exact origins, or `*` for any; empty means no CORS headers and no origin checks."""

    def __init__(self, origins: Iterable[str]) -> None:
        origins = [o.strip().lower() for o in origins]
        self.any = "*" in origins
        self._allowed = frozenset(o for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self._allowed)

    def allows(self, origin: str) -> bool:
        return self.any or origin.lower() in self._allowed

    def headers(self, origin: str | None) -> dict[str, str]:
        """The CORS response headers for a request from origin (none for a disallowed or absent one)."""
        if origin is None or not self.allows(origin):
            return {}
        # Clients read Retry-After on a 503 to back off, and Server-Time to correct their clocks.
        return {"Access-Control-Allow-Origin": "*" if self.any else origin,
                "Access-Control-Expose-Headers": f"Retry-After, {SERVER_TIME}"}


class RedactingAccessLogger(AccessLogger):
    """aiohttp's access log with the `key` query parameter masked: a write key in a URL must not reach the logs."""

    def log(self, request, response, time: float) -> None:
        if request is not None and "key" in request.query:
            request = request.clone(rel_url=request.rel_url.update_query(key="***"))
        super().log(request, response, time)


def refuse(status: int, code: str, message: str, request: web.Request,
           headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error answer to a request whose body may be unread (then the connection closes after it)."""
    response = web.Response(body=orjson.dumps({"error": code, "message": message}), status=status,
                            content_type="application/json", headers=headers)
    if not request.content.at_eof():
        response.force_close()  # the body stays unread: this connection cannot carry another request
    return response


def _refuse_origin(request: web.Request) -> web.Response:
    return refuse(403, "origin_not_allowed", "this origin may not send events (INGEST_CORS_ORIGINS)", request)


def _is_event_post(request: web.Request) -> bool:
    return request.method == "POST" and request.path == EVENTS_PATH


def middlewares(settings: Settings) -> list:
    """The CORS then write-key middlewares for these settings (CORS outside, so a 401 is readable by the page)."""
    origins, keys = Origins(settings.cors_origins), WriteKeys(settings.write_keys)

    @web.middleware
    async def cors(request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and not origins.allows(origin) and _is_event_post(request):
            # A simple request (sendBeacon, text/plain) skips the preflight; refuse it here so nothing
            # from a site that is not on the list is stored, whatever the browser then shows the page.
            response = _refuse_origin(request)
        else:
            response = await handler(request)
        response.headers.update(origins.headers(origin))
        response.headers["Vary"] = "Origin"  # caches must not serve one origin's answer to another
        return response

    @web.middleware
    async def write_key(request: web.Request, handler) -> web.StreamResponse:
        if _is_event_post(request):
            presented = presented_key(request.headers, request.query)
            if not keys.accepts(presented):
                # Neither the presented key nor any known key goes into the answer or the log.
                if presented is None:
                    return refuse(401, "unauthorized", "a write key is required: Authorization: Bearer <key>, "
                                   "or ?key=<key> for sendBeacon", request,
                                   {"WWW-Authenticate": 'Bearer realm="ingest"'})
                return refuse(401, "unauthorized", "the write key is not valid", request,
                               {"WWW-Authenticate": 'Bearer realm="ingest", error="invalid_token"'})
        return await handler(request)

    # Only what is configured joins the chain: the default (open, no CORS) adds nothing to any request.
    return [m for m, on in ((cors, origins.enabled), (write_key, keys.required)) if on]


def describe_write_keys(settings: Settings) -> str:
    """Whether POST /events needs a write key, for the start log (how many keys, never one of them)."""
    count = len(settings.write_keys)
    if not count:
        return "write keys off (POST /events is open; INGEST_WRITE_KEYS)"
    return f"write keys on ({count} key{'s' if count > 1 else ''})"


def describe_cors(settings: Settings) -> str:
    """Which other origins' pages may post events, for the start log."""
    origins = Origins(settings.cors_origins)
    if not origins.enabled:
        return "CORS off (pages on other origins cannot post events; INGEST_CORS_ORIGINS)"
    return "CORS on for any origin (*)" if origins.any else f"CORS on for {', '.join(settings.cors_origins)}"


def preflight_handler(settings: Settings):
    """OPTIONS /events: the CORS preflight a browser sends before a JSON or Authorization-carrying POST."""
    origins = Origins(settings.cors_origins)

    async def preflight(request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origins.enabled and origin is not None and not origins.allows(origin):
            return _refuse_origin(request)
        headers = {"Allow": "OPTIONS, POST"}
        if origins.enabled and origin is not None:
            headers.update({"Access-Control-Allow-Methods": "POST",
                            "Access-Control-Allow-Headers": ALLOW_HEADERS,
                            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS)})
        return web.Response(status=204, headers=headers)

    return preflight
