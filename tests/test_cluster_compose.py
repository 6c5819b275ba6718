"""docker-compose.cluster.yml, the cluster's XML and the cluster rendering of the schema: everything about the cluster
that can run here.

No Docker engine, ClickHouse server or Keeper runs where the tests run. So: Debian's docker-compose 1.29 merges the
overlay onto docker-compose.yml and the rest reads its result; the cluster's XML files are loaded into the real
(embedded) engine as the servers merge them, and the engine says what cluster and macros it read; the schema rendered
for the cluster goes through the engine's parser, and then, without `ON CLUSTER` and with the plain engines in place
of the Replicated ones (both need Keeper), is executed on it with the cluster's configuration loaded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
import yaml

from ingest.config import ENV_VARS, Settings
from ingest.storage.sink import INSERT_SETTINGS
from ingest.storage.targets import REPLICA_PATH, Target, access_statements, database_statements, schema_statements

from .harness.tools import require_tool
from .stack import CLUSTER_FILE, CLUSTER_SECRETS, COMPOSE_FILE, ROOT, docker_compose, init_table_names, stack_env

# docker-compose renders the overlay for most tests, and engines run in processes of their own.
pytestmark = pytest.mark.slow

CLUSTER = "analytics"
CLUSTER_DIR = ROOT / "clickhouse" / "cluster"
KEEPERS = ("keeper-1", "keeper-2", "keeper-3")
SERVERS = ("clickhouse", "clickhouse-2", "clickhouse-3", "clickhouse-4")
INGESTS = ("ingest", "ingest-2")
SERVICES = {*KEEPERS, *SERVERS, *INGESTS, "schema", "haproxy", "grafana", "prometheus"}
ONE_SHOT = {"schema"}
BOTH = (COMPOSE_FILE, CLUSTER_FILE)
# Where the image reads each file the cluster adds (the server merges config.d and conf.d over config.xml).
CONF_D = "/etc/clickhouse-server/conf.d"
INTERSERVER = "/etc/clickhouse-server/config.d/interserver.xml"


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> dict[str, Any]:
    """The stack as Debian's docker-compose 1.29 resolves the two files (every secret set)."""
    tool = require_tool("docker-compose")
    result = docker_compose(tool, tmp_path_factory.mktemp("compose"), stack_env(), "config", files=BOTH)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def service_env(merged: dict, name: str) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in merged["services"][name].get("environment", {}).items()}


def mounts(merged: dict, name: str) -> dict[str, str]:
    """{container path: source} of a service, sources relative to the repository (named volumes as named)."""
    found = {}
    for spec in merged["services"][name].get("volumes", []):
        parts = spec.split(":") if isinstance(spec, str) else [spec["source"], spec["target"]]
        source = parts[0]
        if source.startswith(str(ROOT)):
            source = "./" + os.path.relpath(source, ROOT)
        found[parts[1]] = source
    return found


# --- the real docker-compose reads the two files -----------------------------------------------------------------

def test_docker_compose_accepts_the_overlay_and_runs_the_cluster(merged):
    assert set(merged["services"]) == SERVICES
    per_server = {f"{s}-{kind}" for s in SERVERS[1:] for kind in ("data", "logs")}
    assert set(merged["volumes"]) == {"clickhouse-data", "clickhouse-logs", "grafana-data", "prometheus-data",
                                      "ingest-data", "ingest-2-data", "keeper-1-data", "keeper-2-data",
                                      "keeper-3-data", *per_server}


@pytest.mark.parametrize("secret", CLUSTER_SECRETS)
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_docker_compose_refuses_the_cluster_without_its_secret(tmp_path, secret, value):
    tool = require_tool("docker-compose")
    result = docker_compose(tool, tmp_path, stack_env(**{secret: value}), "config", files=BOTH)
    assert result.returncode != 0 and f"set {secret} in .env" in result.stderr
    # The single server does not need it.
    assert docker_compose(tool, tmp_path, stack_env(**{secret: value}), "config").returncode == 0


def test_the_overlay_sleeps_nowhere_and_pins_every_image(merged):
    assert not re.search(r"\bsleep\b", CLUSTER_FILE.read_text())
    for name, service in merged["services"].items():
        if "image" in service:
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+(\.\d+)?", service["image"]), (name, service["image"])
        else:
            assert service["build"]["dockerfile"] == "ingest/Dockerfile", name
    server = merged["services"]["clickhouse"]["image"].rpartition(":")[2]
    for keeper in KEEPERS:
        assert merged["services"][keeper]["image"] == f"clickhouse/clickhouse-keeper:{server}"
    assert merged["services"]["haproxy"]["image"] == "haproxy:2.8.26"


