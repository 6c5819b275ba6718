"""Grafana cannot run here, so its files are checked by construction: uids resolve, formats fit the panels,
refresh and picker settings hold, every provisioning $VAR is documented, PromQL names real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from ingest.grafana.dashboard import load_dashboard, panel_queries
from ingest.grafana.macros import MACROS, QueryRange, expand
from ingest.grafana.variables import ALL, VARIABLE, dashboard_variables, substitute
from ingest.storage.sink import Sink

from .harness.events import event
from .harness.provisioning import grafana_provisioning_variables
from .stack import volumes

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in (GRAFANA / "dashboards").glob("*.json")}
ALERT_FILES = sorted(p.name for p in (GRAFANA / "provisioning" / "alerting").glob("*.yaml"))
# Grafana's own pseudo-datasources: a panel whose targets name their datasources each, and server-side expressions.
BUILT_IN_UIDS = {"-- Mixed --", "__expr__"}
# The one panel that ignores the time picker and the filters: whether the pipeline is live now, for everyone.
LIVE_STATUS = "Live status"


def _yaml(relative: str):
    return yaml.safe_load((GRAFANA / "provisioning" / relative).read_text())


def _datasource_refs(node):
    """Every datasource uid a dashboard names, at panel and target level."""
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            yield ds["uid"]
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


def prometheus_expressions() -> list[str]:
    """Every PromQL expression of the ingest pipeline dashboard."""
    return [t["expr"] for p in DASHBOARDS["ingest-pipeline"]["panels"] for t in p["targets"]]


def test_the_fixed_uids_are_provisioned():
    sources = {d["uid"]: d for d in _yaml("datasources/datasources.yaml")["datasources"]}
    assert sources["clickhouse"]["type"] == "grafana-clickhouse-datasource"
    assert sources["prometheus"]["type"] == "prometheus"
    assert {d["uid"] for d in DASHBOARDS.values()} == {"product-analytics", "ingest-pipeline"}
    (rule,) = _yaml("alerting/error-rate.yaml")["groups"][0]["rules"]
    assert rule["uid"] == "error-rate-high"


def test_every_datasource_uid_a_dashboard_or_rule_names_is_provisioned():
    provisioned = {d["uid"] for d in _yaml("datasources/datasources.yaml")["datasources"]}
    named = set()
    for dashboard in DASHBOARDS.values():
        named |= set(_datasource_refs(dashboard["panels"]))
    assert ALERT_FILES == ["error-rate.yaml", "signup-conversion.yaml"]
    for name in ALERT_FILES:
        for group in _yaml(f"alerting/{name}")["groups"]:
            for rule in group["rules"]:
                named |= {d["datasourceUid"] for d in rule["data"]}
                named |= set(_datasource_refs([d["model"] for d in rule["data"]]))
    assert named - BUILT_IN_UIDS == provisioned
    # A mixed panel has no datasource of its own: each of its targets must name one.
    for dashboard in DASHBOARDS.values():
        for panel in dashboard["panels"]:
            if panel.get("datasource", {}).get("uid") == "-- Mixed --":
                assert all(t.get("datasource", {}).get("uid") for t in panel["targets"]), panel["title"]


def test_clickhouse_datasource_uses_native_protocol_read_only_user_and_env_settings():
    (ch,) = [d for d in _yaml("datasources/datasources.yaml")["datasources"] if d["uid"] == "clickhouse"]
    jd = ch["jsonData"]
    assert (jd["host"], jd["port"], jd["protocol"], jd["username"]) == ("$CLICKHOUSE_HOST", 9000, "native", "grafana")
    assert jd["defaultDatabase"] == "$CLICKHOUSE_DATABASE" and "database" not in jd
    assert ch["secureJsonData"] == {"password": "$CLICKHOUSE_GRAFANA_PASSWORD"}
    (prom,) = [d for d in _yaml("datasources/datasources.yaml")["datasources"] if d["uid"] == "prometheus"]
    assert prom["url"] == "$PROMETHEUS_URL"


def test_every_provisioning_folder_grafana_reads_is_there():
    # Compose mounts grafana/provisioning over the image's /etc/grafana/provisioning, hiding its empty folders.
    # Grafana 12 reads datasources, plugins, dashboards and alerting; a missing one is logged as an error at start
    # ("Failed to read plugin provisioning files from directory"). Only *.yaml/*.yml files are read in them.
    mounted = [s for s, t, _ in volumes("grafana") if t == "/etc/grafana/provisioning"]
    assert mounted == ["./grafana/provisioning"]
    for folder in ("datasources", "plugins", "dashboards", "alerting"):
        tracked = subprocess.run(["git", "ls-files", f"grafana/provisioning/{folder}"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout
        assert tracked, f"grafana/provisioning/{folder} holds no tracked file, so a checkout lacks the folder"


def test_dashboard_provider_reads_the_mounted_dashboard_directory():
    (provider,) = _yaml("dashboards/dashboards.yaml")["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("uid", ["product-analytics", "ingest-pipeline"])
def test_dashboards_refresh_every_5s_default_to_last_hour_and_offer_1h_6h_24h(uid):
    d = DASHBOARDS[uid]
    assert d["refresh"] == "5s"
    assert d["time"] == {"from": "now-1h", "to": "now"}
    assert d["timepicker"]["refresh_intervals"][0] == "5s"
    assert [r["from"] for r in d["timepicker"]["quick_ranges"]] == ["now-1h", "now-6h", "now-24h"]
    # Panels read only the picker's range: no per-panel time overrides.
    assert all("timeFrom" not in p and "timeShift" not in p for p in d["panels"])


def test_product_dashboard_shows_live_status_on_top_then_the_panels_two_by_two_without_overlap():
    panels = DASHBOARDS["product-analytics"]["panels"]
    grid = sorted((p["gridPos"]["y"], p["gridPos"]["x"], p["gridPos"]["w"], p["title"]) for p in panels)
    assert grid[0] == (0, 0, 24, LIVE_STATUS)
    rows = [grid[i:i + 2] for i in range(1, len(grid), 2)]
    assert [[title for *_, title in row] for row in rows] == [
        ["Active users", "Signup funnel"], ["Top features", "Error rate"],
        ["Signup steps", "Signup conversion over time"]]
    for (y_left, x_left, w_left, _), (y_right, x_right, w_right, _) in rows:
        assert (y_left, x_left, w_left) == (y_right, 0, 12) and (x_right, w_right) == (12, 12)
    # Grafana's grid is 24 columns wide; two panels whose cells intersect would be drawn over each other.
    cells = [{(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for dx in range(p["gridPos"]["w"])
              for dy in range(p["gridPos"]["h"])} for p in panels]
    assert all(x < 24 for c in cells for x, _ in c)
    assert sum(len(c) for c in cells) == len(set().union(*cells))
    assert len({p["id"] for p in panels}) == len(panels)


def test_panel_formats_fit_how_the_panels_use_them():
    by_title = {p["title"]: p for p in DASHBOARDS["product-analytics"]["panels"]}
    for query in panel_queries(DASHBOARDS["product-analytics"]):
        panel = by_title[query.title]
        (target,) = [t for t in panel["targets"] if t.get("rawSql")]
        # A line, or a big number with its sparkline, needs a time series; a table, bars of names, or one
        # number (Live status: the newest event's age) a table.
        if panel["type"] == "timeseries" or panel.get("options", {}).get("graphMode") == "area":
            assert (query.format, target["queryType"]) == (0, "timeseries"), query.title
        else:
            assert (query.format, target["queryType"]) == (1, "table"), query.title
    assert by_title["Active users"]["options"]["graphMode"] == "area"
    assert by_title["Top features"]["options"]["orientation"] == "horizontal"
    assert by_title["Top features"]["options"]["reduceOptions"]["values"] is True
    error = by_title["Error rate"]["fieldConfig"]["defaults"]
    assert error["custom"]["thresholdsStyle"]["mode"] == "line"
    assert {"color": "red", "value": 1} in error["thresholds"]["steps"]
    overrides = {o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
                 for o in by_title["Signup funnel"]["fieldConfig"]["overrides"]}
    assert by_title["Signup funnel"]["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars"
    assert overrides["conversion_pct"]["custom.drawStyle"] == "line"
    assert overrides["conversion_pct"]["custom.axisPlacement"] == "right"
    steps = {o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
             for o in by_title["Signup steps"]["fieldConfig"]["overrides"]}
    assert steps["conversion_pct"]["unit"] == "percent"
    conversion = by_title["Signup conversion over time"]["fieldConfig"]["defaults"]
    assert (conversion["unit"], conversion["min"], conversion["max"]) == ("percent", 0, 100)


def test_live_status_is_green_yellow_red_from_the_newest_event_and_ingests_own_metrics():
    (panel,) = [p for p in DASHBOARDS["product-analytics"]["panels"] if p["title"] == LIVE_STATUS]
    targets = {t["refId"]: t for t in panel["targets"]}
    # Only the status expression is shown; its inputs are hidden.
    assert [r for r, t in targets.items() if not t.get("hide")] == ["status"]
    assert targets["A"]["datasource"]["uid"] == "clickhouse"
    assert {targets[r]["datasource"]["uid"] for r in "BCD"} == {"prometheus"}
    assert targets["status"]["datasource"]["uid"] == "__expr__" and targets["status"]["type"] == "math"
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert {k: (v["text"], v["color"]) for k, v in mapping["options"].items()} == {
        "0": ("live", "green"), "1": ("delayed", "yellow"), "2": ("down", "red")}


def test_time_series_panels_return_a_time_column_first_in_ascending_order(ch, settings):
    Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    end = datetime.now(timezone.utc).replace(microsecond=0)
    names = ["error_occurred", "signup_started", "signup_completed", "feature_used", "page_view"]
    rows = [(names[i % 5], end - timedelta(minutes=i * 3), f"s{i}", None, "desktop", "DE",
             '{"feature": "export"}' if i % 5 == 3 else "{}") for i in range(100)]
    ch.insert("events", rows, column_names=["event_name", "timestamp", "session_id", "user_id", "device_type",
                                             "country_code", "properties"])
    dashboard = DASHBOARDS["product-analytics"]
    for query, chosen in [(q, c) for q in panel_queries(dashboard)
                          for c in ({}, {"device_type": ["desktop"], "country_code": ["DE"]})]:
        sql = substitute(query.raw_sql, dashboard_variables(dashboard, chosen))
        result = ch.query(expand(sql, QueryRange(end - timedelta(hours=6), end)))
        assert result.result_rows, query.title
        if query.format == 0:
            times = [r[0] for r in result.result_rows]
            assert isinstance(times[0], datetime), query.title
            # Wide (one row per time, numbers beside it) or long (a text column names the series: one row per
            # time and name), which Grafana turns wide; either way time ascends.
            labels = [tuple(v for v in r[1:] if isinstance(v, str)) for r in result.result_rows]
            keys = list(zip(times, labels, strict=True))
            assert times == sorted(times) and len(set(keys)) == len(keys), \
                f"{query.title}: time must ascend, one row per time (and series)"
            assert all(isinstance(v, (int, float, str)) or v is None for r in result.result_rows for v in r[1:])


def _variables_named(sql: str) -> set[str]:
    """Template variable names a query uses; the plugin's macros are not variables."""
    names = {m[1] or m[2] or m[4] for m in VARIABLE.finditer(sql)}
    return {n for n in names if n.removeprefix("__") not in MACROS and n != "__conditionalAll"}


