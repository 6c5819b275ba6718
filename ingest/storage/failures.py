"""How an insert into ClickHouse can fail: the kinds of failure, what each means and what to do, read from the
error ClickHouse answered. Data and words only (no client import), for the log, /health and the metrics.
"""

from __future__ import annotations

import re

from ..errors import first_line

# Codes ClickHouse answers when the rows themselves are unacceptable (parse errors, type mismatch,
# out-of-range values, violated constraints): the same rows would fail again however often they are
# retried. Everything else (network, missing table, memory, too many parts...) is worth retrying.
CONTENT_ERROR_CODES = frozenset({6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 469})


# Codes no retry can fix: the user, its grants or the schema are wrong, and an operator must act. The service still
# retries them (so the fix needs no restart) but says so loudly, once per cause.
OPERATOR_ERROR_KINDS = {
    497: "access_denied",       # ACCESS_DENIED: a grant is missing (or a view runs as a user without one)
    516: "authentication",      # AUTHENTICATION_FAILED
    192: "authentication",      # UNKNOWN_USER
    193: "authentication",      # WRONG_PASSWORD
    194: "authentication",      # REQUIRED_PASSWORD
    81: "unknown_database",     # UNKNOWN_DATABASE
    60: "unknown_table",        # UNKNOWN_TABLE
    16: "unknown_column",       # NO_SUCH_COLUMN_IN_TABLE: the table is older than the service
}
# What each kind of failure means and what to do, for the log and /health.
FAILURE_HINTS = {
    "access_denied": "the ClickHouse user may not do this insert: check its grants, and that the rollup views run "
                     "as their definer (docs/operations.md: Grants on a server)",
    "authentication": "ClickHouse refuses the user or password in CLICKHOUSE_URL",
    "unknown_database": "the database does not exist: check CLICKHOUSE_DATABASE and that the init ran",
    "unknown_table": "a table is missing: the init (clickhouse/init) has not run or failed",
    "unknown_column": "the events table lacks a column the service writes: apply clickhouse/init/sql",
    "rows_refused": "ClickHouse refuses every row tried for its content: the batch is held and retried, not "
                    "dead-lettered, until rows go in; if the events table changed, fix it",
    "view_failed": "a materialized view fails on insert: the batch is in the events table but not in the rollups "
                   "the dashboard reads; fix or drop the view, then the same batch is retried and stored once",
    "certificate": "the ClickHouse server's TLS certificate is not trusted: if a private CA signed it, set "
                   "CLICKHOUSE_CA_FILE to that CA's PEM file (the certificate must also name the host of "
                   "CLICKHOUSE_URL)",
    "unreachable": "ClickHouse does not answer; inserts are retried",
    "server": "ClickHouse failed the insert; it is retried",
    "other": "the ClickHouse client failed the insert; it is retried",
    "internal_error": "a bug in this service failed the insert (its traceback is in the log): the events are kept and "
                      "retried, but a retry will likely fail the same way until the service is fixed",
}
FAILURE_KINDS = tuple(FAILURE_HINTS)
# Failures that last until someone changes ClickHouse: logged as errors (the others are usually transient).
NEEDS_OPERATOR = frozenset({*OPERATOR_ERROR_KINDS.values(), "certificate", "rows_refused", "view_failed",
                            "internal_error"})
# What Python's ssl module says when it refuses a server's certificate, and why (the OpenSSL reason).
_CERTIFICATE_REFUSED = re.compile(r"CERTIFICATE_VERIFY_FAILED\]\s*certificate verify failed:\s*([^()'\"]+)")


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code an exception carries (attribute or message), if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = re.search(r"Code: (\d+)", str(exc))
    return int(match.group(1)) if match else None


def in_view(exc: BaseException) -> bool:
    """True if the insert failed in a materialized view, after the events table had taken the block."""
    return "while pushing to view" in str(exc)



def certificate_problem(exc: BaseException) -> str | None:
    """A one-line account of a refused TLS certificate (OpenSSL's reason and what to do), or None."""
    refused = _CERTIFICATE_REFUSED.search(str(exc))
    if refused is None:
        return None
    return f"TLS certificate verify failed ({refused.group(1).strip()}): {FAILURE_HINTS['certificate']}"


def reason(exc: BaseException) -> str:
    """The gist of a client error for a one-line message: a refused certificate and what to do, the OS's words if it
    has them, else its first line."""
    certificate = certificate_problem(exc)
    if certificate:
        return certificate
    text = str(exc).strip()
    errno_text = re.search(r"\[Errno -?\d+\] ([^\"')\]>]+)", text)  # urllib wraps it: <urlopen error [Errno ..] ..>
    if errno_text:
        return errno_text.group(1).strip()
    code = re.search(r"Code: \d+\. DB::Exception: (.*?)(?: \(version [^)]*\))?$", text.splitlines()[0] if text else "")
    return code.group(1)[:300] if code else first_line(exc)
