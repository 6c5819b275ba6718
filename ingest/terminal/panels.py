"""`python -m ingest panels`: the product dashboard in a terminal — Grafana's panel SQL, expanded and run here.

The SQL is read from the dashboard JSON (the one place it lives), its template variables substituted as Grafana's
frontend does (ingest/grafana/variables.py: the saved selection, or --var) and its macros expanded as the plugin's
backend does (ingest/grafana/macros.py), so what this prints is what Grafana's panels show for the same range and
selection; the frame says which variables it substituted.
Where it runs: on a ClickHouse server directly; on the embedded engine directly, or, while a service holds that
data directory (one process per directory), through the service's `GET /panels`, which runs the same SQL.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ..grafana.alerting import evaluate_all
from ..grafana.dashboard import (
    DashboardError,
    PanelResult,
    load_dashboard,
    query_range,
    results_from_json,
    run_panels,
    variables_for,
)
from ..grafana.macros import QueryRange
from ..grafana.variables import Variable, VariableError, dashboard_variables, describe
from .status import LiveStatus, fetch_health, live_status

REFRESH_SECONDS = 5.0  # the dashboard's refresh
WIDTH, HEIGHT = 80, 24  # a frame fits a classic terminal; a pipe gets 80 columns
MIN_WIDTH, MIN_HEIGHT = 40, 8  # below, no panel can be read: the frame says so instead
_SPARK = "▁▂▃▄▅▆▇█"


class PanelsError(Exception):
    """The dashboard cannot be shown; the message says why and what to do, in one line."""


# --- where the numbers come from -------------------------------------------------------------------------------

@dataclass
class Frame:
    """One refresh: every panel's result for one range, where it was read, the alert rules' states and the live
    status."""

    results: list[PanelResult]
    qrange: QueryRange
    source: str
    variables: list[str]  # what was substituted, and how
    alerts: list[dict[str, Any]] = field(default_factory=list)  # alerting.AlertState.as_json() each
    status: LiveStatus | None = None

    def as_json(self) -> dict[str, Any]:
        """The document `panels --json` prints: for scripts, monitoring checks and tests."""
        return {"from": _json_value(self.qrange.start), "to": _json_value(self.qrange.end),
                "variables": self.variables,
                "status": self.status.as_json() if self.status else None,
                "panels": [{"title": r.panel.title, "error": r.error,
                            "frames": [{"fields": r.columns,
                                        "rows": [[_json_value(v) for v in row] for row in r.rows]}]}
                           for r in self.results],
                "alerts": self.alerts}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _newest_event_age(results: list[PanelResult]) -> float | None:
    """What the Live status panel's ClickHouse query found: seconds since the newest stored event."""
    for r in results:
        if r.panel.title == "Live status" and r.rows and not r.error:
            return float(r.rows[0][0])
    return None


class Direct:
    """Runs the panel SQL on ClickHouse through this process's own client."""

    def __init__(self, settings, dashboard: dict[str, Any], chosen: dict[str, list[str]]) -> None:
        import clickhouse_connect

        from ..storage.failures import reason
        from ..storage.sink import server_options

        self.service = _service_url(settings)
        self.dashboard = dashboard
        self.chosen = chosen
        self.variables = _variables(dashboard, chosen)  # a bad --var is said before ClickHouse is asked
        self.loaded = False
        self.label = _label(settings)
        try:
            self.client = clickhouse_connect.get_client(
                **server_options(settings.clickhouse_url, settings.clickhouse_ca_file),
                database=settings.clickhouse_database)
        except Exception as exc:  # noqa: BLE001 - one line, not a traceback
            raise PanelsError(f"cannot reach ClickHouse at {settings.redacted_url}: {reason(exc)}") from None

    def frame(self, range_name: str) -> Frame:
        def run(sql: str) -> tuple[list[str], list[tuple]]:
            result = self.client.query(sql, settings={"readonly": 1})
            return list(result.column_names), [tuple(row) for row in result.result_rows]

        qrange = query_range(range_name)
        if not self.loaded:  # query variables' options, loaded once, as Grafana does when it opens the dashboard
            try:
                self.variables = variables_for(self.dashboard, qrange, run, self.chosen)
            except VariableError as exc:
                raise PanelsError(f"template variables: {exc}") from None
            self.loaded = True
        results = run_panels(self.dashboard, qrange, run, self.variables)
        alerts = [a.as_json() for a in evaluate_all(run, qrange.end)]
        health, unreachable = fetch_health(self.service)
        return Frame(results, qrange, self.label, describe(self.variables), alerts,
                     live_status(_newest_event_age(results), health, unreachable))

    def close(self) -> None:
        self.client.close()