def test_panel_sql_filters_time_with_the_plugin_macros_and_names_only_the_dashboards_variables():
    dashboard = DASHBOARDS["product-analytics"]
    for query in panel_queries(dashboard):
        if query.title == LIVE_STATUS:  # how old the newest event is now, whatever range is picked
            assert "$__" not in query.raw_sql and "now() - INTERVAL 10 MINUTE" in query.raw_sql
            continue
        assert "$__timeFilter(timestamp)" in query.raw_sql or "$__toTime" in query.raw_sql, query.title
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    used = set().union(*(_variables_named(q.raw_sql) for q in panel_queries(dashboard)))
    # Grafana leaves an unknown $name in the SQL, and ClickHouse then fails on it.
    assert used <= defined, f"not defined in the dashboard: {sorted(used - defined)}"


def test_the_product_dashboard_filters_by_device_and_country_with_values_from_clickhouse():
    dashboard = DASHBOARDS["product-analytics"]
    specs = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(specs) == ["device_type", "country_code", "steps", "breakdown"]
    for name in ("device_type", "country_code"):
        spec = specs[name]
        # A query variable on the ClickHouse datasource (the plugin's variable query model), several values or
        # All, All by default, loaded when the dashboard opens, only the values it offers.
        assert spec["type"] == "query" and spec["datasource"] == {"type": "grafana-clickhouse-datasource",
                                                                   "uid": "clickhouse"}
        assert (spec["multi"], spec["includeAll"], spec["allowCustomValue"]) == (True, True, False)
        assert spec["current"]["value"] == [ALL] and "allValue" not in spec
        assert spec["refresh"] == 1 and spec["sort"] == 1
        # Values from the small daily rollup, not the raw events (cheap over the 90 days kept).
        sql = spec["query"]["rawSql"]
        assert spec["query"]["queryType"] == "sql" and re.search(
            rf"SELECT DISTINCT {name} FROM segments_per_day\b", sql)
        assert "FROM events" not in sql and f"ORDER BY {name}" in sql


