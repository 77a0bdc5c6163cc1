-- Running totals per merchant and currency for the ranking of /v1/top-merchants: for every day
-- from a (merchant, currency)'s first day in mv_txn_daily_agg to the view's last merchant day,
-- the transactions and the positive and negative payment volume (signed per day, merchants'
-- countries and channels folded) of every day up to and including that one. The sums over whole
-- days [a, b) are then two rows per (merchant, currency): the one of day b - 1 minus that of
-- day a - 1 (both taken at the table's last day at most), instead of every day of the range.
--
-- Built from the view by analytics_rebuild_merchant_totals(), which records in
-- analytics_rollup_state ('merchant_totals') the refresh of the view it was built from; the API
-- uses the table only while that refresh is the view's current one (read in the same snapshot
-- as the view). `molam-analytics refresh-views` refreshes the view, records the refresh and
-- rebuilds this table in one transaction, so a reader sees all three at the same refresh; the
-- API rebuilds it in the background when it finds it behind (a refresh from psql).
CREATE TABLE IF NOT EXISTS analytics_merchant_totals (
    day          date NOT NULL,
    merchant_id  text NOT NULL,
    currency     char(3) NOT NULL,
    tx_count     bigint NOT NULL,   -- running totals through `day`
    pos_volume   numeric NOT NULL,  -- payment volume of the days whose volume was >= 0
    neg_volume   numeric NOT NULL,  -- payment volume of the days whose volume was < 0
    PRIMARY KEY (day, merchant_id, currency)
);

CREATE OR REPLACE FUNCTION analytics_rebuild_merchant_totals() RETURNS bigint
LANGUAGE plpgsql
SET jit = off  -- compiling the build costs more than running it
AS $$
DECLARE
    source timestamptz;
    started timestamptz := clock_timestamp();
    built bigint;
BEGIN
    -- One builder at a time (refresh-views and API replicas).
    PERFORM pg_advisory_xact_lock(hashtext('molam.merchant_totals'));
    SELECT refreshed_at INTO source
    FROM analytics_view_refreshes WHERE view_name = 'mv_txn_daily_agg';
    IF source IS NULL THEN
        RETURN 0;  -- never refreshed: nothing the API would use
    END IF;
    DELETE FROM analytics_merchant_totals;
    INSERT INTO analytics_merchant_totals
        (day, merchant_id, currency, tx_count, pos_volume, neg_volume)
    WITH v AS (
        SELECT merchant_id, currency, day, sum(tx_count) AS tx_count,
               sum(payment_volume_local) AS volume
        FROM mv_txn_daily_agg
        WHERE merchant_id IS NOT NULL
        GROUP BY merchant_id, currency, day
    ), p AS (
        SELECT merchant_id, currency, min(day) AS first FROM v GROUP BY merchant_id, currency
    ), last AS (
        SELECT max(day) AS day FROM v
    )
    SELECT d.day, p.merchant_id, p.currency,
           sum(coalesce(v.tx_count, 0)) OVER w,
           sum(CASE WHEN v.volume >= 0 THEN v.volume ELSE 0 END) OVER w,
           sum(CASE WHEN v.volume < 0 THEN v.volume ELSE 0 END) OVER w
    FROM p
    CROSS JOIN last
    CROSS JOIN LATERAL (SELECT g::date AS day
                        FROM generate_series(p.first, last.day, interval '1 day') g) d
    LEFT JOIN v ON v.merchant_id = p.merchant_id AND v.currency = p.currency AND v.day = d.day
    WINDOW w AS (PARTITION BY p.merchant_id, p.currency ORDER BY d.day);
    GET DIAGNOSTICS built = ROW_COUNT;
    -- Every row is new: fresh statistics for the planner (tens of ms for 45,000 rows).
    ANALYZE analytics_merchant_totals;
    INSERT INTO analytics_rollup_state (name, source_refreshed_at, built_at, duration_ms)
    VALUES ('merchant_totals', source, now(),
            round(extract(epoch FROM clock_timestamp() - started) * 1000))
    ON CONFLICT (name) DO UPDATE SET
        source_refreshed_at = excluded.source_refreshed_at,
        built_at = excluded.built_at,
        duration_ms = excluded.duration_ms;
    RETURN built;
END $$;
