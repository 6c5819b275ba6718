"""Every provisioned dashboard type-checks against Grafana's own schema: `@grafana/schema` of the pinned Grafana version
(docker-compose.yml), compiled with TypeScript (tests/grafana_types.py).

Checked: the dashboard as a whole (`Dashboard`), and per panel its `options`, `fieldConfig.defaults.custom` and every
field-config override property against its panel plugin's `Options` / `FieldConfig` types
(dist/esm/raw/composable/<panel>/panelcfg/x/). JSON strings are compared with the values of Grafana's string enums;
options and custom field config may leave fields out (Grafana fills panel defaults); an override value replaces its
property whole and is checked exactly. The mutation test shows the check fails where Grafana's types disagree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from .grafana_types import TYPESCRIPT, TypeCheck, grafana_version, packages, panel_module
from .stack import ROOT

# The TypeScript compiler (node) checks the dashboards.
pytestmark = pytest.mark.slow

DASHBOARD_FILES = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those collapsed inside rows."""
    return [p for panel in panels for p in [panel, *_panels(panel.get("panels", []))] if p.get("type") != "row"]


def add_dashboard(check: TypeCheck, name: str, dashboard: dict[str, Any]) -> None:
    """Declare a dashboard and its panels' plugin-specific parts for checking."""
    schema = check.module("schema", "@grafana/schema")
    check.declare(f"Json<{schema}.Dashboard>", dashboard, name)
    for panel in _panels(dashboard.get("panels", [])):
        where = f"{name} panel {panel.get('id')} ({panel['type']})"
        module = panel_module(panel["type"], check.installed)
        if module is None:
            raise AssertionError(f"{where}: @grafana/schema {grafana_version()} has no types for this panel type")
        plugin = check.module("panel_" + module.split("/")[-4], module)
        if "options" in panel:
            check.declare(f"Options<{plugin}.Options>", panel["options"], f"{where} options")
        field_config = panel.get("fieldConfig", {})
        if "custom" in field_config.get("defaults", {}):
            check.declare(f"Custom<{plugin}.FieldConfig>", field_config["defaults"]["custom"], f"{where} custom")
        for override in field_config.get("overrides", []):
            for prop in override["properties"]:
                first, *path = prop["id"].split(".")
                type_ = f"{plugin}.FieldConfig" if first == "custom" else f'{schema}.FieldConfig["{first}"]'
                for key in path:
                    type_ = f'NonNullable<{type_}>["{key}"]'
                check.declare(f"FieldConfigPatch<{type_}>", prop.get("value"),
                              f"{where} override {override['matcher'].get('options')} {prop['id']}")


@pytest.fixture(scope="module")
def installed() -> Path:
    return packages()


def test_the_schema_package_is_the_pinned_grafana_and_typescript_the_one_it_is_built_with(installed):
    schema = json.loads((installed / "node_modules" / "@grafana" / "schema" / "package.json").read_text())
    assert schema["version"] == grafana_version() == "12.4.11"
    assert schema["devDependencies"]["typescript"] == TYPESCRIPT
    compiler = json.loads((installed / "node_modules" / "typescript" / "package.json").read_text())
    assert compiler["version"] == TYPESCRIPT


def test_every_provisioned_dashboard_type_checks_against_the_pinned_grafana_schema(installed):
    assert DASHBOARD_FILES
    check = TypeCheck(installed)
    for path in DASHBOARD_FILES:
        add_dashboard(check, path.name, load(path))
    errors = check.run()
    assert not errors, "\n".join(map(str, errors))


def test_the_signup_funnels_bars_stand_after_their_hours_timestamp(installed):
    # Each bar counts the hour that starts at its timestamp, so it is drawn after it: BarAlignment.After in
    # Grafana's enum (Before -1, Center 0, After 1).
    (funnel,) = [p for p in load(ROOT / "grafana" / "dashboards" / "product-analytics.json")["panels"]
                 if p["title"] == "Signup funnel"]
    check = TypeCheck(installed)
    schema = check.module("schema", "@grafana/schema")
    check.declare(f"typeof {schema}.BarAlignment.After", funnel["fieldConfig"]["defaults"]["custom"]["barAlignment"],
                  "Signup funnel barAlignment")
    errors = check.run()
    assert not errors, "\n".join(map(str, errors))


