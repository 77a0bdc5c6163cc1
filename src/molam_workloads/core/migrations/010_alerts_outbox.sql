-- Alerts evaluator (issue 4): invariants that make "one alert and one notification per firing"
-- hold even with several evaluators, and the outbox the webhook worker drains.

-- At most one open (firing or acknowledged) alert per rule: a second evaluator that raced past
-- the cycle lock could not insert a duplicate even if it tried.
CREATE UNIQUE INDEX analytics_alerts_one_open_per_rule
    ON analytics_alerts (rule_id) WHERE state IN ('firing', 'acknowledged') AND rule_id IS NOT NULL;

-- Labels and annotations sent to receivers, and the webhooks the rule had when it fired: a rule
-- deleted while firing still gets its resolved notification sent where its firing one went.
ALTER TABLE analytics_alerts
    ADD COLUMN labels         jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN annotations    jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN webhooks       jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN window_minutes integer;

-- Outbox of webhook deliveries. The evaluator inserts rows in the same transaction as the state
-- change; the notifier claims due rows (FOR UPDATE SKIP LOCKED + a lease), posts them and records
-- the outcome. (alert, url, status) is unique, so one firing is announced once per receiver.
CREATE TABLE analytics_alert_notifications (
    id               bigserial PRIMARY KEY,
    alert_id         bigint NOT NULL REFERENCES analytics_alerts (id) ON DELETE CASCADE,
    url              text NOT NULL,
    status           text NOT NULL CHECK (status IN ('firing', 'resolved')),
    payload          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    delivered_at     timestamptz,
    failed_at        timestamptz,   -- gave up after ALERTS_WEBHOOK_MAX_ATTEMPTS
    UNIQUE (alert_id, url, status)
);
CREATE INDEX analytics_alert_notifications_due_idx
    ON analytics_alert_notifications (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- The evaluator reads short windows of minute buckets, all merchants at once or one merchant.
CREATE INDEX IF NOT EXISTS txn_minute_agg_merchant_minute_idx
    ON txn_minute_agg (merchant_id, minute);

-- anomaly_count rules count anomalies detected in their window; SIRA retries unpublished ones.
CREATE INDEX IF NOT EXISTS analytics_anomalies_unpublished_idx
    ON analytics_anomalies (id) WHERE published_at IS NULL;
