"""The OpenAPI description of the HTTP API, served at /openapi.json, with the event schema embedded from its one file."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from .schema import SCHEMA


def _load() -> dict[str, Any]:
    doc = json.loads(resources.files(__package__).joinpath("openapi.json").read_text())
    # One source of truth: the event schema is copied in at load time, never maintained twice. $schema/$id
    # go: OpenAPI 3.1 schemas are JSON Schema 2020-12, which reads every keyword the draft-07 document uses.
    doc["components"]["schemas"]["Event"] = {k: v for k, v in SCHEMA.items() if k not in ("$schema", "$id")}
    return doc


OPENAPI: dict[str, Any] = _load()
OPENAPI_TEXT: bytes = json.dumps(OPENAPI, indent=1).encode()
