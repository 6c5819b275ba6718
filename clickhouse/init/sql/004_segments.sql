-- Segmented rollups: the dashboard's per-minute (and per-hour) rollups of 002_rollups.sql once more, per device type
-- and country code, for the dashboard variables device_type and country_code (docs/dashboards.md). A filtered panel
-- reads these; "All" keeps reading the rollups of 002, which hold one row (one state) per minute where these hold one
-- per segment that occurs: a 24 h query for everyone would merge that many times more states (docs/performance.md).
-- Each view groups by three grouping sets: (device type, country), (device type) and (country). The last two are
-- totals over every country and over every device type, stored with country_code '' and device_type '' (the
-- defaults GROUPING SETS fills in; the event schema never lets a real event have either empty), so a filter on one
-- variable reads one state per point and chosen value, not one per value of the other variable.
-- Filled by incremental materialized views like 002's, with the same rules: rows from before this file was applied
-- need `python -m ingest rebuild-rollups` (docs/operations.md "Upgrading"); the same retention, monthly partitions
-- and deduplication window (a retried insert into events carries its token through the views).
-- Ordered by segment first: a filter reads its segments' rows of the range only (ordered by time first, a 24 h
-- filtered Active users query took 3x longer, docs/performance.md). The tables of sketches (uniqCombined states,
-- ~3 KB each) have index granules of 256 rows, not 8,192: ClickHouse reads and decodes whole granules, so with the
-- default a filter on four segments decoded ~16,000 states to use 240 (1 h Active users: 82 ms, 36 ms with 256).
-- Every view runs as the user who created it (DEFINER = CURRENT_USER SQL SECURITY DEFINER), `admin` on a server,
-- so an insert by `ingest`, which may only INSERT into events, fills these tables too (see 002_rollups.sql).

-- Events per clock minute [m, m + 60 s), event name and segment: error rate and signup funnel when filtered.
CREATE TABLE IF NOT EXISTS events_per_minute_by_segment
(
    device_type  LowCardinality(String),
    country_code LowCardinality(FixedString(2)),
    minute       DateTime('UTC'),
    event_name   LowCardinality(String),
    events       UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (device_type, country_code, minute, event_name)
TTL toDate(minute) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_per_minute_by_segment_mv TO events_per_minute_by_segment
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT device_type, country_code, toStartOfMinute(timestamp) AS minute, event_name, count() AS events
FROM events
GROUP BY GROUPING SETS ((device_type, country_code, minute, event_name), (device_type, minute, event_name),
                        (country_code, minute, event_name));

-- Distinct sessions in (window_end - 5 min, window_end] per segment, as active_sessions_5m (002) per segment.
CREATE TABLE IF NOT EXISTS active_sessions_5m_by_segment
(
    device_type  LowCardinality(String),
    country_code LowCardinality(FixedString(2)),
    window_end   DateTime('UTC'),
    sessions     AggregateFunction(uniqCombined(12), String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_end)
ORDER BY (device_type, country_code, window_end)
TTL toDate(window_end) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS active_sessions_5m_by_segment_mv TO active_sessions_5m_by_segment
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT device_type, country_code, window_end, uniqCombinedState(12)(session_id) AS sessions
FROM events
ARRAY JOIN arrayMap(k -> toDateTime(intDiv(toUnixTimestamp64Milli(timestamp) + 59999, 60000) * 60 + k * 60, 'UTC'),
                    range(5)) AS window_end
GROUP BY GROUPING SETS ((device_type, country_code, window_end), (device_type, window_end), (country_code, window_end));

-- Users of each feature per clock minute and segment (the user key as in feature_users_per_minute, 002).
CREATE TABLE IF NOT EXISTS feature_users_per_minute_by_segment
(
    device_type  LowCardinality(String),
    country_code LowCardinality(FixedString(2)),
    minute       DateTime('UTC'),
    feature      String,
    users        AggregateFunction(uniqCombined(14), UInt8, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (device_type, country_code, minute, feature)
TTL toDate(minute) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS feature_users_per_minute_by_segment_mv TO feature_users_per_minute_by_segment
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT device_type, country_code, toStartOfMinute(timestamp) AS minute,
       JSONExtractString(properties, 'feature') AS feature,
       uniqCombinedState(14)(isNull(user_id), ifNull(user_id, session_id)) AS users
FROM events
WHERE event_name = 'feature_used'
GROUP BY GROUPING SETS ((device_type, country_code, minute, feature), (device_type, minute, feature),
                        (country_code, minute, feature));

-- The same per clock hour and segment.
CREATE TABLE IF NOT EXISTS feature_users_per_hour_by_segment
(
    device_type  LowCardinality(String),
    country_code LowCardinality(FixedString(2)),
    hour         DateTime('UTC'),
    feature      String,
    users        AggregateFunction(uniqCombined(14), UInt8, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (device_type, country_code, hour, feature)
TTL toDate(hour) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000, index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS feature_users_per_hour_by_segment_mv TO feature_users_per_hour_by_segment
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT device_type, country_code, toStartOfHour(timestamp) AS hour,
       JSONExtractString(properties, 'feature') AS feature,
       uniqCombinedState(14)(isNull(user_id), ifNull(user_id, session_id)) AS users
FROM events
WHERE event_name = 'feature_used'
GROUP BY GROUPING SETS ((device_type, country_code, hour, feature), (device_type, hour, feature),
                        (country_code, hour, feature));

-- Events per UTC day and segment: the values the dashboard variables offer (those that occur in the 90 days kept),
-- read from a few hundred rows per day instead of a scan of `events`.
CREATE TABLE IF NOT EXISTS segments_per_day
(
    day          Date,
    device_type  LowCardinality(String),
    country_code LowCardinality(FixedString(2)),
    events       UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, device_type, country_code)
TTL day + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS segments_per_day_mv TO segments_per_day
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT toDate(timestamp) AS day, device_type, country_code, count() AS events
FROM events
GROUP BY day, device_type, country_code;
