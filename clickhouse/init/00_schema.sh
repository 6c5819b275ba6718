#!/bin/bash
# Run by the ClickHouse image at every start of its container (/docker-entrypoint-initdb.d, and
# CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS=1 in docker-compose.yml: without it only while the data volume is
# empty), against the image's temporary init server, which listens on 127.0.0.1 only. The
# numbered DDL in sql/ is written without a database name so the same files serve the embedded
# engine, where the ingest service applies them to CLICKHOUSE_DATABASE; here they go into
# $CLICKHOUSE_DB.
#
# Who runs what (docker-compose.yml): CLICKHOUSE_USER=admin and CLICKHOUSE_PASSWORD=the admin
# password, because the stack removes the passwordless `default` user (users.d/no-default-user.xml);
# CLICKHOUSE_DB=CLICKHOUSE_DATABASE, the same name the grants in users.d are built from.
#
# The image executes this file when it is executable and sources it otherwise (e.g. a checkout
# that lost the mode bit): the body runs in a subshell so that neither `exit` nor `set -u` leaks
# into the image's entrypoint, and a failure still stops the entrypoint (it runs with `set -e`).
(
    set -euo pipefail
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    db="${CLICKHOUSE_DB:?CLICKHOUSE_DB must name the database to create}"
    # Same rule as the ingest service's CLICKHOUSE_DATABASE: the name is quoted into DDL and grants.
    if [[ ! "$db" =~ ^[A-Za-z_][A-Za-z0-9_]{0,63}$ ]]; then
        echo "${BASH_SOURCE[0]}: CLICKHOUSE_DB='$db': use letters, digits and _" >&2
        exit 1
    fi
    client=(clickhouse client --host 127.0.0.1
            --user "${CLICKHOUSE_USER:?CLICKHOUSE_USER must name the admin user}"
            --password "${CLICKHOUSE_PASSWORD:?CLICKHOUSE_PASSWORD must be the admin password}")

    shopt -s nullglob
    files=("$here"/sql/*.sql)
    if [ ${#files[@]} -eq 0 ]; then
        echo "${BASH_SOURCE[0]}: no DDL in $here/sql" >&2
        exit 1
    fi

    "${client[@]}" --query "CREATE DATABASE IF NOT EXISTS \`${db}\`"
    for f in "${files[@]}"; do   # the glob sorts, so 001_, 002_, ... run in order
        echo "${BASH_SOURCE[0]}: applying $f to ${db}"
        "${client[@]}" --database "${db}" --multiquery < "$f"
    done
)
