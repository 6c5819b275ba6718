"""What the figures were measured on: the machine (and how busy it was), and a process's CPU time on it."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return [("cores", str(os.cpu_count())), ("cpu", cpu), ("python", platform.python_version()),
            ("chdb", f"{ver('chdb')} (engine {ver('chdb-core')})"), ("aiohttp", ver("aiohttp")),
            ("clickhouse-connect", ver("clickhouse-connect")),
            # Other work on the machine skews figures: say how busy it was.
            ("load average 1/5 min", "%.2f / %.2f" % os.getloadavg()[:2])]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
