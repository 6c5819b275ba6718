"""Grafana ClickHouse plugin macros, expanded as the pinned plugin's backend expands them, so panel SQL runs without
Grafana.

Pinned to grafana-clickhouse-datasource 4.20.0; grafana/VERSIONS.md says which source was read. That version
expands macros with grafana/macropro v1.0.1 (`pkg/macros/macros.go`: `macropro.Interpolate` over the plugin's
`ClickHouseMacros`, comment style `LineComment | BlockComment | BackslashEscape`):

- A query without `$__` is sent as it is. Otherwise `--` and `/* */` comments are blanked first: every byte of a
  comment becomes a space (a block comment's newlines too), a `--` comment stops before its `\\n` or `\\r`, an
  unclosed `/*` blanks to the end. String literals ('...' and "...") are skipped while blanking; they honour
  doubled quotes and backslash escapes (`'it\\'s'`). Backticks and `$tag$` are not quotes in 4.20.0 (main adds
  them after 4.20.0).
- One forward scan: `$__` plus the longest run of [A-Za-z0-9_] is the name; unknown names stay as they are and
  the scan goes on inside their arguments; a known name takes the balanced `(...)` right after it (quotes skipped,
  here without backslash escapes) or, unbalanced or absent, no arguments. Arguments split at top-level commas and
  are trimmed; macros inside an argument are expanded first (4.20: macropro v1.0.1), at most 128 levels deep;
  a handler's output is never scanned again.
- Errors read as the plugin's, before sqlds adds "Could not apply macros: " (which the panels command shows).

Pure functions: no ClickHouse, no clock. The template variables a dashboard's frontend substitutes first are in
ingest/grafana/variables.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

PLUGIN_VERSION = "4.20.0"

PREFIX = "$__"
MAX_NESTING_DEPTH = 128  # macropro's maxNestingDepth
# sqlds (v5.3.0 datasource.go handleQuery) puts this before an Interpolate error in the panel's error message.
SQLDS_ERROR_PREFIX = "Could not apply macros: "


class MacroError(ValueError):
    """A query the plugin refuses; the message is the plugin's."""


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
        if self.interval < timedelta(0):
            raise ValueError("QueryRange interval is negative")


# --- Go's standard library, as the plugin's code calls it -----------------------------------------------------------

# unicode.IsSpace (strings.TrimSpace): Latin-1 spaces, then the White_Space property. Not Python's isspace().
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
       "h": 3600 * 10**9}
_OVERFLOW = 1 << 63


def go_trim_space(s: str) -> str:
    return s.strip(_GO_SPACE)


def _time_quote(s: str) -> str:
    """time's own quote(): non-ASCII and control characters as \\x bytes."""
    out: list[str] = []
    for c in s:
        if ord(c) >= 0x80 or c < " ":
            out.extend(f"\\x{b:02x}" for b in c.encode())
        else:
            out.append("\\" + c if c in '"\\' else c)
    return '"' + "".join(out) + '"'


def go_quote(s: str) -> str:
    """strconv.Quote, as fmt's %q prints a string."""
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif c in named:
            out.append(named[c])
        elif ord(c) < 0x20 or c == "\x7f":
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def parse_go_duration(text: str) -> int:
    """time.ParseDuration: nanoseconds, or ValueError with Go's message ("time: invalid duration ...")."""
    invalid = ValueError("time: invalid duration " + _time_quote(text))
    s, neg, total = text, False, 0
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise invalid
        i = 0
        while i < len(s) and "0" <= s[i] <= "9":
            i += 1
        digits, pre, s = s[:i].lstrip("0"), i > 0, s[i:]
        if len(digits) > 19 or int(digits or 0) > _OVERFLOW:  # leadingInt's overflow
            raise invalid
        whole = int(digits or 0)
        frac, scale, post = 0, 1.0, False
        if s[:1] == ".":
            s, i, overflow = s[1:], 0, False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    y = frac * 10 + int(s[i])
                    if frac > (_OVERFLOW - 1) // 10 or y > _OVERFLOW:
                        overflow = True
                    else:
                        frac, scale = y, scale * 10
                i += 1
            post, s = i > 0, s[i:]
        if not pre and not post:
            raise invalid
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise ValueError("time: missing unit in duration " + _time_quote(text))
        unit, s = s[:i], s[i:]
        if unit not in _NS:
            raise ValueError(f"time: unknown unit {_time_quote(unit)} in duration {_time_quote(text)}")
        if whole > _OVERFLOW // _NS[unit]:
            raise invalid
        value = whole * _NS[unit]
        if frac > 0:
            value += int(float(frac) * (float(_NS[unit]) / scale))
            if value > _OVERFLOW:
                raise invalid
        total += value
        if total > _OVERFLOW:
            raise invalid
    if neg:
        return -total
    if total > _OVERFLOW - 1:
        raise invalid
    return total


