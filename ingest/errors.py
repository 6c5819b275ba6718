"""StartupError: what stops the service from starting, said in one line a user can act on (no traceback)."""

from __future__ import annotations

from pathlib import Path


class StartupError(Exception):
    """The service cannot start as configured; the message says what is wrong and what to do."""


def path_problem(path: Path, exc: OSError) -> str:
    """Why a file or directory at path cannot be made or written, in words (a parent that is a file, say)."""
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir() and parent != path:
                return f"{parent} is a file, not a directory"
            break
    return exc.strerror or str(exc)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line for a one-line message (its type's name when it says nothing), at most limit long."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
