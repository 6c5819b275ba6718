"""Build hook: the event names the service accepts, written into ingest_client/_contract.py from the service's event
schema (the contract), so the installed client needs neither the schema file nor a JSON Schema library."""

from __future__ import annotations

import json
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# In a checkout the schema is the service's own file; in this distribution's sdist, a copy at its root.
SCHEMA_PLACES = ("event.schema.json", "../../ingest/contract/event.schema.json")


class ContractHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        schema = next((Path(self.root) / p for p in SCHEMA_PLACES if (Path(self.root) / p).is_file()), None)
        if schema is None:
            raise FileNotFoundError(f"the event schema is in none of {SCHEMA_PLACES} (relative to {self.root})")
        names = tuple(json.loads(schema.read_text())["properties"]["event_name"]["enum"])
        text = ('"""Generated from the service\'s event schema when this distribution was built '
                '(hatch_build.py)."""\n\n'
                f"EVENT_NAMES: tuple[str, ...] = {names!r}\n")
        if version == "editable":
            # An editable install imports the package from the source tree: the module goes there (git ignores it),
            # and reads the checkout's schema when imported, so an edit of the contract never leaves it stale.
            (Path(self.root) / "ingest_client" / "_contract.py").write_text(
                '"""Written for an editable install (hatch_build.py): the event names of the schema in this '
                'checkout."""\n\nimport json\nfrom pathlib import Path\n\n'
                '_SCHEMA = Path(__file__).resolve().parents[3] / "ingest" / "contract" / "event.schema.json"\n'
                'EVENT_NAMES: tuple[str, ...] = tuple(json.loads(_SCHEMA.read_text())["properties"]["event_name"]'
                '["enum"])\n')
            return
        generated = Path(self.directory) / "_contract.py"
        generated.parent.mkdir(parents=True, exist_ok=True)
        generated.write_text(text)
        build_data["force_include"][str(generated)] = "ingest_client/_contract.py"