def _panel(d: dict, title: str) -> dict:
    return next(p for p in d["panels"] if p["title"] == title)


def _override(d: dict, title: str, field: str, prop_id: str) -> dict:
    overrides = _panel(d, title)["fieldConfig"]["overrides"]
    return next(p for o in overrides if o["matcher"]["options"] == field for p in o["properties"] if p["id"] == prop_id)


# mistake name -> (what it does to a copy of product-analytics.json, where the error must be reported)
MISTAKES: dict[str, tuple[Callable[[dict], Any], str]] = {
    "style key back": (lambda d: d.update(style="dark"), "product-analytics.json"),
    "quickRanges": (lambda d: d["timepicker"].update(quickRanges=[]), "product-analytics.json"),
    "graphTooltip 7": (lambda d: d.update(graphTooltip=7), "product-analytics.json"),
    "misspelled panel key": (lambda d: _panel(d, "Active users").update(gridPoss={}), "product-analytics.json"),
    "graphMode areas": (lambda d: _panel(d, "Active users")["options"].update(graphMode="areas"),
                        "product-analytics.json panel 1 (stat) options"),
    "misspelled option": (lambda d: _panel(d, "Top features")["options"].update(orientaton="horizontal"),
                          "product-analytics.json panel 3 (bargauge) options"),
    "calcs not a list": (lambda d: _panel(d, "Active users")["options"]["reduceOptions"].update(calcs="lastNotNull"),
                         "product-analytics.json panel 1 (stat) options"),
    "drawStyle bar": (lambda d: _panel(d, "Error rate")["fieldConfig"]["defaults"]["custom"].update(drawStyle="bar"),
                      "product-analytics.json panel 4 (timeseries) custom"),
    "barAlignment 5": (lambda d: _panel(d, "Signup funnel")["fieldConfig"]["defaults"]["custom"].update(barAlignment=5),
                       "product-analytics.json panel 2 (timeseries) custom"),
    "override value": (lambda d: _override(d, "Signup funnel", "conversion_pct", "custom.drawStyle").update(
        value="bar"), "product-analytics.json panel 2 (timeseries) override conversion_pct custom.drawStyle"),
    "override id": (lambda d: _override(d, "Signup funnel", "conversion_pct", "custom.axisPlacement").update(
        id="custom.axisPlacment"), "product-analytics.json panel 2 (timeseries) override conversion_pct "
                                   "custom.axisPlacment"),
    "standard override": (lambda d: _override(d, "Signup funnel", "started", "color").update(value={"fixedColor": 1}),
                          "product-analytics.json panel 2 (timeseries) override started color"),
}


def test_the_check_reports_each_injected_mistake_where_it_is_and_nothing_else(installed):
    original = load(ROOT / "grafana" / "dashboards" / "product-analytics.json")
    original.pop("style", None)  # the one key Grafana 12 no longer has (the fix this test guards)
    check = TypeCheck(installed)
    add_dashboard(check, "unchanged", original)
    for name, (mistake, _) in MISTAKES.items():
        broken = copy.deepcopy(original)
        mistake(broken)
        add_dashboard(check, f"{name}: product-analytics.json", broken)
    errors = check.run()
    found = {name: [e for e in errors if e.where.startswith(f"{name}: ")] for name in MISTAKES}
    assert not [e for e in errors if e.where.startswith("unchanged")], "the unchanged copy must pass"
    for name, (_, where) in MISTAKES.items():
        assert [e.where for e in found[name]] == [f"{name}: {where}"], (name, [str(e) for e in found[name]])
