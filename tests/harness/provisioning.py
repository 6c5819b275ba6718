"""Grafana's provisioning files as Grafana reads them: which environment variables it substitutes into them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

PROVISIONING = sorted((Path(__file__).resolve().parents[2] / "grafana" / "provisioning").rglob("*.yaml"))


def _strings(node):
    """Every string in a parsed document, however deep."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _substituted(document: dict) -> list[str]:
    """The values Grafana puts through its environment substitution: all but an alert rule's query `model` (raw,
    so the plugin's macros survive) and its `annotations` (raw since Grafana 9.1, grafana#54975)."""
    def rule_values(rule: dict) -> list:
        return [v for k, v in rule.items() if k not in ("annotations", "data")] + [
            {k: v for k, v in query.items() if k != "model"} for query in rule.get("data", [])]

    groups = [{**group, "rules": [rule_values(r) for r in group.get("rules", [])]}
              for group in document.get("groups", [])]
    return list(_strings({**document, "groups": groups}))


def grafana_provisioning_variables(documents: list[dict] | None = None) -> set[str]:
    """Environment variables Grafana substitutes into the provisioning files."""
    used = set()
    for document in documents if documents is not None else [yaml.safe_load(p.read_text()) for p in PROVISIONING]:
        # Values only (comments may mention $VAR); $$ is a literal dollar; $__macros are not variables.
        for value in _substituted(document):
            used |= set(re.findall(r"(?<!\$)\$\{?([A-Z][A-Z0-9_]*)\}?", value))
    return used
