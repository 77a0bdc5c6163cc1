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

-- The days analytics_prefix_intraday holds, and what each was built from: a rebuild redoes a
-- day only when its hourly rows changed since (docs/decisions/026-intraday-totals.md).
CREATE TABLE IF NOT EXISTS analytics_prefix_intraday_days (
    day     date PRIMARY KEY,
    upto    timestamptz NOT NULL,  -- built from the day's hourly rows before this
    n_rows  bigint NOT NULL        -- how many there were
);

-- NULL: the totals were built before this migration, without the intraday ones (the API then
-- does not use them for merchants until the next rebuild). Else the rows and days the last
-- rebuild (re)wrote.
ALTER TABLE analytics_prefix_state ADD COLUMN IF NOT EXISTS intraday_rows bigint;
ALTER TABLE analytics_prefix_state ADD COLUMN IF NOT EXISTS intraday_days integer;

-- The data's event-time watermark: the end of the newest minute (else hour) bucket counted,
-- never ahead of the clock (NULL: no data). A function, so that a session plans its probes of
-- the hourly partitions once (PL/pgSQL keeps the plan), not in every statement that asks.
CREATE OR REPLACE FUNCTION analytics_data_as_of() RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    newest timestamptz := coalesce((SELECT max(minute) FROM txn_minute_agg) + interval '1 minute',
                                   (SELECT max(hour) FROM txn_hourly_agg) + interval '1 hour');
BEGIN
    RETURN CASE WHEN newest IS NOT NULL THEN least(newest, now()) END;  -- least() skips a NULL
END $$;

-- 070's builder keeps building the merchant-folded hourly and the daily totals; the function
-- of the same name now runs it, then brings the intraday totals up to date in the same
-- transaction.
ALTER FUNCTION analytics_rebuild_prefix_totals(char, interval, timestamptz)
    RENAME TO analytics_rebuild_prefix_totals_070;

-- A day is rebuilt when it is new, its hours reach further, its count of hourly rows changed
-- (a row deleted), or a row of it was written since the last build began, less one hour: a
-- writer (the consumer's batch, a backfill's day) sets updated_at to its transaction's start
-- and is assumed to commit within the hour. Everything is rebuilt when the reporting currency
-- or the FX rates changed; DELETE FROM analytics_prefix_intraday_days forces it too (after a
-- hand edit of hourly rows that left updated_at as it was).
CREATE OR REPLACE FUNCTION analytics_rebuild_prefix_totals(
    quote char(3), margin interval DEFAULT interval '1 hour', cutoff timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    started timestamptz := clock_timestamp();
    prev analytics_prefix_state%ROWTYPE;
    n bigint;
    held_to timestamptz;  -- the cutoff the 070 builder used
    fxv bigint;
    d date;
    d_start timestamptz;
    d_end timestamptz;
    n_held bigint;
    n_day bigint;
    n_intraday bigint := 0;
    n_days integer := 0;
BEGIN
    SELECT * INTO prev FROM analytics_prefix_state;  -- before the 070 builder replaces it
    n := analytics_rebuild_prefix_totals_070(quote, margin, cutoff);
    SELECT s.cutoff, s.fx_version INTO held_to, fxv FROM analytics_prefix_state s;
    -- 070 writes the daily totals cell by cell, so a day's cells lie on as many pages as there
    -- are cells; the API reads all cells of a day at once: rewrite them in day order (a copy of
    -- ~1/24 of the hourly rows; a day's probe then reads a few pages, not one per cell).
    CREATE TEMPORARY TABLE _prefix_d ON COMMIT DROP AS
        SELECT * FROM analytics_prefix_daily ORDER BY day, merchant_id, country, channel, currency;
    DELETE FROM analytics_prefix_daily;
    INSERT INTO analytics_prefix_daily SELECT * FROM _prefix_d;
    DROP TABLE _prefix_d;

    IF prev.intraday_rows IS NULL OR prev.quote <> quote OR prev.fx_version <> fxv THEN
        DELETE FROM analytics_prefix_intraday;
        DELETE FROM analytics_prefix_intraday_days;
    END IF;
    CREATE TEMPORARY TABLE _prefix_days ON COMMIT DROP AS
        SELECT (hour AT TIME ZONE 'UTC')::date AS day, count(*) AS n_rows,
               max(updated_at) AS written
        FROM txn_hourly_agg WHERE hour < held_to GROUP BY 1;
    -- days that have no hourly row before the cutoff any more
    DELETE FROM analytics_prefix_intraday x USING analytics_prefix_intraday_days b
    WHERE x.hour >= (b.day::timestamp AT TIME ZONE 'UTC')
      AND x.hour < ((b.day + 1)::timestamp AT TIME ZONE 'UTC')
      AND NOT EXISTS (SELECT 1 FROM _prefix_days h WHERE h.day = b.day);
    DELETE FROM analytics_prefix_intraday_days b
    WHERE NOT EXISTS (SELECT 1 FROM _prefix_days h WHERE h.day = b.day);

    -- One statement per day: each sorts a day's rows in memory, where one statement over the
    -- whole history sorts every hourly row twice on disk. _prefix_rates is the rate of each
    -- (currency, UTC day) the 070 builder left in this transaction.
    FOR d, n_held IN
        SELECT h.day, h.n_rows FROM _prefix_days h
        LEFT JOIN analytics_prefix_intraday_days b ON b.day = h.day
        WHERE b.day IS NULL OR b.n_rows <> h.n_rows
           OR b.upto <> least(((h.day + 1)::timestamp AT TIME ZONE 'UTC'), held_to)
           OR h.written >= prev.built_at - interval '1 hour'
        ORDER BY h.day
    LOOP
        d_start := d::timestamp AT TIME ZONE 'UTC';
        d_end := least(((d + 1)::timestamp AT TIME ZONE 'UTC'), held_to);
        DELETE FROM analytics_prefix_intraday
        WHERE hour >= d_start AND hour < ((d + 1)::timestamp AT TIME ZONE 'UTC');
        INSERT INTO analytics_prefix_intraday
        WITH r AS (
            SELECT hour, coalesce(merchant_id, '') AS merchant_id, country, channel, currency,
                   tx_count, succeeded_count, failed_count, pending_count, payment_count,
                   refund_count, payment_volume_local, refund_volume_local, fee_local
            FROM txn_hourly_agg WHERE hour >= d_start AND hour < d_end
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
            CROSS JOIN LATERAL generate_series(c.first, d_end - interval '1 hour',
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
        INSERT INTO analytics_prefix_intraday_days (day, upto, n_rows) VALUES (d, d_end, n_held)
        ON CONFLICT (day) DO UPDATE SET upto = excluded.upto, n_rows = excluded.n_rows;
        n_intraday := n_intraday + n_day;
        n_days := n_days + 1;
    END LOOP;
    DROP TABLE _prefix_days;
    ANALYZE analytics_prefix_intraday;
    UPDATE analytics_prefix_state SET intraday_rows = n_intraday, intraday_days = n_days,
        duration_ms = round(extract(epoch FROM clock_timestamp() - started) * 1000);
    RETURN n + n_intraday;
END $$;
