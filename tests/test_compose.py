"""docker-compose.yml, checked statically: no Docker engine runs where the tests run.

A real Compose implementation (Debian's docker-compose 1.29, which validates without an engine)
reads the file; the rest parses it and compares it with what the images and the ingest service
expect.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ingest.api.server import HTTP_SHUTDOWN_SECONDS
from ingest.config import ENV_VARS, SchemaSecrets, Settings
from ingest.delivery.pipeline import Pipeline

from .harness.provisioning import grafana_provisioning_variables
from .harness.tools import require_tool
from .stack import (
    CLUSTER_SECRETS,
    ROOT,
    SECRETS,
    cluster_compose,
    compose,
    docker_compose,
    env_example,
    environment,
    references,
    stack_env,
    volumes,
)

SERVICES = {"clickhouse", "schema", "ingest", "grafana", "prometheus"}
# Services that run once and exit (the schema step); the others run for as long as the stack does.
ONE_SHOT = {"schema"}


def services() -> dict:
    return compose()["services"]


# --- a real Compose implementation reads the file -------------------------------------------------

@pytest.mark.slow  # runs docker-compose
def test_docker_compose_accepts_the_file_with_every_secret_set(tmp_path):
    tool = require_tool("docker-compose")
    result = docker_compose(tool, tmp_path, stack_env(), "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == SERVICES


@pytest.mark.slow  # runs docker-compose
@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_docker_compose_refuses_to_start_while_a_secret_is_unset_or_empty(tmp_path, secret, value):
    tool = require_tool("docker-compose")
    result = docker_compose(tool, tmp_path, stack_env(**{secret: value}), "config")
    assert result.returncode != 0
    assert f"set {secret} in .env" in result.stderr


@pytest.mark.slow  # runs docker-compose
def test_docker_compose_resolves_the_database_name_into_every_service(tmp_path):
    tool = require_tool("docker-compose")
    env = stack_env(CLICKHOUSE_DATABASE="shop_events")
    result = docker_compose(tool, tmp_path, env, "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    for name in ("schema", "ingest", "grafana"):
        assert resolved[name]["environment"]["CLICKHOUSE_DATABASE"] == "shop_events", name
    # The grants are built from it by the schema step (tests/test_clickhouse_config.py), not written here.
    assert not [k for k in resolved["clickhouse"]["environment"] if "GRANT" in k]
    # Our own reading of the file (used by the other tests) agrees with the real implementation.
    for name in SERVICES:
        assert {k: str(v) for k, v in resolved[name].get("environment", {}).items()} == environment(name, env)


@pytest.mark.slow  # runs docker-compose
def test_docker_compose_keeps_the_order_the_services_start_in(tmp_path):
    """1.29 knows `service_completed_successfully` (it rejects a condition it does not know, below) and keeps it."""
    tool = require_tool("docker-compose")
    result = docker_compose(tool, tmp_path, stack_env(), "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert resolved["ingest"]["depends_on"]["schema"] == {"condition": "service_completed_successfully"}
    assert resolved["schema"]["depends_on"]["clickhouse"] == {"condition": "service_healthy"}
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump({"services": {
        "a": {"image": "a:1.0.0"}, "b": {"image": "b:1.0.0", "depends_on": {"a": {"condition": "service_finished"}}}}}))
    refused = subprocess.run([tool, "-f", str(broken), "config"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "service_finished" in refused.stderr


@pytest.mark.slow  # runs docker-compose
def test_docker_compose_rejects_what_it_does_not_know(tmp_path):
    """The check above is worth something only if the tool really validates keys."""
    tool = require_tool("docker-compose")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump({"services": {"x": {"image": "a:1.0.0", "helthcheck": {}}}}))
    result = subprocess.run([tool, "-f", str(broken), "config"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "helthcheck" in result.stderr


# --- images, health, order -------------------------------------------------------------------------

def test_the_stack_has_exactly_these_services():
    assert set(services()) == SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_is_pinned_to_an_exact_version(name):
    service = services()[name]
    if "image" not in service:
        assert "build" in service, f"{name}: neither image nor build"
        return
    repository, _, tag = service["image"].rpartition(":")
    assert repository and "/" not in tag, f"{name}: no tag in {service['image']!r}"
    assert re.fullmatch(r"v?\d+\.\d+\.\d+(\.\d+)?", tag), f"{name}: {tag!r} is not an exact version"


def dockerfile_healthcheck() -> str | None:
    m = re.search(r"^HEALTHCHECK\b(.*?)(?<!\\)$", (ROOT / "ingest" / "Dockerfile").read_text(), re.M | re.S)
    return m[0] if m else None


@pytest.mark.parametrize("name", sorted(SERVICES - ONE_SHOT))
def test_every_service_has_a_healthcheck(name):
    service = services()[name]
    if "healthcheck" in service:
        assert service["healthcheck"].get("test"), f"{name}: healthcheck without a test"
        assert not service["healthcheck"].get("disable")
    else:
        assert service.get("build", {}).get("dockerfile") == "ingest/Dockerfile", name
        assert dockerfile_healthcheck(), "ingest/Dockerfile has no HEALTHCHECK"


def test_startup_order_waits_for_health_and_the_schema_never_for_time():
    expected = {"schema": {"clickhouse"}, "ingest": {"clickhouse", "schema"},
                "grafana": {"clickhouse", "schema", "prometheus"}}
    for name, service in services().items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must say which condition it waits for"
        assert set(depends) == expected.get(name, set()), name
        for dependency, spec in depends.items():
            if dependency in ONE_SHOT:
                assert spec == {"condition": "service_completed_successfully"}, f"{name} -> {dependency}"
                continue
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services()[dependency], f"{dependency} is waited on but has no healthcheck"
    assert not re.search(r"\bsleep\b", Path(ROOT / "docker-compose.yml").read_text())


def test_the_schema_step_applies_the_schema_as_admin_and_does_nothing_else():
    """`python -m ingest schema apply` (ingest/cli/schema.py), from the ingest image, as admin on the stack's server;
    it exits when done, and is not restarted (a failure stays visible, and ingest and Grafana do not start)."""
    schema = services()["schema"]
    assert schema["build"] == services()["ingest"]["build"]
    assert schema["command"] == ["python", "-m", "ingest", "schema", "apply"]
    assert "restart" not in schema and "ports" not in schema and "volumes" not in schema
    assert schema["healthcheck"] == {"disable": True}  # the image's HEALTHCHECK is ingest's /health
    env = environment("schema", stack_env())
    assert env["CLICKHOUSE_ADMIN_URL"] == f"http://admin:{stack_env()['CLICKHOUSE_ADMIN_PASSWORD']}@clickhouse:8123"
    secrets = SchemaSecrets.from_env(env)
    assert (secrets.ingest_password, secrets.grafana_password) == (
        stack_env()["CLICKHOUSE_INGEST_PASSWORD"], stack_env()["CLICKHOUSE_GRAFANA_PASSWORD"])
    assert Settings.from_env(env).clickhouse_database == "analytics"
    assert "GRAFANA_ADMIN_PASSWORD" not in env


@pytest.mark.parametrize("name", sorted(SERVICES - ONE_SHOT))
def test_every_service_restarts_unless_stopped(name):
    assert services()[name].get("restart") == "unless-stopped"


def test_ingest_stop_grace_period_outlasts_its_flush_on_sigterm():
    flush = inspect.signature(Pipeline).parameters["shutdown_timeout"].default
    http_close = HTTP_SHUTDOWN_SECONDS
    grace = services()["ingest"]["stop_grace_period"]
    m = re.fullmatch(r"(\d+)s", grace)
    assert m, f"stop_grace_period {grace!r}: write it in seconds"
    assert int(m[1]) > flush + http_close + 5, "leave a margin past the flush deadline"


def test_clickhouse_may_open_many_files():
    nofile = services()["clickhouse"]["ulimits"]["nofile"]
    assert nofile["soft"] >= 262144 and nofile["hard"] >= nofile["soft"]


# --- ports -------------------------------------------------------------------------------------

def published(name: str) -> list[str]:
    return [str(p) for p in services()[name].get("ports", [])]


def test_only_grafana_and_ingest_are_published_to_everyone_and_clickhouse_only_to_localhost():
    assert published("grafana") == ["${GRAFANA_PORT:-3000}:3000"]
    assert published("ingest") == ["${INGEST_PORT:-3001}:3001"]
    assert published("clickhouse") == ["127.0.0.1:${CLICKHOUSE_HTTP_PORT:-8123}:8123"]
    assert published("prometheus") == []
    assert published("schema") == []
    assert "expose" not in str(services())


# --- variables ---------------------------------------------------------------------------------

def test_every_variable_compose_reads_is_documented_in_env_example():
    documented = env_example()
    missing = sorted({name for name, _, _ in references()} - set(documented))
    assert not missing, f"not in .env.example: {missing}"


def test_every_variable_in_env_example_is_read_by_compose_the_ingest_service_or_grafana():
    read = ({name for name, _, _ in references() + references(cluster_compose())} | set(ENV_VARS)
            | grafana_provisioning_variables())
    unread = sorted(set(env_example()) - read)
    assert not unread, f".env.example documents variables nothing reads: {unread}"


def test_secrets_are_required_everywhere_and_placeholders_in_env_example():
    documented = env_example()
    for name, op, _ in references() + references(cluster_compose()):
        if name in SECRETS + CLUSTER_SECRETS:
            assert op == ":?", f"${{{name}}} must use :? so compose refuses to start without it"
    for name in SECRETS + CLUSTER_SECRETS:
        assert documented[name] == "replace-me", name
    placeholders = {name for name, value in documented.items() if value == "replace-me"}
    assert placeholders == set(SECRETS + CLUSTER_SECRETS)


def test_compose_defaults_are_the_ingest_services_defaults():
    """Compose passes each INGEST_* setting with a default; it must be the service's own."""
    defaults = Settings()
    by_env = {env: f.name for f in dataclasses.fields(Settings) for env in [_env_name(f.name)]}
    passed = 0
    for name, op, default in references():
        if name in by_env and op == ":-":
            expected = getattr(defaults, by_env[name])
            assert type(expected)(default) == expected, \
                f"{name}: compose default {default!r}, service default {expected!r}"
            passed += 1
    assert passed >= 7


