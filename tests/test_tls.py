"""CLICKHOUSE_CA_FILE and https:// URLs against a real TLS server: the embedded engine behind ClickHouse's HTTP
interface (tests/harness/engine_http.py) with a certificate signed by a certificate authority made here with the
openssl command line. Without that CA, or with another one, the service's storage connection (ingest.storage.sink)
and `schema apply` refuse the server and say what to do; with it they work. The server listens on a random port,
not 443 or 8443, so the URL's scheme alone must ask for TLS."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import chdb
import pytest

from ingest.config import Settings
from ingest.storage.failures import FAILURE_HINTS, NEEDS_OPERATOR
from ingest.storage.sink import Sink, failure_kind

from .harness.engine_http import EngineHTTP
from .harness.tools import require_tool
from .stack import ROOT

PASSWORD = "tls-test-password"
LEAF_EXTENSIONS = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_ca(openssl: str, directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate authority: (certificate, key), EC P-256, valid two days."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    """The CA that signed the server's certificate, another CA, and the server's certificate and key (for
    localhost and 127.0.0.1)."""
    openssl = require_tool("openssl")
    directory = tmp_path_factory.mktemp("tls")
    ca, ca_key = make_ca(openssl, directory, "analytics-test-ca")
    other, _ = make_ca(openssl, directory, "another-ca")
    key, request, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    subprocess.run([openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(request), "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    (directory / "leaf.cnf").write_text(LEAF_EXTENSIONS)
    subprocess.run([openssl, "x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(directory / "leaf.cnf")],
                   check=True, capture_output=True, timeout=60)
    return {"ca": ca, "other_ca": other, "cert": cert, "key": key}


@pytest.fixture
def server(certificates, chdb_path):
    """The engine over HTTPS on a random port; its `statements` lists what reached it."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates["cert"], certificates["key"])
    statements: list[dict] = []
    connection = chdb.connect(chdb_path)
    with EngineHTTP(connection, {"admin": PASSWORD}, tls=context, record=statements.append) as running:
        running.statements = statements  # type: ignore[attr-defined]
        yield running


def url(server: EngineHTTP, scheme: str = "https") -> str:
    return f"{scheme}://admin:{PASSWORD}@localhost:{server.address.rpartition(':')[2]}"


@pytest.mark.parametrize("ca", [None, "other_ca"], ids=["no CA file", "another CA"])
def test_without_the_servers_ca_the_service_refuses_it_and_says_what_to_do(server, certificates, ca, caplog):
    ca_file = str(certificates[ca]) if ca else ""
    sink = Sink(url(server), "default", create_schema=False, ca_file=ca_file)
    with caplog.at_level(logging.WARNING, logger="ingest.storage.sink"):
        sink.open()
        assert sink.ping() is False
    said = [r.getMessage() for r in caplog.records if r.name == "ingest.storage.sink"]
    assert said and all("TLS certificate verify failed (unable to get local issuer certificate)" in line
                        and "set CLICKHOUSE_CA_FILE to that CA's PEM file" in line for line in said), said
    # An insert fails as a fault only an operator can fix, named in /health and the metrics.
    with pytest.raises(Exception) as refused:
        sink.insert([("page_view", 0, "s", None, "desktop", "DE", "{}")], "t")
    assert failure_kind(refused.value) == "certificate" and "certificate" in NEEDS_OPERATOR
    assert "CLICKHOUSE_CA_FILE" in FAILURE_HINTS["certificate"]
    sink.close()
    assert server.statements == []  # nothing was sent to a server it could not trust


def test_with_the_servers_ca_the_service_connects_over_tls(server, certificates):
    settings = Settings(clickhouse_url=url(server), clickhouse_database="default",
                        clickhouse_ca_file=str(certificates["ca"]))
    sink = Sink(settings.clickhouse_url, settings.clickhouse_database, create_schema=False,
                ca_file=settings.clickhouse_ca_file)
    try:
        sink.open()
        assert sink.ping() is True
        assert sink.rows("SELECT 41 + 1") == [(42,)]
    finally:
        sink.close()
    assert {s["user"] for s in server.statements} == {"admin"}
    assert server.statements[-1]["sql"].startswith("SELECT 41 + 1")


def test_the_url_scheme_decides_tls_on_any_port(server, certificates):
    """http:// to the TLS port is refused by the server (no TLS spoken); clickhouse-connect alone would speak plain
    HTTP to an https:// URL on a port other than 443 or 8443."""
    assert server.address.rpartition(":")[2] not in ("443", "8443")
    sink = Sink(url(server, "http"), "default", create_schema=False)
    assert sink.ping() is False
    sink.close()


def schema_apply(server: EngineHTTP, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", "schema", "apply", "--url", url(server), "--no-users",
                           "--database", "tls_schema", *options], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_schema_apply_needs_the_ca_file_and_then_runs(server, certificates):
    refused = schema_apply(server)
    assert refused.returncode == 1
    assert "TLS certificate verify failed (unable to get local issuer certificate)" in refused.stderr
    assert PASSWORD not in refused.stderr
    assert server.statements == []
    done = schema_apply(server, "--ca-file", str(certificates["ca"]))
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE IF NOT EXISTS events" in done.stdout
    assert any(s["sql"].startswith("CREATE TABLE IF NOT EXISTS events") for s in server.statements)
    server.connection.query("DROP DATABASE IF EXISTS tls_schema SYNC")


def test_the_terminal_dashboard_reads_an_https_server_with_the_ca_file(server, certificates):
    """`python -m ingest panels` takes the same URL and CA file as the service: over TLS on any port."""
    assert schema_apply(server, "--ca-file", str(certificates["ca"])).returncode == 0
    applied = len(server.statements)
    env = {**os.environ, "CLICKHOUSE_URL": url(server), "CLICKHOUSE_DATABASE": "tls_schema",
           "CLICKHOUSE_CA_FILE": str(certificates["ca"]), "INGEST_PORT": "9"}  # no service there: status only
    shown = subprocess.run([sys.executable, "-m", "ingest", "panels", "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    server.connection.query("DROP DATABASE IF EXISTS tls_schema SYNC")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    titles = {p["title"] for p in document["panels"]}
    assert "Signup steps" in titles and all(p["error"] is None for p in document["panels"]), document["panels"]
    assert any("windowFunnel" in s["sql"] for s in server.statements[applied:])  # the panels' SQL went over TLS
