"""Grafana ClickHouse plugin macros, expanded exactly as the plugin's backend does, so panel SQL runs without Grafana.

Pinned to grafana-clickhouse-datasource 4.23.x (see grafana/VERSIONS.md). Since 4.19.0 the plugin expands macros
with grafana/macropro: `--` and `/* */` comments are blanked first, names are tried longest first, a macro's
argument list is the balanced `(...)` right after its name (commas inside nested parentheses or quotes do not
split), unknown `$__x` tokens stay as they are, and a nested macro used as an argument is NOT expanded first
(plugin issue #2038). The expansions below are the plugin's `ClickHouseMacros` (pkg/macros/macros.go) layered on
macropro's defaults. Pure functions: no ClickHouse, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

PLUGIN_VERSION = "4.23.3"

PREFIX = "$__"


class MacroError(ValueError):
    """A macro call the plugin would refuse (wrong argument count, unbalanced parentheses)."""


@dataclass(frozen=True)
class QueryRange:
    """What the plugin's backend knows about one query: the picker's range and the panel interval."""

    start: datetime
    end: datetime
    # Grafana derives the interval from range and panel width; alert queries default to 1 s (intervalMs 1000).
    interval: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("QueryRange needs timezone-aware datetimes")
        if self.start > self.end:
            raise ValueError("QueryRange start is after its end")


# --- value renderings, as the Go code prints them ------------------------------------------------------------

def _unix_s(t: datetime) -> int:
    # Go's Time.Unix(): whole seconds, rounded down.
    return math.floor(t.timestamp())


def _unix_ms(t: datetime) -> int:
    # Go's Time.UnixMilli(); computed from the timedelta to avoid float rounding.
    delta = t - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400_000) + (delta.seconds * 1000) + (delta.microseconds // 1000)


def _date(t: datetime) -> str:
    # Go formats the time in its own location; Grafana's backend hands plugins UTC ranges (container TZ is UTC).
    return f"toDate('{t.astimezone(timezone.utc):%Y-%m-%d}')"


def _datetime(t: datetime) -> str:
    return f"toDateTime({_unix_s(t)})"


def _datetime64(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({_unix_ms(t)})"


def _interval_seconds(r: QueryRange) -> int:
    return int(max(r.interval.total_seconds(), 1))


def _interval_ms(r: QueryRange) -> int:
    return r.interval // timedelta(milliseconds=1)


def _format_duration(d: timedelta) -> str:
    # macropro.FormatDuration: the largest whole unit.
    ms = abs(d // timedelta(milliseconds=1))
    if ms == 0:
        return "0s"
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _parse_go_duration(text: str) -> timedelta:
    """Go's time.ParseDuration for the units timeGroup accepts in practice (e.g. 5m, 1h30m, 90s)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, number, i = 0.0, "", 0
    if not text:
        raise MacroError(f"invalid interval {text!r}")
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            number += c
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else c
        if unit not in units or not number:
            raise MacroError(f"invalid interval {text!r}")
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:
        raise MacroError(f"invalid interval {text!r}")
    return timedelta(seconds=total)


# --- the macros -------------------------------------------------------------------------------------------------

Macro = Callable[[QueryRange, list[str]], str]


def _args(name: str, args: list[str], n: int) -> list[str]:
    if len(args) != n:
        plural = "argument" if n == 1 else "arguments"
        raise MacroError(f"{name} requires {n} {plural}, received {len(args)}")
    return args


def _between(column: str, r: QueryRange, render: Callable[[datetime], str]) -> str:
    return f"{column} >= {render(r.start)} AND {column} <= {render(r.end)}"


def _range_filter(name: str, render: Callable[[datetime], str]) -> Macro:
    """$__<name>(col): col between the range's ends, both inclusive, rendered at the macro's precision."""
    def macro(r: QueryRange, args: list[str]) -> str:
        (column,) = _args(name, args, 1)
        return _between(column, r, render)
    return macro


def _date_time_filter(r: QueryRange, args: list[str]) -> str:
    d, t = _args("dateTimeFilter", args, 2)
    return f"({_between(d, r, _date)}) AND ({_between(t, r, _datetime)})"


def _bound(name: str, op: str, end: bool) -> Macro:
    """$__timeFrom(col) / $__timeTo(col): one side of the range as a comparison."""
    def macro(r: QueryRange, args: list[str]) -> str:
        (column,) = _args(name, args, 1)
        return f"{column} {op} {_datetime(r.end if end else r.start)}"
    return macro


def _bucket(name: str, render: Callable[[str, QueryRange], str]) -> Macro:
    """$__timeInterval(col) and its _ms twin: the panel interval's bucket start."""
    def macro(r: QueryRange, args: list[str]) -> str:
        (column,) = _args(name, args, 1)
        return render(column, r)
    return macro


def _time_group(r: QueryRange, args: list[str]) -> str:
    c, period = _args("timeGroup", args, 2)
    period = period.strip().strip("'\"")
    seconds = round(_parse_go_duration(period).total_seconds())
    if seconds <= 0:
        raise MacroError(f"timeGroup: interval must be positive, got {period!r}")
    return f"toStartOfInterval(toDateTime({c.strip()}), INTERVAL {seconds} second)"