def test_every_long_running_service_has_a_healthcheck_and_restarts(merged):
    for name in SERVICES - ONE_SHOT:
        service = merged["services"][name]
        assert service.get("restart") == "unless-stopped", name
        if "build" in service:  # the ingest image's own HEALTHCHECK (GET /health)
            assert "healthcheck" not in service, name
            continue
        assert service["healthcheck"]["test"] and not service["healthcheck"].get("disable"), name


def test_startup_waits_for_keeper_then_servers_then_the_schema(merged):
    def waits(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in merged["services"][name].get("depends_on", {}).items()}

    for server in SERVERS:
        assert waits(server) == {k: "service_healthy" for k in KEEPERS}, server
    # ON CLUSTER waits for every server: so does the schema step.
    assert waits("schema") == {s: "service_healthy" for s in SERVERS}
    assert waits("ingest") == {"clickhouse": "service_healthy", "schema": "service_completed_successfully"}
    assert waits("ingest-2") == {"clickhouse-3": "service_healthy", "schema": "service_completed_successfully"}
    assert waits("haproxy") == {i: "service_healthy" for i in INGESTS}
    assert waits("grafana") == {"clickhouse": "service_healthy", "clickhouse-2": "service_healthy",
                                "schema": "service_completed_successfully", "prometheus": "service_healthy"}
    for name in SERVICES:
        for dependency in waits(name):
            assert dependency in ONE_SHOT or "healthcheck" in merged["services"][dependency] \
                or "build" in merged["services"][dependency], f"{name} waits on {dependency}, which has no health"


# --- the servers and Keeper -----------------------------------------------------------------------------------------

def test_every_server_is_the_single_server_plus_the_cluster_configuration(merged):
    main = merged["services"]["clickhouse"]
    for name in SERVERS:
        service = merged["services"][name]
        for key in ("image", "healthcheck", "ulimits"):
            assert service[key] == main[key], (name, key)
        assert {k: v for k, v in mounts(merged, name).items() if not k.startswith("/var/")} == {
            "/etc/clickhouse-server/config.d": "./clickhouse/config.d",
            "/etc/clickhouse-server/users.d": "./clickhouse/users.d",
            CONF_D: "./clickhouse/cluster/server",
            INTERSERVER: "./clickhouse/cluster/interserver.xml"}, name
        env = service_env(merged, name)
        assert env["CLICKHOUSE_REPLICA"] == name
        assert env["CLICKHOUSE_CLUSTER_SECRET"] == stack_env()["CLICKHOUSE_CLUSTER_SECRET"]
        assert without_place(env) == without_place(service_env(merged, "clickhouse")), name
    # Each server keeps its own data; only `clickhouse` is published, to this host, for operators.
    data = [mounts(merged, name)["/var/lib/clickhouse"] for name in SERVERS]
    assert len(set(data)) == len(SERVERS)
    assert [name for name in SERVERS if merged["services"][name].get("ports")] == ["clickhouse"]


def without_place(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("CLICKHOUSE_SHARD", "CLICKHOUSE_REPLICA")}


def test_the_file_the_cluster_mounts_over_replaces_one_the_single_server_has():
    """A file bind-mounted into the read-only config.d must exist there (Docker cannot create the mount point in a
    read-only mount), and is a same-named replacement: the single server's closes the replication port."""
    single = ET.parse(ROOT / "clickhouse" / "config.d" / "interserver.xml").getroot()
    assert single.find("interserver_http_port").get("remove") == "remove"
    cluster = ET.parse(CLUSTER_DIR / "interserver.xml").getroot()
    assert cluster.findtext("interserver_http_port") == "9009"
    assert cluster.find("interserver_http_host").get("from_env") == "CLICKHOUSE_REPLICA"
    assert cluster.find("interserver_http_credentials/password").get("from_env") == "CLICKHOUSE_CLUSTER_SECRET"


def cluster_xml() -> list[Path]:
    return sorted(CLUSTER_DIR.rglob("*.xml"))


@pytest.mark.parametrize("path", cluster_xml(), ids=lambda p: str(p.relative_to(CLUSTER_DIR)))
def test_every_cluster_xml_parses_with_the_clickhouse_root(path):
    assert ET.parse(path).getroot().tag == "clickhouse"


