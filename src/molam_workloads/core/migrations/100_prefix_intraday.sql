-- Within-day running totals per merchant, so that a range naming merchants costs a few index
-- probes per cell for its partial first and last days too, not up to 46 hourly rows per cell
-- (docs/decisions/026-intraday-totals.md).
--
-- analytics_prefix_intraday: per UTC hour and (merchant, country, channel, currency) cell, the
-- totals of that cell's hours of the same UTC day up to and including this one, converted as
-- in analytics_prefix_daily (the rate of the row's UTC day). Dense within a day: a cell has a
-- row for every hour from its first hour of the day to the day's last hour before the cutoff,
-- so a cell without a row at hour h had nothing that day up to h. With the daily totals, the
-- total of everything before hour boundary t is one or two probes:
--     P(t) = daily(day(t) - 1) + intraday(t - 1 hour)   (the second only when t is not 00:00)
-- and a range [a, b) is P(b) - P(a).
CREATE TABLE IF NOT EXISTS analytics_prefix_intraday (
    hour             timestamptz NOT NULL,
    merchant_id      text NOT NULL,  -- '' for rows without a merchant, as in the daily totals
    country          char(2) NOT NULL,
    channel          text NOT NULL,
    currency         char(3) NOT NULL,
    n_rows           bigint NOT NULL,
    tx_count         bigint NOT NULL,
    succeeded_count  bigint NOT NULL,
    failed_count     bigint NOT NULL,
    pending_count    bigint NOT NULL,
    payment_count    bigint NOT NULL,
    refund_count     bigint NOT NULL,
    gross            numeric,
    refunds          numeric,
    fees             numeric,
    PRIMARY KEY (hour, merchant_id, country, channel, currency)
);

-- NULL: the totals were built before this migration, without the intraday ones (the API then
-- does not use them for merchants until the next rebuild).
ALTER TABLE analytics_prefix_state ADD COLUMN IF NOT EXISTS intraday_rows bigint;

-- 070's builder keeps building the merchant-folded hourly and the daily totals; the function
-- of the same name now runs it, then adds the intraday totals in the same transaction.
ALTER FUNCTION analytics_rebuild_prefix_totals(char, interval, timestamptz)
    RENAME TO analytics_rebuild_prefix_totals_070;

CREATE OR REPLACE FUNCTION analytics_rebuild_prefix_totals(
    quote char(3), margin interval DEFAULT interval '1 hour', cutoff timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    started timestamptz := clock_timestamp();
    n bigint;
    upto timestamptz;
    first_day date;
    d date;
    n_day bigint;
    n_intraday bigint := 0;
BEGIN
    n := analytics_rebuild_prefix_totals_070(quote, margin, cutoff);
    SELECT s.cutoff INTO upto FROM analytics_prefix_state s;
    -- 070 writes the daily totals cell by cell, so a day's cells lie on as many pages as there
    -- are cells; the API reads all cells of a day at once: rewrite them in day order (a copy of
    -- ~1/24 of the hourly rows; a day's probe then reads a few pages, not one per cell).
    CREATE TEMPORARY TABLE _prefix_d ON COMMIT DROP AS
        SELECT * FROM analytics_prefix_daily ORDER BY day, merchant_id, country, channel, currency;
    DELETE FROM analytics_prefix_daily;
    INSERT INTO analytics_prefix_daily SELECT * FROM _prefix_d;
    DROP TABLE _prefix_d;
    DELETE FROM analytics_prefix_intraday;
    first_day := (SELECT (min(hour) AT TIME ZONE 'UTC')::date FROM txn_hourly_agg);
    -- One statement per UTC day: each sorts a day's rows in memory, where one statement over
    -- the whole history sorts every hourly row twice on disk. _prefix_rates is the rate of each
    -- (currency, UTC day) the 070 builder left in this transaction.
    FOR d IN SELECT g::date FROM generate_series(first_day, (upto AT TIME ZONE 'UTC')::date,
                                                 interval '1 day') g LOOP
        INSERT INTO analytics_prefix_intraday
        WITH r AS (
            SELECT hour, coalesce(merchant_id, '') AS merchant_id, country, channel, currency,
                   tx_count, succeeded_count, failed_count, pending_count, payment_count,
                   refund_count, payment_volume_local, refund_volume_local, fee_local
            FROM txn_hourly_agg
            WHERE hour >= (d::timestamp AT TIME ZONE 'UTC')
              AND hour < least(((d + 1)::timestamp AT TIME ZONE 'UTC'), upto)
        ), h AS (
            SELECT r.hour, r.merchant_id, r.country, r.channel, r.currency, 1 AS n_rows,
                   r.tx_count, r.succeeded_count, r.failed_count, r.pending_count,
                   r.payment_count, r.refund_count, r.payment_volume_local * x.rate AS gross,
                   r.refund_volume_local * x.rate AS refunds, r.fee_local * x.rate AS fees
            FROM r JOIN _prefix_rates x ON x.currency = r.currency AND x.day = d
            UNION ALL  -- a zero row for every hour after a cell's first one that has none
            SELECT t.hour, c.merchant_id, c.country, c.channel, c.currency,
                   0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL
            FROM (SELECT merchant_id, country, channel, currency, min(hour) AS first,
                         array_agg(hour) AS held
                  FROM r GROUP BY 1, 2, 3, 4) c
            CROSS JOIN LATERAL generate_series(
                c.first, least(((d + 1)::timestamp AT TIME ZONE 'UTC'), upto) - interval '1 hour',
                interval '1 hour') AS t(hour)
            WHERE t.hour <> ALL (c.held)
        )
        SELECT hour, merchant_id, country, channel, currency, sum(n_rows) OVER w,
               sum(tx_count) OVER w, sum(succeeded_count) OVER w, sum(failed_count) OVER w,
               sum(pending_count) OVER w, sum(payment_count) OVER w, sum(refund_count) OVER w,
               sum(gross) OVER w, sum(refunds) OVER w, sum(fees) OVER w
        FROM h
        WINDOW w AS (PARTITION BY merchant_id, country, channel, currency ORDER BY hour)
        ORDER BY 1, 2, 3, 4, 5;  -- an hour's cells on few pages: the API reads them together
        GET DIAGNOSTICS n_day = ROW_COUNT;
        n_intraday := n_intraday + n_day;
    END LOOP;
    ANALYZE analytics_prefix_intraday;
    UPDATE analytics_prefix_state SET intraday_rows = n_intraday,
        duration_ms = round(extract(epoch FROM clock_timestamp() - started) * 1000);
    RETURN n + n_intraday;
END $$;
