-- Per-minute (and, for top features, per-hour) rollups of `events` for the product dashboard: a 24 h panel reads
-- ~1,440 rollup rows per key instead of every raw event. Each rollup is filled by an incremental materialized view,
-- i.e. on every INSERT INTO events (the view sees only the inserted block), so rows that existed before this file
-- was applied are NOT in the rollups: see docs/operations.md "Upgrading" (`python -m ingest rebuild-rollups`).
-- Same retention as `events` (rows go when their day is 90 days old) and the same monthly partitions, so a
-- partition of a rollup can be dropped alongside the raw one.
-- Minutes are DateTime in UTC (the events' zone). Distinct counts are uniqCombined states: exact (a hash set) up to
-- ~1,000 keys with precision 14 (~250 with 12), then HyperLogLog with 2^precision cells (14: ~0.8% error, 12 KiB;
-- 12: ~1.6%, 3 KiB). Exact uniqExact states would be far larger and slower to merge (see DESIGN).
-- The dashboard adds the raw rows of a range's partial first and last minute, so its answers equal the raw table's.
-- Every view runs as the user who created it (DEFINER = CURRENT_USER SQL SECURITY DEFINER): on a server that is
-- `admin`, which runs this file (`python -m ingest schema apply`, the stack's `schema` service), so an insert by
-- `ingest`, which may only INSERT into events, still fills the rollups. Without it ClickHouse 26.8 runs a view as the inserting user and refuses every insert by
-- `ingest` (it may not read events). tests/test_server_roles.py runs the stack's users on the real engine.

-- Events per clock minute [m, m + 60 s) and event name: error rate, signup funnel and alert.
CREATE TABLE IF NOT EXISTS events_per_minute
(
    minute     DateTime('UTC'),
    event_name LowCardinality(String),
    events     UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, event_name)
TTL toDate(minute) + INTERVAL 90 DAY
-- A retried insert into events carries its token through the views; the window makes this table
-- drop the repeat too, as events does (with deduplicate_blocks_in_dependent_materialized_views).
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_per_minute_mv TO events_per_minute
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT toStartOfMinute(timestamp) AS minute, event_name, count() AS events
FROM events
GROUP BY minute, event_name;

-- Distinct sessions in the 5 minutes (window_end - 5 min, window_end], for every whole minute window_end. Each
-- event is written to the 5 windows that contain it (window ends = the minute boundary at or after the event and
-- the 4 after that), so one active-users point is one state: no merging of 5 states per point at query time.
-- Windows are open at the start and closed at the end, as the big number's "(end - 5 min, end]". Precision 12:
-- 1,440 points of a 24 h sparkline merge in ~50 ms at 15,000 sessions per window (precision 14: ~4x slower).
CREATE TABLE IF NOT EXISTS active_sessions_5m
(
    window_end DateTime('UTC'),
    sessions   AggregateFunction(uniqCombined(12), String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_end)
ORDER BY window_end
TTL toDate(window_end) + INTERVAL 90 DAY
-- A retried insert into events carries its token through the views; the window makes this table
-- drop the repeat too, as events does (with deduplicate_blocks_in_dependent_materialized_views).
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS active_sessions_5m_mv TO active_sessions_5m
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT window_end, uniqCombinedState(12)(session_id) AS sessions
FROM events
-- The first minute boundary at or after the event (an event exactly on a boundary ends its own window).
ARRAY JOIN arrayMap(k -> toDateTime(intDiv(toUnixTimestamp64Milli(timestamp) + 59999, 60000) * 60 + k * 60, 'UTC'),
                    range(5)) AS window_end
GROUP BY window_end;

-- Users of each feature per clock minute [m, m + 60 s). The user key is the panel's: a signed-in user by user_id,
-- an anonymous visitor once per session (the isNull flag keeps a session id from matching a user id).
CREATE TABLE IF NOT EXISTS feature_users_per_minute
(
    minute  DateTime('UTC'),
    feature String,
    users   AggregateFunction(uniqCombined(14), UInt8, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, feature)
TTL toDate(minute) + INTERVAL 90 DAY
-- A retried insert into events carries its token through the views; the window makes this table
-- drop the repeat too, as events does (with deduplicate_blocks_in_dependent_materialized_views).
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS feature_users_per_minute_mv TO feature_users_per_minute
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT toStartOfMinute(timestamp) AS minute,
       JSONExtractString(properties, 'feature') AS feature,
       uniqCombinedState(14)(isNull(user_id), ifNull(user_id, session_id)) AS users
FROM events
WHERE event_name = 'feature_used'
GROUP BY minute, feature;

-- The same per clock hour [h, h + 1 h), UTC: a 24 h top-features query merges ~24 states per feature (plus the
-- minutes at the range's ends from the table above) instead of ~1,440.
CREATE TABLE IF NOT EXISTS feature_users_per_hour
(
    hour    DateTime('UTC'),
    feature String,
    users   AggregateFunction(uniqCombined(14), UInt8, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, feature)
TTL toDate(hour) + INTERVAL 90 DAY
-- A retried insert into events carries its token through the views; the window makes this table
-- drop the repeat too, as events does (with deduplicate_blocks_in_dependent_materialized_views).
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS feature_users_per_hour_mv TO feature_users_per_hour
    DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT toStartOfHour(timestamp) AS hour,
       JSONExtractString(properties, 'feature') AS feature,
       uniqCombinedState(14)(isNull(user_id), ifNull(user_id, session_id)) AS users
FROM events
WHERE event_name = 'feature_used'
GROUP BY hour, feature;
