-- Kept merchant rankings over blocks of whole UTC days, so that the first merchants of a range
-- are found among a few hundred candidates instead of every merchant
-- (docs/decisions/031-merchant-ranking-lists.md).
--
-- A block is [lo, hi): 2^k days (k = 0 .. levels), lo a multiple of 2^k days after 1970-01-01.
-- Per block and measure, the first `size` + 1 merchants ('' for rows without a merchant) by
-- their sum over the block, largest first, with those sums, read from the daily running
-- totals (migration 070): per merchant, its cells' totals at day hi - 1 minus those at
-- lo - 1, a currency without rate counted as 0 in the gross volume (as the API counts it).
--
-- Both ranked measures are sums of counts or of amounts > 0 (events and wallet_transactions
-- check it; FX rates are > 0), so a merchant's sum over part of a block is at most its sum over
-- the block. A merchant not among a block's first n therefore has at most amounts[n + 1] there:
-- a range covered by blocks bounds every merchant left out of all their first n by the sum of
-- those amounts. The constraint below states that rule for the hourly rows (only for the two
-- measures: each check costs every upsert); the blocks are built only once it is validated.
ALTER TABLE txn_hourly_agg ADD CONSTRAINT txn_hourly_agg_ranked_nonnegative
    CHECK (tx_count >= 0 AND payment_volume_local >= 0) NOT VALID;
DO $$
BEGIN
    ALTER TABLE txn_hourly_agg VALIDATE CONSTRAINT txn_hourly_agg_ranked_nonnegative;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'txn_hourly_agg holds negative transaction counts or payment volumes: '
        'merchant rankings read every merchant until they are corrected and the constraint '
        'validated';
END $$;
CREATE TABLE IF NOT EXISTS analytics_prefix_ranks (
    measure    text NOT NULL CHECK (measure IN ('gross_volume', 'tx_count')),
    lo         date NOT NULL,
    hi         date NOT NULL,
    merchants  text[] NOT NULL,     -- largest sum first, ties by merchant
    amounts    numeric[] NOT NULL,  -- the sum of each, same order
    PRIMARY KEY (measure, lo, hi)
);

-- Which running totals the blocks were built from: analytics_prefix_state.built_at, and the
-- lists' length. The API uses them only while they match the totals it reads.
CREATE TABLE IF NOT EXISTS analytics_prefix_ranks_state (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    built_from  timestamptz NOT NULL,
    size        integer NOT NULL,
    levels      integer NOT NULL,
    built_at    timestamptz NOT NULL,
    duration_ms integer NOT NULL,
    blocks      integer NOT NULL,  -- blocks (re)built by the last build
    merchants   integer NOT NULL   -- merchants of the totals' last day (all of them, dense)
);

-- The days whose running totals were rewritten since the last build: every rewrite of the
-- totals (migration 110) records each day it rebuilt in analytics_prefix_intraday_days, and a
-- full rebuild deletes and adds them all, so a trigger there sees every change.
CREATE TABLE IF NOT EXISTS analytics_prefix_ranks_dirty (day date PRIMARY KEY);

CREATE OR REPLACE FUNCTION analytics_prefix_ranks_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_prefix_ranks_dirty (day)
    VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.day ELSE NEW.day END)
    ON CONFLICT DO NOTHING;
    IF TG_OP = 'UPDATE' AND OLD.day <> NEW.day THEN
        INSERT INTO analytics_prefix_ranks_dirty (day) VALUES (OLD.day) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS analytics_prefix_ranks_touch ON analytics_prefix_intraday_days;
CREATE TRIGGER analytics_prefix_ranks_touch
    AFTER INSERT OR UPDATE OR DELETE ON analytics_prefix_intraday_days
    FOR EACH ROW EXECUTE FUNCTION analytics_prefix_ranks_touch();

