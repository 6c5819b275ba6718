"""`python -m ingest panels`: the product dashboard without Grafana — its own panel SQL, expanded and run here.

The SQL is read from the dashboard JSON (the one place it lives), its template variables substituted as Grafana's
frontend does (ingest/variables.py: the saved selection, or --var), its macros expanded as the plugin's backend
does (ingest/macros.py) for the chosen range, and run on the configured ClickHouse, so what this prints is what
Grafana's panels would show for the same range and selection. The output says which variables it substituted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, TextIO

from .macros import SQLDS_ERROR_PREFIX, MacroError, QueryRange, expand
from .variables import Variable, VariableError, dashboard_variables, describe, substitute

CLICKHOUSE_UID = "clickhouse"
DASHBOARD_FILE = "product-analytics.json"
RANGES = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24)}
REFRESH_SECONDS = 5.0  # the dashboard's refresh
_SPARK = "▁▂▃▄▅▆▇█"


def dashboard_path() -> Path:
    """The product dashboard JSON: from the source checkout, else the copy the wheel carries."""
    repo_file = Path(__file__).resolve().parent.parent / "grafana" / "dashboards" / DASHBOARD_FILE
    if repo_file.is_file():
        return repo_file
    packaged = resources.files(__package__).joinpath("dashboards", DASHBOARD_FILE)
    return Path(str(packaged))


def load_dashboard(path: Path | None = None) -> dict[str, Any]:
    """The dashboard as Grafana would load it."""
    return json.loads((path or dashboard_path()).read_text())


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
    for panel in sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("uid") == CLICKHOUSE_UID:
                # The plugin treats a missing format as time series (0).
                found.append(PanelQuery(panel["id"], panel["title"], panel["type"], target.get("format", 0),
                                        target["rawSql"]))
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


def run_panels(dashboard: dict[str, Any], qrange: QueryRange, run: Runner,
               variables: dict[str, Variable] | None = None) -> list[PanelResult]:
    """Substitute, expand and run every ClickHouse panel; one failing panel does not hide the others."""
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
            results.append(PanelResult(panel, [], [], str(exc).strip().splitlines()[0][:300]))
    return results


# --- text rendering ----------------------------------------------------------------------------------------------

def _fmt_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _fmt_num(value: Any, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if percent:
        return f"{value:.1f}%"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def sparkline(values: list[float | None], width: int = 60) -> str:
    """A one-line chart: values bucketed to width cells (max per cell), blanks where there was no data."""
    if not values:
        return ""
    cells: list[float | None] = []
    step = max(1, math.ceil(len(values) / width))
    for i in range(0, len(values), step):
        chunk = [v for v in values[i:i + step] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        cells.append(max(chunk) if chunk else None)
    top = max((c for c in cells if c is not None), default=0) or 1
    return "".join(" " if c is None else _SPARK[min(len(_SPARK) - 1, int(c / top * (len(_SPARK) - 1)))]
                   for c in cells)


def _is_time(value: Any) -> bool:
    return isinstance(value, (datetime, date))


def _render_stat(r: PanelResult) -> list[str]:
    # Grafana's stat: the last value is the big number, the whole series is the sparkline.
    values = [row[1] for row in r.rows]
    last = next((v for v in reversed(values) if v is not None), None)
    return [f"  {_fmt_num(last)} {r.columns[1].replace('_', ' ')}   {sparkline(values)}"]


def _render_timeseries(r: PanelResult, max_rows: int = 12) -> list[str]:
    names = r.columns[1:]
    lines = [f"  {'':>6}{name:<22} {sparkline([row[i + 1] for row in r.rows])}" for i, name in enumerate(names)]
    with_data = [row for row in r.rows if any(v not in (None, 0) for v in row[1:])]
    lines.append(f"  {'time (UTC)':<17}" + "".join(f"{n:>16}" for n in names))
    for row in with_data[-max_rows:]:
        lines.append(f"  {_fmt_time(row[0]):<17}" + "".join(
            f"{_fmt_num(v, percent=n.endswith('_pct')):>16}" for n, v in zip(names, row[1:])))
    if not with_data:
        lines.append("  (no data in range)")
    elif len(with_data) > max_rows:
        lines.append(f"  ... {len(with_data) - max_rows} earlier rows with data not shown")
    return lines


def _render_ranking(r: PanelResult, width: int = 40) -> list[str]:
    if not r.rows:
        return ["  (no data in range)"]
    top = max(row[1] for row in r.rows) or 1
    label_width = max(len(str(row[0])) for row in r.rows)
    return [f"  {i:>2}. {str(row[0]):<{label_width}} {'█' * max(1, round(row[1] / top * width))} {_fmt_num(row[1])}"
            for i, row in enumerate(r.rows, 1)]


def render(results: list[PanelResult], qrange: QueryRange, target: str,
           variables: dict[str, Variable] | None = None) -> str:
    """The four panels as text, titled like the dashboard, after a note of the variables substituted."""
    span = f"{qrange.start:%Y-%m-%d %H:%M:%S} .. {qrange.end:%H:%M:%S} UTC"
    out = [f"Product analytics — {span} — {target}", *describe(variables or {}), ""]
    for r in results:
        out.append(f"{r.panel.title}")
        if r.error:
            out.append(f"  query failed: {r.error}")
        elif r.panel.type == "stat":
            out += _render_stat(r)
        elif r.panel.type == "bargauge":
            out += _render_ranking(r)
        else:
            out += _render_timeseries(r)
        out.append("")
    return "\n".join(out)


def connect(settings):
    """A clickhouse-connect client on the configured storage (the embedded one gets its schema first)."""
    import clickhouse_connect

    from .sink import Sink

    if settings.clickhouse_url.startswith("chdb://"):
        # A fresh embedded directory has no table yet: create it so the panels show "no data", not errors.
        Path(settings.clickhouse_url.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        Sink(settings.clickhouse_url, settings.clickhouse_database).apply_schema()
    return clickhouse_connect.get_client(dsn=settings.clickhouse_url, database=settings.clickhouse_database)


def main(settings, range_name: str, watch: bool, dashboard_file: str | None, out: TextIO,
         chosen: dict[str, list[str]] | None = None) -> int:
    """Print the dashboard once, or every 5 s with --watch until Ctrl-C. `chosen`: variable values from --var."""
    dashboard = load_dashboard(Path(dashboard_file) if dashboard_file else None)
    try:
        variables = dashboard_variables(dashboard, chosen)
    except VariableError as exc:
        out.write(f"template variables: {exc}\n")
        return 2
    client = connect(settings)

    def run(sql: str) -> tuple[list[str], list[tuple]]:
        result = client.query(sql)
        return list(result.column_names), result.result_rows

    target = f"{settings.redacted_url} / {settings.clickhouse_database}"
    try:
        while True:
            qrange = query_range(range_name)
            text = render(run_panels(dashboard, qrange, run, variables), qrange, target, variables)
            if watch:
                out.write("\033[H\033[J")  # clear the terminal: a refreshing view, not a scrolling log
            out.write(text + "\n")
            out.flush()
            if not watch:
                return 0
            time.sleep(REFRESH_SECONDS)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
