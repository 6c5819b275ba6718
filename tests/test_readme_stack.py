"""The README's stack section and docs/ stay true to docker-compose.yml and .env.example."""

from __future__ import annotations

import re

from ingest.config import ENV_VARS

from .stack import ROOT, compose, env_example, references

README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def section(title: str, text: str = README) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_run_the_full_stack_gives_the_steps_in_order():
    text = section("Run the full stack")
    steps = ["cp .env.example .env", "replace-me", "docker compose up -d", "http://localhost:3000", "/events"]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "### What each service is for" in text and "docs/operations.md" in text
    for heading in ("### Upgrade", "### Back up the ClickHouse volume"):
        assert heading in section("Operating the stack", OPERATIONS)


def test_the_configuration_table_lists_every_variable_of_the_stack_and_the_service():
    table = CONFIGURATION
    rows = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", table, re.M))
    wanted = {name for name, _, _ in references()} | set(env_example()) | set(ENV_VARS)
    assert not wanted - rows, f"missing from docs/configuration.md: {sorted(wanted - rows)}"


def test_the_readme_names_the_versions_compose_pins():
    text = section("Run the full stack")
    for service in compose()["services"].values():
        if "image" in service:
            assert f"`{service['image']}`" in text, service["image"]
    plugin = re.search(r"grafana-clickhouse-datasource@(\S+)", (ROOT / "docker-compose.yml").read_text())[1]
    assert f"`grafana-clickhouse-datasource` {plugin}" in text
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "ingest" / "Dockerfile").read_text(), re.M)[1]
    assert f"`{base}`" in text


def test_the_readme_says_why_clickhouse_is_not_the_briefs_24_1():
    text = section("Run the full stack")
    line = compose()["services"]["clickhouse"]["image"].rpartition(":")[2].rsplit(".", 2)[0]
    assert "24.1" in text and f"LTS line, {line}" in text