def remote_servers() -> list[list[tuple[str, int]]]:
    """The cluster's shards, each its replicas' (host, port), as remote_servers.xml lists them."""
    root = ET.parse(CLUSTER_DIR / "server" / "remote_servers.xml").getroot()
    (cluster,) = root.findall("remote_servers/*")
    assert cluster.tag == CLUSTER
    return [[(r.findtext("host"), int(r.findtext("port"))) for r in shard.findall("replica")]
            for shard in cluster.findall("shard")]


def test_remote_servers_is_two_shards_of_two_replicas_and_each_server_knows_its_place(merged):
    shards = remote_servers()
    assert [len(s) for s in shards] == [2, 2]
    root = ET.parse(CLUSTER_DIR / "server" / "remote_servers.xml").getroot()
    assert [s.findtext("internal_replication") for s in root.iter("shard")] == ["true", "true"]
    assert root.find(f"remote_servers/{CLUSTER}/secret").get("from_env") == "CLICKHOUSE_CLUSTER_SECRET"
    placed = {host: (number, port) for number, shard in enumerate(shards, 1) for host, port in shard}
    assert set(placed) == set(SERVERS)
    for name in SERVERS:
        env = service_env(merged, name)
        assert (int(env["CLICKHOUSE_SHARD"]), 9000) == placed[name], name


def test_three_keepers_with_unique_ids_that_the_servers_know(merged):
    root = ET.parse(CLUSTER_DIR / "keeper.xml").getroot()
    keeper = root.find("keeper_server")
    assert keeper.find("server_id").get("from_env") == "KEEPER_SERVER_ID"
    raft = {int(s.findtext("id")): s.findtext("hostname") for s in keeper.findall("raft_configuration/server")}
    assert len(raft) == len(keeper.findall("raft_configuration/server")) == 3, "raft ids must be unique"
    assert sorted(raft.values()) == sorted(KEEPERS)
    for name in KEEPERS:
        assert raft[int(service_env(merged, name)["KEEPER_SERVER_ID"])] == name
        assert mounts(merged, name)["/etc/clickhouse-keeper/keeper_config.xml"] == "./clickhouse/cluster/keeper.xml"
        assert mounts(merged, name)["/var/lib/clickhouse"] == f"{name}-data"
        # The healthcheck asks the readiness endpoint keeper.xml opens.
        assert keeper.findtext("http_control/port") in " ".join(merged["services"][name]["healthcheck"]["test"])
    nodes = ET.parse(CLUSTER_DIR / "server" / "keeper.xml").getroot().findall("zookeeper/node")
    assert sorted((n.findtext("host"), n.findtext("port")) for n in nodes) == \
        [(k, keeper.findtext("tcp_port")) for k in KEEPERS]


# --- the real engine reads the cluster's configuration ----------------------------------------------------------

ENGINE_SCRIPT = """
import json, re, sys
import chdb
request = json.load(open(sys.argv[1]))
connection = chdb.connect(request["data"] + "?config-file=" + request["config"])
answers = {}
for name, sql in request["queries"].items():
    answers[name] = json.loads(connection.query(sql, "JSONCompact").bytes())["data"]
errors = []
for sql in request["statements"]:
    try:
        connection.query(sql)
    except Exception as exc:
        errors.append([sql.splitlines()[0], str(exc)[:500]])
answers["errors"] = errors
for name, sql in request.get("after", {}).items():
    answers[name] = json.loads(connection.query(sql, "JSONCompact").bytes())["data"]
json.dump(answers, open(sys.argv[2], "w"))
"""


def run_as_server(tmp_path: Path, merged: dict, name: str, queries: dict[str, str], statements: list[str] = (),
                  after: dict[str, str] | None = None) -> dict[str, Any]:
    """Start the real engine in a process of its own with the server's configuration as the cluster mounts it
    (config.d with interserver.xml replaced, conf.d) and the server's environment; run the queries, then the
    statements, then the `after` queries."""
    directory = tmp_path / name
    (directory / "config.d").mkdir(parents=True)
    (directory / "conf.d").mkdir()
    (directory / "config.xml").write_text("<clickhouse></clickhouse>")
    for path in (ROOT / "clickhouse" / "config.d").glob("*.xml"):
        (directory / "config.d" / path.name).write_text(path.read_text())
    (directory / "config.d" / "interserver.xml").write_text((CLUSTER_DIR / "interserver.xml").read_text())
    for path in (CLUSTER_DIR / "server").glob("*.xml"):
        (directory / "conf.d" / path.name).write_text(path.read_text())
    request = directory / "request.json"
    request.write_text(json.dumps({"data": str(directory / "data"), "config": str(directory / "config.xml"),
                                   "queries": queries, "statements": list(statements), "after": after or {}}))
    answer = directory / "answer.json"
    env = {**os.environ, **service_env(merged, name)}
    # Not in the repository root: `import chdb` reads a config.xml in the working directory.
    result = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, str(request), str(answer)], cwd=directory,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(answer.read_text())


