-- Top features on the raw events table: the dashboard's SQL before the rollups (reference for tests and bench).
SELECT
    JSONExtractString(properties, 'feature') AS feature,
    uniqExact(isNull(user_id), ifNull(user_id, session_id)) AS users
FROM events
WHERE event_name = 'feature_used' AND $__timeFilter(timestamp)
GROUP BY feature
ORDER BY users DESC, feature ASC
LIMIT 10
