-- Running totals (prefix sums) of every KPI sum, so that a range of any length costs a few index
-- probes per group: the sums over (a, b] are the running total at b minus the one at a.
--
-- analytics_prefix_hourly: per hour and (country, channel, currency), merchants folded, the
-- totals of every hour up to and including that one. Answers the platform and any filter or
-- breakdown by country, channel or currency, and day buckets in any time zone (a local day is a
-- run of whole UTC hours), partial days included.
-- analytics_prefix_daily: per UTC day and (merchant, country, channel, currency), the totals of
-- every day up to and including that one. Answers whatever names merchants (a merchant's token,
-- breakdowns by merchant, top merchants) for whole UTC days; their partial first and last days
-- come from the hourly rows (at most 46 hours per merchant). merchant_id '' is "no merchant"
-- (wallet-to-wallet transfers): a key column, so every join stays an equality.
--
-- Money is summed both in the local currency and converted to `quote` (the reporting currency)
-- at the rate of each row's UTC day, as the API converts (fx_rate_ranges' meaning: the latest
-- rate on or before the day, else the first one; 1 for the quote itself). A currency with no
-- rate at all has NULL converted sums. The numeric products are exact, so a difference of two
-- running totals equals the sum of the converted rows between them.
--
-- Both tables are dense: every cell has a row for every hour (day) from its first one to the
-- last before `cutoff`, so the total at t is one probe at least(t, last). They hold the hourly
-- rows that existed when analytics_rebuild_prefix_totals() ran, for hours before its cutoff;
-- the API reads later hours from txn_hourly_agg, and uses the totals only while their quote and
-- FX rates (analytics_fx_version) are the current ones.
CREATE TABLE IF NOT EXISTS analytics_prefix_hourly (
    hour             timestamptz NOT NULL,
    country          char(2) NOT NULL,
    channel          text NOT NULL,
    currency         char(3) NOT NULL,
    n_rows           bigint NOT NULL,  -- hourly rows: a group exists where this grew
    tx_count         bigint NOT NULL,
    succeeded_count  bigint NOT NULL,
    failed_count     bigint NOT NULL,
    pending_count    bigint NOT NULL,
    payment_count    bigint NOT NULL,
    refund_count     bigint NOT NULL,
    gross            numeric,  -- converted payment volume; NULL: a currency without any rate
    refunds          numeric,  -- converted refund volume
    fees             numeric,  -- converted fees
    PRIMARY KEY (hour, country, channel, currency)
);

CREATE TABLE IF NOT EXISTS analytics_prefix_daily (
    day              date NOT NULL,
    merchant_id      text NOT NULL,  -- '' for rows without a merchant
    country          char(2) NOT NULL,
    channel          text NOT NULL,
    currency         char(3) NOT NULL,
    n_rows           bigint NOT NULL,  -- hourly rows: a group exists where this grew
    tx_count         bigint NOT NULL,
    succeeded_count  bigint NOT NULL,
    failed_count     bigint NOT NULL,
    pending_count    bigint NOT NULL,
    payment_count    bigint NOT NULL,
    refund_count     bigint NOT NULL,
    gross            numeric,
    refunds          numeric,
    fees             numeric,
    PRIMARY KEY (day, merchant_id, country, channel, currency)
);

-- Bumped by every change to fx_rates: totals converted with older rates are not used.
CREATE TABLE IF NOT EXISTS analytics_fx_version (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    version  bigint NOT NULL
);
INSERT INTO analytics_fx_version (id, version) VALUES (true, 0) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION analytics_bump_fx_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE analytics_fx_version SET version = version + 1;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS analytics_fx_version_bump ON fx_rates;
CREATE TRIGGER analytics_fx_version_bump
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fx_rates
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_bump_fx_version();

-- What the totals hold: hours before `cutoff`, converted to `quote` with FX rates `fx_version`.
CREATE TABLE IF NOT EXISTS analytics_prefix_state (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    quote        char(3) NOT NULL,
    cutoff       timestamptz NOT NULL,  -- whole hours: [.., cutoff) is held
    fx_version   bigint NOT NULL,
    built_at     timestamptz NOT NULL,
    duration_ms  integer NOT NULL,
    hourly_rows  bigint NOT NULL,
    daily_rows   bigint NOT NULL
);

