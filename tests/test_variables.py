"""Template variables reach panel SQL as Grafana's frontend puts them there (grafana-clickhouse-datasource 4.20.0,
src/data/CHDatasource.ts applyTemplateVariables: $__conditionalAll first, then the template service with the
plugin's format), and `python -m ingest panels` says what it substituted."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from ingest.cli import main as cli
from ingest.grafana.dashboard import load_dashboard, load_options, query_range
from ingest.grafana.variables import Variable, VariableError, dashboard_variables, describe, substitute
from ingest.storage.sink import Sink
from ingest.terminal import panels

DEVICE = {"name": "device_type", "type": "custom", "multi": False, "includeAll": True, "allValue": "",
          "current": {"value": "mobile"},
          "options": [{"value": "$__all"}, {"value": "desktop"}, {"value": "mobile"}, {"value": "tablet"}]}
COUNTRY = {"name": "country_code", "type": "custom", "multi": True, "includeAll": True, "allValue": "",
           "current": {"value": ["DE", "FR"]},
           "options": [{"value": "$__all"}, {"value": "DE"}, {"value": "FR"}, {"value": "US"}]}


def variables(*specs: dict, **chosen: list[str]) -> dict[str, Variable]:
    return dashboard_variables({"templating": {"list": list(specs)}}, chosen)


@pytest.mark.parametrize("sql, expected", [
    ("device_type = '$device_type'", "device_type = 'mobile'"),
    ("device_type = '${device_type}' OR '[[device_type]]'", "device_type = 'mobile' OR 'mobile'"),
    # several values: quoted by the plugin's format, joined by ','
    ("country_code IN ($country_code)", "country_code IN ('DE','FR')"),
    # names Grafana does not know, and the plugin's macros, stay for the backend
    ("$__timeFilter(timestamp) AND $undefined AND ${other}", "$__timeFilter(timestamp) AND $undefined AND ${other}"),
    ("$device_typeX", "$device_typeX"),
])
def test_variables_take_the_dashboards_saved_selection(sql, expected):
    assert substitute(sql, variables(DEVICE, COUNTRY)) == expected


def test_all_is_every_option_or_the_custom_all_value_as_it_is():
    assert substitute("IN ($country_code)", variables(COUNTRY, country_code=["$__all"])) == "IN ('DE','FR','US')"
    assert substitute("IN ($device_type)", variables({**DEVICE, "current": {"value": ["$__all"]}})) == (
        "IN ('desktop','mobile','tablet')")
    custom_all = {**COUNTRY, "allValue": "country_code", "current": {"value": ["$__all"]}}
    assert substitute("country_code IN ($country_code)", variables(custom_all)) == "country_code IN (country_code)"
    query_variable = {**COUNTRY, "type": "query", "options": [], "current": {"value": ["$__all"]}}
    with pytest.raises(VariableError, match="options are not saved"):
        substitute("$country_code", variables(query_variable))


@pytest.mark.parametrize("chosen, expected", [
    ({}, "WHERE device_type IN (mobile) AND (country_code IN ('DE','FR'))"),
    ({"device_type": ["$__all"]}, "WHERE 1=1 AND (country_code IN ('DE','FR'))"),
    ({"device_type": [""], "country_code": ["$__all"]}, "WHERE 1=1 AND (1=1)"),
])
def test_conditional_all_keeps_the_condition_unless_the_variable_is_all_or_empty(chosen, expected):
    sql = ("WHERE $__conditionalAll(device_type IN ($device_type), $device_type) "
           "AND ($__conditionalAll(country_code IN ($country_code),${country_code}))")
    assert substitute(sql, variables(DEVICE, COUNTRY, **chosen)) == expected


def test_conditional_all_splits_as_the_plugin_does():
    # Commas inside quotes split too: three arguments, and the plugin leaves this and every earlier call alone.
    sql = "$__conditionalAll(a = 'x', $device_type) AND $__conditionalAll(b = 'p,q', $device_type)"
    every = "'desktop','mobile','tablet'"
    assert substitute(sql, variables({**DEVICE, "current": {"value": "$__all"}})) == (
        f"$__conditionalAll(a = 'x', {every}) AND $__conditionalAll(b = 'p,q', {every})")
    # The replacement is JavaScript's string replace, which reads $$ in the condition as one $.
    assert substitute("$__conditionalAll(price = '$$', $device_type)", variables(DEVICE)) == "price = '$'"


@pytest.mark.parametrize("sql", ["${device_type:csv}", "[[device_type:raw]]", "${device_type.text}",
                                 "$__interval", "${__from}", "$__to"])
def test_what_is_not_emulated_is_refused_not_guessed(sql):
    with pytest.raises(VariableError):
        substitute(sql, variables(DEVICE))


def test_choices_must_fit_the_dashboards_variables():
    with pytest.raises(VariableError, match="no variable region"):
        variables(DEVICE, region=["eu"])
    with pytest.raises(VariableError, match="takes one value"):
        variables(DEVICE, device_type=["mobile", "desktop"])
    assert variables(COUNTRY, country_code=["US"])["country_code"].value == ("US",)
    with pytest.raises(VariableError, match="ad hoc"):
        variables({"name": "filters", "type": "adhoc"})


def test_the_panels_command_says_which_variables_it_substitutes_and_runs_the_result(ch, settings, tmp_path):
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    now = datetime.now(timezone.utc) - timedelta(minutes=1)
    people = [("mobile", "DE"), ("mobile", "FR"), ("mobile", "US"), ("desktop", "DE"), ("tablet", "FR")]
    ch.insert("events", [("page_view", now, f"s{i}", None, device, country, "{}")
                         for i, (device, country) in enumerate(people)],
              column_names=["event_name", "timestamp", "session_id", "user_id", "device_type", "country_code",
                            "properties"])
    sql = ("SELECT event_name AS feature, count() AS users FROM events WHERE $__timeFilter(timestamp) "
           "AND $__conditionalAll(device_type = '$device_type', $device_type) AND country_code IN ($country_code) "
           "GROUP BY feature")
    dashboard = {"templating": {"list": [DEVICE, COUNTRY]}, "panels": [
        {"id": 1, "type": "bargauge", "title": "Views", "gridPos": {"x": 0, "y": 0},
         "targets": [{"refId": "A", "datasource": {"uid": "clickhouse"}, "rawSql": sql, "format": 1}]}]}
    path = tmp_path / "dashboard.json"
    path.write_text(__import__("json").dumps(dashboard))

    def views(**chosen: list[str]) -> tuple[str, str]:
        out = io.StringIO()
        assert panels.main(settings, "1h", False, str(path), out, chosen) == 0
        text = out.getvalue()
        return text, text.split("\nViews\n", 1)[1]

    text, shown = views()  # the saved selection: mobile, DE and FR
    assert "\n  Filter: device_type mobile  (saved selection; SQL: mobile)\n" in text
    assert "\n  Filter: country_code DE, FR  (saved selection; SQL: 'DE','FR')\n" in text
    assert "page_view" in shown and shown.rstrip().endswith(" 2")
    text, shown = views(device_type=["$__all"], country_code=["US", "FR"])
    assert "\n  Filter: device_type All  (command line; SQL: $__conditionalAll -> 1=1)\n" in text
    assert "\n  Filter: country_code US, FR  (command line; SQL: 'US','FR')\n" in text
    assert shown.rstrip().endswith(" 3")  # mobile US, mobile FR, tablet FR


def test_a_value_the_variable_does_not_offer_is_refused_with_the_values_it_offers():
    with pytest.raises(VariableError) as refused:
        variables(COUNTRY, country_code=["DE", "XX"])
    assert str(refused.value) == "country_code has no value 'XX' (the values it offers: DE, FR, US)"
    # Options a query loaded take the place of saved ones; All and the empty value are always accepted.
    query_variable = {**COUNTRY, "type": "query", "options": []}
    loaded = {"country_code": ("BR", "JP")}
    with pytest.raises(VariableError, match=r"no value 'DE' \(the values it offers: BR, JP\)"):
        dashboard_variables({"templating": {"list": [query_variable]}}, {"country_code": ["DE"]}, loaded)
    for value in ("JP", "$__all", ""):
        chosen = dashboard_variables({"templating": {"list": [query_variable]}}, {"country_code": [value]}, loaded)
        assert chosen["country_code"].value == (value,)
    with pytest.raises(VariableError, match="its query returned no values at all"):
        dashboard_variables({"templating": {"list": [query_variable]}}, {"country_code": ["DE"]},
                            {"country_code": ()})
    many = tuple(f"C{i:02d}" for i in range(30))
    with pytest.raises(VariableError, match=r"C00, C01, .*, C11, \.\.\. \(30 in all\)\)$"):
        dashboard_variables({"templating": {"list": [query_variable]}}, {"country_code": ["DE"]},
                            {"country_code": many})


def test_each_line_says_the_filter_its_source_and_what_the_sql_receives():
    chosen = variables(DEVICE, COUNTRY, country_code=["$__all"])
    assert describe(chosen) == [
        "Filter: device_type mobile  (saved selection; SQL: mobile)",
        "Filter: country_code All  (command line; SQL: $__conditionalAll -> 1=1)"]
    assert describe(variables({**COUNTRY, "allValue": "country_code"}, country_code=["$__all"])) == [
        "Filter: country_code All  (command line; SQL: $__conditionalAll -> 1=1, $country_code -> country_code)"]
    assert describe({}) == ["Template variables: none in the dashboard, nothing substituted."]


def _dashboard_events(ch, settings, rows):
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    ch.insert("events", rows, column_names=["event_name", "timestamp", "session_id", "user_id", "device_type",
                                             "country_code", "properties"])


def test_the_product_dashboards_variables_offer_the_values_of_the_last_90_days_sorted(ch, settings):
    now = datetime.now(timezone.utc)
    kept = [("mobile", "JP", 0), ("desktop", "DE", 1), ("tablet", "BR", 45), ("desktop", "AR", 88)]
    gone = [("other", "ZZ", 95), ("other", "NZ", 200)]  # older than the 90 days the tables keep
    _dashboard_events(ch, settings, [("page_view", now - timedelta(days=days), f"s{i}", None, device, country, "{}")
                                     for i, (device, country, days) in enumerate(kept + gone)])
    # The breakdown offers the property keys of the first funnel step's events of the last 7 days, no split first.
    _dashboard_events(ch, settings, [
        ("signup_started", now - timedelta(hours=1), "f1", None, "mobile", "JP",
         '{"plan": "pro", "email_domain": "x"}'),
        ("signup_started", now - timedelta(days=2), "f2", None, "mobile", "JP", '{"utm_source": "ads"}'),
        ("signup_started", now - timedelta(days=8), "f3", None, "mobile", "JP", '{"too_old": 1}'),
        ("email_verified", now - timedelta(hours=1), "f1", None, "mobile", "JP", '{"not_the_first_step": 1}')])
    dashboard = load_dashboard()

    def run(sql):
        result = ch.query(sql)
        return list(result.column_names), result.result_rows
    loaded = load_options(dashboard, query_range("1h"), run)
    assert loaded == {"device_type": tuple(sorted({d for d, _, _ in kept})),
                      "country_code": tuple(sorted({c for _, c, _ in kept})),
                      "breakdown": ("", "email_domain", "plan", "utm_source")}
    # With other steps chosen, the keys of their first step's events.
    chosen = load_options(dashboard, query_range("1h"), run, {"steps": ["email_verified,signup_completed"]})
    assert chosen["breakdown"] == ("", "not_the_first_step")


def test_panels_device_and_country_filter_every_panel_and_say_so(ch, settings, monkeypatch, capsys):
    now = datetime.now(timezone.utc) - timedelta(seconds=30)
    people = [("mobile", "DE"), ("mobile", "FR"), ("tablet", "DE"), ("tablet", "DE"), ("desktop", "DE"),
              ("other", "US")]
    _dashboard_events(ch, settings, [("page_view", now, f"s{i}", None, device, country, "{}")
                                     for i, (device, country) in enumerate(people)])
    monkeypatch.setenv("CLICKHOUSE_URL", settings.clickhouse_url)
    monkeypatch.setenv("CLICKHOUSE_DATABASE", settings.clickhouse_database)

    def panels_(*args: str) -> tuple[int, str, str]:
        code = cli(["panels", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = panels_("--device", "mobile,tablet", "--country", "DE")
    assert code == 0, err
    assert "\n  Filter: device_type mobile, tablet  (command line; SQL: 'mobile','tablet')\n" in out
    assert "\n  Filter: country_code DE  (command line; SQL: 'DE')\n" in out
    assert "Active users  3 sessions in the last 5 minutes" in out  # mobile DE, tablet DE twice
    code, out, err = panels_("--country", "DE,US")
    assert code == 0, err
    assert "\n  Filter: device_type All  (saved selection; SQL: $__conditionalAll -> 1=1)\n" in out
    assert "Active users  5 sessions in the last 5 minutes" in out
    code, out, err = panels_()
    assert "Active users  6 sessions in the last 5 minutes" in out

    for args, words in ((["--device", "phone"], "device_type has no value 'phone' (the values it offers: desktop, "
                                                "mobile, other, tablet)"),
                        (["--device", "mobile", "--country", "de"], "country_code has no value 'de' (the values it "
                                                                    "offers: DE, FR, US)"),
                        (["--var", "country_code=XX"], "country_code has no value 'XX'")):
        code, out, err = panels_(*args)
        assert code == 1 and not out
        assert err.count("\n") == 1 and err.startswith("ingest panels: template variables: ") and words in err, err
    for args in (["--device", "mobile", "--var", "device_type=tablet"], ["--country", "DE,,FR"]):
        with pytest.raises(SystemExit) as usage:
            cli(["panels", *args])
        assert usage.value.code == 2
        assert "--" in capsys.readouterr().err
