"""Grafana's provisioned alert rules, evaluated without Grafana: each rule's query run with the plugin's macros for its
relative time range, then its expressions (reduce, math, threshold) as Grafana's server-side expressions compute
them, one result per series (label set). What this says is the rule's condition now; Grafana adds the `for:`
pending period before a rule fires, and its notification routing.

Read in Grafana 12.4 (pkg/expr): a time series query's frame becomes one series per label set (string columns are
labels, each numeric column a series); `reduce` turns a series into one number (last, mean, max, min, sum, count;
a series without points gives no number); `math` evaluates an expression over the numbers of the series it names,
joined by their labels, comparisons and logic giving 1 or 0; `threshold` is 1 when its evaluator holds
(gt, lt, within_range, outside_range). The condition's result is "firing" where it is non-zero.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from ..shipped import shipped_dir
from .dashboard import CLICKHOUSE_UID
from .macros import MacroError, QueryRange, expand

# Runs SQL, returns (column names, rows): the same runner the panels use.
Runner = Callable[[str], tuple[list[str], list[tuple]]]
Labels = tuple[tuple[str, str], ...]


class AlertError(ValueError):
    """A rule this emulation cannot evaluate as Grafana would (an unknown expression type, say)."""


@dataclass
class AlertState:
    """One series of one rule: its labels (the rule's and the series'), the value the condition reads, and whether
    the condition holds now."""

    title: str
    uid: str
    labels: dict[str, str]
    value: float | None
    condition_met: bool
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"title": self.title, "condition_met": self.condition_met, "value": self.value,
                                 "labels": self.labels}
        if self.error:
            found["error"] = self.error
        return found


@dataclass
class _Numbers:
    """An expression's result: one number (or None) per label set."""

    by_labels: dict[Labels, float | None] = field(default_factory=dict)


def rules_directory() -> Path:
    """The provisioned alert rules (grafana/provisioning/alerting, or the copy an installed wheel carries)."""
    return shipped_dir("alerting", "grafana/provisioning/alerting")


