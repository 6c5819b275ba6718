-- The raw event table: one row per accepted event, exactly as the ingest service validated it.
-- Unqualified names: the runner picks the database (CLICKHOUSE_DATABASE / CLICKHOUSE_DB).
CREATE TABLE IF NOT EXISTS events
(
    event_name   LowCardinality(String),
    -- Stored in UTC whatever offset the client sent; pinned so a server's own zone never leaks in.
    timestamp    DateTime64(3, 'UTC'),
    session_id   String,
    -- NULL for anonymous visitors.
    user_id      Nullable(String),
    device_type  LowCardinality(String),
    country_code LowCardinality(FixedString(2)),
    -- JSON object as text; the schema bounds its size.
    properties   String CODEC(ZSTD(3)),
    date         Date DEFAULT toDate(timestamp)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(date)
ORDER BY (event_name, timestamp)
TTL date + INTERVAL 90 DAY
-- A retried batch carries the same insert_deduplication_token; the window makes the server drop the repeat.
SETTINGS non_replicated_deduplication_window = 1000;