def _env_name(field: str) -> str:
    from ingest.config import _ENV
    return _ENV[field]


def test_ingest_service_accepts_the_environment_compose_gives_it():
    env = stack_env()
    settings = Settings.from_env(environment("ingest", env))
    assert settings.clickhouse_url == f"http://ingest:{env['CLICKHOUSE_INGEST_PASSWORD']}@clickhouse:8123"
    assert settings.clickhouse_database == "analytics"
    assert (settings.host, settings.port) == ("0.0.0.0", 3001)
    # Every setting of the service reaches the container (so .env can change it).
    assert set(environment("ingest", env)) == set(ENV_VARS)


def test_the_ingest_url_uses_the_ingest_user():
    url = services()["ingest"]["environment"]["CLICKHOUSE_URL"]
    assert url.startswith("http://ingest:${CLICKHOUSE_INGEST_PASSWORD:?") and url.endswith("}@clickhouse:8123")


def test_grafana_gets_what_its_provisioning_reads():
    env = environment("grafana", stack_env(ALERT_WEBHOOK_URL="https://hooks.example/x"))
    assert env["CLICKHOUSE_HOST"] == "clickhouse"
    assert env["CLICKHOUSE_DATABASE"] == "analytics"
    assert env["CLICKHOUSE_GRAFANA_PASSWORD"] == stack_env()["CLICKHOUSE_GRAFANA_PASSWORD"]
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert env["ALERT_WEBHOOK_URL"] == "https://hooks.example/x"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == stack_env()["GRAFANA_ADMIN_PASSWORD"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    # Alert notifications link back into Grafana with its root URL.
    assert env["GF_SERVER_ROOT_URL"] == env_example()["GRAFANA_ROOT_URL"] == "http://localhost:3000"
    moved = environment("grafana", stack_env(GRAFANA_ROOT_URL="https://grafana.example.com/"))
    assert moved["GF_SERVER_ROOT_URL"] == "https://grafana.example.com/"
    # Grafana never needs another ClickHouse user's password.
    assert not {"CLICKHOUSE_ADMIN_PASSWORD", "CLICKHOUSE_INGEST_PASSWORD"} & set(env)


def test_ingest_gets_no_other_users_secret():
    env = environment("ingest", stack_env())
    secrets = {v for k, v in stack_env().items() if k != "CLICKHOUSE_INGEST_PASSWORD"}
    assert not [k for k, v in env.items() if any(s in v for s in secrets)]


def test_the_clickhouse_plugin_is_pinned_once_to_an_exact_version():
    pins = re.findall(r"grafana-clickhouse-datasource@([^\s\"',]+)", (ROOT / "docker-compose.yml").read_text())
    assert len(pins) == 1 and re.fullmatch(r"\d+\.\d+\.\d+", pins[0]), pins
    grafana = services()["grafana"]["environment"]
    # Grafana 12 reads [plugins] preinstall_sync as id@version and installs it before serving.
    assert grafana["GF_PLUGINS_PREINSTALL_SYNC"] == f"grafana-clickhouse-datasource@{pins[0]}"
    assert grafana["GF_PLUGINS_PREINSTALL_AUTO_UPDATE"] == "false"
    assert "GF_INSTALL_PLUGINS" not in grafana, "deprecated; Grafana 12 migrates it to preinstall_sync"


def dashboards() -> list[Path]:
    return sorted((ROOT / "grafana" / "dashboards").rglob("*.json"))


@pytest.mark.parametrize("dashboard", dashboards() or [None], ids=lambda p: p.name if p else "none")
def test_dashboards_target_the_pinned_plugin_version(dashboard):
    if dashboard is None:
        pytest.skip("no dashboards in grafana/dashboards yet")
    pinned = re.search(r"grafana-clickhouse-datasource@(\S+)", (ROOT / "docker-compose.yml").read_text())[1]
    text = dashboard.read_text()
    versions = (set(re.findall(r'"pluginVersion"\s*:\s*"([^"]+)"', text))
                if "grafana-clickhouse-datasource" in text else set())
    # Panels of other datasources carry Grafana's own version; only ClickHouse targets name the plugin's.
    clickhouse_versions = {v for v in versions if v.startswith("4.")}
    assert clickhouse_versions <= {pinned}, f"{dashboard.name} targets {clickhouse_versions}, compose pins {pinned}"


# --- mounts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_mounted_host_path_exists_in_the_repository(name):
    for source, target, _ in volumes(name):
        if source.startswith("."):
            assert (ROOT / source).exists(), f"{name}: {source} -> {target} does not exist"


# Where each image reads what we give it (image documentation; the same paths the services' own
# configuration names, checked below where the file says so).
EXPECTED_MOUNTS = {
    "clickhouse": {
        ("clickhouse-data", "/var/lib/clickhouse", "rw"),
        ("clickhouse-logs", "/var/log/clickhouse-server", "rw"),
        ("./clickhouse/config.d", "/etc/clickhouse-server/config.d", "ro"),
        ("./clickhouse/users.d", "/etc/clickhouse-server/users.d", "ro"),
    },
    # The write-ahead log and dead letters must outlive the container.
    "ingest": {("ingest-data", "/var/lib/ingest", "rw")},
    "schema": set(),
    "grafana": {
        ("./grafana/provisioning", "/etc/grafana/provisioning", "ro"),
        ("./grafana/dashboards", "/var/lib/grafana/dashboards", "ro"),
        ("grafana-data", "/var/lib/grafana", "rw"),
    },
    "prometheus": {
        ("./prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"),
        ("prometheus-data", "/prometheus", "rw"),
    },
}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_container_paths_are_where_each_image_reads_them(name):
    assert set(volumes(name)) == EXPECTED_MOUNTS[name]


def test_named_volumes_are_declared_and_keep_the_data():
    declared = set(compose()["volumes"])
    used = {source for name in SERVICES for source, _, _ in volumes(name) if not source.startswith((".", "/"))}
    assert used == declared == {"clickhouse-data", "clickhouse-logs", "grafana-data", "prometheus-data",
                                "ingest-data"}


def prometheus_flags() -> dict[str, str]:
    return dict(flag.removeprefix("--").split("=", 1) for flag in services()["prometheus"]["command"])


def test_prometheus_reads_the_mounted_config_and_keeps_its_data_in_the_volume():
    flags = prometheus_flags()
    assert flags["config.file"] == "/etc/prometheus/prometheus.yml"
    assert flags["storage.tsdb.path"] == "/prometheus"
    assert flags["storage.tsdb.retention.time"] == "${PROMETHEUS_RETENTION:-15d}"
    assert re.fullmatch(r"\d+[smhdwy]", env_example()["PROMETHEUS_RETENTION"])


def test_prometheus_scrapes_ingest_every_5_seconds_where_it_listens():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ingest")
    interval = job.get("scrape_interval", config["global"]["scrape_interval"])
    assert interval == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    port = environment("ingest", stack_env())["INGEST_PORT"]
    assert job["static_configs"][0]["targets"] == [f"ingest:{port}"]


@pytest.mark.slow  # runs promtool
def test_promtool_accepts_the_prometheus_config():
    tool = require_tool("promtool")
    result = subprocess.run([tool, "check", "config", str(ROOT / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- git ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, ignored", [
    (".env", True), (".env.production", True), ("data/clickhouse/store/x", True), ("backups/ch.tar.gz", True),
    (".venv/bin/python", True), ("venv/bin/python", True),
    (".env.example", False), ("docker-compose.yml", False), ("clickhouse/users.d/admin.xml", False),
])
def test_gitignore_keeps_secrets_data_and_virtualenvs_out(path, ignored):
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
    assert result.returncode == (0 if ignored else 1), path


def test_ingest_may_open_a_file_for_every_connection_it_allows():
    """The connection limit is only the service's if the container's open-files limit holds it and what else the
    service keeps open (ingest lowers its limit to fit, and says so, where it does not)."""
    from ingest.api.app import LISTEN_BACKLOG

    nofile = services()["ingest"]["ulimits"]["nofile"]
    assert nofile["hard"] >= nofile["soft"]
    # What connection_limit keeps beside the connections: two backlogs, a margin of 128, and what is open at start
    # (about 60 files on the embedded engine; 200 here).
    assert nofile["soft"] >= Settings().max_connections + 2 * LISTEN_BACKLOG + 128 + 200
