-- Repairs the rollup views of a volume initialised before 2026-11-28: they were created without a definer, so
-- ClickHouse 26.8 ran them as the inserting user and refused every insert by `ingest` (it may not read events).
-- The init runs at every start (CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS in docker-compose.yml), so restarting the
-- stack applies this; it changes nothing on views that already run as their definer (002_rollups.sql).
ALTER TABLE events_per_minute_mv MODIFY SQL SECURITY DEFINER DEFINER = CURRENT_USER;
ALTER TABLE active_sessions_5m_mv MODIFY SQL SECURITY DEFINER DEFINER = CURRENT_USER;
ALTER TABLE feature_users_per_minute_mv MODIFY SQL SECURITY DEFINER DEFINER = CURRENT_USER;
ALTER TABLE feature_users_per_hour_mv MODIFY SQL SECURITY DEFINER DEFINER = CURRENT_USER;
