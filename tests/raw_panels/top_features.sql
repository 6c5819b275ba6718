-- Top features on the raw events table: the dashboard's SQL before the rollups (reference for tests and bench),
-- with the dashboard's device and country filters written directly on the raw rows.
SELECT
    JSONExtractString(properties, 'feature') AS feature,
    uniqExact(isNull(user_id), ifNull(user_id, session_id)) AS users
FROM events
WHERE event_name = 'feature_used' AND $__timeFilter(timestamp)
  AND $__conditionalAll(device_type IN ($device_type), $device_type)
  AND $__conditionalAll(country_code IN ($country_code), $country_code)
GROUP BY feature
ORDER BY users DESC, feature ASC
LIMIT 10
