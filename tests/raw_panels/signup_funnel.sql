-- Signup funnel on the raw events table: the dashboard's SQL before the rollups (reference for tests and bench),
-- with the dashboard's device and country filters written directly on the raw rows.
SELECT
    toStartOfHour(timestamp) AS time,
    countIf(event_name = 'signup_started') AS started,
    countIf(event_name = 'signup_completed') AS completed,
    if(started = 0, NULL, 100 * completed / started) AS conversion_pct
FROM events
WHERE event_name IN ('signup_started', 'signup_completed') AND $__timeFilter(timestamp)
  AND $__conditionalAll(device_type IN ($device_type), $device_type)
  AND $__conditionalAll(country_code IN ($country_code), $country_code)
GROUP BY time
ORDER BY time WITH FILL FROM toStartOfHour($__fromTime) TO $__toTime + 1 STEP 3600
