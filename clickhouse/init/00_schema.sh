#!/bin/bash
# Run by the ClickHouse image on first boot (docker-entrypoint-initdb.d). The numbered DDL in sql/
# is written without a database name so the same files serve the embedded engine, where the ingest
# service applies them to CLICKHOUSE_DATABASE; here they go into $CLICKHOUSE_DB.
set -euo pipefail
db="${CLICKHOUSE_DB:-analytics}"
clickhouse client --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}" \
    --query "CREATE DATABASE IF NOT EXISTS \`${db}\`"
for f in /docker-entrypoint-initdb.d/sql/*.sql; do
    echo "$0: applying $f to ${db}"
    clickhouse client --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}" \
        --database "${db}" --multiquery < "$f"
done
