"""Dashboard template variables, substituted into panel SQL as Grafana's frontend does before the plugin's backend
expands macros (ingest/grafana/macros.py). The backend never sees a template variable, so alert rules cannot use them.

Read in grafana-clickhouse-datasource 4.20.0, src/data/CHDatasource.ts `applyTemplateVariables`:
1. `$__conditionalAll(condition, $var)` becomes `condition`, or `1=1` where the variable's value is empty or All
   (`applyConditionalAll`: arguments split at commas outside parentheses, quotes not considered; the last call
   first; the text replaced is the first occurrence of the call's exact text).
2. Grafana's template service replaces `$var`, `${var}` and `[[var]]` (names Grafana does not know stay as they
   are) and hands each value to the plugin's `format`: several values become `'a','b'` (joined by `','`, nothing
   escaped); a single value goes in as it is, so SQL quotes it itself (`'$device_type'`). All means every option's
   value, or the variable's custom all value inserted as it is.

Query variables take their options from their query, as Grafana loads them (the plugin's variable support runs the
query's `rawSql`; the first column is the value): ingest/grafana/dashboard.py `load_options` runs it, and a value the
variable does not offer is refused, as Grafana's drop-down (with `allowCustomValue` false) offers none.

Explicit formats: `${var:singlequote}` and `${var:sqlstring}`, as Grafana's formatRegistry writes them (each value
quoted, `'` escaped as `\'` or as `''`, several joined by `,`). Text box variables are their text.

Not emulated, refused with a message instead of running other SQL than Grafana would: other explicit formats
(`${var:csv}`), field paths (`${var.x}`), ad hoc filter variables, and Grafana's built-in variables (`$__from`,
`$__interval`, ...), whose values come from the dashboard page. A variable's `regex` and `sort` are not applied
(the product dashboard's queries sort their values themselves).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ALL = "$__all"
# Grafana's variable syntax (its template service): $name, [[name]] or [[name:format]], ${name}, ${name.path:format}.
VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}", re.ASCII)
# Built-in variables Grafana's frontend sets from the page (time picker, panel width, user): not known here.
BUILTINS = frozenset({"__from", "__to", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                      "__rate_interval", "__rate_interval_ms", "__timezone", "__dashboard", "__org", "__user",
                      "__url_time_range", "__all_variables"})
CONDITIONAL_ALL = "$__conditionalAll("
# Grafana's formats that this emulates: singlequote escapes ' with a backslash (and leaves backslashes as they are),
# sqlstring doubles it.
FORMATS = {"singlequote": lambda v: "'" + v.replace("'", "\\'") + "'",
           "sqlstring": lambda v: "'" + v.replace("'", "''") + "'"}


class VariableError(ValueError):
    """A variable use or value this command cannot substitute as Grafana would."""


@dataclass(frozen=True)
class Variable:
    name: str
    value: str | tuple[str, ...]  # one value, or the values of a multi-value selection
    options: tuple[str, ...] = ()  # every option's value: what All stands for
    all_value: str | None = None  # the variable's custom all value
    source: str = "saved selection"

    @property
    def is_all(self) -> bool:
        return self.value == ALL or (isinstance(self.value, tuple) and self.value[:1] == (ALL,))

    def is_text(self) -> bool:
        """A text box's value: one text, no options to choose from."""
        return isinstance(self.value, str) and not self.options and not self.is_all

    def as_text(self) -> str:
        """current.value.toString(), which $__conditionalAll tests."""
        return ",".join(self.value) if isinstance(self.value, tuple) else self.value

    def rendered(self) -> str:
        """What $name becomes."""
        if self.is_all and self.all_value is not None:
            return self.all_value  # inserted as it is, never formatted
        if self.is_all and not self.options:
            raise VariableError(f"${self.name} is All, but its options are not saved in the dashboard (a query "
                                "variable loads them in the browser): choose values with --var")
        value: str | tuple[str, ...] = self.options if self.is_all else self.value
        return "'" + "','".join(value) + "'" if isinstance(value, tuple) else value

    def formatted(self, fmt: str) -> str:
        """What ${name:fmt} becomes (Grafana's formatRegistry)."""
        if fmt not in FORMATS:
            raise VariableError(f"${{{self.name}:{fmt}}}: the format {fmt} is not emulated (singlequote and sqlstring "
                                "are)")
        if self.is_all and self.all_value is not None:
            return self.all_value
        values = self.options if self.is_all else self.value
        quote = FORMATS[fmt]
        return ",".join(map(quote, values)) if isinstance(values, tuple) else quote(values)

    def describe(self) -> str:
        """One line: the filter this selection puts on (or none), where it came from, and what the SQL receives."""
        if self.is_text():  # a text box: the SQL receives the text as it is
            return f"{self.name} = {self.value or '(empty)'}  ({self.source})"
        if self.is_all or self.as_text() == "":
            became = "$__conditionalAll -> 1=1"
            if self.is_all and self.all_value is not None:
                became += f", ${self.name} -> {self.all_value}"
            elif self.is_all and not self.options:
                became += f", ${self.name}: no options loaded"
            return f"{self.name} {'All' if self.is_all else '(empty)'}  ({self.source}; SQL: {became})"
        chosen = ", ".join(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.name} {chosen}  ({self.source}; SQL: {self.rendered()})"


def _values(raw: Any) -> str | tuple[str, ...]:
    return tuple(str(v) for v in raw) if isinstance(raw, list) else str(raw)