def go_round(x: float) -> float:
    """math.Round: halves away from zero (Python's round() goes to even)."""
    whole = math.trunc(x)
    return whole + math.copysign(1, x) if abs(x - whole) >= 0.5 else float(whole)


def _seconds(ns: int) -> float:
    # Duration.Seconds(): whole seconds (Go's division truncates) plus the remainder, both as floats.
    whole = (abs(ns) // 10**9) * (-1 if ns < 0 else 1)
    return float(whole) + float(ns - whole * 10**9) / 1e9


# --- value renderings, as the plugin prints them ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _micros(d: timedelta) -> int:
    return d // timedelta(microseconds=1)


def _unix_s(t: datetime) -> int:
    return _micros(t - _EPOCH) // 1_000_000  # Time.Unix(): rounded down


def _unix_ms(t: datetime) -> int:
    return _micros(t - _EPOCH) // 1_000  # Time.UnixMilli(): rounded down


def _date(t: datetime) -> str:
    # Go formats the time in its location; the SDK hands plugins ranges in the process's zone (UTC in the image).
    return f"toDate('{t.astimezone(timezone.utc):%Y-%m-%d}')"


def _datetime(t: datetime) -> str:
    return f"toDateTime({_unix_s(t)})"


def _datetime64(t: datetime) -> str:
    return f"fromUnixTimestamp64Milli({_unix_ms(t)})"


def _interval_ms(r: QueryRange) -> int:
    return _micros(r.interval) // 1_000  # IntervalMS = Interval.Milliseconds(), truncated


def _interval_seconds(r: QueryRange) -> int:
    return max(_micros(r.interval) // 1_000_000, 1)  # int(math.Max(Interval.Seconds(), 1))


def format_duration(d: timedelta) -> str:
    """macropro v1.0.x FormatDuration ($__interval): the largest unit that divides it, else milliseconds."""
    us = abs(_micros(d))
    if us == 0:
        return "0s"
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us // 1000}ms"


# --- the macros: the plugin's ClickHouseMacros over macropro's defaults -----------------------------------------------

Macro = Callable[[QueryRange, list[str]], str]


def _bad_args(macro: str, want: int, got: int) -> MacroError:
    # badArgsErr wraps sqlutil.ErrorBadArgumentCount ("unexpected number of arguments").
    return MacroError(f"unexpected number of arguments: {macro} expected {want} argument(s), received {got}")


def _args(name: str, args: list[str], n: int) -> list[str]:
    if len(args) != n:
        raise _bad_args(PREFIX + name, n, len(args))
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
    d, t = _args("dateTimeFilter", args, 2)  # $__dt reports itself as $__dateTimeFilter too
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
    column, period = _args("timeGroup", args, 2)
    period = go_trim_space(period).strip("'\"")
    try:
        ns = parse_go_duration(period)
    except ValueError as exc:
        raise MacroError(f"$__timeGroup: invalid interval {go_quote(period)}: {exc}") from None
    seconds = int(go_round(_seconds(ns)))
    if seconds <= 0:
        raise MacroError(f"$__timeGroup: interval must be positive, got {go_quote(period)}")
    return f"toStartOfInterval(toDateTime({go_trim_space(column)}), INTERVAL {seconds} second)"


def _needs_context(name: str) -> Macro:
    def macro(r: QueryRange, args: list[str]) -> str:
        # macropro's default: the query builder sends table/column; raw SQL queries carry neither.
        raise MacroError(f"$__{name}: no {name} name in query context")
    return macro


MACROS: dict[str, Macro] = {
    # macropro defaults the plugin keeps
    "interval": lambda r, a: format_duration(r.interval),
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


# --- the engine: macropro v1.0.1 --------------------------------------------------------------------------------------

def _string_end(s: str, pos: int, backslash: bool) -> int:
    """Index just past the '...' or "..." literal opening at pos (doubled quotes continue it), or len(s)."""
    quote, j = s[pos], pos + 1
    while j < len(s):
        if backslash and s[j] == "\\" and j + 1 < len(s):
            j += 2
        elif s[j] == quote and s[j + 1:j + 2] == quote:
            j += 2
        elif s[j] == quote:
            return j + 1
        else:
            j += 1
    return j


def _blank(text: str) -> str:
    return " " * len(text.encode())  # Go writes one space per byte


def strip_comments(sql: str) -> str:
    """macropro.StripComments with the plugin's style: every byte of a comment becomes a space."""
    out, i = [], 0
    while i < len(sql):
        c = sql[i]
        if c in "'\"":
            j = _string_end(sql, i, backslash=True)
            out.append(sql[i:j])
        elif sql.startswith("--", i):
            j = i
            while j < len(sql) and sql[j] not in "\n\r":
                j += 1
            out.append(_blank(sql[i:j]))
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            j = len(sql) if end < 0 else end + 2
            out.append(_blank(sql[i:j]))
        else:
            j = i + 1
            out.append(c)
        i = j
    return "".join(out)


def _closing_paren(s: str, start: int) -> int:
    """Index of the ')' closing the '(' at start, quotes skipped; -1 when unbalanced."""
    depth, i = 0, start
    while i < len(s):
        if s[i] in "'\"":
            i = _string_end(s, i, backslash=False)
            continue
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def split_args(raw: str) -> list[str]:
    """macropro's parseArgs: top-level commas split, each argument trimmed; blank text means no arguments."""
    raw = go_trim_space(raw)
    if not raw:
        return []
    args, depth, start, i = [], 0, 0, 0
    while i < len(raw):
        c = raw[i]
        if c in "'\"":
            i = _string_end(raw, i, backslash=False)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                raise MacroError(f"unexpected ')' at position {len(raw[:i].encode())}")
            depth -= 1
        elif c == "," and depth == 0:
            args.append(go_trim_space(raw[start:i]))
            start = i + 1
        i += 1
    if depth:
        raise MacroError("unbalanced parentheses in arguments")
    args.append(go_trim_space(raw[start:]))
    return args


def _is_name_char(c: str) -> bool:
    return c == "_" or (c.isascii() and c.isalnum())


def _expand(work: str, r: QueryRange, depth: int) -> str:
    if depth > MAX_NESTING_DEPTH:
        raise MacroError(f"macro nesting exceeds {MAX_NESTING_DEPTH} levels")
    out, i = [], 0
    while (at := work.find(PREFIX, i)) >= 0:
        out.append(work[i:at])
        end = at + len(PREFIX)
        while end < len(work) and _is_name_char(work[end]):
            end += 1
        name, token = work[at + len(PREFIX):end], work[at:end]
        if name not in MACROS:  # a bare prefix, or an unknown name: kept, and the scan goes on after it
            out.append(token)
            i = end
            continue
        raw, i = "", end
        if work[end:end + 1] == "(" and (close := _closing_paren(work, end)) >= 0:
            raw, i = work[end + 1:close], close + 1
        try:
            args = split_args(raw)
        except MacroError as exc:
            raise MacroError(f"macro {token}: {exc}") from None
        for n, arg in enumerate(args):
            if PREFIX in arg:
                try:
                    args[n] = _expand(arg, r, depth + 1)
                except MacroError as exc:
                    raise MacroError(f"macro {token} argument {n + 1}: {exc}") from None
        try:
            out.append(MACROS[name](r, args))
        except MacroError as exc:
            raise MacroError(f"macro {token}({', '.join(args)}): {exc}") from None
    out.append(work[i:])
    return "".join(out)


def expand(sql: str, query_range: QueryRange) -> str:
    """The SQL the plugin sends to ClickHouse for this raw SQL and range (macropro.Interpolate)."""
    # A lone surrogate (possible from a JSON \ud800 escape) reaches Go as U+FFFD: Go's JSON decoder replaces it.
    sql = re.sub("[\ud800-\udfff]", "\ufffd", sql)
    if PREFIX not in sql:
        return sql  # sent untouched, comments included
    work = strip_comments(sql)
    if PREFIX not in work:
        return work
    return _expand(work, query_range, 0)