-- (Re)build the blocks whose sums may have changed: those ending on or after the earliest day
-- rewritten (their totals at hi - 1 changed; earlier blocks read only unchanged days), all of
-- them without a previous build of the same shape. Run after
-- analytics_rebuild_prefix_totals, in its transaction (`refresh-views` does).
CREATE OR REPLACE FUNCTION analytics_rebuild_prefix_ranks(size integer, levels integer)
RETURNS integer
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    started timestamptz := clock_timestamp();
    st analytics_prefix_state%ROWTYPE;
    prev analytics_prefix_ranks_state%ROWTYPE;
    epoch constant date := date '1970-01-01';
    first_day date;
    end_day date;  -- the daily totals hold the days before it
    d0 date;
    n integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('molam.prefix_totals'));  -- as the totals' builder
    SELECT * INTO st FROM analytics_prefix_state;
    IF NOT FOUND OR NOT (SELECT c.convalidated FROM pg_constraint c
                         WHERE c.conrelid = 'txn_hourly_agg'::regclass
                           AND c.conname = 'txn_hourly_agg_ranked_nonnegative') THEN
        DELETE FROM analytics_prefix_ranks;  -- no bound holds: the API ranks every merchant
        DELETE FROM analytics_prefix_ranks_state;
        RETURN 0;
    END IF;
    SELECT * INTO prev FROM analytics_prefix_ranks_state;
    IF NOT FOUND OR prev.size <> $1 OR prev.levels <> $2 THEN
        DELETE FROM analytics_prefix_ranks;
        d0 := '-infinity';
    ELSE
        SELECT min(day) INTO d0 FROM analytics_prefix_ranks_dirty;
    END IF;
    DELETE FROM analytics_prefix_ranks_dirty;
    end_day := (st.cutoff AT TIME ZONE 'UTC')::date;
    SELECT min(day) INTO first_day FROM analytics_prefix_daily;
    -- Blocks past the totals' end or before their first day, and those to build again, go.
    DELETE FROM analytics_prefix_ranks
    WHERE first_day IS NULL OR hi > end_day OR hi <= first_day OR hi - 1 >= d0;

    IF d0 IS NOT NULL AND first_day IS NOT NULL THEN
        DROP TABLE IF EXISTS pg_temp._ranks_blocks, pg_temp._ranks_days;
        CREATE TEMPORARY TABLE _ranks_blocks ON COMMIT DROP AS
        SELECT epoch + j * s AS lo, epoch + (j + 1) * s AS hi
        FROM generate_series(0, $2) AS k
        CROSS JOIN LATERAL (SELECT (1 << k) AS s) z
        CROSS JOIN LATERAL generate_series(
            greatest(greatest(first_day, d0) - epoch + 1 - s, 0) / s
              + (greatest(greatest(first_day, d0) - epoch + 1 - s, 0) % s > 0)::int,
            (end_day - epoch) / s - 1) AS j;
        -- Per merchant, the totals of its cells at each day a block reads.
        CREATE TEMPORARY TABLE _ranks_days ON COMMIT DROP AS
        SELECT x.day, x.merchant_id, sum(x.tx_count) AS tx, coalesce(sum(x.gross), 0) AS gross
        FROM analytics_prefix_daily x
        WHERE x.day = ANY (ARRAY(SELECT hi - 1 FROM _ranks_blocks
                                 UNION SELECT lo - 1 FROM _ranks_blocks))
        GROUP BY 1, 2;
        ANALYZE _ranks_days;
        INSERT INTO analytics_prefix_ranks (measure, lo, hi, merchants, amounts)
        WITH v AS (
            SELECT b.lo, b.hi, e.merchant_id, e.tx - coalesce(f.tx, 0) AS tx,
                   e.gross - coalesce(f.gross, 0) AS gross
            FROM _ranks_blocks b
            JOIN _ranks_days e ON e.day = b.hi - 1
            LEFT JOIN _ranks_days f ON f.day = b.lo - 1 AND f.merchant_id = e.merchant_id
        ), r AS (
            SELECT 'gross_volume' AS measure, lo, hi, merchant_id, gross AS amount,
                   row_number() OVER (PARTITION BY lo, hi ORDER BY gross DESC, merchant_id) AS pos
            FROM v
            UNION ALL
            SELECT 'tx_count', lo, hi, merchant_id, tx,
                   row_number() OVER (PARTITION BY lo, hi ORDER BY tx DESC, merchant_id)
            FROM v
        )
        SELECT measure, lo, hi, array_agg(merchant_id ORDER BY pos), array_agg(amount ORDER BY pos)
        FROM r WHERE pos <= $1 + 1
        GROUP BY measure, lo, hi;
        GET DIAGNOSTICS n = ROW_COUNT;
        DROP TABLE _ranks_blocks, _ranks_days;
    END IF;

    INSERT INTO analytics_prefix_ranks_state AS s
        (id, built_from, size, levels, built_at, duration_ms, blocks, merchants)
    VALUES (true, st.built_at, $1, $2, now(),
            round(extract(epoch FROM clock_timestamp() - started) * 1000), n,
            (SELECT count(DISTINCT x.merchant_id) FROM analytics_prefix_daily x
             WHERE x.day = end_day - 1))
    ON CONFLICT (id) DO UPDATE SET
        built_from = excluded.built_from, size = excluded.size, levels = excluded.levels,
        built_at = excluded.built_at, duration_ms = excluded.duration_ms,
        blocks = excluded.blocks, merchants = excluded.merchants;
    RETURN n;
END $$;