def load_rules(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every alert rule of the provisioning files in `directory`, in file and group order."""
    import yaml

    rules = []
    for path in sorted(p for p in (directory or rules_directory()).glob("*.yaml") if p.is_file()):
        document = yaml.safe_load(path.read_text()) or {}
        for group in document.get("groups", []):
            rules.extend(group.get("rules", []))
    return rules


def evaluate_all(run: Runner, now: datetime, rules: list[dict[str, Any]] | None = None) -> list[AlertState]:
    """Every provisioned rule's states now (see evaluate)."""
    return [state for rule in (load_rules() if rules is None else rules) for state in evaluate(rule, run, now)]


def evaluate(rule: dict[str, Any], run: Runner, now: datetime) -> list[AlertState]:
    """The rule's condition now, one state per series; a failing query gives one state with its error."""
    title, uid = rule.get("title", ""), rule.get("uid", "")
    static = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
    try:
        results: dict[str, _Numbers | list[tuple[Labels, list[float | None]]]] = {}
        for item in rule["data"]:
            results[item["refId"]] = _step(item, results, run, now)
        condition = results[rule["condition"]]
        if not isinstance(condition, _Numbers):
            raise AlertError(f"the condition {rule['condition']} is a query, not an expression")
        reads = _input_of(rule, rule["condition"], results)
    except (AlertError, MacroError, KeyError) as exc:
        return [AlertState(title, uid, static, None, False, str(exc))]
    except Exception as exc:  # noqa: BLE001 - a query's own failure, reported as Grafana reports an error state
        return [AlertState(title, uid, static, None, False, str(exc).splitlines()[0][:300] if str(exc) else
                           type(exc).__name__)]
    states = []
    for labels, met in condition.by_labels.items():
        value = reads.by_labels.get(labels) if reads is not None else met
        states.append(AlertState(title, uid, {**static, **dict(labels)}, value, bool(met)))
    return states


def _input_of(rule: dict[str, Any], ref: str, results: dict) -> _Numbers | None:
    """The numbers a condition is about: follow it back to the reduce that turned the query into numbers."""
    by_ref = {item["refId"]: item for item in rule["data"]}
    seen = set()
    while ref in by_ref and ref not in seen:
        seen.add(ref)
        model = by_ref[ref].get("model", {})
        if model.get("type") == "reduce":
            found = results[ref]
            return found if isinstance(found, _Numbers) else None
        expression = model.get("expression", "")
        # A threshold names its input by refId; a math expression as $refId.
        names = re.findall(r"\$\{?(\w+)\}?", expression) if model.get("type") == "math" else [expression]
        ref = names[0] if names else ""
    return None


def _step(item: dict[str, Any], results: dict, run: Runner, now: datetime):
    model = item.get("model", {})
    if item.get("datasourceUid") == "__expr__":
        kind = model.get("type")
        if kind == "reduce":
            return _reduce(results[model["expression"]], model.get("reducer", "last"))
        if kind == "math":
            return _math(model["expression"], results)
        if kind == "threshold":
            return _threshold(results[model["expression"]], model["conditions"][0]["evaluator"])
        raise AlertError(f"expression type {kind!r} is not emulated (reduce, math and threshold are)")
    if item.get("datasourceUid") != CLICKHOUSE_UID:
        raise AlertError(f"datasource {item.get('datasourceUid')!r}: only the ClickHouse datasource is run here")
    window = item.get("relativeTimeRange", {})
    qrange = QueryRange(now - timedelta(seconds=window.get("from", 600)), now - timedelta(seconds=window.get("to", 0)),
                        timedelta(milliseconds=model.get("intervalMs", 1000)))
    columns, rows = run(expand(model["rawSql"], qrange))
    return _series(columns, rows)


def _series(columns: list[str], rows: list[tuple]) -> list[tuple[Labels, list[float | None]]]:
    """A query's rows as series: string columns are labels, every numeric column a series (its name a label when
    there are several), the time column set aside."""
    if not rows:
        return []
    sample = rows[0]
    numeric = [i for i, v in enumerate(sample) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    texts = [i for i, v in enumerate(sample) if isinstance(v, (str, bytes))]
    series: dict[Labels, list[float | None]] = {}
    for row in rows:
        base = tuple((columns[i], _text(row[i])) for i in texts)
        for i in numeric:
            labels = base if len(numeric) == 1 else (*base, ("__name__", columns[i]))
            value = row[i]
            series.setdefault(labels, []).append(None if value is None else float(value))
    return list(series.items())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "last": lambda v: v[-1], "mean": lambda v: sum(v) / len(v), "max": max, "min": min, "sum": sum,
    "count": lambda v: float(len(v)),
}


def _reduce(source, reducer: str) -> _Numbers:
    if reducer not in _REDUCERS:
        raise AlertError(f"reducer {reducer!r} is not emulated ({', '.join(_REDUCERS)} are)")
    if isinstance(source, _Numbers):
        return source
    out = _Numbers()
    for labels, values in source:
        known = [v for v in values if v is not None and not math.isnan(v)]
        out.by_labels[labels] = _REDUCERS[reducer](known) if known else None
    return out


def _threshold(source, evaluator: dict[str, Any]) -> _Numbers:
    kind, params = evaluator["type"], [float(p) for p in evaluator.get("params", [])]
    tests = {"gt": lambda v: v > params[0], "lt": lambda v: v < params[0],
             "within_range": lambda v: params[0] < v < params[1],
             "outside_range": lambda v: v < params[0] or v > params[1]}
    if kind not in tests:
        raise AlertError(f"threshold {kind!r} is not emulated ({', '.join(tests)} are)")
    numbers = source if isinstance(source, _Numbers) else _reduce(source, "last")
    return _Numbers({labels: None if v is None else float(tests[kind](v)) for labels, v in numbers.by_labels.items()})


# --- math: Grafana's expression language, the part alert rules use here -------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|\$\{?(\w+)\}?|(&&|\|\||==|!=|>=|<=|[-+*/%<>!()]))")
_BINARY = {"||": 1, "&&": 2, "==": 3, "!=": 3, ">": 4, "<": 4, ">=": 4, "<=": 4, "+": 5, "-": 5, "*": 6, "/": 6,
           "%": 6}


def _math(expression: str, results: dict) -> _Numbers:
    """Evaluate a math expression over the numbers of the results it names, per label set (a series without a
    label set of its own joins every other)."""
    tokens = _tokens(expression)
    refs = {t[1] for t in tokens if t[0] == "ref"}
    numbers = {ref: (results[ref] if isinstance(results[ref], _Numbers) else _reduce(results[ref], "last"))
               for ref in refs}
    label_sets = {labels for n in numbers.values() for labels in n.by_labels} or {()}
    if len(label_sets) > 1:
        label_sets.discard(())
    out = _Numbers()
    for labels in label_sets:
        values = {}
        for ref, n in numbers.items():
            value = n.by_labels.get(labels, n.by_labels.get(()) if len(n.by_labels) == 1 else None)
            if labels not in n.by_labels and len(n.by_labels) == 1:
                value = next(iter(n.by_labels.values()))
            values[ref] = value
        out.by_labels[labels] = None if any(v is None for v in values.values()) else _evaluate(tokens, values)
    return out


def _tokens(expression: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    text = expression.strip()
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None or m.end() == at:
            raise AlertError(f"math expression {expression!r}: cannot read it at {text[at:at + 10]!r}")
        number, ref, op = m.groups()
        tokens.append(("num", number) if number else ("ref", ref) if ref else ("op", op))
        at = m.end()
    return tokens


def _evaluate(tokens: list[tuple[str, str]], values: dict[str, float | None]) -> float:
    position = 0

    def unary() -> float:
        nonlocal position
        kind, text = tokens[position]
        position += 1
        if kind == "num":
            return float(text)
        if kind == "ref":
            value = values[text]
            assert value is not None
            return value
        if text == "(":
            value = binary(0)
            position += 1  # ")"
            return value
        if text == "-":
            return -unary()
        if text == "!":
            return float(unary() == 0)
        raise AlertError(f"math expression: unexpected {text!r}")

    def binary(lowest: int) -> float:
        nonlocal position
        left = unary()
        while position < len(tokens) and tokens[position][0] == "op" and _BINARY.get(tokens[position][1], 0) > lowest:
            op = tokens[position][1]
            position += 1
            right = binary(_BINARY[op])
            left = _apply(op, left, right)
        return left

    return binary(0)


def _apply(op: str, a: float, b: float) -> float:
    if op in ("==", "!=", ">", "<", ">=", "<="):
        return float({"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op])
    if op == "&&":
        return float(a != 0 and b != 0)
    if op == "||":
        return float(a != 0 or b != 0)
    if op == "/":
        return math.nan if b == 0 else a / b
    if op == "%":
        return math.nan if b == 0 else math.fmod(a, b)
    return {"+": a + b, "-": a - b, "*": a * b}[op]
