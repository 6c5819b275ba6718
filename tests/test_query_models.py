"""The ClickHouse queries Grafana is given are the pinned plugin's query model: every dashboard target on the
ClickHouse datasource and every alert-rule query model on it type-check as the plugin's raw-SQL query
(tests/clickhouse_query.ts, restated from grafana-clickhouse-datasource 4.20.0's src/types/sql.ts on
@grafana/schema's DataQuery): its fields and no others, `editorType` "sql", `format` a number the backend knows,
`queryType` one of the plugin's, `pluginVersion` the version compose installs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from ingest.grafana.macros import PLUGIN_VERSION

from .grafana_types import TypeCheck, packages
from .stack import ROOT

# The TypeScript compiler (node) checks the query models.
pytestmark = pytest.mark.slow

PLUGIN_ID = "grafana-clickhouse-datasource"
GRAFANA = ROOT / "grafana"


def pinned_plugin_version() -> str:
    return re.search(rf"{PLUGIN_ID}@(\S+)", (ROOT / "docker-compose.yml").read_text())[1]


def clickhouse_uids() -> set[str]:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
    return {d["uid"] for d in sources["datasources"] if d["type"] == PLUGIN_ID}


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    """(where, target) for every target a dashboard sends to a ClickHouse datasource."""
    found = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource") or {}
                if ds.get("type") == PLUGIN_ID or ds.get("uid") in clickhouse_uids():
                    found.append((f"{path.name} panel {panel['id']} target {target['refId']}", target))
    return found


def alert_models() -> list[tuple[str, dict[str, Any]]]:
    """(where, model) for every alert-rule query run on a ClickHouse datasource."""
    found = []
    for path in sorted((GRAFANA / "provisioning" / "alerting").glob("*.yaml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group["rules"]:
                for query in rule["data"]:
                    if query["datasourceUid"] in clickhouse_uids():
                        found.append((f"{path.name} rule {rule['uid']} query {query['refId']}", query["model"]))
    return found


def variable_queries() -> list[tuple[str, dict[str, Any]]]:
    """(where, query) for every dashboard template variable whose options a ClickHouse datasource queries."""
    found = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for variable in json.loads(path.read_text()).get("templating", {}).get("list", []):
            ds = variable.get("datasource") or {}
            if variable.get("type") == "query" and (ds.get("type") == PLUGIN_ID or ds.get("uid") in clickhouse_uids()):
                found.append((f"{path.name} variable {variable['name']}", variable["query"]))
    return found


def declare_models(check: TypeCheck, targets, models, prefix: str = "", variables=()) -> None:
    model = check.module("ch", "./clickhouse_query")
    version = json.dumps(pinned_plugin_version())
    for where, target in targets:
        check.declare(f"Json<{model}.ClickHouseSqlQuery<{version}>>", target, prefix + where)
    for where, query in models:
        check.declare(f"Json<{model}.AlertQueryModel<{version}>>", query, prefix + where)
    for where, query in variables:
        check.declare(f"Json<{model}.ClickHouseVariableQuery>", query, prefix + where)


@pytest.fixture(scope="module")
def installed() -> Path:
    return packages()


def test_the_pinned_plugin_version_is_the_one_the_engine_and_versions_file_follow():
    assert pinned_plugin_version() == PLUGIN_VERSION == "4.20.0"
    assert f"`{PLUGIN_ID} {PLUGIN_VERSION}`" in (GRAFANA / "VERSIONS.md").read_text()


def test_every_clickhouse_query_model_is_the_pinned_plugins_sql_query(installed):
    targets, models, variables = dashboard_targets(), alert_models(), variable_queries()
    # Live status's newest-event age and six panels; the two alert rules' queries; device, country, breakdown.
    assert len(targets) == 7 and len(models) == 2 and len(variables) == 3
    check = TypeCheck(installed)
    declare_models(check, targets, models, variables=variables)
    errors = check.run()
    assert not errors, "\n".join(map(str, errors))


def test_the_check_reports_each_wrong_variable_query(installed):
    (where, query), *_ = variable_queries()
    check = TypeCheck(installed)
    mistakes = {"unchanged": lambda q: None, "queryType raw": lambda q: q.update(queryType="raw"),
                "rawSQL spelling": lambda q: q.update(rawSQL=q.pop("rawSql")), "no refId": lambda q: q.pop("refId"),
                "query field": lambda q: q.update(query=q["rawSql"])}
    for name, mistake in mistakes.items():
        broken = copy.deepcopy(query)
        mistake(broken)
        declare_models(check, [], [], prefix=f"{name}: ", variables=[(where, broken)])
    errors = check.run()
    assert sorted({e.where for e in errors}) == sorted(f"{name}: {where}" for name in mistakes if name != "unchanged")


# mistake -> what it does to a query model (a target, or the alert's model)
MISTAKES: dict[str, Callable[[dict], Any]] = {
    "another plugin version": lambda q: q.update(pluginVersion="4.23.3"),
    "builder editor": lambda q: q.update(editorType="builder"),
    "format 7": lambda q: q.update(format=7),
    "format as text": lambda q: q.update(format="table"),
    "queryType time_series": lambda q: q.update(queryType="time_series"),
    "rawSQL spelling": lambda q: q.update(rawSQL=q.pop("rawSql")),
    "unknown field": lambda q: q.update(sql="SELECT 1"),
    "other datasource type": lambda q: q.update(datasource={"type": "prometheus", "uid": "clickhouse"}),
    "no refId": lambda q: q.pop("refId"),
}


def test_the_check_reports_each_wrong_query_model(installed):
    (target_where, target), (model_where, model) = dashboard_targets()[0], alert_models()[0]
    check = TypeCheck(installed)
    declare_models(check, [(target_where, target)], [(model_where, model)], prefix="unchanged: ")
    for name, mistake in MISTAKES.items():
        broken_target, broken_model = copy.deepcopy(target), copy.deepcopy(model)
        mistake(broken_target)
        mistake(broken_model)
        declare_models(check, [(target_where, broken_target)], [(model_where, broken_model)], prefix=f"{name}: ")
    errors = check.run()
    assert not [e for e in errors if e.where.startswith("unchanged: ")]
    for name in MISTAKES:
        where = sorted({e.where for e in errors if e.where.startswith(f"{name}: ")})
        assert where == sorted([f"{name}: {target_where}", f"{name}: {model_where}"]), (name, where)
    # the alert model may carry what Grafana's alerting reads, a dashboard target may not
    check = TypeCheck(installed)
    declare_models(check, [(target_where, {**target, "intervalMs": 1000})], [(model_where, model)])
    assert [e.where for e in check.run()] == [target_where]
