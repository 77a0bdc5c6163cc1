-- analytics_data_as_of (migration 100) gives the same answer, read in two steps: the minute
-- buckets first, the hourly partitions only when there is no minute bucket. As one statement,
-- coalesce() skipped the hourly subquery's run but not its start: PostgreSQL opened an index
-- scan on every hourly partition at each call, ~60 µs at 28 partitions, where the minute
-- table alone costs ~12 µs (docs/decisions/030-api-request-overhead.md).
CREATE OR REPLACE FUNCTION analytics_data_as_of() RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    newest timestamptz := (SELECT max(minute) FROM txn_minute_agg) + interval '1 minute';
BEGIN
    IF newest IS NULL THEN
        newest := (SELECT max(hour) FROM txn_hourly_agg) + interval '1 hour';
    END IF;
    RETURN CASE WHEN newest IS NOT NULL THEN least(newest, now()) END;  -- least() skips a NULL
END $$;