def _listed(values: tuple[str, ...], most: int = 12) -> str:
    shown = ", ".join(values[:most])
    return shown + (f", ... ({len(values)} in all)" if len(values) > most else "")


def chosen_values(items: list[str]) -> dict[str, list[str]]:
    """`NAME=VALUE` items (`--var`, `GET /panels?var=`) as each name's chosen values, in order; VariableError for an
    item without a name or an `=`."""
    chosen: dict[str, list[str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise VariableError(f"a variable's value is chosen as NAME=VALUE, not {item[:100]!r}")
        chosen.setdefault(name, []).append(value)
    return chosen


def dashboard_variables(dashboard: dict[str, Any], overrides: dict[str, list[str]] | None = None,
                        loaded: dict[str, tuple[str, ...]] | None = None) -> dict[str, Variable]:
    """The dashboard's variables at their saved selection (`current`), with command-line values taking precedence.

    `loaded`: the options of query variables as their queries returned them (dashboard.load_options); a chosen
    value must be one of a variable's options where they are known (saved or loaded), or All, or empty."""
    found: dict[str, Variable] = {}
    loaded = loaded or {}
    for spec in dashboard.get("templating", {}).get("list", []):
        if spec.get("type") == "adhoc":
            raise VariableError(f"ad hoc filter variable ${spec['name']}: Grafana adds its filters to every query; "
                                "the panels command does not emulate that")
        if spec.get("type") == "textbox":
            options: tuple[str, ...] = ()  # any text: what its one saved option holds is only the default
        elif spec["name"] in loaded:
            options = loaded[spec["name"]]
        else:
            options = tuple(str(o["value"]) for o in spec.get("options", []) if o.get("value") != ALL)
        found[spec["name"]] = Variable(spec["name"], _values(spec.get("current", {}).get("value", "")), options,
                                       spec.get("allValue") or None)
    for name, values in (overrides or {}).items():
        if name not in found:
            raise VariableError(f"--var {name}: the dashboard has no variable {name} "
                                f"(it has: {', '.join(sorted(found)) or 'none'})")
        spec = next(s for s in dashboard["templating"]["list"] if s["name"] == name)
        if len(values) > 1 and not spec.get("multi"):
            raise VariableError(f"--var {name}: {name} takes one value, not {len(values)}")
        options = found[name].options
        unknown = [v for v in values if v not in options and v not in (ALL, "")]
        if unknown and options:
            raise VariableError(f"{name} has no value {', '.join(map(repr, unknown))} (the values it offers: "
                                f"{_listed(options)})")
        if unknown and name in loaded:
            raise VariableError(f"{name} has no value {', '.join(map(repr, unknown))}: its query returned no "
                                "values at all (no data yet?)")
        value = values[0] if len(values) == 1 and not spec.get("multi") else tuple(values)
        found[name] = Variable(name, value, options, found[name].all_value, "command line")
    return found


def _macro_args(sql: str, paren: int) -> list[str]:
    """The plugin's getMacroArgs: split at commas at depth 1, untrimmed; [] when the call never closes."""
    args, depth, start = [], 0, paren + 1
    for i in range(paren, len(sql)):
        c = sql[i]
        if c not in "(),":
            continue
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
        if depth == 0:
            args.append(sql[start:i])
            return args
    return []


def _replace_first(text: str, old: str, new: str) -> str:
    """JavaScript's text.replace(old, new) for a string `old`: the first occurrence, `$$ $& $\\` $'` in `new` read."""
    at = text.find(old)
    if at < 0:
        return text
    specials = {"$$": "$", "$&": old, "$`": text[:at], "$'": text[at + len(old):]}
    new = re.sub(r"\$[$&`']", lambda m: specials[m[0]], new)
    return text[:at] + new + text[at + len(old):]


def apply_conditional_all(sql: str, variables: dict[str, Variable]) -> str:
    at = sql.rfind(CONDITIONAL_ALL)
    while at >= 0:
        params = _macro_args(sql, at + len(CONDITIONAL_ALL) - 1)
        if len(params) != 2:
            return sql  # the plugin gives up on the rest as well
        phrase = params[0]
        named = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", params[1].strip(), re.ASCII)
        if named and named[0] in variables and variables[named[0]].as_text() in ("", ALL):
            phrase = "1=1"
        sql = _replace_first(sql, f"{CONDITIONAL_ALL}{params[0]},{params[1]})", phrase)
        at = sql.rfind(CONDITIONAL_ALL)
    return sql


def substitute(sql: str, variables: dict[str, Variable]) -> str:
    """Panel SQL after Grafana's frontend: what the plugin's backend receives."""
    def replace(m: re.Match) -> str:
        name, fmt, path = m[1] or m[2] or m[4], m[3] or m[6], m[5]
        if name in BUILTINS:
            raise VariableError(f"{m[0]}: Grafana's built-in variable, set by the dashboard page; "
                                "the panels command cannot know its value")
        if name not in variables:
            return m[0]  # Grafana leaves names it does not know as they are
        if path:
            raise VariableError(f"{m[0]}: field paths are not emulated")
        return variables[name].formatted(fmt) if fmt else variables[name].rendered()

    return VARIABLE.sub(replace, apply_conditional_all(sql, variables))


def describe(variables: dict[str, Variable]) -> list[str]:
    """Which filter each variable puts on and what substitute() makes of it, one line each, for the command's
    output (the terminal frame has room for these lines and no more)."""
    if not variables:
        return ["Template variables: none in the dashboard, nothing substituted."]
    return [f"{'Variable' if v.is_text() else 'Filter'}: {v.describe()}" for v in variables.values()]
