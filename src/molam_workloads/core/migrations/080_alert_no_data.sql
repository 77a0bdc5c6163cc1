-- No data is a state of its own (issue 15): each rule chooses what an evaluation without data
-- (a rate without denominator, a volume without FX rate, a stale ingestion) means, as Grafana's
-- noDataState does: 'nodata' shows it (never fires), 'ok' counts it as a clear condition,
-- 'alerting' as a held one.
ALTER TABLE analytics_alert_rules
    ADD COLUMN IF NOT EXISTS no_data_state text NOT NULL DEFAULT 'nodata'
        CHECK (no_data_state IN ('ok', 'nodata', 'alerting'));

ALTER TABLE analytics_alert_rule_state
    DROP CONSTRAINT IF EXISTS analytics_alert_rule_state_state_check,
    ADD CONSTRAINT analytics_alert_rule_state_state_check
        CHECK (state IN ('inactive', 'pending', 'firing', 'nodata')),
    -- Why the last evaluation had no data: no_denominator, no_fx_rate or ingestion_stale.
    ADD COLUMN IF NOT EXISTS no_data_reason text;
