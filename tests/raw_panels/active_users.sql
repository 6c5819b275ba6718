-- Active users on the raw events table (reference for tests and bench): the same points as the dashboard panel
-- (whole minutes in the range, every 5 minutes past 6 hours, plus the range's end), each the distinct sessions in
-- the 5 minutes ending there.
-- Per-minute uniqCombined states merged over each point's 5 minutes, as the pre-rollup panel did; the dashboard's
-- device and country filters written directly on the raw rows.
WITH
    if(toUnixTimestamp($__toTime) - toUnixTimestamp($__fromTime) > 6 * 3600, 300, 60) AS step,
    toDateTime(intDiv(toUnixTimestamp($__fromTime) + step - 1, step) * step, 'UTC') AS first_point,
    per_minute AS (
        -- Minute m holds (m - 1 min, m]: a window (p - 5 min, p] is the 5 minutes ending at p.
        SELECT toDateTime(intDiv(toUnixTimestamp64Milli(timestamp) + 59999, 60000) * 60, 'UTC') AS minute_end,
               uniqCombinedState(session_id) AS sessions
        FROM events
        WHERE timestamp > toDateTime64(first_point - INTERVAL 5 MINUTE, 3) AND timestamp < toDateTime64($__toTime, 3)
          AND $__conditionalAll(device_type IN ($device_type), $device_type)
          AND $__conditionalAll(country_code IN ($country_code), $country_code)
        GROUP BY minute_end
    )
SELECT time, active_sessions
FROM (
    SELECT point AS time, uniqCombinedMerge(sessions) AS active_sessions
    FROM per_minute
    ARRAY JOIN arrayFilter(p -> p >= first_point AND p < $__toTime AND toUnixTimestamp(p) % step = 0,
                           arrayMap(k -> minute_end + k * 60, range(5))) AS point
    GROUP BY point
    UNION ALL
    SELECT toDateTime($__toTime, 'UTC') AS time, uniqExact(session_id) AS active_sessions
    FROM events
    WHERE timestamp > toDateTime64($__toTime - INTERVAL 5 MINUTE, 3) AND timestamp <= $__toTime
      AND $__conditionalAll(device_type IN ($device_type), $device_type)
      AND $__conditionalAll(country_code IN ($country_code), $country_code)
)
ORDER BY time WITH FILL FROM least(first_point, $__toTime) TO $__toTime STEP step
