-- Error rate (%) over the whole window: error_occurred events / all events.
-- One point, stamped at the window's end; 0 when there were no events at all.
SELECT
    $__toTime AS time,
    if(count() = 0, 0, 100 * countIf(event_name = 'error_occurred') / count()) AS error_rate_pct
FROM events
WHERE $__timeFilter(timestamp)