class ViaService:
    """Asks the running service (GET /panels), which holds the embedded data directory, to run the panel SQL."""

    def __init__(self, settings, url: str, chosen: dict[str, list[str]], holder: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.query = urllib.parse.urlencode([("var", f"{name}={value}") for name, values in chosen.items()
                                             for value in values])
        self.owner = settings.storage_owner
        self.label = _label(settings, via=self.url)
        self.holder = holder  # the pid of the process that holds the embedded data, if one does
        self.data = settings.clickhouse_url.removeprefix("chdb://")

    def frame(self, range_name: str) -> Frame:
        from ..storage.failures import reason

        try:
            with urllib.request.urlopen(f"{self.url}/panels?range={range_name}&{self.query}", timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:600]
            try:
                answer = json.loads(detail)
            except ValueError:
                answer = {}
            if exc.code == 400 and isinstance(answer, dict) and answer.get("error") == "bad_variable":
                raise PanelsError(f"template variables: {answer.get('message')}") from None
            raise PanelsError(f"the service at {self.url} answered {exc.code} to GET /panels: {detail[:300]}") from None
        except (OSError, ValueError) as exc:
            raise PanelsError(f"no service answers GET /panels at {self.url} ({reason(exc)})"
                              + self._elsewhere()) from None
        if body.get("storage") != self.owner:
            raise PanelsError(f"the service at {self.url} stores into {body.get('storage')}, not {self.owner}: "
                              "run panels with the service's CLICKHOUSE_URL and CLICKHOUSE_DATABASE, or set "
                              "INGEST_PORT to the port of the service that holds this data")
        results, qrange, variables, alerts = results_from_json(body)
        health, unreachable = fetch_health(self.url)
        return Frame(results, qrange, self.label, variables, alerts,
                     live_status(_newest_event_age(results), health, unreachable))

    def _elsewhere(self) -> str:
        """Where the service that holds the data listens instead, and how to point panels at it."""
        if self.holder is None:
            return ""
        ports = listening_ports(self.holder)
        if ports:
            return (f"; process {self.holder} holds the embedded data in {self.data} and listens on port "
                    f"{', '.join(map(str, ports))}: run panels with INGEST_PORT={ports[0]}")
        return (f"; process {self.holder} holds the embedded data in {self.data}: run panels with the INGEST_PORT "
                "(and INGEST_HOST) that service was started with")

    def close(self) -> None:
        pass


def listening_ports(pid: str) -> list[int]:
    """The TCP ports a process of this machine listens on, read from /proc (Linux; [] where it cannot be read)."""
    sockets = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in sockets:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def _variables(dashboard: dict[str, Any], chosen: dict[str, list[str]]) -> dict[str, Variable]:
    try:
        return dashboard_variables(dashboard, chosen)
    except VariableError as exc:
        raise PanelsError(f"template variables: {exc}") from None


def open_source(settings, dashboard: dict[str, Any], chosen: dict[str, list[str]] | None = None,
                service_url: str | None = None) -> Direct | ViaService:
    """Direct access where this process may open the storage; else the service that holds the embedded data."""
    from ..storage.embedded import data_holder

    chosen = chosen or {}
    if not settings.clickhouse_url.startswith("chdb://"):
        return Direct(settings, dashboard, chosen)
    path = Path(settings.clickhouse_url.removeprefix("chdb://"))
    if not (path / "metadata").is_dir():
        # Never create an empty data directory where the user happens to be: say which one was looked for.
        raise PanelsError(f"no embedded ClickHouse data in {path} (CLICKHOUSE_URL): run panels from the directory "
                          "the service runs in, or set CLICKHOUSE_URL to its data")
    holder = data_holder(path)
    if holder is not None or service_url:
        _variables(dashboard, chosen)  # a bad --var is said here, before the service is asked
        return ViaService(settings, service_url or _service_url(settings), chosen, holder)
    return Direct(settings, dashboard, chosen)


def _service_url(settings) -> str:
    """Where this machine reaches the ingest service of these settings (INGEST_HOST, INGEST_PORT)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


# --- text rendering ----------------------------------------------------------------------------------------------

def _label(settings, via: str | None = None) -> str:
    """Which data a frame shows, a line of the frame's width (a long path loses its middle), and through what."""
    head = f"database {settings.clickhouse_database} in "
    room = WIDTH - 2 - len(head)
    where = settings.redacted_url
    if len(where) > room:
        keep = room - 1
        where = where[:keep // 3] + "…" + where[-(keep - keep // 3):]
    return head + where + (f"\nvia the service at {via} (it holds the embedded data)" if via else "")


def _num(value: Any, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if percent:
        return f"{value:.1f}%"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _hm(value: Any) -> str:
    return value.strftime("%H:%M") if isinstance(value, datetime) else str(value)


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


def _scale(times: list[Any], values: list[Any], width: int, percent: bool = False) -> str:
    """What a sparkline means: lowest and highest value, minutes per mark, the span (marks scale to the highest)."""
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not known:
        return "  no data in range"
    step = max(1, math.ceil(len(values) / width))
    minutes = step * _spacing_minutes(times)
    per = f"1 mark = {minutes} min" if step == 1 else f"1 mark = max of {minutes} min"
    return f"  min {_num(min(known), percent)}  max {_num(max(known), percent)}  {per}  {_span(times[0], times[-1])}"


def _spacing_minutes(times: list[Any]) -> int:
    """Minutes between a series' points (the first two; the last point, the range's end, may be closer)."""
    if len(times) > 2 and all(isinstance(t, datetime) for t in times[:2]):
        return max(1, round((times[1] - times[0]).total_seconds() / 60))
    return 1


def _span(start: Any, end: Any) -> str:
    if isinstance(start, datetime) and isinstance(end, datetime) and start.date() != end.date():
        return f"{start:%d %b %H:%M}-{end:%d %b %H:%M} UTC"
    return f"{_hm(start)}-{_hm(end)} UTC"


def _spark_width(width: int) -> int:
    """Marks of a full-width sparkline: the frame's width less an indent and a margin (72 at 80 columns)."""
    return width - 8


def _active_users(r: PanelResult, width: int) -> list[str]:
    times, values = [row[0] for row in r.rows], [row[1] for row in r.rows]
    last = next((v for v in reversed(values) if v is not None), None)
    marks = _spark_width(width)
    return [f"Active users  {_num(last)} sessions in the last 5 minutes",
            "  " + sparkline(values, marks), _scale(times, values, marks)]


def _funnel(r: PanelResult, width: int, hours: int = 3) -> list[str]:
    rows = [row for row in r.rows if any(v not in (None, 0) for v in row[1:3])]
    shown = rows[-hours:]
    cut = f"  ({len(rows) - len(shown)} earlier hours)" if len(rows) > len(shown) else ""
    lines = [f"Signup funnel  hour (UTC)   started  completed  conversion{cut}"]
    for t, started, completed, pct in shown:
        lines.append(f"  {t:%Y-%m-%d %H:00}  {_num(started):>9}  {_num(completed):>9}  {_num(pct, True):>10}"
                     if isinstance(t, datetime) else f"  {t}")
    return lines + (["  no signups in range"] if not rows else [])


def _top_features(r: PanelResult, width: int) -> list[str]:
    """Ranked features in two columns (one where two would leave a name under 12 characters), a name cut with …"""
    lines = ["Top features  unique users"]
    if not r.rows:
        return lines + ["  no feature use in range"]
    top = max(row[1] for row in r.rows) or 1
    # A cell is "NN. name users bar": 21 characters besides the name; two cells and their indents take 46.
    columns = 2 if (width - 46) // 2 >= 12 else 1
    name = min(32, (width - 46) // 2 if columns == 2 else width - 23)
    cells = [f"{i:>2}. {_short(str(row[0]), name):<{name}} {_num(row[1]):>7} {'█' * max(1, round(row[1] / top * 8)):<8}"
             for i, row in enumerate(r.rows, 1)]
    if columns == 1:
        return lines + [f"  {cell}".rstrip() for cell in cells]
    half = math.ceil(len(cells) / 2)
    for left, right in zip(cells[:half], cells[half:] + [""], strict=False):  # an odd count: the last stands alone
        lines.append(f"  {left}  {right}".rstrip())
    return lines


def _error_rate(r: PanelResult, width: int) -> list[str]:
    times, values = [row[0] for row in r.rows], [row[1] for row in r.rows]
    known = [(t, v) for t, v in zip(times, values, strict=True)
             if v is not None and not (isinstance(v, float) and math.isnan(v))]
    last = known[-1][1] if known else None
    above = sum(1 for _, v in known if v > 1)
    worst = max(known, key=lambda tv: tv[1]) if known else None
    head = f"Error rate  last {_num(last, True)}"
    if worst:
        head += f"   max {_num(worst[1], True)} at {_hm(worst[0])}   {above} minute(s) above the 1% line"
    marks = _spark_width(width)
    return [head, "  " + sparkline(values, marks), _scale(times, values, marks, percent=True)]


def _steps(r: PanelResult, width: int) -> list[str]:
    """Signup steps: one line per breakdown value (one line without a breakdown): each step's sessions and the
    conversion from the step before."""
    columns = {name: i for i, name in enumerate(r.columns)}
    groups: dict[str, list[tuple]] = {}
    for row in r.rows:
        groups.setdefault(str(row[columns["breakdown_value"]]), []).append(row)
    if not groups:
        return ["Signup steps", "  no session reached the first step in range"]
    first = next(iter(groups.values()))
    names = " → ".join(str(row[columns["step_name"]]) for row in first)
    lines = [f"Signup steps  {names}  (sessions, % of the step before)"]
    label_width = max(len(v) for v in groups) if len(groups) > 1 or "" not in groups else 0
    for value, rows in groups.items():
        cells = [_num(row[columns["sessions"]]) + ("" if row[columns["step"]] == 1 else
                                                   f" ({_num(row[columns['conversion_pct']], True)})")
                 for row in rows]
        label = f"{_short(value, 18):<{min(label_width, 18)}}  " if label_width else ""
        lines.append(f"  {label}{' → '.join(cells)}")
    return lines


def _conversion(r: PanelResult, width: int) -> list[str]:
    """Signup conversion over time: one sparkline per step transition (and breakdown value), its last point; the
    names take up to 40 columns (cut with …), the sparklines the rest (at least 8 marks, at most 60)."""
    series: dict[str, list[tuple[Any, Any]]] = {}
    for time_, step, pct in r.rows:
        series.setdefault(str(step), []).append((time_, pct))
    if not series:
        return ["Signup conversion over time", "  no session reached the first step in range"]
    lines = ["Signup conversion over time  % of the step before, by when the first step happened"]
    # "  name  marks  last 100.0%": 17 characters besides the name and the marks.
    name = min(40, max(len(s) for s in series), width - 17 - 8)
    marks = max(8, min(60, width - 17 - name))
    for label, points in series.items():
        values = [v for _, v in points]
        last = next((v for v in reversed(values) if v is not None), None)
        lines.append(f"  {_series(label, name):<{name}}  {sparkline(values, marks):<{marks}}  last {_num(last, True)}")
    return lines


def _series(name: str, width: int) -> str:
    """A series' name in at most width characters: where it ends in a breakdown value (" · gmail.com"), the
    transition before it is cut (with …) so the value, which tells the lines apart, stays whole."""
    head, dot, value = name.rpartition(" · ")
    if len(name) <= width or not dot or width - len(value) - len(dot) < 8:
        return _short(name, width)
    return _short(head, width - len(value) - len(dot)) + dot + value


def _short(text: str, width: int) -> str:
    """text in at most width characters, an ellipsis where it was cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


_RENDER = {"Active users": _active_users, "Signup funnel": _funnel, "Top features": _top_features,
           "Error rate": _error_rate, "Signup steps": _steps, "Signup conversion over time": _conversion}


def render(frame: Frame, width: int = WIDTH, height: int | None = HEIGHT) -> str:
    """The status, the alerts and the panels as lines of at most `width` characters, at most `height` of them (None:
    every line); says what it cut.

    The charts take the width they are given (sparklines, feature names, the conversion lines); a line that is
    still too long ends in "…". Where the frame would be too tall the funnel shows fewer hours first (it says how
    many it left out), then the lines past the terminal's last are cut: the status, the alerts and the top panels
    stay in view, as on the dashboard. A terminal under MIN_WIDTH x MIN_HEIGHT gets one line that says so.
    """
    if width < MIN_WIDTH or (height is not None and height < MIN_HEIGHT):
        size = f"{width}x{height}" if height is not None else f"{width} columns"
        return _short(f"The terminal is {size}; the dashboard needs {MIN_WIDTH}x{MIN_HEIGHT} at least", width)
    for funnel_hours in (3, 2, 1):
        lines = _lines(frame, width, funnel_hours)
        if height is None or len(lines) <= height:
            break
    lines = [_short(line, width) for line in lines]
    if height is not None and len(lines) > height:
        cut = len(lines) - height + 1
        lines = lines[:height - 1] + [f"… {cut} more lines not shown (a taller terminal shows them)"]
    return "\n".join(lines)


def _alert_lines(alerts: list[dict[str, Any]]) -> list[str]:
    """One line per alert rule: firing (with the series whose condition holds and their values), ok, or error."""
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for state in alerts:
        by_rule.setdefault(state["title"], []).append(state)
    lines = []
    for title, states in by_rule.items():
        errors = [s["error"] for s in states if s.get("error")]
        firing = [s for s in states if s["condition_met"]]
        if errors:
            lines.append(f"Alert {title}: cannot evaluate: {errors[0]}")
        elif firing:
            named = ", ".join(
                " ".join(f"{k}={v}" for k, v in s["labels"].items() if k not in ("severity", "team"))
                + (f" {_num(s['value'])}" if s["value"] is not None else "") for s in firing)
            lines.append(f"Alert {title}: FIRING  {named}".rstrip())
        else:
            lines.append(f"Alert {title}: ok")
    return lines


def _lines(frame: Frame, width: int, funnel_hours: int) -> list[str]:
    q = frame.qrange
    # The range in full, or without the year and seconds where that does not fit.
    when = "%Y-%m-%d %H:%M:%S" if width >= 64 else "%m-%d %H:%M"
    lines = [f"Product analytics  {q.start.strftime(when)} - {q.end.strftime(when)} UTC",
             *(f"  {line}" for line in frame.source.split("\n")), *(f"  {line}" for line in frame.variables)]
    if frame.status is not None:
        lines.append(frame.status.line())
    lines += _alert_lines(frame.alerts)
    lines.append("")
    for r in frame.results:
        if r.panel.title == "Live status":
            continue  # the status line above says it
        if r.error:
            lines += [r.panel.title, f"  query failed: {r.error}"]
        elif r.panel.title == "Signup funnel":
            lines += _funnel(r, width, funnel_hours)
        else:
            lines += _RENDER.get(r.panel.title, _generic)(r, width)
        lines.append("")
    return lines[:-1]


def _generic(r: PanelResult, width: int) -> list[str]:
    return [r.panel.title] + [f"  {', '.join(str(v) for v in row)}" for row in r.rows[:5]]


def main(settings, range_name: str, watch: bool, dashboard_file: str | None, out: TextIO,
         chosen: dict[str, list[str]] | None = None, service_url: str | None = None, as_json: bool = False,
         refresh: float | None = None) -> int:
    """Print the dashboard once, or every `refresh` seconds with --watch until Ctrl-C (`chosen`: variable values
    from --var); as one JSON document per refresh with as_json. Raises PanelsError or DashboardError."""
    refresh = REFRESH_SECONDS if refresh is None else refresh
    dashboard = load_dashboard(Path(dashboard_file) if dashboard_file else None)
    source = open_source(settings, dashboard, chosen, service_url)
    tty = out.isatty()
    clear = watch and tty and not as_json  # screen codes only for a terminal; a pipe gets frames one after another
    try:
        while True:
            frame = source.frame(range_name)
            if as_json:
                out.write(json.dumps(frame.as_json(), allow_nan=False) + "\n")
                out.flush()
                if not watch:
                    return 0
                time.sleep(refresh)
                continue
            # A terminal's own size, less the line the cursor (or the prompt) takes, so the top stays in view; a pipe
            # or a file gets 80 columns and every line (nothing scrolls there, and a script wants all the panels).
            if tty:
                size = shutil.get_terminal_size((WIDTH, HEIGHT))
                text = render(frame, size.columns, size.lines - 1)
            else:
                text = render(frame, WIDTH, None)
            out.write("\033[H\033[J" + text + "\n" if clear else text + "\n")
            out.flush()
            if not watch:
                return 0
            time.sleep(refresh)
            if not clear:
                out.write("\n")
    except KeyboardInterrupt:
        return 0
    finally:
        source.close()


__all__ = ["DashboardError", "PanelsError", "main", "render", "sparkline"]
