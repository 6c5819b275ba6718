"""ClickHouse server configuration (clickhouse/users.d, clickhouse/config.d) and the stack's SQL users (the `schema`
service's access statements, ingest.storage.targets): least privilege, checked against the compose file, the init
SQL and, where an engine is needed, the embedded engine."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import clickhouse_connect
import pytest
import yaml

from ingest.config import Settings
from ingest.storage.ddl import ddl_files, statements
from ingest.storage.rollups import defined_rollups
from ingest.storage.targets import Target, access_statements

from .server_users import Access
from .stack import ROOT, SECRETS, compose, environment, init_table_names, stack_env

USERS_D = ROOT / "clickhouse" / "users.d"
CONFIG_D = ROOT / "clickhouse" / "config.d"
XML_FILES = sorted(USERS_D.glob("*.xml")) + sorted(CONFIG_D.glob("*.xml"))


@pytest.mark.parametrize("path", XML_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_clickhouse_xml_parses_with_the_clickhouse_root(path):
    assert ET.parse(path).getroot().tag == "clickhouse"


def test_there_are_config_files_to_check():
    assert len(list(USERS_D.glob("*.xml"))) >= 2 and len(list(CONFIG_D.glob("*.xml"))) >= 2


def users() -> dict[str, ET.Element]:
    found = {}
    for path in sorted(USERS_D.glob("*.xml")):
        for user in ET.parse(path).getroot().findall("users/*"):
            assert user.tag not in found, f"user {user.tag} defined twice"
            found[user.tag] = user
    return found


def clickhouse_env() -> dict[str, str]:
    return environment("clickhouse", stack_env())


def schema_env(**overrides: str) -> dict[str, str]:
    return environment("schema", stack_env(**overrides))


def sql_access(**overrides: str) -> Access:
    """What the schema service creates by SQL: the statements `schema apply` sends for the database and passwords
    compose gives it, read back as roles, users and profiles."""
    env = schema_env(**overrides)
    database = Settings.from_env(env).clickhouse_database
    passwords = {"ingest": env["CLICKHOUSE_INGEST_PASSWORD"], "grafana": env["CLICKHOUSE_GRAFANA_PASSWORD"]}
    return Access.read(access_statements(Target("server"), database, passwords))


def test_users_d_holds_only_admin_and_removes_the_images_default():
    """ingest and grafana are SQL users (the schema service makes them); users.d only bootstraps the admin."""
    defined = users()
    assert set(defined) == {"default", "admin"}
    assert defined["default"].get("remove") is not None and len(defined["default"]) == 0


def test_the_admins_password_comes_from_a_required_environment_variable():
    passwords = [e for e in users()["admin"] if "password" in e.tag]
    assert len(passwords) == 1 and passwords[0].tag == "password"
    variable = passwords[0].get("from_env")
    assert variable == "CLICKHOUSE_ADMIN_PASSWORD" and not (passwords[0].text or "").strip()
    assert variable in SECRETS, "compose must refuse to start without it"
    # The server container receives it (so from_env finds it).
    assert clickhouse_env()[variable] == stack_env()[variable]


def test_the_sql_users_get_the_passwords_from_env():
    access = sql_access()
    assert access.user_password == {"ingest": stack_env()["CLICKHOUSE_INGEST_PASSWORD"],
                                    "grafana": stack_env()["CLICKHOUSE_GRAFANA_PASSWORD"]}
    # Only the schema step needs them: the server container never sees the services' passwords.
    assert not {"CLICKHOUSE_INGEST_PASSWORD", "CLICKHOUSE_GRAFANA_PASSWORD"} & set(clickhouse_env())


def test_every_from_env_variable_reaches_the_clickhouse_container():
    wanted = {e.get("from_env") for path in XML_FILES for e in ET.parse(path).iter() if e.get("from_env")}
    assert wanted and wanted <= set(clickhouse_env())


def test_only_admin_manages_access():
    assert users()["admin"].findtext("access_management") == "1"
    access = sql_access()
    for name in ("ingest", "grafana"):
        for grant in access.grants_of(name):
            assert not re.search(r"\b(ALL|ACCESS MANAGEMENT|CREATE USER|CREATE ROLE|ROLE ADMIN)\b|GRANT OPTION",
                                 grant), (name, grant)
        assert access.user_roles[name] == access.default_roles[name], name


GRANT = re.compile(r"GRANT (?P<privilege>[A-Z ]+)(?:\((?P<columns>[\w, ]+)\))? ON `?(?P<database>\w+)`?\."
                   r"(?P<table>\w+\*?|\*)")


def grants(name: str, **overrides: str) -> list[str]:
    """The GRANT clauses the user has once logged in (through its default role)."""
    return sql_access(**overrides).grants_of(name)


def test_ingest_may_insert_and_read_only_what_checking_its_inserts_needs():
    """INSERT into the analytics database (events, and rollups on a repair); SELECT of exactly what the check after
    a crash reads (ingest.storage.sink.Sink.stored_inserts, ingest.storage.rollups.repair), never the events'
    content."""
    database = schema_env()["CLICKHOUSE_DATABASE"]
    parsed = [GRANT.fullmatch(g) for g in grants("ingest")]
    assert parsed and all(parsed), grants("ingest")
    assert {m["database"] for m in parsed} == {database}
    assert [m["table"] for m in parsed if m["privilege"] == "INSERT"] == ["*"]
    selects = {m["table"]: m["columns"] for m in parsed if m["privilege"] == "SELECT"}
    assert set(selects.pop("events").replace(" ", "").split(",")) == {
        "insert_token", "event_name", "timestamp", "device_type", "country_code"}
    assert selects.pop("inserted_events") is None
    counting = {r.target for r in defined_rollups() if r.additive}
    readable = {t for t in init_table_names() for pattern in selects
                if (t.startswith(pattern[:-1]) if pattern.endswith("*") else t == pattern)}
    assert readable == counting


def test_grafana_may_only_select_from_the_analytics_database_and_the_schema_tables():
    database = schema_env()["CLICKHOUSE_DATABASE"]
    parsed = [GRANT.fullmatch(g) for g in grants("grafana")]
    assert parsed and all(parsed), grants("grafana")
    assert {m["privilege"] for m in parsed} == {"SELECT"}
    assert {(m["database"], m["table"]) for m in parsed} == {
        (database, "*"), ("system", "databases"), ("system", "tables"), ("system", "columns")}


def test_the_database_the_grants_name_is_the_one_the_schema_creates_and_the_services_use():
    env = stack_env(CLICKHOUSE_DATABASE="shop_events")
    assert Settings.from_env(environment("schema", env)).clickhouse_database == "shop_events"
    assert environment("ingest", env)["CLICKHOUSE_DATABASE"] == "shop_events"
    assert environment("grafana", env)["CLICKHOUSE_DATABASE"] == "shop_events"
    for name in ("ingest", "grafana"):
        named = {GRANT.fullmatch(g)["database"] for g in grants(name, CLICKHOUSE_DATABASE="shop_events")}
        assert named - {"system"} == {"shop_events"}, name


def grafana_profile() -> dict[str, str]:
    """The grafana user's settings profile: {setting: its clause}."""
    access = sql_access()
    clauses = access.profiles[access.user_profile["grafana"]]
    return {clause.split()[0]: clause for clause in clauses}


