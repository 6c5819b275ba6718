"""The benchmarks' output: titled two-column tables, numbers right-aligned."""

from __future__ import annotations


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    """A two-column table, numbers right-aligned."""
    print(f"\n{title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:,.1f}" if value >= 100 else f"{value:,.3f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        print(f"  {key:<{width}}  {value}")
