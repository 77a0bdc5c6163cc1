-- Molam Analytics schema, version 1. The runbook uses these names: they never change.
-- Money is numeric (never float); times are timestamptz; day boundaries in the stored
-- aggregates are UTC (the API shifts them to the caller's time zone).

-- Source rows written by the wallet system; backfill reads them.
CREATE TABLE wallet_transactions (
    id           text PRIMARY KEY,
    merchant_id  text,
    occurred_at  timestamptz NOT NULL,
    amount       numeric(20, 4) NOT NULL CHECK (amount > 0),
    currency     char(3) NOT NULL,
    country      char(2) NOT NULL,
    channel      text NOT NULL,
    type         text NOT NULL CHECK (type IN ('payment', 'refund', 'payout', 'transfer')),
    status       text NOT NULL CHECK (status IN ('succeeded', 'failed', 'pending')),
    fee          numeric(20, 4) NOT NULL DEFAULT 0 CHECK (fee >= 0)
);
CREATE INDEX wallet_transactions_occurred_at_idx ON wallet_transactions (occurred_at);

-- Hourly aggregates, one row per (hour, merchant, country, currency, channel).
-- tx_count and gross_volume_local count every transaction whatever its type and status, so
-- they reconcile with COUNT(*) / SUM(amount) over wallet_transactions (the runbook check);
-- the other measures split them for the KPIs. Volumes are in the row's own currency; the
-- reporting currency is applied at query time through fx_rate_ranges, so loading new FX
-- rates corrects history instead of freezing a conversion made at ingest time.
CREATE TABLE txn_hourly_agg (
    hour                   timestamptz NOT NULL,
    merchant_id            text,
    country                char(2) NOT NULL,
    currency               char(3) NOT NULL,
    channel                text NOT NULL,
    tx_count               bigint NOT NULL DEFAULT 0,
    succeeded_count        bigint NOT NULL DEFAULT 0,
    failed_count           bigint NOT NULL DEFAULT 0,
    pending_count          bigint NOT NULL DEFAULT 0,
    gross_volume_local     numeric(24, 4) NOT NULL DEFAULT 0,
    payment_count          bigint NOT NULL DEFAULT 0,   -- succeeded payments
    payment_volume_local   numeric(24, 4) NOT NULL DEFAULT 0,
    refund_count           bigint NOT NULL DEFAULT 0,   -- succeeded refunds
    refund_volume_local    numeric(24, 4) NOT NULL DEFAULT 0,
    payout_count           bigint NOT NULL DEFAULT 0,   -- succeeded payouts
    payout_volume_local    numeric(24, 4) NOT NULL DEFAULT 0,
    transfer_count         bigint NOT NULL DEFAULT 0,   -- succeeded transfers
    transfer_volume_local  numeric(24, 4) NOT NULL DEFAULT 0,
    fee_local              numeric(24, 4) NOT NULL DEFAULT 0,  -- fees of succeeded transactions
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (hour);
CREATE UNIQUE INDEX txn_hourly_agg_key
    ON txn_hourly_agg (hour, merchant_id, country, currency, channel) NULLS NOT DISTINCT;
CREATE INDEX txn_hourly_agg_merchant_hour_idx ON txn_hourly_agg (merchant_id, hour);
CREATE INDEX txn_hourly_agg_created_at_idx ON txn_hourly_agg (created_at);

-- Minute buckets of the same measures for the alerts evaluator's short windows; only the
-- recent past is kept (purged by the evaluator's housekeeping).
CREATE TABLE txn_minute_agg (LIKE txn_hourly_agg INCLUDING DEFAULTS);
ALTER TABLE txn_minute_agg RENAME COLUMN hour TO minute;
CREATE UNIQUE INDEX txn_minute_agg_key
    ON txn_minute_agg (minute, merchant_id, country, currency, channel) NULLS NOT DISTINCT;

-- Monthly partitions of txn_hourly_agg, created ahead of need. Safe when several pods call it
-- at once: a transaction-scoped advisory lock serialises the DDL.
CREATE FUNCTION ensure_txn_hourly_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    m timestamptz := date_trunc('month', from_ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('molam.txn_hourly_agg.partitions'));
    WHILE m <= to_ts LOOP
        name := 'txn_hourly_agg_' || to_char(m AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF txn_hourly_agg FOR VALUES FROM (%L) TO (%L)',
                name, m, (m AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        m := (m AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
    END LOOP;
    RETURN created;
END $$;

-- Daily aggregates; REFRESH ... CONCURRENTLY needs the unique index below.
CREATE MATERIALIZED VIEW mv_txn_daily_agg AS
SELECT (hour AT TIME ZONE 'UTC')::date       AS day,
       merchant_id, country, currency, channel,
       sum(tx_count)::bigint                 AS tx_count,
       sum(succeeded_count)::bigint          AS succeeded_count,
       sum(failed_count)::bigint             AS failed_count,
       sum(pending_count)::bigint            AS pending_count,
       sum(gross_volume_local)               AS gross_volume_local,
       sum(payment_count)::bigint            AS payment_count,
       sum(payment_volume_local)             AS payment_volume_local,
       sum(refund_count)::bigint             AS refund_count,
       sum(refund_volume_local)              AS refund_volume_local,
       sum(payout_count)::bigint             AS payout_count,
       sum(payout_volume_local)              AS payout_volume_local,
       sum(transfer_count)::bigint           AS transfer_count,
       sum(transfer_volume_local)            AS transfer_volume_local,
       sum(fee_local)                        AS fee_local
FROM txn_hourly_agg
GROUP BY 1, 2, 3, 4, 5
WITH DATA;  -- populated (empty) at once, so REFRESH ... CONCURRENTLY works from the start
CREATE UNIQUE INDEX mv_txn_daily_agg_key
    ON mv_txn_daily_agg (day, merchant_id, country, currency, channel) NULLS NOT DISTINCT;
CREATE INDEX mv_txn_daily_agg_merchant_day_idx ON mv_txn_daily_agg (merchant_id, day);

-- When each view was last refreshed (pg_stat_user_tables has no such column). Filled by
-- `refresh-views` (with its duration) and by the event trigger of 004 for manual refreshes.
CREATE TABLE analytics_view_refreshes (
    view_name     text PRIMARY KEY,
    refreshed_at  timestamptz NOT NULL,
    duration_ms   integer
);

-- Dated FX rates: 1 unit of `currency` = `rate` units of the reporting currency.
CREATE TABLE fx_rates (
    day       date NOT NULL,
    currency  char(3) NOT NULL,
    quote     char(3) NOT NULL DEFAULT 'USD',
    rate      numeric(30, 12) NOT NULL CHECK (rate > 0),
    loaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (quote, currency, day)
);
-- Each rate holds from its day until the next known rate; the first known rate also covers
-- everything before it, so old data converts with the oldest rate rather than not at all.
CREATE VIEW fx_rate_ranges AS
SELECT quote, currency, rate,
       CASE WHEN lag(day) OVER w IS NULL THEN '-infinity'::timestamptz
            ELSE (day::timestamp AT TIME ZONE 'UTC') END                       AS valid_from,
       coalesce((lead(day) OVER w)::timestamp AT TIME ZONE 'UTC', 'infinity') AS valid_to
FROM fx_rates
WINDOW w AS (PARTITION BY quote, currency ORDER BY day);

-- Exactly-once ledger: one row per transaction counted, by the stream or by backfill. The
-- consumer inserts here in the same transaction as the aggregate upserts and the offsets, so a
-- redelivered event (however late) or a backfilled transaction is never counted twice.
CREATE TABLE ingested_transactions (
    txn_id       text PRIMARY KEY,
    event_id     text,
    occurred_at  timestamptz NOT NULL,
    source       text NOT NULL CHECK (source IN ('stream', 'backfill')),
    ingested_at  timestamptz NOT NULL DEFAULT now()
);

-- Kafka offsets of the consumer group, committed with the aggregates (the source of truth on
-- partition assignment; Kafka's own committed offsets are a best-effort copy for lag tools).
CREATE TABLE consumer_offsets (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    next_offset     bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Alert rules (runbook: "SELECT * FROM analytics_alert_rules WHERE is_active = true").
-- `spec` is the AlertRule custom resource's spec document, kept verbatim; the
-- columns beside it are its typed projection for set-based evaluation.
CREATE TABLE analytics_alert_rules (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL UNIQUE,
    source            text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'crd')),
    metric            text NOT NULL CHECK (metric IN ('tx_count', 'gross_volume', 'success_rate',
                          'failure_rate', 'refund_rate', 'avg_ticket', 'anomaly_count')),
    comparison        text NOT NULL CHECK (comparison IN ('gt', 'gte', 'lt', 'lte')),
    threshold         numeric NOT NULL,
    window_minutes    integer NOT NULL CHECK (window_minutes BETWEEN 1 AND 44640),
    for_seconds       integer NOT NULL DEFAULT 0 CHECK (for_seconds >= 0),
    severity          text NOT NULL DEFAULT 'warning' CHECK (severity IN ('info', 'warning', 'critical')),
    scope_merchant_id text,
    scope_country     char(2),
    scope_currency    char(3),
    scope_channel     text,
    webhooks          jsonb NOT NULL DEFAULT '[]',
    is_active         boolean NOT NULL DEFAULT true,
    spec              jsonb NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Evaluation state per rule, kept in the database so a restarted or second evaluator
-- continues instead of re-firing.
CREATE TABLE analytics_alert_rule_state (
    rule_id            uuid PRIMARY KEY REFERENCES analytics_alert_rules (id) ON DELETE CASCADE,
    state              text NOT NULL DEFAULT 'inactive' CHECK (state IN ('inactive', 'pending', 'firing')),
    pending_since      timestamptz,
    last_value         numeric,
    last_evaluated_at  timestamptz,
    last_fired_at      timestamptz,
    current_alert_id   bigint
);

-- One row per firing (runbook: alerts and their history).
CREATE TABLE analytics_alerts (
    id               bigserial PRIMARY KEY,
    rule_id          uuid REFERENCES analytics_alert_rules (id) ON DELETE SET NULL,
    rule_name        text NOT NULL,
    metric           text NOT NULL,
    severity         text NOT NULL,
    state            text NOT NULL DEFAULT 'firing' CHECK (state IN ('firing', 'acknowledged', 'resolved')),
    value            numeric,
    threshold        numeric NOT NULL,
    comparison       text NOT NULL,
    scope            jsonb NOT NULL DEFAULT '{}',
    started_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,
    notify_attempts  integer NOT NULL DEFAULT 0,
    notify_error     text,
    notified_at      timestamptz
);
CREATE INDEX analytics_alerts_state_idx ON analytics_alerts (state, started_at DESC);
CREATE INDEX analytics_alerts_resolved_idx ON analytics_alerts (resolved_at) WHERE state = 'resolved';

CREATE TABLE analytics_alert_events (
    id        bigserial PRIMARY KEY,
    alert_id  bigint NOT NULL REFERENCES analytics_alerts (id) ON DELETE CASCADE,
    at        timestamptz NOT NULL DEFAULT now(),
    event     text NOT NULL,   -- fired, notified, notify_failed, acknowledged, resolved
    actor     text,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX analytics_alert_events_alert_idx ON analytics_alert_events (alert_id, at);

-- SIRA anomalies; anomaly_key makes detection after a replay idempotent.
CREATE TABLE analytics_anomalies (
    id           bigserial PRIMARY KEY,
    anomaly_key  text NOT NULL UNIQUE,
    merchant_id  text,              -- NULL: platform-wide
    metric       text NOT NULL,     -- tx_count, volume
    bucket       timestamptz NOT NULL,
    value        numeric NOT NULL,
    baseline     numeric NOT NULL,
    zscore       double precision NOT NULL,
    direction    text NOT NULL CHECK (direction IN ('spike', 'drop')),
    detected_at  timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    details      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX analytics_anomalies_detected_idx ON analytics_anomalies (detected_at DESC);
CREATE INDEX analytics_anomalies_merchant_idx ON analytics_anomalies (merchant_id, detected_at DESC);

-- The runbook compares DATE(occurred_at) with the view's UTC days: make UTC this database's
-- session default so that comparison holds for every psql user (skipped without ownership).
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), 'UTC');
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not the database owner: leaving its time zone as it is';
END $$;
