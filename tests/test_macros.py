"""Macro expansion matches the ClickHouse plugin's backend (4.23.x: pkg/macros/macros.go on grafana/macropro) string for string."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ingest.macros import PLUGIN_VERSION, MacroError, QueryRange, expand, split_args, strip_comments

# 2026-11-27 10:00:00.250 UTC .. 11:00:00.750 UTC: sub-second parts show the rounding rules.
FROM = datetime(2026, 11, 27, 10, 0, 0, 250_000, tzinfo=timezone.utc)
TO = datetime(2026, 11, 27, 11, 0, 0, 750_000, tzinfo=timezone.utc)
F, T = 1795773600, 1795777200  # Unix seconds, rounded down like Go's Time.Unix()
R = QueryRange(FROM, TO, interval=timedelta(seconds=30))


def test_epoch_constants_are_the_range_in_unix_seconds():
    assert datetime.fromtimestamp(F, timezone.utc) == FROM.replace(microsecond=0)
    assert datetime.fromtimestamp(T, timezone.utc) == TO.replace(microsecond=0)


@pytest.mark.parametrize("sql, expected", [
    ("$__timeFilter(timestamp)", f"timestamp >= toDateTime({F}) AND timestamp <= toDateTime({T})"),
    ("$__timeFilter_ms(timestamp)",
     f"timestamp >= fromUnixTimestamp64Milli({F}250) AND timestamp <= fromUnixTimestamp64Milli({T}750)"),
    ("$__dateFilter(date)", "date >= toDate('2026-11-27') AND date <= toDate('2026-11-27')"),
    ("$__dateTimeFilter(date, timestamp)",
     f"(date >= toDate('2026-11-27') AND date <= toDate('2026-11-27')) AND "
     f"(timestamp >= toDateTime({F}) AND timestamp <= toDateTime({T}))"),
    ("$__dt(date, timestamp)",
     f"(date >= toDate('2026-11-27') AND date <= toDate('2026-11-27')) AND "
     f"(timestamp >= toDateTime({F}) AND timestamp <= toDateTime({T}))"),
    ("$__fromTime", f"toDateTime({F})"),
    ("$__toTime", f"toDateTime({T})"),
    ("$__fromTime_ms", f"fromUnixTimestamp64Milli({F}250)"),
    ("$__toTime_ms", f"fromUnixTimestamp64Milli({T}750)"),
    ("$__timeFrom(timestamp)", f"timestamp >= toDateTime({F})"),
    ("$__timeTo(timestamp)", f"timestamp <= toDateTime({T})"),
    ("$__timeGroup(timestamp, '5m')", "toStartOfInterval(toDateTime(timestamp), INTERVAL 300 second)"),
    ("$__timeInterval(timestamp)", "toStartOfInterval(toDateTime(timestamp), INTERVAL 30 second)"),
    ("$__timeInterval_ms(timestamp)", "toStartOfInterval(toDateTime64(timestamp, 3), INTERVAL 30000 millisecond)"),
    ("$__interval_s", "30"),
    ("$__interval_ms", "30000"),
    ("$__interval", "30s"),
])
def test_each_macro_expands_to_the_plugins_exact_text(sql, expected):
    assert expand(sql, R) == expected


def test_interval_is_at_least_one_second_as_in_alert_rules():
    # Alert queries default to intervalMs 1000; the plugin floors $__interval_s / $__timeInterval at 1 s.
    r = QueryRange(FROM, TO, interval=timedelta(milliseconds=200))
    assert expand("$__interval_s", r) == "1"
    assert expand("$__timeInterval(t)", r) == "toStartOfInterval(toDateTime(t), INTERVAL 1 second)"
    assert expand("$__timeInterval_ms(t)", r) == "toStartOfInterval(toDateTime64(t, 3), INTERVAL 200 millisecond)"


def test_longer_names_win_over_their_prefixes():
    assert expand("$__timeFilter_ms(t) / $__timeFilter(t)", R) == (
        f"t >= fromUnixTimestamp64Milli({F}250) AND t <= fromUnixTimestamp64Milli({T}750) / "
        f"t >= toDateTime({F}) AND t <= toDateTime({T})")
    assert expand("$__interval_s $__interval_ms $__interval", R) == "30 30000 30s"


def test_arguments_keep_nested_parentheses_and_quoted_commas():
    assert split_args(" toDateTime(a, 'UTC') , b ") == ["toDateTime(a, 'UTC')", "b"]
    assert split_args("concat('a,b', c)") == ["concat('a,b', c)"]
    assert split_args("  ") == []
    assert expand("$__timeFilter(toDateTime(ts, 'UTC'))", R) == (
        f"toDateTime(ts, 'UTC') >= toDateTime({F}) AND toDateTime(ts, 'UTC') <= toDateTime({T})")


def test_wrong_argument_count_is_an_error_naming_the_macro():
    with pytest.raises(MacroError, match=r"macro \$__timeFilter\(a, b\): timeFilter requires 1 argument, received 2"):
        expand("SELECT 1 WHERE $__timeFilter(a, b)", R)
    with pytest.raises(MacroError, match="dateTimeFilter requires 2 arguments, received 1"):
        expand("$__dt(date)", R)
    with pytest.raises(MacroError, match="timeFilter requires 1 argument, received 0"):
        expand("$__timeFilter", R)


def test_unknown_macros_and_names_that_only_start_like_one_stay_as_they_are():
    assert expand("$__conditionalAll(x, $var) $__timeFilterX $var", R) == "$__conditionalAll(x, $var) $__timeFilterX $var"


def test_comments_are_blanked_before_expansion_but_strings_are_kept():
    sql = "SELECT '--not a comment' AS s -- $__timeFilter(\n/* $__dt(x) */ $__fromTime"
    expanded = expand(sql, R)
    assert expanded == "SELECT '--not a comment' AS s" + " " * 18 + "\n" + " " * 14 + f" toDateTime({F})"
    assert len(strip_comments(sql)) == len(sql)


def test_query_range_rejects_naive_or_reversed_times():
    with pytest.raises(ValueError):
        QueryRange(datetime(2026, 1, 1), datetime(2026, 1, 2))
    with pytest.raises(ValueError):
        QueryRange(TO, FROM)


def test_the_pinned_plugin_version_is_what_the_dashboard_and_versions_file_name():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert f"grafana-clickhouse-datasource {PLUGIN_VERSION}" in (root / "grafana" / "VERSIONS.md").read_text()
    dashboard = json.loads((root / "grafana" / "dashboards" / "product-analytics.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["pluginVersion"] == PLUGIN_VERSION


def test_an_unclosed_argument_list_counts_as_no_arguments_and_quoted_parens_do_not_close():
    # macropro leaves the text after an unbalanced '(' alone and calls the macro without arguments.
    assert expand("$__fromTime(x", R) == f"toDateTime({F})(x"
    with pytest.raises(MacroError, match="received 0"):
        expand("$__timeFilter(x", R)
    assert expand("$__timeFilter(f(')', a))", R) == (
        f"f(')', a) >= toDateTime({F}) AND f(')', a) <= toDateTime({T})")