def test_grafana_is_readonly_but_may_set_what_the_plugin_sends():
    profile = grafana_profile()
    assert profile["readonly"] == "readonly = 1"
    for setting in ("max_execution_time", "limit", "enable_http_compression", "default_format"):
        assert profile[setting].endswith(" CHANGEABLE_IN_READONLY"), setting
    assert set(profile) == {"readonly", "max_execution_time", "limit", "enable_http_compression", "default_format"}


def test_grafanas_time_limit_is_what_the_plugin_sends_for_the_datasources_query_timeout():
    # The plugin's queryTimeout becomes the query's deadline (sqlds), and clickhouse-go v2.47.0 sends
    # max_execution_time = int(seconds left + 5): at most queryTimeout + 5, and a second less in practice.
    sources = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text())
    (clickhouse,) = [d for d in sources["datasources"] if d["type"] == "grafana-clickhouse-datasource"]
    sent_at_most = int(clickhouse["jsonData"]["queryTimeout"]) + 5
    m = re.fullmatch(r"max_execution_time = (\d+) MIN (\d+) MAX (\d+) CHANGEABLE_IN_READONLY",
                     grafana_profile()["max_execution_time"])
    assert m, grafana_profile()["max_execution_time"]
    assert int(m[1]) == sent_at_most == 65
    assert int(m[2]) <= sent_at_most - 1 and int(m[3]) == sent_at_most


