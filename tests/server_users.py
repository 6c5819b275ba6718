"""The stack's ClickHouse users on the real (embedded) engine: admin from clickhouse/users.d, ingest and grafana as
the compose stack's `schema` service creates them; one process per role, one data directory.

How the stack makes them: the server reads clickhouse/users.d (the operators' `admin`, and `default` removed) over
its image's users.xml, resolving `from_env` from the container's environment; then the one-shot `schema` service
runs `python -m ingest schema apply` as admin, which creates the database, the tables and views, and by SQL the
roles ingest_writer and grafana_reader with their grants, the settings profile grafana_readonly and the users ingest
and grafana (ingest.storage.targets.access_statements).

How this plays it: `apply_schema` runs the schema service's own command with its environment as compose resolves
it, against the engine served over ClickHouse's HTTP interface (tests/harness/engine_http.py, acting as admin). The
DDL runs on the engine. The access statements cannot (clickhouse-local has no writable access storage): the engine's
parser checks each, and what they create is read back from what was sent (`Access`) and given to the engine as
users.xml for the role under test. chdb always acts as the user `default`, so each process gets one more users.d
file that gives `default` the definition of the role under test (its grants, profile and rights; no password, as
chdb logs in without one).

Known gaps, measured on chdb 4.4 (ClickHouse 26.9):
- The access statements are parsed, not executed: that ClickHouse stores them as sent (a role granted to a user,
  default roles, passwords) is not run here; the grants themselves are enforced by the engine, statement for
  statement, as users.xml grants.
- clickhouse-local never reads `access_control_improvements`, so it refuses a profile constraint
  `changeable_in_readonly` (a 26.8 server accepts it by default; the engine's parser accepts the SQL): the grafana
  role is tested without the settings the plugin may change, and that the plugin's `max_execution_time` is
  accepted stays unproven here.
- `CURRENT_USER` in the admin process is `default` (chdb's only identity), where the schema service logs in as
  `admin`. `apply_schema` gives every view whose definer is that process's own user the name the server would have
  stored (the user of the schema service's URL), with ClickHouse's own `ALTER TABLE ... MODIFY DEFINER`. A view
  created without a definer is left as it is, so it keeps failing.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .stack import ROOT, compose, environment, stack_env

USERS_D = ROOT / "clickhouse" / "users.d"

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
# Where the schema service reaches the server inside the stack.
SERVER_IN_STACK = "clickhouse:8123"


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


@dataclass
class Access:
    """The roles, users and settings profiles a sequence of access statements leaves behind (in order: a `REVOKE
    ALL` empties a role, a later `ALTER` replaces what an earlier one set)."""

    role_grants: dict[str, list[str]] = field(default_factory=dict)  # role -> ["GRANT x ON y", ...] (no grantee)
    user_roles: dict[str, list[str]] = field(default_factory=dict)
    default_roles: dict[str, list[str]] = field(default_factory=dict)
    user_profile: dict[str, str | None] = field(default_factory=dict)
    user_password: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, list[str]] = field(default_factory=dict)  # profile -> its SETTINGS clauses
    unread: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, statements: list[str]) -> "Access":
        access = cls()
        for sql in statements:
            sql = re.sub(r" ON CLUSTER `[^`]+`", "", sql.strip())
            if m := re.fullmatch(r"CREATE ROLE IF NOT EXISTS (\w+)", sql):
                access.role_grants.setdefault(m[1], [])
            elif m := re.fullmatch(r"REVOKE ALL ON \*\.\* FROM (\w+)", sql):
                access.role_grants[m[1]] = []
            elif (m := re.fullmatch(r"(GRANT .+ ON \S+) TO (\w+)", sql)) and m[2] in access.role_grants:
                access.role_grants[m[2]].append(m[1])
            elif m := re.fullmatch(r"GRANT (\w+) TO (\w+)", sql):
                access.user_roles.setdefault(m[2], []).append(m[1])
            elif m := re.fullmatch(r"CREATE USER IF NOT EXISTS (\w+) IDENTIFIED WITH sha256_password BY '(.*)'", sql):
                access.user_password.setdefault(m[1], m[2])
                access.user_profile.setdefault(m[1], None)
            elif m := re.fullmatch(r"ALTER USER (\w+) IDENTIFIED WITH sha256_password BY '(.*?)'"
                                   r"(?: SETTINGS PROFILE (\w+))?", sql):
                access.user_password[m[1]] = m[2]
                access.user_profile[m[1]] = m[3]
            elif m := re.fullmatch(r"ALTER USER (\w+) DEFAULT ROLE (\w+)", sql):
                access.default_roles[m[1]] = [m[2]]
            elif m := re.fullmatch(r"CREATE SETTINGS PROFILE IF NOT EXISTS (\w+)", sql):
                access.profiles.setdefault(m[1], [])
            elif m := re.fullmatch(r"ALTER SETTINGS PROFILE (\w+) SETTINGS (.+)", sql):
                access.profiles[m[1]] = [clause.strip() for clause in m[2].split(",")]
            else:
                access.unread.append(sql)
        return access

    def grants_of(self, user: str) -> list[str]:
        """What the user may do once logged in: the grants of its default roles (roles granted, and made default)."""
        active = [r for r in self.default_roles.get(user, []) if r in self.user_roles.get(user, [])]
        return [grant for role in active for grant in self.role_grants[role]]


def profile_element(name: str, clauses: list[str]) -> ET.Element:
    """A settings profile of SQL clauses as users.xml writes it (`changeable_in_readonly` left out: see above)."""
    profile = ET.Element(name)
    constraints = ET.Element("constraints")
    for clause in clauses:
        m = re.fullmatch(r"(\w+)(?: = (\S+))?(?: MIN (\S+))?(?: MAX (\S+))?( CHANGEABLE_IN_READONLY)?", clause)
        assert m, f"profile {name}: cannot read {clause!r}"
        setting, value, low, high = m[1], m[2], m[3], m[4]
        if value is not None:
            ET.SubElement(profile, setting).text = value
        if low is not None or high is not None:
            constraint = ET.SubElement(constraints, setting)
            for tag, bound in (("min", low), ("max", high)):
                if bound is not None:
                    ET.SubElement(constraint, tag).text = bound
    if len(constraints):
        profile.append(constraints)
    return profile


def admin_element() -> ET.Element:
    found = ET.parse(USERS_D / "admin.xml").getroot().find("users/admin")
    assert found is not None, "clickhouse/users.d/admin.xml defines no admin"
    return found


def schema_service(database: str) -> tuple[list[str], dict[str, str]]:
    """The compose stack's schema step: its command and its environment as compose resolves them."""
    service = compose()["services"]["schema"]
    return list(service["command"]), environment("schema", stack_env(CLICKHOUSE_DATABASE=database))


