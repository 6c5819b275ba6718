"""The OpenAPI description of the HTTP API, served at /openapi.json, with the event schema embedded from its one
file."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from ..contract.events import SCHEMA

DEFINITION_PREFIX = "Event."  # the event schema's definitions, as components: #/definitions/x -> Event.x


def _rebase(value: Any) -> Any:
    """value with every `#/definitions/...` reference pointing at the components that hold the definitions."""
    if isinstance(value, dict):
        return {k: ("#/components/schemas/" + DEFINITION_PREFIX + v.removeprefix("#/definitions/")
                    if k == "$ref" and isinstance(v, str) and v.startswith("#/definitions/") else _rebase(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v) for v in value]
    return value


def _load() -> dict[str, Any]:
    doc = json.loads(resources.files(__package__).joinpath("openapi.json").read_text())
    # One source of truth: the event schema is copied in at load time, never maintained twice. $schema/$id
    # go: OpenAPI 3.1 schemas are JSON Schema 2020-12, which reads every keyword the draft-07 document uses.
    # Its definitions become components beside it, since "#/..." now means the OpenAPI document.
    schemas = doc["components"]["schemas"]
    schemas["Event"] = _rebase({k: v for k, v in SCHEMA.items() if k not in ("$schema", "$id", "definitions")})
    for name, definition in SCHEMA.get("definitions", {}).items():
        schemas[DEFINITION_PREFIX + name] = _rebase(definition)
    return doc


OPENAPI: dict[str, Any] = _load()
OPENAPI_TEXT: bytes = json.dumps(OPENAPI, indent=1).encode()