def test_ingest_may_set_per_insert_settings():
    """Each insert carries insert_deduplication_token: the ingest user must not be readonly."""
    access = sql_access()
    profile = access.user_profile["ingest"]
    assert profile is None or not any(c.startswith("readonly") for c in access.profiles[profile])


@pytest.fixture
def engine(chdb_path):
    """The embedded engine, with the init SQL applied to a fresh database."""
    database = f"grants_{uuid.uuid4().hex[:8]}"
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    client.command(f"CREATE DATABASE `{database}`")
    scoped = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}", database=database)
    for _, text in ddl_files():
        for statement in statements(text):
            scoped.command(statement)
    yield client, database
    client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    client.close()
    scoped.close()


def test_every_access_statement_is_valid_clickhouse_and_every_grant_names_tables_that_exist(engine):
    client, database = engine
    env = schema_env(CLICKHOUSE_DATABASE=database)
    passwords = {"ingest": env["CLICKHOUSE_INGEST_PASSWORD"], "grafana": env["CLICKHOUSE_GRAFANA_PASSWORD"]}
    for statement in access_statements(Target("server"), database, passwords):
        # ClickHouse's own parser (the embedded engine cannot store users and roles: tests/server_users.py).
        client.command("SELECT formatQuery(%(q)s)", parameters={"q": statement})
    for name in ("ingest", "grafana"):
        for grant in grants(name, CLICKHOUSE_DATABASE=database):
            m = GRANT.fullmatch(grant)
            tables = client.query("SELECT name FROM system.tables WHERE database = %(d)s",
                                  parameters={"d": m["database"]}).result_rows
            assert tables, f"{grant}: no database {m['database']}"
            if m["table"].endswith("*"):
                assert any(t.startswith(m["table"][:-1]) for (t,) in tables), f"{grant}: no table {m['table']}"
            else:
                assert (m["table"],) in tables, f"{grant}: no table {m['table']}"


def test_settings_in_profiles_are_real_settings(engine):
    client, _ = engine
    known = {row[0] for row in client.query("SELECT name FROM system.settings").result_rows}
    assert set(grafana_profile()) <= known, set(grafana_profile()) - known


# --- server config ---------------------------------------------------------------------------------

def test_the_server_still_listens_on_the_network():
    """Mounting config.d hides the image's docker_related_config.xml, which set the listen addresses."""
    hosts = {e.text for path in CONFIG_D.glob("*.xml") for e in ET.parse(path).getroot().findall("listen_host")}
    assert {"0.0.0.0", "::"} <= hosts


def test_unused_protocol_ports_are_closed():
    removed = {e.tag for path in CONFIG_D.glob("*.xml") for e in ET.parse(path).getroot() if e.get("remove")}
    assert {"mysql_port", "postgresql_port", "interserver_http_port"} <= removed


def test_logs_are_bounded():
    root = ET.parse(CONFIG_D / "logs.xml").getroot()
    assert root.findtext("logger/level") in ("information", "warning", "error")
    assert root.findtext("logger/size") and root.findtext("logger/count")
    kept = [e for e in root if e.tag.endswith("_log") and e.get("remove") is None]
    assert kept and all(e.findtext("ttl") for e in kept), "every system log kept has a TTL"


_CREATING = re.compile(r"SystemLog: (Not creating|Creating) system\.(\w+)")
_DEBUG_LOGGER = "<clickhouse><logger><level>debug</level><console>1</console></logger></clickhouse>"