class ServerUsers:
    """A data directory and the compose environment of the ClickHouse container, for running steps as a role."""

    def __init__(self, root: Path, database: str = "analytics") -> None:
        self.root = root
        self.data = root / "data"
        self.database = database
        self.env = environment("clickhouse", stack_env(CLICKHOUSE_DATABASE=database))
        self.access = Access()
        self.schema_runs: list[subprocess.CompletedProcess] = []
        self.statements: list[dict] = []  # what the last schema run sent: {user, database, sql, executed, error}

    @property
    def schema_user(self) -> str:
        """The user the schema service logs in as (the user of its URL)."""
        _, env = schema_service(self.database)
        return urllib.parse.urlsplit(env["CLICKHOUSE_ADMIN_URL"]).username or ""

    def config(self, role: str) -> Path:
        """A chdb config file whose users are the stack's, with `default` acting as `role`."""
        directory = self.root / f"as-{role}"
        users_d = directory / "users.d"
        users_d.mkdir(parents=True, exist_ok=True)
        (directory / "users.xml").write_text(IMAGE_USERS_XML)
        for path in sorted(USERS_D.glob("*.xml")):
            (users_d / path.name).write_text(path.read_text())
        root = ET.Element("clickhouse")
        acting = ET.Element("default")
        if role == "admin":
            for child in admin_element():
                if "password" not in child.tag:
                    acting.append(child)
        else:
            assert role in self.access.user_roles, f"no user {role}: run apply_schema() first"
            for tag, text in (("profile", self.access.user_profile.get(role) or "default"), ("quota", "default")):
                ET.SubElement(acting, tag).text = text
            ET.SubElement(ET.SubElement(acting, "networks"), "ip").text = "::/0"
            grants = ET.SubElement(acting, "grants")
            for grant in self.access.grants_of(role):
                ET.SubElement(grants, "query").text = grant
            profiles = ET.SubElement(root, "profiles")
            for name, clauses in self.access.profiles.items():
                profiles.append(profile_element(name, clauses))
        ET.SubElement(acting, "password")  # empty: chdb logs in as `default` without one
        ET.SubElement(root, "users").append(acting)
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

    def apply_schema(self) -> subprocess.CompletedProcess:
        """Run the schema service's command, with its environment, against the engine acting as admin; then give the
        views the definer the server would have stored, and read back the users and roles the run created."""
        command, env = schema_service(self.database)
        assert command[:1] == ["python"], command
        record = self.root / "statements.jsonl"
        record.unlink(missing_ok=True)
        address_file = self.root / "engine-address"
        address_file.unlink(missing_ok=True)
        admin_password = self.env["CLICKHOUSE_ADMIN_PASSWORD"]  # what users.d/admin.xml reads (from_env)
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.engine_http", str(self.data), str(self.config("admin")), str(record),
             str(address_file), f"admin:{admin_password}"],
            cwd=ROOT, env={**os.environ, **self.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while not address_file.exists() or not address_file.read_text():
                assert server.poll() is None, f"the engine's HTTP server exited:\n{server.stdout.read()}"  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the engine's HTTP server did not start"
                time.sleep(0.05)
            url = env["CLICKHOUSE_ADMIN_URL"]
            assert url.endswith(f"@{SERVER_IN_STACK}"), url
            run_env = {**env, "CLICKHOUSE_ADMIN_URL": url.removesuffix(SERVER_IN_STACK) + address_file.read_text(),
                       "PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
            result = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=run_env, capture_output=True,
                                    text=True, timeout=300)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        self.schema_runs.append(result)
        self.statements = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        if result.returncode == 0:
            (renamed,) = self.run("admin", [("rename_own_definer", self.schema_user)])
            assert renamed.ok, renamed.error
            self.access = Access.read([s["sql"] for s in self.statements if not s.get("executed")
                                       and not s.get("error")])
        return result


def definer(create_query: str) -> tuple[str | None, str | None]:
    """(definer, SQL SECURITY) of a view's CREATE statement as system.tables shows it."""
    who = re.search(r"\bDEFINER = (\S+)", create_query)
    security = re.search(r"\bSQL SECURITY (\w+)", create_query)
    return (who[1] if who else None, security[1] if security else None)
