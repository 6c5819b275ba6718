"""`python -m ingest panels`: the product dashboard in a terminal (ingest.terminal), with Grafana's variables."""

from __future__ import annotations

import argparse
import sys

from ..config import Settings
from ..errors import StartupError


def add_arguments(panels: argparse.ArgumentParser) -> None:
    panels.add_argument("--range", choices=["1h", "6h", "24h"], default="1h", help="time range ending now")
    panels.add_argument("--watch", action="store_true", help="refresh every 5 s, like the dashboard")
    panels.add_argument("--json", action="store_true",
                        help="print one JSON document (status, panels' frames, alert rules' states) instead of text; "
                             "with --watch, one per refresh, a line each")
    panels.add_argument("--dashboard", help="dashboard JSON to read (default: the product dashboard, "
                                            "grafana/dashboards/product-analytics.json)")
    panels.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="select a value of the dashboard's template variable NAME instead of its saved one; "
                             "repeat for several values of a multi-value variable ($__all for All)")
    panels.add_argument("--device", metavar="TYPE[,TYPE...]",
                        help="show these device types only: the same as --var device_type=TYPE for each "
                             "(default: the dashboard's saved selection, All)")
    panels.add_argument("--country", metavar="CODE[,CODE...]",
                        help="show these countries only (ISO codes, e.g. DE,FR): the same as --var "
                             "country_code=CODE for each (default: the dashboard's saved selection, All)")
    # Seconds between --watch refreshes; not in --help (the dashboard's 5 s is the one to use): tests use a short one.
    panels.add_argument("--refresh", type=float, help=argparse.SUPPRESS)


def run(args: argparse.Namespace, settings: Settings, parser: argparse.ArgumentParser) -> int:
    from ..grafana.variables import VariableError, chosen_values
    from ..terminal import panels as terminal

    try:
        chosen = chosen_values(args.var)
    except VariableError as exc:
        parser.error(f"--var: {exc}")
    for flag, name, given in (("--device", "device_type", args.device), ("--country", "country_code", args.country)):
        if given is None:
            continue
        if name in chosen:
            parser.error(f"{flag} and --var {name}=... both choose {name}: use one of them")
        values = [v.strip() for v in given.split(",")]
        if not all(values):
            parser.error(f"{flag} takes values separated by commas, e.g. {flag} a,b; not {given!r}")
        chosen[name] = values
    try:
        return terminal.main(settings, args.range, args.watch, args.dashboard, sys.stdout, chosen,
                             as_json=args.json, refresh=args.refresh)
    except (terminal.PanelsError, terminal.DashboardError, StartupError) as exc:
        print(f"ingest panels: {exc}", file=sys.stderr)
        return 1
