"""The product dashboard's panels as data: their SQL read from the dashboard JSON, expanded and run on ClickHouse.

One place for what both the terminal dashboard (`python -m ingest panels`) and the service's `GET /panels` run,
so both give Grafana's answers for the same range.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import first_line
from ..shipped import shipped_file
from .macros import SQLDS_ERROR_PREFIX, MacroError, QueryRange, expand
from .variables import Variable, VariableError, dashboard_variables, substitute

CLICKHOUSE_UID = "clickhouse"
DASHBOARD_FILE = "product-analytics.json"
RANGES = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24)}


class DashboardError(ValueError):
    """The dashboard file cannot be used: missing, not JSON, or not a Grafana dashboard with ClickHouse panels."""


def dashboard_path() -> Path:
    """The product dashboard JSON (grafana/dashboards/, or the copy an installed wheel carries)."""
    return shipped_file(f"dashboards/{DASHBOARD_FILE}", f"grafana/dashboards/{DASHBOARD_FILE}")


def load_dashboard(path: Path | None = None) -> dict[str, Any]:
    """The dashboard as Grafana would load it; DashboardError says in words why a file is not one."""
    path = path or dashboard_path()
    try:
        dashboard = json.loads(path.read_text())
    except OSError as exc:
        raise DashboardError(f"cannot read the dashboard {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DashboardError(f"{path} is not JSON: {exc}") from None
    if not isinstance(dashboard, dict) or not isinstance(dashboard.get("panels"), list):
        raise DashboardError(f"{path} is not a Grafana dashboard (no \"panels\" list)")
    if not panel_queries(dashboard):
        raise DashboardError(f"{path} has no panels that query the ClickHouse datasource (uid {CLICKHOUSE_UID!r})")
    return dashboard


@dataclass(frozen=True)
class PanelQuery:
    """One ClickHouse panel: its title, type, Grafana result format and raw SQL (macros unexpanded)."""

    id: int
    title: str
    type: str
    format: int
    raw_sql: str


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every ClickHouse-backed panel of the dashboard, in grid order (top-left first)."""
    found = []
    panels = [p for p in dashboard.get("panels", []) if isinstance(p, dict)]
    for panel in sorted(panels, key=lambda p: (p.get("gridPos", {}).get("y", 0), p.get("gridPos", {}).get("x", 0))):
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("uid") == CLICKHOUSE_UID and target.get("rawSql"):
                # The plugin treats a missing format as time series (0).
                found.append(PanelQuery(panel.get("id", 0), panel.get("title", ""), panel.get("type", ""),
                                        target.get("format", 0), target["rawSql"]))
    return found


def query_range(name: str, now: datetime | None = None) -> QueryRange:
    """The picker's "Last <name>" ending now; the interval is a stand-in (our panel SQL never uses it)."""
    end = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    duration = RANGES[name]
    return QueryRange(end - duration, end, max(timedelta(seconds=1), duration / 1000))


@dataclass
class PanelResult:
    """A panel's query outcome: column names and rows, or the error ClickHouse gave."""

    panel: PanelQuery
    columns: list[str]
    rows: list[tuple]
    error: str | None = None