def test_the_engine_reads_the_cluster_and_the_macros_each_server_is_given(tmp_path, merged):
    for name in ("clickhouse", "clickhouse-4"):
        answers = run_as_server(tmp_path, merged, name, {
            "clusters": f"SELECT shard_num, replica_num, host_name, port FROM system.clusters "
                        f"WHERE cluster = '{CLUSTER}' ORDER BY shard_num, replica_num",
            "macros": "SELECT macro, substitution FROM system.macros ORDER BY macro",
            "interserver": "SELECT name, value FROM system.server_settings WHERE name IN "
                           "('interserver_http_port', 'interserver_http_host') ORDER BY name"})
        assert answers["clusters"] == [[s, r, host, port] for s, shard in enumerate(remote_servers(), 1)
                                       for r, (host, port) in enumerate(shard, 1)]
        env = service_env(merged, name)
        assert answers["macros"] == [["replica", name], ["shard", env["CLICKHOUSE_SHARD"]]]
        assert dict(map(tuple, answers["interserver"])) == {"interserver_http_host": name,
                                                              "interserver_http_port": "9009"}


def local_engines(sql: str) -> str:
    """A cluster statement as one server runs it without Keeper: no ON CLUSTER, the plain engine in place of the
    Replicated one (their Keeper path and replica name dropped)."""
    sql = sql.replace(f" ON CLUSTER `{CLUSTER}`", "")
    return re.sub(r"ENGINE = Replicated(\w*MergeTree)\(" + re.escape(REPLICA_PATH) + r"\)", r"ENGINE = \1()", sql)


def test_the_cluster_schema_parses_and_runs_with_the_cluster_configuration(tmp_path, merged, chdb_path):
    database = "analytics"
    target = Target("cluster", CLUSTER)
    passwords = {"ingest": "i", "grafana": "g"}
    rendered = (database_statements(target, database) + schema_statements(target, database)
                + access_statements(target, database, passwords))
    parser = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    try:
        for statement in rendered:  # ClickHouse's own parser, ON CLUSTER and Replicated engines included
            parser.command("SELECT formatQuery(%(q)s)", parameters={"q": statement})
    finally:
        parser.close()
    # Every statement reaches every server.
    assert [s.splitlines()[0] for s in rendered if f" ON CLUSTER `{CLUSTER}`" not in s] == []
    # Every statement names its database through the current one; run them in it.
    ddl = [local_engines(s) for s in database_statements(target, database)] + [f"USE {database}"] + \
        [local_engines(s) for s in schema_statements(target, database)]
    answers = run_as_server(tmp_path, merged, "clickhouse-3", {}, ddl, {
        "tables": f"SELECT name, engine, engine_full FROM system.tables WHERE database = '{database}' ORDER BY name",
        "views": f"SELECT name, as_select FROM system.tables WHERE database = '{database}' "
                 "AND engine = 'MaterializedView' ORDER BY name"})
    assert answers["errors"] == []
    tables = {name: (engine, full) for name, engine, full in answers["tables"]}
    for name in init_table_names():
        # The name the panels and the service read is a Distributed table over the local one, on this cluster.
        engine, full = tables[name]
        assert engine == "Distributed", name
        key = "cityHash64(session_id)" if name == "events" else "rand()"
        assert full == f"Distributed('{CLUSTER}', '{database}', '{name}_local', {key})", full
        assert tables[f"{name}_local"][0].endswith("MergeTree"), name
    for name, select in answers["views"]:
        # Each shard rolls up its own rows: the views read the local events and write local rollups.
        assert re.search(rf"\bFROM {database}\.events_local\b", select), (name, select)
    # The Replicated engines' Keeper path names only macros every server defines (and ClickHouse's own).
    assert set(re.findall(r"\{(\w+)\}", REPLICA_PATH)) <= {"shard", "replica", "database", "table"}


