"""Import first: puts the repository root on sys.path, so a script run as `python bench/x.py` (sys.path[0] is bench/)
imports `ingest` from this checkout, installed or not, and the test harness `tests.harness` it shares."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
