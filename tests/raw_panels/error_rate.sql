-- Error rate on the raw events table: the dashboard's SQL before the rollups (reference for tests and bench),
-- with the dashboard's device and country filters written directly on the raw rows.
SELECT
    toStartOfMinute(timestamp) AS time,
    toNullable(100 * countIf(event_name = 'error_occurred') / count()) AS error_rate_pct
FROM events
WHERE $__timeFilter(timestamp)
  AND $__conditionalAll(device_type IN ($device_type), $device_type)
  AND $__conditionalAll(country_code IN ($country_code), $country_code)
GROUP BY time
ORDER BY time WITH FILL FROM toStartOfMinute($__fromTime) TO $__toTime + 1 STEP 60