def test_inserts_ask_for_the_rows_on_their_shards_with_their_token(chdb_path):
    """A 2xx from the Distributed `events` means the rows are on their shards (not queued on the node that took
    them), and the deduplication token travels with them; both are settings the engine knows."""
    assert INSERT_SETTINGS["distributed_foreground_insert"] == 1
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    try:
        known = {row[0] for row in client.query("SELECT name FROM system.settings").result_rows}
    finally:
        client.close()
    assert {*INSERT_SETTINGS, "insert_deduplication_token"} <= known


# --- ingest, the load balancer, Grafana, Prometheus -----------------------------------------------------------

def test_two_ingest_processes_each_with_its_own_log_and_server(merged):
    main, second = service_env(merged, "ingest"), service_env(merged, "ingest-2")
    assert set(main) == set(second) == set(ENV_VARS)
    differ = {k for k in main if main[k] != second[k]}
    assert differ == {"CLICKHOUSE_URL"}, differ
    urls = {name: Settings.from_env(service_env(merged, name)).clickhouse_url for name in INGESTS}
    hosts = {name: re.fullmatch(r"http://ingest:[^@]+@([\w-]+):8123", url)[1] for name, url in urls.items()}
    shard_of = {host: number for number, shard in enumerate(remote_servers(), 1) for host, _ in shard}
    assert sorted(shard_of[h] for h in hosts.values()) == [1, 2], hosts  # one per shard
    logs = {mounts(merged, name)["/var/lib/ingest"] for name in INGESTS}
    assert logs == {"ingest-data", "ingest-2-data"}
    assert merged["services"]["ingest-2"]["build"] == merged["services"]["ingest"]["build"]
    for key in ("ulimits", "stop_grace_period"):
        assert merged["services"]["ingest-2"][key] == merged["services"]["ingest"][key], key


def test_the_schema_step_applies_the_cluster_rendering_to_the_cluster_it_names(merged):
    command = merged["services"]["schema"]["command"]
    assert command == ["python", "-m", "ingest", "schema", "apply", "--cluster", CLUSTER]
    from ingest.cli import main  # the command line really takes it
    with pytest.raises(SystemExit) as shown:
        main([*command[3:], "--help"])
    assert shown.value.code == 0


def test_haproxy_fronts_both_processes_with_the_shared_configuration(merged):
    haproxy = merged["services"]["haproxy"]
    assert service_env(merged, "haproxy") == {"LB_BIND": ":8080", "LB_SERVER_1": "ingest:3001",
                                             "LB_SERVER_2": "ingest-2:3001"}
    assert mounts(merged, "haproxy") == {"/usr/local/etc/haproxy/haproxy.cfg": "./haproxy/haproxy.cfg"}
    assert [str(p["target"]) if isinstance(p, dict) else p.split(":")[-1] for p in haproxy["ports"]] == ["8080"]
    assert "GET /health" in " ".join(haproxy["healthcheck"]["test"])


def test_the_load_balancer_configuration_is_in_the_repository():
    if not (ROOT / "haproxy" / "haproxy.cfg").exists():
        pytest.skip("haproxy/haproxy.cfg is not in this checkout yet (it is built on the branch `lb`)")
    text = (ROOT / "haproxy" / "haproxy.cfg").read_text()
    for variable in ("LB_BIND", "LB_SERVER_1", "LB_SERVER_2"):
        assert f"${{{variable}}}" in text, variable


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_mounted_host_path_exists(merged, name):
    for target, source in mounts(merged, name).items():
        if source == "./haproxy/haproxy.cfg" and not (ROOT / source).exists():
            continue  # test_the_load_balancer_configuration_is_in_the_repository says why
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{name}: {source} -> {target}"


def test_grafana_reads_the_cluster_through_one_of_its_servers(merged):
    env = service_env(merged, "grafana")
    assert env["CLICKHOUSE_HOST"] in SERVERS
    assert mounts(merged, "grafana")["/etc/grafana/provisioning"] == "./grafana/provisioning"


def test_prometheus_scrapes_each_ingest_process_directly(merged):
    assert mounts(merged, "prometheus")["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.cluster.yml"
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.cluster.yml").read_text())
    single = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == single["scrape_configs"][0]["job_name"]  # the dashboards' PromQL is unchanged
    assert config["global"] == single["global"]
    targets = [f"{name}:{service_env(merged, name)['INGEST_PORT']}" for name in INGESTS]
    assert job["static_configs"][0]["targets"] == targets


def test_promtool_accepts_the_cluster_prometheus_config():
    tool = require_tool("promtool")
    result = subprocess.run([tool, "check", "config", str(ROOT / "prometheus" / "prometheus.cluster.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