def _needs_context(name: str) -> Macro:
    def macro(r: QueryRange, args: list[str]) -> str:
        # The query builder fills table/column; raw SQL panels have none, and the plugin errors the same way.
        raise MacroError(f"$__{name}: no {name} name in query context")
    return macro


MACROS: dict[str, Macro] = {
    # macropro defaults kept by the plugin
    "interval": lambda r, a: _format_duration(r.interval),
    "interval_ms": lambda r, a: str(_interval_ms(r)),
    "table": _needs_context("table"),
    "column": _needs_context("column"),
    # the plugin's overrides and extensions
    "timeFilter": _range_filter("timeFilter", _datetime),
    "timeFrom": _bound("timeFrom", ">=", end=False),
    "timeTo": _bound("timeTo", "<=", end=True),
    "timeGroup": _time_group,
    "fromTime": lambda r, a: _datetime(r.start),
    "toTime": lambda r, a: _datetime(r.end),
    "fromTime_ms": lambda r, a: _datetime64(r.start),
    "toTime_ms": lambda r, a: _datetime64(r.end),
    "timeFilter_ms": _range_filter("timeFilter_ms", _datetime64),
    "dateFilter": _range_filter("dateFilter", _date),
    "dateTimeFilter": _date_time_filter,
    "dt": _date_time_filter,
    "timeInterval": _bucket("timeInterval", lambda c, r: (
        f"toStartOfInterval(toDateTime({c}), INTERVAL {_interval_seconds(r)} second)")),
    "timeInterval_ms": _bucket("timeInterval_ms", lambda c, r: (
        f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {max(_interval_ms(r), 1)} millisecond)")),
    "interval_s": lambda r, a: str(_interval_seconds(r)),
}


# --- the engine (macropro's parser) -------------------------------------------------------------------------------

def _skip_quoted(s: str, pos: int) -> int:
    """Index just past the '...' or "..." literal opening at pos; a doubled quote continues it."""
    quote, j = s[pos], pos + 1
    while j < len(s):
        if s[j] == quote:
            if j + 1 < len(s) and s[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return j


def strip_comments(sql: str) -> str:
    """Blank `--` line comments and `/* */` block comments to spaces (same length), leaving string literals alone."""
    out, i = list(sql), 0
    while i < len(sql):
        c = sql[i]
        if c in "'\"":
            i = _skip_quoted(sql, i)
        elif sql.startswith("--", i):
            j = i
            while j < len(sql) and sql[j] not in "\r\n":
                j += 1
            out[i:j] = " " * (j - i)
            i = j
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            j = len(sql) if end < 0 else end + 2
            out[i:j] = [ch if ch in "\r\n" else " " for ch in sql[i:j]]
            i = j
        else:
            i += 1
    return "".join(out)


def _unquoted(s: str):
    """(index, char) of every character outside '...' and "..." literals."""
    i = 0
    while i < len(s):
        if s[i] in "'\"":
            i = _skip_quoted(s, i)
            continue
        yield i, s[i]
        i += 1


def _closing_paren(s: str) -> int:
    """Index of the ')' closing the '(' that starts s, or -1."""
    depth = 0
    for i, c in _unquoted(s):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == ")" and depth == 0:
            return i
    return -1


def split_args(raw: str) -> list[str]:
    """Split a macro's argument text on top-level commas, trimmed; blank text means no arguments."""
    raw = raw.strip()
    if not raw:
        return []
    args, depth, start = [], 0, 0
    for i, c in _unquoted(raw):
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                raise MacroError(f"unexpected ')' at position {i}")
            depth -= 1
        elif c == "," and depth == 0:
            args.append(raw[start:i].strip())
            start = i + 1
    if depth:
        raise MacroError("unbalanced parentheses in arguments")
    args.append(raw[start:].strip())
    return args


def _is_name_char(c: str) -> bool:
    return c == "_" or c.isascii() and c.isalnum()


def expand(sql: str, query_range: QueryRange) -> str:
    """The SQL the plugin sends to ClickHouse for this raw SQL and range."""
    result = strip_comments(sql)
    # Longest names first (ties alphabetical) so $__timeFilter_ms is never read as $__timeFilter + "_ms".
    for name in sorted(MACROS, key=lambda n: (-len(n), n)):
        token, out, rest = PREFIX + name, [], result
        while (idx := rest.find(token)) >= 0:
            after = idx + len(token)
            if after < len(rest) and _is_name_char(rest[after]):
                out.append(rest[:after])
                rest = rest[after:]
                continue
            out.append(rest[:idx])
            rest = rest[after:]
            raw = ""
            if rest.startswith("("):
                end = _closing_paren(rest)
                if end >= 0:  # unbalanced: macropro treats the call as having no arguments
                    raw, rest = rest[1:end], rest[end + 1:]
            try:
                args = split_args(raw)
            except MacroError as exc:
                raise MacroError(f"macro {token}: {exc}") from None
            try:
                out.append(MACROS[name](query_range, args))
            except MacroError as exc:
                raise MacroError(f"macro {token}({', '.join(args)}): {exc}") from None
        out.append(rest)
        result = "".join(out)
    return result
