"""Reading the compose stack's files the way Compose and the images would, for static tests."""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The overlay that runs the same stack on a ClickHouse cluster (docs/scaling.md).
CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
ENV_EXAMPLE = ROOT / ".env.example"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}; `$$` is a literal `$`.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")

SECRETS = ("CLICKHOUSE_ADMIN_PASSWORD", "CLICKHOUSE_INGEST_PASSWORD", "CLICKHOUSE_GRAFANA_PASSWORD",
           "GRAFANA_ADMIN_PASSWORD")
# Secrets only the cluster overlay reads.
CLUSTER_SECRETS = ("CLICKHOUSE_CLUSTER_SECRET",)


@cache
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@cache
def compose() -> dict[str, Any]:
    """The compose file as written (variables not interpolated)."""
    return yaml.safe_load(compose_text())


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


@cache
def cluster_compose() -> dict[str, Any]:
    """The cluster overlay as written (variables not interpolated, YAML merge keys resolved)."""
    return yaml.safe_load(CLUSTER_FILE.read_text())


def references(document: dict[str, Any] | None = None) -> list[tuple[str, str | None, str]]:
    """Every ${...} in a compose file's values (default: docker-compose.yml; as compose interpolates them, comments
    aside), as (name, operator or None, default/message)."""
    return [(m[1], m[2], m[3] or "") for s in _strings(compose() if document is None else document)
            for m in _INTERPOLATION.finditer(s)]


def env_example() -> dict[str, str]:
    """Variables .env.example documents, set (VAR=value) or shown commented out (# VAR=value)."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            found[m[1]] = m[2].strip()
    return found


def stack_env(**overrides: str | None) -> dict[str, str]:
    """A complete .env for the stack: every secret set; None removes a variable."""
    env = {name: f"test-{name.lower().replace('_', '-')}" for name in (*SECRETS, *CLUSTER_SECRETS)}
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def docker_compose(tool: str, tmp_path: Path, env: dict[str, str], *args: str,
                   files: tuple[Path, ...] = (COMPOSE_FILE,)) -> subprocess.CompletedProcess:
    """Run the real docker-compose on the repository's file (or files, the later overlaying the earlier) with `env`
    as its .env file.

    The process environment holds only PATH and HOME, so nothing from the caller's shell leaks in.
    """
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    chosen = [option for path in files for option in ("-f", str(path))]
    return subprocess.run(
        [tool, "--project-directory", str(ROOT), *chosen, "--env-file", str(env_file), *args],
        capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
    )


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation, for the forms this file uses (for tests that run without the tool)."""

    def one(m: re.Match) -> str:
        name, op, arg = m[1], m[2], m[3] or ""
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if not missing:
            return value
        if op is None:
            return ""
        if op.endswith("?"):
            raise ValueError(f"{name}: {arg}")
        return arg

    return _INTERPOLATION.sub(one, value).replace("$$", "$")


def environment(service: str, env: dict[str, str]) -> dict[str, str]:
    """A service's container environment as compose would resolve it from `env`."""
    raw = compose()["services"][service].get("environment", {})
    assert isinstance(raw, dict), "write environment as a mapping"
    return {k: interpolate(str(v), env) for k, v in raw.items()}


def volumes(service: str) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume of a service."""
    out = []
    for spec in compose()["services"][service].get("volumes", []):
        parts = spec.split(":")
        source, target = parts[0], parts[1]
        out.append((source, target, parts[2] if len(parts) > 2 else "rw"))
    return out


def init_table_names() -> list[str]:
    """Tables the init SQL creates."""
    names = []
    for path in sorted((ROOT / "clickhouse" / "init" / "sql").glob("*.sql")):
        names += re.findall(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?`?(\w+)`?", path.read_text(), re.I)
    return names