def test_the_funnel_steps_are_typed_and_the_breakdown_offers_no_split_first():
    specs = {v["name"]: v for v in DASHBOARDS["product-analytics"]["templating"]["list"]}
    steps = specs["steps"]
    assert steps["type"] == "textbox"
    assert steps["query"] == steps["current"]["value"] == "signup_started,email_verified,signup_completed"
    breakdown = specs["breakdown"]
    assert breakdown["type"] == "query" and breakdown["datasource"]["uid"] == "clickhouse"
    assert (breakdown["multi"], breakdown["includeAll"]) == (False, False)
    assert breakdown["current"] == {"text": "none", "value": ""}
    # Its query follows the steps chosen above it (Grafana resolves variables in order).
    assert "${steps:singlequote}" in breakdown["query"]["rawSql"]
    assert list(specs).index("steps") < list(specs).index("breakdown")


def _code(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def test_every_panel_follows_both_variables_through_conditional_all_and_no_comment_holds_one():
    for query in panel_queries(DASHBOARDS["product-analytics"]):
        code = _code(query.raw_sql)
        if query.title == LIVE_STATUS:  # liveness is the pipeline's, for everyone
            assert "$device_type" not in code and "$country_code" not in code
            continue
        for name in ("device_type", "country_code"):
            # The plugin's optional filter: the condition, or 1=1 at All; and All's own branch switch.
            assert f"$__conditionalAll({name} IN (${name}), ${name})" in code, query.title
            # A panel that reads rollups picks the unsegmented or the segmented one by All's own branch switch.
            if "_by_segment" in code:
                assert f"$__conditionalAll(false, ${name})" in code, query.title
        # Grafana's frontend expands $__conditionalAll and variables before the plugin blanks comments, so a
        # mention in a comment would be expanded too (and a call it cannot parse stops it expanding the others).
        comments = "".join(re.findall(r"--[^\n]*", query.raw_sql))
        assert "$__conditionalAll" not in comments and "$device_type" not in comments \
            and "$country_code" not in comments, query.title


def test_the_alert_query_uses_no_template_variables():
    # Alert rules run in Grafana's backend, where no frontend substitutes template variables or $__conditionalAll.
    checked = 0
    for group in [g for name in ALERT_FILES for g in _yaml(f"alerting/{name}")["groups"]]:
        for rule in group["rules"]:
            for query in rule["data"]:
                if "rawSql" in query["model"]:
                    checked += 1
                    assert not _variables_named(query["model"]["rawSql"]), rule["uid"]
                    assert "$__conditionalAll" not in query["model"]["rawSql"]
    assert checked >= len(ALERT_FILES)


def test_alert_annotations_and_query_models_are_not_substituted_but_labels_are():
    rule = {"uid": "r", "labels": {"team": "$TEAM"}, "annotations": {"runbook": "${RUNBOOK} {{ $values.B }}"},
            "data": [{"refId": "A", "datasourceUid": "$DS_UID", "model": {"rawSql": "SELECT $HOST"}}]}
    document = {"apiVersion": 1, "groups": [{"name": "g", "folder": "$FOLDER", "rules": [rule]}]}
    assert grafana_provisioning_variables([document]) == {"TEAM", "DS_UID", "FOLDER"}


def test_every_env_var_a_provisioning_file_reads_is_in_env_example():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    used = grafana_provisioning_variables()
    assert used >= {"CLICKHOUSE_HOST", "CLICKHOUSE_DATABASE", "CLICKHOUSE_GRAFANA_PASSWORD", "PROMETHEUS_URL",
                    "ALERT_WEBHOOK_URL"}
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"


def test_alert_rule_timing_annotations_and_routing():
    doc = _yaml("alerting/error-rate.yaml")
    (group,) = doc["groups"]
    (rule,) = group["rules"]
    assert group["interval"] == "1m" and rule["for"] == "3m"
    assert rule["title"] == "error rate above 1%"
    assert {"summary", "description"} <= set(rule["annotations"])
    assert rule["dashboardUid"] == "product-analytics"
    panel_ids = {p["id"]: p["title"] for p in DASHBOARDS["product-analytics"]["panels"]}
    assert panel_ids[rule["panelId"]] == "Error rate"
    # Grafana 12.4 takes annotations raw; a pending change (grafana#127214) would substitute ${VAR} there, so
    # none is used: the templates read .Values, and nothing in them looks like an environment variable.
    assert "${" not in json.dumps(rule["annotations"])
    (contact,) = doc["contactPoints"]
    assert contact["receivers"][0]["settings"]["url"] == "$ALERT_WEBHOOK_URL"
    assert doc["policies"][0]["receiver"] == contact["name"]


async def test_every_prometheus_expression_names_a_metric_the_service_exposes(make_client):
    client = await make_client()
    assert (await client.post("/events", json=[event()])).status == 202
    text = await (await client.get("/metrics")).text()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    named = {m for expr in prometheus_expressions() for m in re.findall(r"\b(ingest_[a-z0-9_]+)\b", expr)}
    assert named, "no metric names found in the pipeline dashboard"
    assert named <= exposed, f"not exported by the service: {sorted(named - exposed)}"
    panels = " ".join(p["title"].lower() for p in DASHBOARDS["ingest-pipeline"]["panels"])
    for topic in ("accepted", "rejected", "buffer", "flush duration", "rows per flush", "failures", "since last"):
        assert topic in panels


def test_panels_command_reads_the_same_dashboard_file():
    assert load_dashboard() == DASHBOARDS["product-analytics"]
    assert [q.title for q in panel_queries(load_dashboard())] == [
        LIVE_STATUS, "Active users", "Signup funnel", "Top features", "Error rate", "Signup steps",
        "Signup conversion over time"]