Runner = Callable[[str], tuple[list[str], list[tuple]]]


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load_options(dashboard: dict[str, Any], qrange: QueryRange, run: Runner,
                 chosen: dict[str, list[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """The options of the dashboard's query variables on the ClickHouse datasource, as Grafana loads them: the
    plugin (4.20.0, src/data/CHVariableSupport.tsx) runs the query's `rawSql` (or a plain string query) through
    its usual path (template variables, then macros) and takes the `__value` column, else the first, as each
    option's value. A query may use the variables above it (their chosen or saved values), as Grafana resolves
    them in order. VariableError says which variable's query failed, in one line."""
    loaded: dict[str, tuple[str, ...]] = {}
    specs = dashboard.get("templating", {}).get("list", [])
    for at, spec in enumerate(specs):
        if spec.get("type") != "query" or (spec.get("datasource") or {}).get("uid") != CLICKHOUSE_UID:
            continue
        query = spec.get("query")
        sql = query if isinstance(query, str) else (query or {}).get("rawSql", "")
        if not sql:
            loaded[spec["name"]] = ()
            continue
        above = {"templating": {"list": specs[:at]}}
        names = {s["name"] for s in specs[:at]}
        # A value chosen for a variable above that it does not offer is that variable's error, not this query's.
        known = dashboard_variables(above, {k: v for k, v in (chosen or {}).items() if k in names}, loaded)
        try:
            columns, rows = run(expand(substitute(sql, known), qrange))
        except (VariableError, MacroError) as exc:
            raise VariableError(f"the query of ${spec['name']}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - one line, as a panel's error is shown
            raise VariableError(f"the query of ${spec['name']} failed: {first_line(exc)}") from None
        # Values reach Grafana as text (a FixedString comes back as bytes from the Python client).
        column = columns.index("__value") if "__value" in columns else 0
        loaded[spec["name"]] = tuple(_text(row[column]) for row in rows if row)
    return loaded


def variables_for(dashboard: dict[str, Any], qrange: QueryRange, run: Runner,
                  chosen: dict[str, list[str]] | None = None) -> dict[str, Variable]:
    """The dashboard's variables as Grafana sets them up on opening it: query variables' options loaded, then the
    chosen values (validated against them) over the saved ones."""
    return dashboard_variables(dashboard, chosen, load_options(dashboard, qrange, run, chosen))


def run_panels(dashboard: dict[str, Any], qrange: QueryRange, run: Runner,
               variables: dict[str, Variable] | None = None) -> list[PanelResult]:
    """Substitute the template variables (as Grafana's frontend does), expand the macros (as the plugin's backend
    does) and run every ClickHouse panel; one failing panel does not hide the others."""
    results = []
    for panel in panel_queries(dashboard):
        try:
            sql = expand(substitute(panel.raw_sql, variables or {}), qrange)
        except VariableError as exc:  # Grafana's frontend would send other SQL than this command can make
            results.append(PanelResult(panel, [], [], f"template variables: {exc}"))
            continue
        except MacroError as exc:  # the plugin refuses the query before ClickHouse sees it
            results.append(PanelResult(panel, [], [], SQLDS_ERROR_PREFIX + str(exc)))
            continue
        try:
            columns, rows = run(sql)
            results.append(PanelResult(panel, columns, rows))
        except Exception as exc:  # noqa: BLE001 - shown in place of the panel, as Grafana does
            results.append(PanelResult(panel, [], [], first_line(exc)))
    return results


# --- as JSON, for GET /panels ----------------------------------------------------------------------------------

def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.astimezone(timezone.utc).isoformat() if value.tzinfo else value.isoformat() + "+00:00"}
    if isinstance(value, date):
        return {"d": value.isoformat()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _uncell(value: Any) -> Any:
    if isinstance(value, dict) and "t" in value:
        return datetime.fromisoformat(value["t"])
    if isinstance(value, dict) and "d" in value:
        return date.fromisoformat(value["d"])
    return value


def results_to_json(results: list[PanelResult], qrange: QueryRange, variables: list[str],
                    alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Panel results as JSON-ready data (times tagged, so they come back as datetimes), with the note of the
    template variables substituted and the alert rules' states (alerting.AlertState.as_json)."""
    return {"from": qrange.start.isoformat(), "to": qrange.end.isoformat(), "variables": variables,
            "panels": [{"id": r.panel.id, "title": r.panel.title, "type": r.panel.type, "format": r.panel.format,
                        "columns": r.columns, "rows": [[_cell(v) for v in row] for row in r.rows],
                        "error": r.error} for r in results],
            "alerts": alerts or []}


def results_from_json(body: dict[str, Any]) -> tuple[list[PanelResult], QueryRange, list[str], list[dict[str, Any]]]:
    """The inverse of results_to_json (the panel SQL is not sent back: the text view does not need it)."""
    results = [PanelResult(PanelQuery(p["id"], p["title"], p["type"], p["format"], ""), p["columns"],
                           [tuple(_uncell(v) for v in row) for row in p["rows"]], p["error"])
               for p in body["panels"]]
    qrange = QueryRange(datetime.fromisoformat(body["from"]), datetime.fromisoformat(body["to"]))
    return results, qrange, body.get("variables", []), body.get("alerts", [])
