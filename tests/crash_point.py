"""Kill a running service at one syscall of one table's insert (gdb), and read what survived from a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

GDB_SCRIPT = Path(__file__).with_name("gdb_kill_at.py")
ROOT = Path(__file__).resolve().parent.parent


def table_dir(data: Path, database: str, table: str) -> Path:
    """Where the embedded engine keeps a table's parts (store/xxx/<uuid>), from its metadata file."""
    text = (data / "metadata" / database / f"{table}.sql").read_text()
    uuid = re.search(r"UUID '([0-9a-f-]+)'", text).group(1)
    return Path(os.path.realpath(data)) / "store" / uuid[:3] / uuid


class KillAt:
    """gdb attached to pid, killing it at `point` of the next insert into the table in `directory`."""

    def __init__(self, gdb: str, pid: int, directory: Path, point: str, skip: int = 0) -> None:
        self.lines: list[str] = []
        self._armed = threading.Event()
        self.proc = subprocess.Popen([gdb, "-p", str(pid), "-batch", "-nx", "-x", str(GDB_SCRIPT)],
                                     env={**os.environ, "KILL_DIR": str(directory), "KILL_POINT": point,
                                          "KILL_SKIP": str(skip)},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("ARMED"):
                self._armed.set()
        self._armed.set()

    def armed(self, timeout: float = 60) -> "KillAt":
        assert self._armed.wait(timeout) and self.proc.poll() is None, "gdb did not attach:\n" + "\n".join(self.lines)
        return self

    def killed(self, timeout: float = 60) -> str:
        """Wait for the kill; the path it happened at."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the kill point was never reached:\n" + "\n".join(self.lines[-30:])) from None
        self._reader.join(5)
        at = [line for line in self.lines if line.startswith("AT ")]
        assert at and "KILLED" in self.lines, "gdb ended without killing:\n" + "\n".join(self.lines[-30:])
        return at[-1][3:]


_CHECK = """
import json, sys
import clickhouse_connect
from ingest.storage.rollups import defined_rollups, rebuild
client = clickhouse_connect.get_client(dsn=sys.argv[1], database=sys.argv[2])

def snapshot(table):
    columns = client.query(f"SELECT name, type FROM system.columns WHERE database = currentDatabase() "
                           f"AND table = '{table}' ORDER BY position").result_rows
    select = ", ".join(f"toString(finalizeAggregation({n}))" if t.startswith("AggregateFunction") else f"toString({n})"
                       for n, t in columns)
    return client.query(f"SELECT {select} FROM {table} FINAL ORDER BY ALL").result_rows

targets = [r.target for r in defined_rollups()]
before = {t: snapshot(t) for t in targets}
rebuild(client)
print(json.dumps({
    "events": client.command("SELECT count() FROM events"),
    "distinct": client.command("SELECT uniqExact(session_id) FROM events"),
    "sessions": sorted(r[0] for r in client.query("SELECT DISTINCT session_id FROM events").result_rows),
    "rollups_off": sorted(t for t in targets if snapshot(t) != before[t]),
}))
"""


def stored(data: Path, database: str) -> dict:
    """What an embedded data directory holds, read by a fresh process: events, distinct session ids, and the rollups
    that differ from a rebuild out of `events` (none, when they agree)."""
    out = subprocess.run([sys.executable, "-c", _CHECK, f"chdb://{data}", database], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
