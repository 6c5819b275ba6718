"""What a new user meets at the first start (issue 23): a relative embedded path, a misspelled variable, a second
service on the same embedded data. Real `python -m ingest serve` processes, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest.config import ConfigError, Settings

from .harness.engine import count_rows
from .harness.service import Service

ROOT = Path(__file__).resolve().parent.parent


# -- a relative CLICKHOUSE_URL ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_documented_relative_embedded_path_works_from_the_current_directory(tmp_path):
    """`chdb://./data/clickhouse` (docs/configuration.md's default) failed with `Database data does not exist` and
    left the engine's tmp/ in the current directory."""
    service = Service(tmp_path, CLICKHOUSE_URL="chdb://./data/clickhouse").wait_healthy()
    try:
        assert service.post_events(3, "rel") == 3
        assert f"storage chdb://{tmp_path / 'data' / 'clickhouse'}," in service.output()
    finally:
        assert service.stop() == 0, service.output()
    assert count_rows(tmp_path / "data" / "clickhouse", "analytics") == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["data"]  # no tmp/ beside it


@pytest.mark.parametrize("url", ["chdb://./data/clickhouse", "chdb://data/clickhouse", "chdb://data/clickhouse/"])
def test_a_relative_embedded_path_means_the_same_directory_from_the_current_directory(url):
    assert Settings.from_env({"CLICKHOUSE_URL": url}).clickhouse_url == "chdb://" + os.path.abspath("data/clickhouse")


def test_an_embedded_url_without_a_directory_is_refused_in_words():
    with pytest.raises(ConfigError, match="CLICKHOUSE_URL=chdb:// names no directory"):
        Settings.from_env({"CLICKHOUSE_URL": "chdb://"})


def test_the_docs_describe_the_relative_form_they_show():
    table = (ROOT / "docs" / "configuration.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `CLICKHOUSE_URL` |"))
    assert "chdb://./data/clickhouse" in row and "current directory" in row
