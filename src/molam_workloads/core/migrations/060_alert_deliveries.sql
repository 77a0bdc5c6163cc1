-- Alerting in the Prometheus ecosystem (issue 15): Alertmanager destinations, a runbook link,
-- a ledger of every notification attempt, and test notifications asked for through the API.

-- A rule's Alertmanagers (base URLs) and runbook; the alert keeps the Alertmanagers its rule
-- had when it fired, so a rule deleted while firing still has its resolution pushed there.
ALTER TABLE analytics_alert_rules
    ADD COLUMN alertmanagers jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN runbook_url   text;
ALTER TABLE analytics_alerts
    ADD COLUMN alertmanagers jsonb NOT NULL DEFAULT '[]';

-- Test notifications: the API inserts a request, the evaluator's notifier (which owns the
-- destinations' secrets and the egress policy) sends it once per destination and writes the
-- outcome back; the API waits for it.
CREATE TABLE analytics_alert_tests (
    id             bigserial PRIMARY KEY,
    rule_name      text NOT NULL,
    requested_by   text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    locked_until   timestamptz,
    done_at        timestamptz,
    results        jsonb
);
CREATE INDEX analytics_alert_tests_due_idx ON analytics_alert_tests (id) WHERE done_at IS NULL;

-- The delivery ledger: one row per attempt, webhook or Alertmanager. Only the destination's
-- host is kept: paths and queries of webhook URLs often carry tokens.
CREATE TABLE analytics_alert_deliveries (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    alert_id     bigint REFERENCES analytics_alerts (id) ON DELETE CASCADE,
    test_id      bigint REFERENCES analytics_alert_tests (id) ON DELETE CASCADE,
    rule_name    text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('webhook', 'alertmanager')),
    status       text NOT NULL CHECK (status IN ('firing', 'resolved', 'test')),
    destination  text NOT NULL,
    attempt      integer NOT NULL CHECK (attempt >= 1),
    status_code  integer,
    latency_ms   double precision NOT NULL,
    ok           boolean NOT NULL,
    error        text
);
CREATE INDEX analytics_alert_deliveries_alert_idx ON analytics_alert_deliveries (alert_id, id);
CREATE INDEX analytics_alert_deliveries_rule_idx ON analytics_alert_deliveries (rule_name, id);
CREATE INDEX analytics_alert_deliveries_at_idx ON analytics_alert_deliveries (at);
