-- Exactly once after a crash (docs/operations.md, "How delivery works"). The engine records an insert's
-- deduplication token before its part is in place and trusts the record at the next start, so after a crash the
-- ingest service does not ask the engine whether a batch is a repeat: it looks for the batch's rows.

-- Which insert stored each row: that insert's deduplication token, which names the service's write-ahead log, the
-- batch and the batch's rows. One value per batch, so it costs ~0.5% of the table on disk (docs/performance.md); a
-- query for one batch reads a few granules (its names and time range are in the primary key).
ALTER TABLE events ADD COLUMN IF NOT EXISTS insert_token LowCardinality(String)
    DEFAULT getSetting('insert_deduplication_token');

-- The rows one insert stored, by its token: how a repair feeds a rollup the rows its view missed. It runs as its
-- definer (`admin` on a server), so the ingest user may read these rows of the batches it names, and no others.
CREATE VIEW IF NOT EXISTS inserted_events DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT * FROM events WHERE insert_token = {token:String};

-- An insert returns only once its parts are on disk (fsynced, their directories too): the service deletes a batch
-- from its write-ahead log when the insert returns, so a power cut must not take the parts with it. Every table an
-- insert writes: the events and each rollup its views fill. Cost: docs/performance.md ("Exactly once and durable parts").
ALTER TABLE events MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE events_per_minute MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE active_sessions_5m MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE feature_users_per_minute MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE feature_users_per_hour MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE events_per_minute_by_segment MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE active_sessions_5m_by_segment MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE feature_users_per_minute_by_segment MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE feature_users_per_hour_by_segment MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
ALTER TABLE segments_per_day MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1;
