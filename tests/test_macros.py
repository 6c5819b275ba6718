"""Macro expansion as grafana-clickhouse-datasource 4.20.0 does it: pkg/macros/macros.go over grafana/macropro v1.0.1.

Where the expected strings come from (grafana/VERSIONS.md names the commits):
- the plugin's own tests at v4.20.0, pkg/macros/macros_test.go: its range 2014-11-12T11:45:26.123Z ..
  2015-11-12T11:45:26.456Z and its inputs and outputs (TestInterpolate, TestInterpolateNestedMacros,
  TestInterpolateBackslashEscapedStringLiterals, the handler tests);
- the plugin's source for what it has no test of: its error texts (badArgsErr, TimeGroup), its comment style
  (LineComment | BlockComment | BackslashEscape: no backtick or $tag$ quoting in 4.20.0);
- macropro v1.0.1's parser and StripComments (and its tests' cases for argument splitting and comments);
- Go's time.ParseDuration and math.Round, whose results and messages were checked against a Go toolchain.
The tests are written here; no code of those projects is copied.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ingest.grafana.macros import MAX_NESTING_DEPTH, MacroError, QueryRange, expand, split_args, strip_comments

# The plugin's test range. Sub-second parts show the rounding: seconds round down, milliseconds are kept.
FROM = datetime(2014, 11, 12, 11, 45, 26, 123_000, tzinfo=timezone.utc)
TO = datetime(2015, 11, 12, 11, 45, 26, 456_000, tzinfo=timezone.utc)
F, T = 1415792726, 1447328726
FMS, TMS = 1415792726123, 1447328726456
R = QueryRange(FROM, TO, interval=timedelta(minutes=1))  # TestInterpolateNestedMacros uses Interval: time.Minute


def at(interval: timedelta) -> QueryRange:
    return QueryRange(FROM, TO, interval=interval)


def test_the_epoch_constants_are_the_range_in_unix_seconds_and_milliseconds():
    assert datetime.fromtimestamp(F, timezone.utc) == FROM.replace(microsecond=0)
    assert datetime.fromtimestamp(T, timezone.utc) == TO.replace(microsecond=0)
    assert (FMS - F * 1000, TMS - T * 1000) == (123, 456)


# --- the plugin's own test vectors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sql, expected", [
    ("select * from foo where $__timeFilter(cast(sth as timestamp))",
     f"select * from foo where cast(sth as timestamp) >= toDateTime({F}) AND "
     f"cast(sth as timestamp) <= toDateTime({T})"),
    ("select * from foo where $__timeFilter(cast(sth as timestamp) )",
     f"select * from foo where cast(sth as timestamp) >= toDateTime({F}) AND "
     f"cast(sth as timestamp) <= toDateTime({T})"),
    ("select * from foo where $__timeFilter_ms(cast(sth as timestamp))",
     f"select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli({FMS}) AND "
     f"cast(sth as timestamp) <= fromUnixTimestamp64Milli({TMS})"),
    ("select * from foo where ( date >= $__fromTime and date <= $__toTime ) limit 100",
     f"select * from foo where ( date >= toDateTime({F}) and date <= toDateTime({T}) ) limit 100"),
    ("select * from foo where ( date >= $__fromTime_ms ) and ( date <= $__toTime_ms ) limit 100",
     f"select * from foo where ( date >= fromUnixTimestamp64Milli({FMS}) ) and "
     f"( date <= fromUnixTimestamp64Milli({TMS}) ) limit 100"),
])
def test_interpolate_vectors_of_the_plugin(sql, expected):
    assert expand(sql, R) == expected


@pytest.mark.parametrize("sql, expected", [
    # plugin issue #2038: a macro as another macro's argument reached ClickHouse unexpanded before 4.20.0
    ("SELECT $__timeInterval($__fromTime) AS from_time",
     f"SELECT toStartOfInterval(toDateTime(toDateTime({F})), INTERVAL 60 second) AS from_time"),
    ("SELECT $__timeInterval_ms($__fromTime_ms)",
     f"SELECT toStartOfInterval(toDateTime64(fromUnixTimestamp64Milli({FMS}), 3), INTERVAL 60000 millisecond)"),
    ("select * from foo where $__timeFilter(coalesce(closed_at, $__toTime))",
     f"select * from foo where coalesce(closed_at, toDateTime({T})) >= toDateTime({F}) AND "
     f"coalesce(closed_at, toDateTime({T})) <= toDateTime({T})"),
    # the example: $__interval (1m here) reaches timeGroup expanded
    ("$__timeGroup(ts, $__interval)", "toStartOfInterval(toDateTime(ts), INTERVAL 60 second)"),
    # argument boundaries are fixed before the inner expansion: its commas cannot add arguments
    ("$__timeFilter($__dt(d, t))",
     f"(d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')) AND (t >= toDateTime({F}) AND t <= "
     f"toDateTime({T})) >= toDateTime({F}) AND (d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')) AND "
     f"(t >= toDateTime({F}) AND t <= toDateTime({T})) <= toDateTime({T})"),
])
def test_macros_nested_in_arguments_expand_first(sql, expected):
    assert expand(sql, R) == expected


@pytest.mark.parametrize("sql, expected", [
    (r"select * from foo where msg = 'it\'s -- fine' and $__fromTime",
     rf"select * from foo where msg = 'it\'s -- fine' and toDateTime({F})"),
    (r"select * from foo where msg = 'a\'/*x' and $__toTime",
     rf"select * from foo where msg = 'a\'/*x' and toDateTime({T})"),
    ("select * from foo where msg = 'it''s' and $__fromTime",
     f"select * from foo where msg = 'it''s' and toDateTime({F})"),
    # the same for double quotes, and an escaped backslash ending a literal
    (r'SELECT "a\"--" AS x, $__toTime', rf'SELECT "a\"--" AS x, toDateTime({T})'),
    ("SELECT 'a\\\\' -- c\n, $__toTime", f"SELECT 'a\\\\'     \n, toDateTime({T})"),
])
def test_backslash_escapes_keep_string_literals_whole_while_comments_are_blanked(sql, expected):
    assert expand(sql, R) == expected


@pytest.mark.parametrize("sql, expected", [
    ("$__dateFilter(dateCol)", "dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')"),
    ("$__dateTimeFilter(dateCol, timeCol)",
     f"(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
     f"(timeCol >= toDateTime({F}) AND timeCol <= toDateTime({T}))"),
    ("$__dt(dateCol, timeCol)",
     f"(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
     f"(timeCol >= toDateTime({F}) AND timeCol <= toDateTime({T}))"),
    ("$__timeFrom(ts)", f"ts >= toDateTime({F})"),
    ("$__timeTo(ts)", f"ts <= toDateTime({T})"),
    ("$__timeGroup(ts, 5m)", "toStartOfInterval(toDateTime(ts), INTERVAL 300 second)"),
    ("$__timeGroup(ts, 1h)", "toStartOfInterval(toDateTime(ts), INTERVAL 3600 second)"),
])
def test_handler_vectors_of_the_plugin(sql, expected):
    assert expand(sql, R) == expected


def test_interval_handler_vectors_of_the_plugin():
    r = at(timedelta(seconds=20))
    assert expand("$__timeInterval(col)", r) == "toStartOfInterval(toDateTime(col), INTERVAL 20 second)"
    assert expand("$__timeInterval_ms(col)", r) == "toStartOfInterval(toDateTime64(col, 3), INTERVAL 20000 millisecond)"
    assert expand("$__interval_s", r) == "20"


# --- errors, worded as the plugin's -----------------------------------------------------------------------------------

def bad_args(macro: str, want: int, got: int) -> str:
    return f"unexpected number of arguments: {macro} expected {want} argument(s), received {got}"


@pytest.mark.parametrize("sql, message", [
    ("SELECT 1 WHERE $__timeFilter(a, b)", f"macro $__timeFilter(a, b): {bad_args('$__timeFilter', 1, 2)}"),
    ("$__timeFilter", f"macro $__timeFilter(): {bad_args('$__timeFilter', 1, 0)}"),
    ("$__timeFilter()", f"macro $__timeFilter(): {bad_args('$__timeFilter', 1, 0)}"),
    ("$__timeFilter_ms(a,b)", f"macro $__timeFilter_ms(a, b): {bad_args('$__timeFilter_ms', 1, 2)}"),
    ("$__dateFilter", f"macro $__dateFilter(): {bad_args('$__dateFilter', 1, 0)}"),
    ("$__dt(date)", f"macro $__dt(date): {bad_args('$__dateTimeFilter', 2, 1)}"),
    ("$__dateTimeFilter(a, b, c)", f"macro $__dateTimeFilter(a, b, c): {bad_args('$__dateTimeFilter', 2, 3)}"),
    ("$__timeInterval", f"macro $__timeInterval(): {bad_args('$__timeInterval', 1, 0)}"),
    ("$__timeInterval_ms", f"macro $__timeInterval_ms(): {bad_args('$__timeInterval_ms', 1, 0)}"),
    ("$__timeFrom", f"macro $__timeFrom(): {bad_args('$__timeFrom', 1, 0)}"),
    ("$__timeTo(a, b)", f"macro $__timeTo(a, b): {bad_args('$__timeTo', 1, 2)}"),
    ("$__timeGroup(ts)", f"macro $__timeGroup(ts): {bad_args('$__timeGroup', 2, 1)}"),
    ("$__timeGroup(ts, not-a-duration)", 'macro $__timeGroup(ts, not-a-duration): $__timeGroup: invalid interval '
                                         '"not-a-duration": time: invalid duration "not-a-duration"'),
    ("$__timeGroup(ts, '5')", 'macro $__timeGroup(ts, \'5\'): $__timeGroup: invalid interval "5": '
                              'time: missing unit in duration "5"'),
    ("$__timeGroup(ts, 5d)", 'macro $__timeGroup(ts, 5d): $__timeGroup: invalid interval "5d": '
                             'time: unknown unit "d" in duration "5d"'),
    ("$__timeGroup(ts, -5m)", 'macro $__timeGroup(ts, -5m): $__timeGroup: interval must be positive, got "-5m"'),
    ("$__timeGroup(ts, 0)", 'macro $__timeGroup(ts, 0): $__timeGroup: interval must be positive, got "0"'),
    ("$__timeGroup(ts, 499ms)", 'macro $__timeGroup(ts, 499ms): $__timeGroup: interval must be positive, got "499ms"'),
    ("$__table", "macro $__table(): $__table: no table name in query context"),
    ("SELECT $__column FROM t", "macro $__column(): $__column: no column name in query context"),
    # an error inside an argument names the outer macro and the argument
    ("$__timeFilter(coalesce(a, $__timeGroup(ts)))",
     f"macro $__timeFilter argument 1: macro $__timeGroup(ts): {bad_args('$__timeGroup', 2, 1)}"),
])
def test_refused_queries_fail_with_the_plugins_message(sql, message):
    with pytest.raises(MacroError) as caught:
        expand(sql, R)
    assert str(caught.value) == message


def test_nesting_deeper_than_128_levels_is_refused():
    def nested(levels: int) -> str:
        return "$__timeFrom(" * levels + "x" + ")" * levels

    assert expand(nested(MAX_NESTING_DEPTH + 1), R) == "x" + f" >= toDateTime({F})" * (MAX_NESTING_DEPTH + 1)
    with pytest.raises(MacroError) as caught:
        expand(nested(MAX_NESTING_DEPTH + 2), R)
    assert str(caught.value) == ("macro $__timeFrom argument 1: " * (MAX_NESTING_DEPTH + 1)
                                 + f"macro nesting exceeds {MAX_NESTING_DEPTH} levels")


# --- $__timeGroup: Go's durations and rounding ------------------------------------------------------------------------

@pytest.mark.parametrize("period, seconds", [
    ("90s", 90), ("1h30m", 5400), ("1.5m", 90), ("+5m", 300), ("'5m'", 300), ('"5m"', 300), ("1h0m0s", 3600),
    ("90000000000ns", 90), ("1500000us", 2), ("1500000µs", 2), ("1500000μs", 2), (".5h", 1800),
    # math.Round takes halves away from zero: 0.5 s is 1, 2.5 s is 3 (Python's round() would give 0 and 2)
    ("500ms", 1), ("2500ms", 3), ("2.5s", 3), ("1499ms", 1), ("3.4999s", 3),
])
def test_time_group_reads_go_durations_and_rounds_half_away_from_zero(period, seconds):
    assert expand(f"$__timeGroup(ts, {period})", R) == f"toStartOfInterval(toDateTime(ts), INTERVAL {seconds} second)"


# --- the interval macros ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interval, text, ms, seconds", [
    (timedelta(seconds=30), "30s", 30000, 30),
    (timedelta(minutes=2), "2m", 120000, 120),
    (timedelta(hours=3), "3h", 10800000, 10800),
    (timedelta(milliseconds=1500), "1500ms", 1500, 1),
    (timedelta(milliseconds=200), "200ms", 200, 1),  # alert rules default to intervalMs 1000; the floor is 1 s
    (timedelta(0), "0s", 0, 1),
])
def test_interval_macros(interval, text, ms, seconds):
    r = at(interval)
    assert expand("$__interval|$__interval_ms|$__interval_s", r) == f"{text}|{ms}|{seconds}"
    assert expand("$__timeInterval(t)", r) == f"toStartOfInterval(toDateTime(t), INTERVAL {seconds} second)"
    assert expand("$__timeInterval_ms(t)", r) == (
        f"toStartOfInterval(toDateTime64(t, 3), INTERVAL {max(ms, 1)} millisecond)")


# --- the scanner -----------------------------------------------------------------------------------------------------

def test_a_name_is_read_whole_so_longer_names_never_split():
    assert expand("$__timeFilter_ms(t) / $__timeFilter(t)", R) == (
        f"t >= fromUnixTimestamp64Milli({FMS}) AND t <= fromUnixTimestamp64Milli({TMS}) / "
        f"t >= toDateTime({F}) AND t <= toDateTime({T})")
    assert expand("$__interval_s $__interval_ms $__interval", R) == "60 60000 1m"


def test_unknown_names_stay_but_known_macros_in_their_arguments_expand():
    assert expand("$__conditionalAll(x, $var) $__timeFilterX $var $__ $__(", R) == (
        "$__conditionalAll(x, $var) $__timeFilterX $var $__ $__(")
    assert expand("$__unknown($__fromTime, 'a')", R) == f"$__unknown(toDateTime({F}), 'a')"


def test_macros_inside_string_literals_are_expanded_too():
    assert expand("SELECT '$__fromTime'", R) == f"SELECT 'toDateTime({F})'"


def test_an_unclosed_argument_list_counts_as_no_arguments():
    assert expand("$__fromTime(x", R) == f"toDateTime({F})(x"
    with pytest.raises(MacroError, match="received 0"):
        expand("$__timeFilter(x", R)
    assert expand("$__timeFilter(f(')', a))", R) == f"f(')', a) >= toDateTime({F}) AND f(')', a) <= toDateTime({T})"


def test_argument_lists_do_not_honour_backslash_escapes():
    # Only comment blanking reads \' as an escape; the argument scanner sees 'it\' as a literal, then an unclosed
    # one, so the list never closes and the macro gets no arguments.
    with pytest.raises(MacroError, match=r"^macro \$__timeFilter\(\): .*received 0$"):
        expand(r"$__timeFilter(concat('it\'s', x))", R)


@pytest.mark.parametrize("raw, args", [
    ("", []), ("  ", []), (" time ", ["time"]), ("a, b, c", ["a", "b", "c"]),
    ("COALESCE(a, b), c", ["COALESCE(a, b)", "c"]), ("'a,b', c", ["'a,b'", "c"]),
    ("'it''s, fine', x", ["'it''s, fine'", "x"]),
    ('"he said ""hi"", then left", y', ['"he said ""hi"", then left"', "y"]),
    (" toDateTime(a, 'UTC') ,\u00a0b\u3000", ["toDateTime(a, 'UTC')", "b"]),  # Go trims Unicode spaces
    ("a,\x1cb", ["a", "\x1cb"]),  # ... but not the separators Python's strip() would take
])
def test_arguments_split_at_top_level_commas(raw, args):
    assert split_args(raw) == args


# --- comments --------------------------------------------------------------------------------------------------------

def test_a_query_without_macros_is_sent_as_it_is_comments_included():
    sql = "SELECT 1 -- note\n/* block\ncomment */"
    assert expand(sql, R) == sql


def test_comments_are_blanked_byte_for_byte_and_block_comments_lose_their_newlines():
    line, block = "-- $__timeFilter(", "/* $__dt(x)\r\n */"
    sql = f"SELECT '--kept' AS s {line}\n{block} $__fromTime"
    assert expand(sql, R) == "SELECT '--kept' AS s " + " " * len(line) + "\n" + " " * len(block) + f" toDateTime({F})"
    # every byte of a comment becomes a space: a two-byte character becomes two
    assert strip_comments("x -- größe\ny") == "x " + " " * 10 + "\ny"  # 8 characters, 10 bytes
    assert strip_comments("a --b\rc") == "a    \rc"


def test_an_unclosed_block_comment_blanks_to_the_end():
    assert strip_comments("SELECT /* $__foo unterminated") == "SELECT " + " " * 22
    assert expand("$__fromTime /* $__toTime", R) == f"toDateTime({F})" + " " * 13


def test_backticks_and_dollar_tags_are_not_quotes_in_the_pinned_version():
    # 4.20.0 strips with LineComment | BlockComment | BackslashEscape only (main adds BacktickQuote | DollarQuote):
    # a `--` inside them starts a comment that takes the rest of the line, macros included.
    assert expand("SELECT `a--b`, $__fromTime\nFROM t", R) == "SELECT `a" + " " * len("--b`, $__fromTime") + "\nFROM t"
    assert expand("SELECT $x$a--b$x$, $__toTime\n", R) == "SELECT $x$a" + " " * len("--b$x$, $__toTime") + "\n"
    # and a quote inside backticks opens a literal that hides a later comment from the stripper
    assert expand("SELECT `it's` -- $__fromTime", R) == f"SELECT `it's` -- toDateTime({F})"


# --- the range --------------------------------------------------------------------------------------------------------

def test_ranges_in_other_zones_render_as_utc_and_round_down():
    cet = timezone(timedelta(hours=1))
    r = QueryRange(datetime(2026, 1, 1, 0, 30, 0, 999_999, tzinfo=cet), datetime(2026, 1, 1, 1, 0, tzinfo=cet))
    assert expand("$__dateFilter(d) $__fromTime $__fromTime_ms", r) == (
        "d >= toDate('2025-12-31') AND d <= toDate('2026-01-01') toDateTime(1767223800) "
        "fromUnixTimestamp64Milli(1767223800999)")


def test_query_range_rejects_naive_reversed_or_negative_values():
    with pytest.raises(ValueError):
        QueryRange(datetime(2026, 1, 1), datetime(2026, 1, 2))
    with pytest.raises(ValueError):
        QueryRange(TO, FROM)
    with pytest.raises(ValueError):
        QueryRange(FROM, TO, interval=timedelta(seconds=-1))



def test_a_lone_surrogate_is_blanked_as_the_replacement_character_go_decodes_it_to():
    # Go's JSON decoder turns the query's "\ud800" into U+FFFD, three bytes, so its comment is three spaces.
    assert expand("$__fromTime --\ud800", R) == f"toDateTime({F})" + " " * 6
