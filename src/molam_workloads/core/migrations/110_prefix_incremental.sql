-- The refresh of the running totals (migrations 070, 100) rewrites only what changed
-- (docs/decisions/027-incremental-prefix-totals.md): 070's builder rebuilt the daily and the
-- merchant-folded hourly totals from every hourly row at every refresh, the part of a refresh
-- that grew with the history.
--
-- A UTC day "changed" by the rule of migration 100 (analytics_prefix_changed_days, now the one
-- place of that rule). From the earliest changed day d0 (or the previous cutoff, if earlier)
-- the totals are cumulated again, for all cells at once:
--     total(t) = total held just before d0 + the sum of the amounts of each period up to t,
-- where a changed day's amounts come from its hourly rows (converted at the rate of that day,
-- as 070 converts) and an unchanged day's from the totals held (total(t) - total(t - 1)), so
-- no hourly row of an unchanged day is read. The numeric sums are exact, so the result is the
-- one a full build gives, row for row. A cell's rows start where its count of hourly rows
-- becomes positive: that drops the rows of a cell before its (new) first hourly row and the
-- cells that lost all of them, as 070's density rule has it.
--
-- Everything is built again (070's builder, then the within-day totals of every day) when
-- there is nothing to start from: no state, totals built before migration 100, another
-- reporting currency, other FX rates, an earlier cutoff than the one held, or
-- analytics_prefix_intraday_days emptied by hand.

-- The UTC days whose hourly rows before `held_to` may differ from those the totals were built
-- from: a day is new, its hours reach further, its count of hourly rows changed (a row
-- deleted), or a row of it was written at or after `since` (the last build's start less one
-- hour: a writer sets updated_at to its transaction's start and commits within the hour).
-- Days held that have no hourly row before `held_to` any more come with n_rows 0.
-- analytics_prefix_intraday_days records what each day was built from.
CREATE OR REPLACE FUNCTION analytics_prefix_changed_days(held_to timestamptz, since timestamptz)
RETURNS TABLE (day date, n_rows bigint)
LANGUAGE sql STABLE AS $$
    WITH h AS (
        SELECT (r.hour AT TIME ZONE 'UTC')::date AS day, count(*) AS n_rows,
               max(r.updated_at) AS written
        FROM txn_hourly_agg r WHERE r.hour < held_to GROUP BY 1
    )
    SELECT h.day, h.n_rows FROM h
    LEFT JOIN analytics_prefix_intraday_days b ON b.day = h.day
    WHERE b.day IS NULL OR b.n_rows <> h.n_rows
       OR b.upto <> least(((h.day + 1)::timestamp AT TIME ZONE 'UTC'), held_to)
       OR h.written >= since
    UNION ALL
    SELECT b.day, 0 FROM analytics_prefix_intraday_days b
    WHERE NOT EXISTS (SELECT 1 FROM h WHERE h.day = b.day)
$$;

-- The state's *_rows and intraday_days now count what this build (re)wrote: everything after
-- a full build, the rows from d0 on (and the changed days' within-day rows) after an
-- incremental one.
CREATE OR REPLACE FUNCTION analytics_rebuild_prefix_totals(
    quote char(3), margin interval DEFAULT interval '1 hour', cutoff timestamptz DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    started timestamptz := clock_timestamp();
    held_to timestamptz := date_trunc('hour', coalesce(cutoff, now() - margin), 'UTC');
    last_day date := (held_to AT TIME ZONE 'UTC')::date;  -- the daily totals end before it
    prev analytics_prefix_state%ROWTYPE;
    fxv bigint;
    rebuild_all boolean;
    since timestamptz;
    d0 date;
    from_hour timestamptz;  -- the hourly totals are rewritten from this hour on
    from_day date;          -- the daily totals from this day on
    d date;
    d_start timestamptz;
    d_end timestamptz;
    n_held bigint;
    n_day bigint;
    n_hourly bigint := 0;
    n_daily bigint := 0;
    n_intraday bigint := 0;
    n_days integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('molam.prefix_totals'));  -- as 070: one at a time
    SELECT * INTO prev FROM analytics_prefix_state;
    rebuild_all := NOT FOUND;
    SELECT version INTO fxv FROM analytics_fx_version;
    rebuild_all := rebuild_all OR prev.intraday_rows IS NULL OR prev.quote <> $1
        OR prev.fx_version <> fxv OR held_to < prev.cutoff
        OR NOT EXISTS (SELECT FROM analytics_prefix_intraday_days);
    DROP TABLE IF EXISTS pg_temp._prefix_h, pg_temp._prefix_rates, pg_temp._prefix_changed,
        pg_temp._prefix_c, pg_temp._prefix_new;  -- an earlier build in this transaction

    IF rebuild_all THEN
        PERFORM analytics_rebuild_prefix_totals_070($1, margin, cutoff);
        SELECT s.hourly_rows, s.daily_rows INTO n_hourly, n_daily FROM analytics_prefix_state s;
        -- 070 writes the daily totals cell by cell; the API reads all cells of a day at once:
        -- rewrite them in day order (a day's probe then reads a few pages, not one per cell).
        CREATE TEMPORARY TABLE _prefix_new ON COMMIT DROP AS
            SELECT * FROM analytics_prefix_daily
            ORDER BY day, merchant_id, country, channel, currency;
        DELETE FROM analytics_prefix_daily;
        INSERT INTO analytics_prefix_daily SELECT * FROM _prefix_new;
        DROP TABLE _prefix_new;
        DELETE FROM analytics_prefix_intraday;
        DELETE FROM analytics_prefix_intraday_days;  -- so every day is new below
    ELSE
        since := prev.built_at - interval '1 hour';
    END IF;
    CREATE TEMPORARY TABLE _prefix_changed ON COMMIT DROP AS
        SELECT * FROM analytics_prefix_changed_days(held_to, since);

    IF NOT rebuild_all THEN
        SELECT min(c.day) INTO d0 FROM _prefix_changed c;
        from_hour := least(d0::timestamp AT TIME ZONE 'UTC', prev.cutoff);  -- least skips NULL
        from_day := least(d0, (prev.cutoff AT TIME ZONE 'UTC')::date);
        -- The changed days' hourly rows, a day per statement (an index range each, whatever
        -- the planner guesses of a join), and the rate of each (currency, day) as 070 has it.
        CREATE TEMPORARY TABLE _prefix_c ON COMMIT DROP AS
            SELECT r.hour, (r.hour AT TIME ZONE 'UTC')::date AS day,
                   coalesce(r.merchant_id, '') AS merchant_id, r.country, r.channel, r.currency,
                   r.tx_count, r.succeeded_count, r.failed_count, r.pending_count,
                   r.payment_count, r.refund_count, r.payment_volume_local,
                   r.refund_volume_local, r.fee_local
            FROM txn_hourly_agg r WHERE false;
        FOR d IN SELECT c.day FROM _prefix_changed c WHERE c.n_rows > 0 ORDER BY 1 LOOP
            INSERT INTO _prefix_c
            SELECT r.hour, d, coalesce(r.merchant_id, ''), r.country, r.channel, r.currency,
                   r.tx_count, r.succeeded_count, r.failed_count, r.pending_count,
                   r.payment_count, r.refund_count, r.payment_volume_local,
                   r.refund_volume_local, r.fee_local
            FROM txn_hourly_agg r
            WHERE r.hour >= (d::timestamp AT TIME ZONE 'UTC')
              AND r.hour < least(((d + 1)::timestamp AT TIME ZONE 'UTC'), held_to);
        END LOOP;
        CREATE TEMPORARY TABLE _prefix_rates ON COMMIT DROP AS
        SELECT c.currency, c.day, CASE WHEN c.currency = $1 THEN 1 ELSE coalesce(
            (SELECT x.rate FROM fx_rates x WHERE x.quote = $1 AND x.currency = c.currency
               AND x.day <= c.day ORDER BY x.day DESC LIMIT 1),
            (SELECT x.rate FROM fx_rates x WHERE x.quote = $1 AND x.currency = c.currency
               ORDER BY x.day LIMIT 1)) END AS rate
        FROM (SELECT DISTINCT r.currency, r.day FROM _prefix_c r) c;

        IF from_hour < held_to THEN
            -- Per hour and cell: the amounts of unchanged hours from the totals held (the
            -- total just before from_hour counts at from_hour), those of changed days from
            -- their hourly rows, and zeros for every hour up to the cutoff; then cumulated.
            CREATE TEMPORARY TABLE _prefix_new ON COMMIT DROP AS
            WITH old AS (
                SELECT p.hour, p.country, p.channel, p.currency,
                       p.n_rows - coalesce(lag(p.n_rows) OVER w, 0) AS n_rows,
                       p.tx_count - coalesce(lag(p.tx_count) OVER w, 0) AS tx_count,
                       p.succeeded_count - coalesce(lag(p.succeeded_count) OVER w, 0)
                           AS succeeded_count,
                       p.failed_count - coalesce(lag(p.failed_count) OVER w, 0) AS failed_count,
                       p.pending_count - coalesce(lag(p.pending_count) OVER w, 0)
                           AS pending_count,
                       p.payment_count - coalesce(lag(p.payment_count) OVER w, 0)
                           AS payment_count,
                       p.refund_count - coalesce(lag(p.refund_count) OVER w, 0) AS refund_count,
                       CASE WHEN lag(p.hour) OVER w IS NULL THEN p.gross
                            ELSE p.gross - lag(p.gross) OVER w END AS gross,
                       CASE WHEN lag(p.hour) OVER w IS NULL THEN p.refunds
                            ELSE p.refunds - lag(p.refunds) OVER w END AS refunds,
                       CASE WHEN lag(p.hour) OVER w IS NULL THEN p.fees
                            ELSE p.fees - lag(p.fees) OVER w END AS fees
                FROM analytics_prefix_hourly p WHERE p.hour >= from_hour - interval '1 hour'
                WINDOW w AS (PARTITION BY p.country, p.channel, p.currency ORDER BY p.hour)
            ), a AS (
                SELECT greatest(o.hour, from_hour) AS hour, o.country, o.channel, o.currency,
                       o.n_rows, o.tx_count, o.succeeded_count, o.failed_count,
                       o.pending_count, o.payment_count, o.refund_count, o.gross, o.refunds,
                       o.fees
                FROM old o
                WHERE NOT EXISTS (SELECT 1 FROM _prefix_changed c
                                  WHERE c.day = (o.hour AT TIME ZONE 'UTC')::date)
                UNION ALL
                SELECT r.hour, r.country, r.channel, r.currency, count(*), sum(r.tx_count),
                       sum(r.succeeded_count), sum(r.failed_count), sum(r.pending_count),
                       sum(r.payment_count), sum(r.refund_count),
                       sum(r.payment_volume_local) * x.rate, sum(r.refund_volume_local) * x.rate,
                       sum(r.fee_local) * x.rate
                FROM _prefix_c r JOIN _prefix_rates x ON x.currency = r.currency AND x.day = r.day
                GROUP BY r.hour, r.country, r.channel, r.currency, x.rate
            ), z AS (
                SELECT * FROM a
                UNION ALL
                SELECT t.hour, c.country, c.channel, c.currency,
                       0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL
                FROM (SELECT a.country, a.channel, a.currency, min(a.hour) AS first
                      FROM a GROUP BY 1, 2, 3) c
                CROSS JOIN LATERAL generate_series(c.first, held_to - interval '1 hour',
                                                   interval '1 hour') AS t(hour)
            )
            SELECT * FROM (
                SELECT z.hour, z.country, z.channel, z.currency,
                       sum(sum(z.n_rows)) OVER w AS n_rows,
                       sum(sum(z.tx_count)) OVER w AS tx_count,
                       sum(sum(z.succeeded_count)) OVER w AS succeeded_count,
                       sum(sum(z.failed_count)) OVER w AS failed_count,
                       sum(sum(z.pending_count)) OVER w AS pending_count,
                       sum(sum(z.payment_count)) OVER w AS payment_count,
                       sum(sum(z.refund_count)) OVER w AS refund_count,
                       sum(sum(z.gross)) OVER w AS gross, sum(sum(z.refunds)) OVER w AS refunds,
                       sum(sum(z.fees)) OVER w AS fees
                FROM z
                GROUP BY z.hour, z.country, z.channel, z.currency
                WINDOW w AS (PARTITION BY z.country, z.channel, z.currency ORDER BY z.hour)
            ) t
            WHERE t.n_rows > 0;  -- a cell's rows start at its first hourly row
            DELETE FROM analytics_prefix_hourly WHERE hour >= from_hour;
            INSERT INTO analytics_prefix_hourly
                SELECT * FROM _prefix_new ORDER BY hour, country, channel, currency;
            GET DIAGNOSTICS n_hourly = ROW_COUNT;
            DROP TABLE _prefix_new;
        END IF;

        IF from_day < last_day THEN  -- the same per day and cell, whole days only
            CREATE TEMPORARY TABLE _prefix_new ON COMMIT DROP AS
            WITH old AS (
                SELECT p.day, p.merchant_id, p.country, p.channel, p.currency,
                       p.n_rows - coalesce(lag(p.n_rows) OVER w, 0) AS n_rows,
                       p.tx_count - coalesce(lag(p.tx_count) OVER w, 0) AS tx_count,
                       p.succeeded_count - coalesce(lag(p.succeeded_count) OVER w, 0)
                           AS succeeded_count,
                       p.failed_count - coalesce(lag(p.failed_count) OVER w, 0) AS failed_count,
                       p.pending_count - coalesce(lag(p.pending_count) OVER w, 0)
                           AS pending_count,
                       p.payment_count - coalesce(lag(p.payment_count) OVER w, 0)
                           AS payment_count,
                       p.refund_count - coalesce(lag(p.refund_count) OVER w, 0) AS refund_count,
                       CASE WHEN lag(p.day) OVER w IS NULL THEN p.gross
                            ELSE p.gross - lag(p.gross) OVER w END AS gross,
                       CASE WHEN lag(p.day) OVER w IS NULL THEN p.refunds
                            ELSE p.refunds - lag(p.refunds) OVER w END AS refunds,
                       CASE WHEN lag(p.day) OVER w IS NULL THEN p.fees
                            ELSE p.fees - lag(p.fees) OVER w END AS fees
                FROM analytics_prefix_daily p WHERE p.day >= from_day - 1
                WINDOW w AS (PARTITION BY p.merchant_id, p.country, p.channel, p.currency
                             ORDER BY p.day)
            ), a AS (
                SELECT greatest(o.day, from_day) AS day, o.merchant_id, o.country, o.channel,
                       o.currency, o.n_rows, o.tx_count, o.succeeded_count, o.failed_count,
                       o.pending_count, o.payment_count, o.refund_count, o.gross, o.refunds,
                       o.fees
                FROM old o
                WHERE NOT EXISTS (SELECT 1 FROM _prefix_changed c WHERE c.day = o.day)
                UNION ALL
                SELECT r.day, r.merchant_id, r.country, r.channel, r.currency, count(*),
                       sum(r.tx_count), sum(r.succeeded_count), sum(r.failed_count),
                       sum(r.pending_count), sum(r.payment_count), sum(r.refund_count),
                       sum(r.payment_volume_local) * x.rate, sum(r.refund_volume_local) * x.rate,
                       sum(r.fee_local) * x.rate
                FROM _prefix_c r JOIN _prefix_rates x ON x.currency = r.currency AND x.day = r.day
                WHERE r.day < last_day
                GROUP BY r.day, r.merchant_id, r.country, r.channel, r.currency, x.rate
            ), z AS (
                SELECT * FROM a
                UNION ALL
                SELECT t.day::date, c.merchant_id, c.country, c.channel, c.currency,
                       0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL
                FROM (SELECT a.merchant_id, a.country, a.channel, a.currency, min(a.day) AS first
                      FROM a GROUP BY 1, 2, 3, 4) c
                CROSS JOIN LATERAL generate_series(c.first, last_day - 1, interval '1 day')
                    AS t(day)
            )
            SELECT * FROM (
                SELECT z.day, z.merchant_id, z.country, z.channel, z.currency,
                       sum(sum(z.n_rows)) OVER w AS n_rows,
                       sum(sum(z.tx_count)) OVER w AS tx_count,
                       sum(sum(z.succeeded_count)) OVER w AS succeeded_count,
                       sum(sum(z.failed_count)) OVER w AS failed_count,
                       sum(sum(z.pending_count)) OVER w AS pending_count,
                       sum(sum(z.payment_count)) OVER w AS payment_count,
                       sum(sum(z.refund_count)) OVER w AS refund_count,
                       sum(sum(z.gross)) OVER w AS gross, sum(sum(z.refunds)) OVER w AS refunds,
                       sum(sum(z.fees)) OVER w AS fees
                FROM z
                GROUP BY z.day, z.merchant_id, z.country, z.channel, z.currency
                WINDOW w AS (PARTITION BY z.merchant_id, z.country, z.channel, z.currency
                             ORDER BY z.day)
            ) t
            WHERE t.n_rows > 0;
            DELETE FROM analytics_prefix_daily WHERE day >= from_day;
            INSERT INTO analytics_prefix_daily  -- in day order, as the full build leaves it
                SELECT * FROM _prefix_new ORDER BY day, merchant_id, country, channel, currency;
            GET DIAGNOSTICS n_daily = ROW_COUNT;
            DROP TABLE _prefix_new;
        END IF;
        -- Statistics are out of date once a tenth of the rows are new (autovacuum's default
        -- rule); the totals of the newest hours are found by their index meanwhile.
        IF n_hourly > (SELECT reltuples FROM pg_class
                       WHERE oid = 'analytics_prefix_hourly'::regclass) / 10 THEN
            ANALYZE analytics_prefix_hourly;
        END IF;
        IF n_daily > (SELECT reltuples FROM pg_class
                      WHERE oid = 'analytics_prefix_daily'::regclass) / 10 THEN
            ANALYZE analytics_prefix_daily;
        END IF;
    END IF;

    -- The within-day totals of the changed days, as migration 100 builds them: one statement
    -- per day (a day's rows sort in memory). _prefix_rates holds the rate of each (currency,
    -- day) of those days: 070's, or the one above.
    DELETE FROM analytics_prefix_intraday x USING _prefix_changed c
    WHERE c.n_rows = 0 AND x.hour >= (c.day::timestamp AT TIME ZONE 'UTC')
      AND x.hour < ((c.day + 1)::timestamp AT TIME ZONE 'UTC');
    DELETE FROM analytics_prefix_intraday_days b USING _prefix_changed c
    WHERE c.n_rows = 0 AND b.day = c.day;
    FOR d, n_held IN SELECT c.day, c.n_rows FROM _prefix_changed c WHERE c.n_rows > 0 ORDER BY 1
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
    IF n_intraday > (SELECT reltuples FROM pg_class
                     WHERE oid = 'analytics_prefix_intraday'::regclass) / 10 THEN
        ANALYZE analytics_prefix_intraday;
    END IF;
    DROP TABLE IF EXISTS pg_temp._prefix_h, pg_temp._prefix_rates, pg_temp._prefix_changed,
        pg_temp._prefix_c;

    INSERT INTO analytics_prefix_state AS s
        (id, quote, cutoff, fx_version, built_at, duration_ms, hourly_rows, daily_rows,
         intraday_rows, intraday_days)
    VALUES (true, $1, held_to, fxv, now(),
            round(extract(epoch FROM clock_timestamp() - started) * 1000), n_hourly, n_daily,
            n_intraday, n_days)
    ON CONFLICT (id) DO UPDATE SET
        quote = excluded.quote, cutoff = excluded.cutoff, fx_version = excluded.fx_version,
        built_at = excluded.built_at, duration_ms = excluded.duration_ms,
        hourly_rows = excluded.hourly_rows, daily_rows = excluded.daily_rows,
        intraday_rows = excluded.intraday_rows, intraday_days = excluded.intraday_days;
    RETURN n_hourly + n_daily + n_intraday;
END $$;
