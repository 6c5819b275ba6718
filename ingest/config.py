"""Settings: the one place that reads the environment, into one frozen object."""

from __future__ import annotations

import difflib
import math
import os
import re
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_WRITE_KEY = re.compile(r"^[!-~]+$")  # sent in a header or a query string: printable ASCII, no spaces
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
_ORIGIN = re.compile(r"^(\*|null|[a-z][a-z0-9+.-]*://[^/?#\s]+)$", re.I)  # scheme://host[:port], no path


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; defaults apply only when a variable is unset."""

    # Loopback: a laptop's quickstart is not an open write endpoint on every network it joins. Containers (the
    # Dockerfile, compose) listen on 0.0.0.0.
    host: str = "127.0.0.1"
    port: int = 3001
    # Embedded engine (chdb) under ./data by default; http(s)://user:pass@host:port for a server.
    clickhouse_url: str = field(default="chdb://" + str(Path("data/clickhouse").absolute()), repr=False)
    clickhouse_database: str = "analytics"
    flush_interval_seconds: float = 2.0
    flush_events: int = 1000
    buffer_max_events: int = 200_000
    max_body_bytes: int = 1_048_576
    retry_max_seconds: float = 30.0
    # "wal": a request is on local disk (fsynced) before its 202, and survives a crash. "memory": faster,
    # but events acknowledged and not yet inserted are lost if the process dies.
    durability: str = "wal"
    wal_dir: str = str(Path("data/wal").absolute())
    dead_letter_path: str = str(Path("data/dead-letter.jsonl").absolute())
    log_level: str = "INFO"
    # Empty: POST /events is open. repr=False so a logged Settings never shows a key.
    write_keys: tuple[str, ...] = field(default=(), repr=False)
    # Empty: no CORS headers and no origin checks; `*` allows any origin.
    cors_origins: tuple[str, ...] = ()
    # Slow clients (docs/api.md "Slow clients"). A request's headers must arrive within header_timeout_seconds of its
    # first byte, and its whole body within body_timeout_seconds of its headers (a total, not an idle gap: a client
    # trickling a byte now and then cannot hold a connection longer). An idle connection closes after
    # keepalive_timeout_seconds. At most max_connections are open at once (fewer if the open-files limit is lower);
    # past it the oldest slow or idle connection is closed to let a new one in.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: float = 15.0
    max_connections: int = 4096
    # A request header a trusted proxy sets to the client's country (CF-IPCountry, CloudFront-Viewer-Country);
    # events without country_code get it. Empty: such events get ZZ. Only set it behind a proxy that overwrites it.
    country_header: str = ""
    # Idempotency keys (docs/api.md "Retries and Idempotency-Key"): a POST /events repeated with the key of an
    # answered one within the window gets the first answer and stores nothing again. At most max_keys are held
    # (~300 bytes of memory each); beyond, the oldest are forgotten early.
    idempotency_window_seconds: float = 86_400.0
    idempotency_max_keys: int = 500_000
    # Certificate authority (PEM file) that signed the ClickHouse server's certificate, for https:// URLs whose
    # certificate a public CA did not sign. Empty: the system's and certifi's roots.
    clickhouse_ca_file: str = ""

    def __post_init__(self) -> None:
        if not _DATABASE_NAME.match(self.clickhouse_database):
            raise ConfigError(
                f"CLICKHOUSE_DATABASE={self.clickhouse_database!r}: use letters, digits and _ "
                "(it is quoted into DDL)"
            )
        if not self.clickhouse_url.startswith(("chdb://", "http://", "https://")):
            raise ConfigError(
                f"CLICKHOUSE_URL must start with chdb://, http:// or https:// (got {_redact(self.clickhouse_url)!r})"
            )
        if self.clickhouse_url.startswith("chdb://"):
            object.__setattr__(self, "clickhouse_url", _embedded_url(self.clickhouse_url))
        for name in ("flush_interval_seconds", "flush_events", "buffer_max_events", "max_body_bytes",
                     "retry_max_seconds", "header_timeout_seconds", "body_timeout_seconds",
                     "keepalive_timeout_seconds", "max_connections", "idempotency_window_seconds",
                     "idempotency_max_keys"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{_ENV[name]} must be positive")
        if self.buffer_max_events < self.flush_events:
            raise ConfigError("INGEST_BUFFER_MAX_EVENTS must be at least INGEST_FLUSH_EVENTS")
        if self.durability not in ("wal", "memory"):
            raise ConfigError(f"INGEST_DURABILITY must be wal or memory, got {self.durability!r}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"INGEST_PORT must be a TCP port (0: any free one), got {self.port}")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(f"INGEST_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level[:40]!r}")
        if not all(_WRITE_KEY.match(k) for k in self.write_keys):
            # The value is a secret: say what is wrong, never echo it.
            raise ConfigError("INGEST_WRITE_KEYS: each key must be printable ASCII without spaces or commas")
        if self.country_header and not _HEADER_NAME.match(self.country_header):
            raise ConfigError(f"INGEST_COUNTRY_HEADER: {self.country_header[:100]!r} is not an HTTP header name, "
                              "e.g. CF-IPCountry")
        if self.clickhouse_ca_file and not self.clickhouse_url.startswith("https://"):
            raise ConfigError("CLICKHOUSE_CA_FILE is for an https:// CLICKHOUSE_URL")
        if self.clickhouse_ca_file and not os.path.isfile(self.clickhouse_ca_file):
            raise ConfigError(f"CLICKHOUSE_CA_FILE={self.clickhouse_ca_file!r}: no such file")
        for origin in self.cors_origins:
            if not _ORIGIN.match(origin):
                raise ConfigError(f"INGEST_CORS_ORIGINS: {origin[:100]!r} is not an origin "
                                  "(scheme://host[:port], no path or trailing slash; or *)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from the environment; unset variables keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(_ENV[f.name])
            if raw is None:
                continue
            try:
                values[f.name] = _PARSE[str(f.type)](raw)
            except ValueError:
                raise ConfigError(f"{_ENV[f.name]}={raw!r} is not a valid {f.type}") from None
        return cls(**values)

    @property
    def redacted_url(self) -> str:
        """The storage URL with any password hidden, for logs and /health."""
        return _redact(self.clickhouse_url)

    @property
    def storage_owner(self) -> str:
        """Which storage and database the events go to, without credentials: a write-ahead log belongs to it."""
        scheme, _, rest = self.clickhouse_url.partition("://")
        if scheme == "chdb":
            where = "chdb://" + os.path.realpath(rest)
        else:
            netloc = rest.split("/", 1)[0].rpartition("@")[2].lower()
            where = f"{scheme}://{netloc}"
        return f"{where} database {self.clickhouse_database}"


_ENV = {
    "host": "INGEST_HOST",
    "port": "INGEST_PORT",
    "clickhouse_url": "CLICKHOUSE_URL",
    "clickhouse_database": "CLICKHOUSE_DATABASE",
    "flush_interval_seconds": "INGEST_FLUSH_INTERVAL_SECONDS",
    "flush_events": "INGEST_FLUSH_EVENTS",
    "buffer_max_events": "INGEST_BUFFER_MAX_EVENTS",
    "max_body_bytes": "INGEST_MAX_BODY_BYTES",
    "retry_max_seconds": "INGEST_RETRY_MAX_SECONDS",
    "durability": "INGEST_DURABILITY",
    "wal_dir": "INGEST_WAL_DIR",
    "dead_letter_path": "INGEST_DEAD_LETTER_PATH",
    "log_level": "INGEST_LOG_LEVEL",
    "write_keys": "INGEST_WRITE_KEYS",
    "cors_origins": "INGEST_CORS_ORIGINS",
    "header_timeout_seconds": "INGEST_HEADER_TIMEOUT_SECONDS",
    "body_timeout_seconds": "INGEST_BODY_TIMEOUT_SECONDS",
    "keepalive_timeout_seconds": "INGEST_KEEPALIVE_TIMEOUT_SECONDS",
    "max_connections": "INGEST_MAX_CONNECTIONS",
    "country_header": "INGEST_COUNTRY_HEADER",
    "idempotency_window_seconds": "INGEST_IDEMPOTENCY_WINDOW_SECONDS",
    "idempotency_max_keys": "INGEST_IDEMPOTENCY_MAX_KEYS",
    "clickhouse_ca_file": "CLICKHOUSE_CA_FILE",
}
ENV_VARS = tuple(_ENV.values())

# One line per setting for `serve --help` (docs/configuration.md says more).
_HELP = {
    "host": "listen address (0.0.0.0: every interface)",
    "port": "listen port (0: any free port, named in the log's `listening on` line)",
    "clickhouse_url": "chdb:///dir or chdb://relative/dir (embedded engine) or http(s)://user:password@host:port",
    "clickhouse_database": "database of the events table",
    "flush_interval_seconds": "insert at most this long after the oldest waiting event arrived",
    "flush_events": "... or as soon as this many events wait",
    "buffer_max_events": "events held at most; beyond, POST /events answers 503 + Retry-After",
    "max_body_bytes": "largest request body, as sent and after decoding (gzip, deflate, br)",
    "retry_max_seconds": "longest wait between retries of a failed insert",
    "durability": "wal (fsync before 202) or memory",
    "wal_dir": "write-ahead log directory (one per service)",
    "dead_letter_path": "where rows ClickHouse refuses for their content go",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "write_keys": "comma-separated keys POST /events requires (empty: none)",
    "cors_origins": "comma-separated origins whose pages may post events, or *",
    "header_timeout_seconds": "a request's headers must arrive within this of its first byte",
    "body_timeout_seconds": "a request's body must arrive within this of its headers, or 408",
    "keepalive_timeout_seconds": "an idle connection is closed after this",
    "max_connections": "most connections open at once (fewer if the open-files limit is lower)",
    "country_header": "trusted proxy header with the client's country, for events without country_code "
                      "(e.g. CF-IPCountry; empty: they get ZZ)",
    "idempotency_window_seconds": "how long a repeated Idempotency-Key gets the first answer",
    "idempotency_max_keys": "most idempotency keys held (~300 bytes each); the oldest go first",
    "clickhouse_ca_file": "PEM file of the CA that signed an https ClickHouse server's certificate (empty: public CAs)",
}


def environment_help(width: int = 80) -> str:
    """Every variable `serve` reads, its meaning and default, for `serve --help`: a column of names, each meaning
    wrapped to `width` columns beside its name."""
    defaults = Settings()
    # No-break spaces keep a command and "(default: value)" on one line (textwrap breaks at ASCII spaces only).
    lines = textwrap.wrap("environment (unset: the default; .env is read by docker compose only: "
                          + "`set -a; . ./.env; set +a`".replace(" ", "\xa0") + " exports it for serve):", width)
    column = 2 + max(map(len, ENV_VARS)) + 2
    for f in fields(Settings):
        value = getattr(defaults, f.name)
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        lines += textwrap.wrap(f"{_HELP.get(f.name, '')} (default:\xa0{shown or 'empty'})", max(width, column + 30),
                               initial_indent=f"  {_ENV[f.name]:<{column - 4}}  ", subsequent_indent=" " * column,
                               break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines).replace("\xa0", " ")


@dataclass(frozen=True)
class SchemaSecrets:
    """What `python -m ingest schema apply` reads besides Settings: the admin's URL and the users' passwords (the
    compose stack's schema step passes them in the environment, never on a command line)."""

    admin_url: str = field(default="", repr=False)
    ingest_password: str = field(default="", repr=False)
    grafana_password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SchemaSecrets":
        environ = os.environ if environ is None else environ
        return cls(**{name: environ.get(variable, "") for name, variable in _SCHEMA_ENV.items()})


_SCHEMA_ENV = {"admin_url": "CLICKHOUSE_ADMIN_URL", "ingest_password": "CLICKHOUSE_INGEST_PASSWORD",
               "grafana_password": "CLICKHOUSE_GRAFANA_PASSWORD"}

# Names in our prefixes that other programs read from the same environment, so a user may well have them exported
# (`set -a; . ./.env`): never a misspelling of ours. The stack's are the ones .env.example and docs/configuration.md
# list beside the settings (tests/test_env_names.py keeps this in step with those files and the compose files);
# the clickhouse-server image's entrypoint reads the rest.
OTHERS_ENV_VARS = (
    # compose, the cluster overlay, Grafana's provisioning, the ClickHouse servers' config
    "CLICKHOUSE_ADMIN_PASSWORD", "CLICKHOUSE_HTTP_PORT", "CLICKHOUSE_HOST", "CLICKHOUSE_CLUSTER_SECRET",
    "CLICKHOUSE_SHARD", "CLICKHOUSE_REPLICA", "INGEST_LB_PORT",
    # the clickhouse/clickhouse-server image
    "CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_DB", "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT",
    "CLICKHOUSE_SKIP_USER_SETUP", "CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS", "CLICKHOUSE_INIT_TIMEOUT",
    "CLICKHOUSE_CONFIG", "CLICKHOUSE_DO_NOT_CHOWN", "CLICKHOUSE_UID", "CLICKHOUSE_GID", "CLICKHOUSE_RUN_AS_ROOT",
    "CLICKHOUSE_WATCHDOG_ENABLE",
)
KNOWN_ENV_VARS = frozenset(ENV_VARS) | frozenset(_SCHEMA_ENV.values()) | frozenset(OTHERS_ENV_VARS)
_OUR_PREFIXES = ("INGEST_", "CLICKHOUSE_")
_OTHERS_PREFIXES = ("CLICKHOUSE_CONNECT_",)  # clickhouse-connect's own (CLICKHOUSE_CONNECT_NATIVE_CODEC)


def _closest(name: str) -> str | None:
    """The known name most like name, compared without the prefix (INGEST_DATABASE: CLICKHOUSE_DATABASE), the same
    prefix winning a tie; None when none is close (a shared prefix alone is no likeness)."""
    def parts(variable: str) -> tuple[str, str]:
        prefix = next(p for p in _OUR_PREFIXES if variable.startswith(p))
        return prefix, variable.removeprefix(prefix)

    prefix, rest = parts(name)
    scored = []
    for known in sorted(KNOWN_ENV_VARS):
        known_prefix, known_rest = parts(known)
        ratio = difflib.SequenceMatcher(None, rest, known_rest).ratio()
        scored.append((ratio, known_prefix == prefix, known))
    ratio, _, best = max(scored)
    return best if ratio >= 0.6 else None


def unknown_env_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each INGEST_*/CLICKHOUSE_* name in the environment that nothing reads, with the closest
    known name: a misspelled setting is otherwise silently left at its default."""
    environ = os.environ if environ is None else environ
    warnings = []
    for name in sorted(environ):
        if not name.startswith(_OUR_PREFIXES) or name in KNOWN_ENV_VARS or name.startswith(_OTHERS_PREFIXES):
            continue
        close = _closest(name)
        hint = f"did you mean {close}?" if close else "`python -m ingest serve --help` lists the settings"
        warnings.append(f"{name} is set but is not a setting: it is ignored ({hint})")
    return warnings


def _comma_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


_PARSE: dict[str, Callable[[str], object]] = {"str": str, "int": int, "float": float, "tuple[str, ...]": _comma_list}


def _embedded_url(url: str) -> str:
    """chdb://DIR with DIR made absolute against the current directory: chdb://./data and chdb://data mean ./data.

    clickhouse-connect reads chdb://a/b as "location a, database b" (its chdb://memory/db form), which opened the
    current directory with a database named after the first path part and left the engine's tmp/ behind there.
    """
    directory = url.removeprefix("chdb://")
    if not directory:
        raise ConfigError("CLICKHOUSE_URL=chdb:// names no directory: chdb:///absolute/dir, or chdb://relative/dir "
                          "(from the current directory)")
    return "chdb://" + os.path.abspath(directory)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    credentials, at, host = netloc.rpartition("@")  # the last @: a password may hold one
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}{slash}{path}"