def system_logs(tmp_path: Path, base: str, config_d: list[Path]) -> dict[str, bool]:
    """{system log: created?} as the real engine decides at start-up, for a main config (its sections inside
    <clickhouse>) with these config.d files merged over it, in a fresh process (read from its debug log)."""
    directory = tmp_path / f"config-{uuid.uuid4().hex[:8]}"
    (directory / "config.d").mkdir(parents=True)
    (directory / "config.xml").write_text(f"<clickhouse>{base}</clickhouse>")
    for path in config_d:
        (directory / "config.d" / path.name).write_text(path.read_text())
    (directory / "config.d" / "zz-debug.xml").write_text(_DEBUG_LOGGER)  # after ours: the decisions are logged
    code = (f"import chdb; chdb.connect({str(directory / 'data') + '?config-file=' + str(directory / 'config.xml')!r})"
            ".query('SELECT 1')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return {m[2]: m[1] == "Creating" for m in _CREATING.finditer(result.stdout + result.stderr)}


def _section(name: str) -> str:
    return (f"<{name}><database>system</database><table>{name}</table>"
            f"<flush_interval_milliseconds>200</flush_interval_milliseconds></{name}>")


@pytest.mark.slow  # starts the engine in processes of its own
def test_every_system_log_the_engine_knows_is_removed_or_expires(tmp_path):
    """The server's config.xml switches most system logs on; here every log the real engine knows is switched on,
    logs.xml is merged over it as the server merges config.d, and the engine says which it creates."""
    known = system_logs(tmp_path, _section("query_log"), [])
    assert {"query_log", "part_log", "trace_log", "error_log", "query_views_log"} <= set(known), known
    created = system_logs(tmp_path, "".join(_section(n) for n in known), [CONFIG_D / "logs.xml"])
    assert set(created) == set(known)
    root = ET.parse(CONFIG_D / "logs.xml").getroot()
    unbounded = [n for n, made in created.items() if made and not root.findtext(f"{n}/ttl")]
    assert not unbounded, f"system logs created without a TTL: {unbounded}"
    # Removing a section the main config does not have (a log of another version) adds nothing back.
    removed = {e.tag for e in root if e.get("remove") is not None}
    without = system_logs(tmp_path, "".join(_section(n) for n in known if n not in removed), [CONFIG_D / "logs.xml"])
    assert not [n for n in removed if without.get(n)]


def test_system_log_ttls_are_valid_expressions(engine):
    """Each kept log's TTL makes a real table on the engine (a system log's event_date is a Date)."""
    client, database = engine
    root = ET.parse(CONFIG_D / "logs.xml").getroot()
    ttls = {e.tag: e.findtext("ttl") for e in root if e.tag.endswith("_log") and e.get("remove") is None}
    assert ttls and all(ttls.values()), f"every system log kept has a TTL: {ttls}"
    for name, ttl in ttls.items():
        client.command(f"CREATE TABLE `{database}`.`ttl_{name}` (event_date Date) ENGINE = MergeTree "
                       f"ORDER BY tuple() TTL {ttl}")


def test_compose_mounts_exactly_these_directories():
    mounts = {spec.split(":")[0] for spec in compose()["services"]["clickhouse"]["volumes"]}
    assert {"./clickhouse/users.d", "./clickhouse/config.d"} <= mounts
    # The image's init (/docker-entrypoint-initdb.d) is not used: the schema service applies the schema.
    assert not [m for m in mounts if m.startswith("./clickhouse/init")]
    assert Path(USERS_D).is_dir() and Path(CONFIG_D).is_dir()


def test_the_image_runs_no_init_and_leaves_the_read_only_users_d_alone():
    """Without CLICKHOUSE_USER/PASSWORD the image writes users.d/default-user.xml unless told not to; users.d is
    mounted read-only, so that write would stop the container. Without CLICKHOUSE_DB and init scripts it starts no
    temporary init server."""
    env = clickhouse_env()
    assert env["CLICKHOUSE_SKIP_USER_SETUP"] == "1"
    init = {"CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_DB", "CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS"}
    assert not init & set(env)
    mounts = {spec.split(":")[1]: spec.split(":")[-1] for spec in compose()["services"]["clickhouse"]["volumes"]}
    assert mounts["/etc/clickhouse-server/users.d"] == "ro"
    assert "/docker-entrypoint-initdb.d" not in mounts
