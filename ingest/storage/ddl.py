"""The table DDL the service applies to the embedded engine and reads its rollups from: the numbered files of
clickhouse/init/sql, which the ClickHouse image runs too (one source of truth)."""

from __future__ import annotations

import re
from typing import Iterator

from ..shipped import shipped_dir


def ddl_files() -> list[tuple[str, str]]:
    """The numbered init DDL (name, text), in order."""
    files = [(p.name, p.read_text()) for p in shipped_dir("ddl", "clickhouse/init/sql").iterdir()
             if p.name.endswith(".sql")]
    if not files:
        raise FileNotFoundError("no init DDL found (clickhouse/init/sql/*.sql)")
    return sorted(files)


def statements(sql: str) -> Iterator[str]:
    """Split a DDL file into statements (our DDL keeps ';' out of strings and comments)."""
    without_comments = re.sub(r"--[^\n]*", "", sql)
    for part in without_comments.split(";"):
        if part.strip():
            yield part.strip()


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