-- Rebuild both tables from txn_hourly_agg for the hours before `cutoff` (default: the last
-- whole hour that ended `margin` before now, so events up to `margin` late are in the hourly
-- rows it reads). `molam-analytics refresh-views` calls it in its own transaction.
CREATE OR REPLACE FUNCTION analytics_rebuild_prefix_totals(
    quote char(3), margin interval DEFAULT interval '1 hour', cutoff timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET jit = off  -- compiling the build costs more than running it
AS $$
DECLARE
    started timestamptz := clock_timestamp();
    upto timestamptz := date_trunc('hour', coalesce(cutoff, now() - margin), 'UTC');
    last_day date := (upto AT TIME ZONE 'UTC')::date;  -- days before it ended by `upto`
    fxv bigint;
    n_hourly bigint;
    n_daily bigint;
BEGIN
    -- One builder at a time (refresh-views runs from a CronJob; a manual run may overlap).
    PERFORM pg_advisory_xact_lock(hashtext('molam.prefix_totals'));
    SELECT version INTO fxv FROM analytics_fx_version;
    IF to_regclass('pg_temp._prefix_h') IS NOT NULL THEN  -- a second build in one transaction
        DROP TABLE _prefix_h, _prefix_rates;
    END IF;
    DELETE FROM analytics_prefix_hourly;
    DELETE FROM analytics_prefix_daily;

    -- The hours of the cube in local currency, then the rate of each (currency, UTC day).
    CREATE TEMPORARY TABLE _prefix_h ON COMMIT DROP AS
    SELECT hour, country, channel, currency, count(*) AS n_rows, sum(tx_count) AS tx_count,
           sum(succeeded_count) AS succeeded_count, sum(failed_count) AS failed_count,
           sum(pending_count) AS pending_count, sum(payment_count) AS payment_count,
           sum(refund_count) AS refund_count, sum(payment_volume_local) AS payment_volume,
           sum(refund_volume_local) AS refund_volume, sum(fee_local) AS fee
    FROM txn_hourly_agg WHERE hour < upto
    GROUP BY 1, 2, 3, 4;
    CREATE TEMPORARY TABLE _prefix_rates ON COMMIT DROP AS
    SELECT c.currency, c.day, CASE WHEN c.currency = $1 THEN 1 ELSE coalesce(
        (SELECT x.rate FROM fx_rates x WHERE x.quote = $1 AND x.currency = c.currency
           AND x.day <= c.day ORDER BY x.day DESC LIMIT 1),
        (SELECT x.rate FROM fx_rates x WHERE x.quote = $1 AND x.currency = c.currency
           ORDER BY x.day LIMIT 1)) END AS rate
    FROM (SELECT DISTINCT currency, (hour AT TIME ZONE 'UTC')::date AS day
          FROM _prefix_h) c;

    -- Dense running totals: each cell's rows, plus a zero row for every hour (day) from its
    -- first to the last, summed per hour (day) and then cumulated. A union, not an outer join:
    -- one sort, whatever the planner guesses of generate_series.
    INSERT INTO analytics_prefix_hourly
    WITH h AS (
        SELECT r.hour, r.country, r.channel, r.currency, r.n_rows, r.tx_count,
               r.succeeded_count, r.failed_count, r.pending_count, r.payment_count,
               r.refund_count, r.payment_volume * x.rate AS gross,
               r.refund_volume * x.rate AS refunds, r.fee * x.rate AS fees
        FROM _prefix_h r
        JOIN _prefix_rates x
          ON x.currency = r.currency AND x.day = (r.hour AT TIME ZONE 'UTC')::date
        UNION ALL
        SELECT t.hour, c.country, c.channel, c.currency, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL
        FROM (SELECT country, channel, currency, min(hour) AS first
              FROM _prefix_h GROUP BY 1, 2, 3) c
        CROSS JOIN LATERAL generate_series(c.first, upto - interval '1 hour',
                                           interval '1 hour') AS t(hour)
    )
    SELECT hour, country, channel, currency, sum(sum(n_rows)) OVER w, sum(sum(tx_count)) OVER w,
           sum(sum(succeeded_count)) OVER w, sum(sum(failed_count)) OVER w,
           sum(sum(pending_count)) OVER w, sum(sum(payment_count)) OVER w,
           sum(sum(refund_count)) OVER w, sum(sum(gross)) OVER w, sum(sum(refunds)) OVER w,
           sum(sum(fees)) OVER w
    FROM h
    GROUP BY hour, country, channel, currency
    WINDOW w AS (PARTITION BY country, channel, currency ORDER BY hour);
    GET DIAGNOSTICS n_hourly = ROW_COUNT;

    INSERT INTO analytics_prefix_daily
    WITH r AS (
        SELECT (hour AT TIME ZONE 'UTC')::date AS day, coalesce(merchant_id, '') AS merchant_id,
               country, channel, currency, count(*) AS n_rows, sum(tx_count) AS tx_count,
               sum(succeeded_count) AS succeeded_count, sum(failed_count) AS failed_count,
               sum(pending_count) AS pending_count, sum(payment_count) AS payment_count,
               sum(refund_count) AS refund_count, sum(payment_volume_local) AS volume,
               sum(refund_volume_local) AS refund_volume, sum(fee_local) AS fee
        FROM txn_hourly_agg WHERE hour < (last_day::timestamp AT TIME ZONE 'UTC')
        GROUP BY 1, 2, 3, 4, 5
    ), d AS (
        SELECT r.day, r.merchant_id, r.country, r.channel, r.currency, r.n_rows, r.tx_count,
               r.succeeded_count, r.failed_count, r.pending_count, r.payment_count,
               r.refund_count, r.volume * x.rate AS gross, r.refund_volume * x.rate AS refunds,
               r.fee * x.rate AS fees
        FROM r JOIN _prefix_rates x ON x.currency = r.currency AND x.day = r.day
        UNION ALL
        SELECT t.day::date, c.merchant_id, c.country, c.channel, c.currency,
               0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL
        FROM (SELECT merchant_id, country, channel, currency, min(day) AS first
              FROM r GROUP BY 1, 2, 3, 4) c
        CROSS JOIN LATERAL generate_series(c.first, last_day - 1, interval '1 day') AS t(day)
    )
    SELECT day, merchant_id, country, channel, currency, sum(sum(n_rows)) OVER w,
           sum(sum(tx_count)) OVER w, sum(sum(succeeded_count)) OVER w,
           sum(sum(failed_count)) OVER w, sum(sum(pending_count)) OVER w,
           sum(sum(payment_count)) OVER w, sum(sum(refund_count)) OVER w,
           sum(sum(gross)) OVER w, sum(sum(refunds)) OVER w, sum(sum(fees)) OVER w
    FROM d
    GROUP BY day, merchant_id, country, channel, currency
    WINDOW w AS (PARTITION BY merchant_id, country, channel, currency ORDER BY day);
    GET DIAGNOSTICS n_daily = ROW_COUNT;

    ANALYZE analytics_prefix_hourly;
    ANALYZE analytics_prefix_daily;
    INSERT INTO analytics_prefix_state AS s
        (id, quote, cutoff, fx_version, built_at, duration_ms, hourly_rows, daily_rows)
    VALUES (true, $1, upto, fxv, now(),
            round(extract(epoch FROM clock_timestamp() - started) * 1000), n_hourly, n_daily)
    ON CONFLICT (id) DO UPDATE SET
        quote = excluded.quote, cutoff = excluded.cutoff, fx_version = excluded.fx_version,
        built_at = excluded.built_at, duration_ms = excluded.duration_ms,
        hourly_rows = excluded.hourly_rows, daily_rows = excluded.daily_rows;
    RETURN n_hourly + n_daily;
END $$;
