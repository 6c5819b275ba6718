"""The stack's ClickHouse users, loaded into the real (embedded) engine: one process per role, one data directory.

A server reads clickhouse/users.d over its image's users.xml and resolves `from_env` from the container's
environment (docker-compose.yml). chdb reads the same files through a server-style config file
(`user_directories/users_xml`), so ClickHouse itself merges them and resolves the variables. But chdb always acts
as the user `default`, so each process adds one more users.d file that gives `default` the definition of the role
under test (its profile, grants and rights; no password, as chdb logs in without one), and the other users keep
their own names.

Known gaps, measured on chdb 4.4 (ClickHouse 26.9):
- clickhouse-local never reads `access_control_improvements`, so it refuses to start with a profile that holds
  `changeable_in_readonly` (a 26.8 server accepts it by default). The copy of users.d loaded here has that marker
  stripped from grafana.xml: the grafana role is tested without the settings the plugin may change, and that the
  plugin's `max_execution_time` is accepted stays unproven here.
- `CURRENT_USER` in the admin process is `default` (chdb's only identity), where the server's init script runs as
  `admin`. `run_init_as_admin` replays exactly what clickhouse/init/00_schema.sh sends, then gives every view whose
  definer is that process's own user the name the server would have stored (CLICKHOUSE_USER), with ClickHouse's
  own `ALTER TABLE ... MODIFY DEFINER`. A view created without a definer is left as it is, so it keeps failing.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stack import ROOT, environment, stack_env

USERS_D = ROOT / "clickhouse" / "users.d"
INIT_SCRIPT = ROOT / "clickhouse" / "init" / "00_schema.sh"

# The image's /etc/clickhouse-server/users.xml (ClickHouse's programs/server/users.xml, read at commit 022a8859d1c1),
# without its comments: the base users.d is merged over (its `default` user is removed again by no-default-user.xml).
IMAGE_USERS_XML = """<clickhouse>
    <profiles>
        <default></default>
        <readonly><readonly>1</readonly></readonly>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>::/0</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>1</access_management>
            <named_collection_control>1</named_collection_control>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
                <read_rows>0</read_rows><execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</clickhouse>
"""

# A `clickhouse` on PATH that records each call ({"argv", "stdin"} per line of $RECORD) and succeeds.
FAKE_CLICKHOUSE = f"""#!{sys.executable}
import json, os, sys
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": stdin}}) + "\\n")
"""


@dataclass
class Outcome:
    """What one step gave: rows (queries), or the error ClickHouse answered."""

    ok: bool
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    error: str = ""
    code: int | None = None

    def refused(self) -> bool:
        """Refused for lack of rights (ACCESS_DENIED, or READONLY for a setting or write under readonly)."""
        return not self.ok and self.code in (497, 164)


def role_element(role: str) -> ET.Element:
    for path in sorted(USERS_D.glob("*.xml")):
        found = ET.parse(path).getroot().find(f"users/{role}")
        if found is not None and found.get("remove") is None:
            return found
    raise LookupError(f"no user {role} in {USERS_D}")


class ServerUsers:
    """A data directory and the compose environment of the ClickHouse container, for running steps as a role."""

    def __init__(self, root: Path, database: str = "analytics") -> None:
        self.root = root
        self.data = root / "data"
        self.database = database
        self.env = environment("clickhouse", stack_env(CLICKHOUSE_DATABASE=database))

    def config(self, role: str) -> Path:
        """A chdb config file whose users are the stack's, with `default` acting as `role`."""
        directory = self.root / f"as-{role}"
        users_d = directory / "users.d"
        users_d.mkdir(parents=True, exist_ok=True)
        (directory / "users.xml").write_text(IMAGE_USERS_XML)
        for path in sorted(USERS_D.glob("*.xml")):
            tree = ET.parse(path)
            for parent in tree.getroot().iter():
                for marker in parent.findall("changeable_in_readonly"):  # see the module docstring
                    parent.remove(marker)
            tree.write(users_d / path.name)
        acting = ET.Element("default")
        for child in role_element(role):
            if "password" not in child.tag:
                acting.append(child)
        ET.SubElement(acting, "password")  # empty: chdb logs in as `default` without one
        users = ET.Element("users")
        users.append(acting)
        root = ET.Element("clickhouse")
        root.append(users)
        # Sorted after the stack's files, so `default` comes back after no-default-user.xml removed it.
        ET.ElementTree(root).write(users_d / f"zz-default-acts-as-{role}.xml")
        config = directory / "config.xml"
        config.write_text("<clickhouse><user_directories><users_xml>"
                          f"<path>{directory / 'users.xml'}</path>"
                          "</users_xml></user_directories></clickhouse>")
        return config

    def run(self, role: str, steps: list[tuple]) -> list[Outcome]:
        """Run steps in a fresh process acting as `role` (see tests/role_process.py for the step kinds)."""
        request = self.root / f"request-{role}.pkl"
        response = self.root / f"response-{role}.pkl"
        request.write_bytes(pickle.dumps({"data": str(self.data), "config": str(self.config(role)),
                                          "database": self.database, "steps": steps}))
        env = {**os.environ, **self.env}
        result = subprocess.run([sys.executable, "-m", "tests.role_process", str(request), str(response)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{role} process failed:\n{result.stdout}\n{result.stderr}"
        return pickle.loads(response.read_bytes())

    def init_calls(self) -> list[dict[str, Any]]:
        """What clickhouse/init/00_schema.sh sends to the server, run as the image runs it."""
        bin_dir = self.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        fake = bin_dir / "clickhouse"
        fake.write_text(FAKE_CLICKHOUSE)
        fake.chmod(0o755)
        record = self.root / "init-calls.jsonl"
        record.unlink(missing_ok=True)
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), **self.env}
        subprocess.run([str(INIT_SCRIPT)], env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=60)
        return [json.loads(line) for line in record.read_text().splitlines()]

    def run_init_as_admin(self) -> list[Outcome]:
        """Apply the schema as the server's first boot does, acting as the user the init script logs in as."""
        steps: list[tuple] = []
        for call in self.init_calls():
            argv = call["argv"]
            assert argv[:1] == ["client"] and argv[argv.index("--user") + 1] == self.env["CLICKHOUSE_USER"]
            if "--query" in argv:
                steps.append(("command", None, argv[argv.index("--query") + 1]))
            else:
                assert "--multiquery" in argv
                steps.append(("multiquery", argv[argv.index("--database") + 1], call["stdin"]))
        steps.append(("rename_own_definer", self.env["CLICKHOUSE_USER"]))
        return self.run(self.env["CLICKHOUSE_USER"], steps)


def definer(create_query: str) -> tuple[str | None, str | None]:
    """(definer, SQL SECURITY) of a view's CREATE statement as system.tables shows it."""
    who = re.search(r"\bDEFINER = (\S+)", create_query)
    security = re.search(r"\bSQL SECURITY (\w+)", create_query)
    return (who[1] if who else None, security[1] if security else None)
